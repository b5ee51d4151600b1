"""Leaderboard over synthetic results files: merging, retention, bad inputs."""

import json

import pytest

from sparsezip_lmms.leaderboard import build, collect, table


def _write(path, model, model_args, results, version="0.7.3"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "results": results,
                "config": {"model": model, "model_args": model_args},
                "lmms_eval_version": version,
            }
        )
    )
    return path


def _pope(acc, ttft, tokens, tflops):
    return {
        "pope_eff": {
            "alias": "pope_eff",
            "pope_accuracy,none": acc,
            "pope_f1_score,none": acc,
            "eff_ttft_s,none": ttft,
            "eff_visual_tokens,none": tokens,
            "eff_prefill_tflops,none": tflops,
            "pope_accuracy_stderr,none": "N/A",
        }
    }


def _mme(perc, ttft):
    return {"mme_eff": {"mme_perception_score,none": perc, "mme_cognition_score,none": 50.0, "eff_ttft_s,none": ttft}}


@pytest.fixture
def results_dir(tmp_path):
    _write(tmp_path / "a/base_results.json", "llava_hf_timed", "pretrained=org/llava-7b", _pope(0.8, 2.0, 576, 10.0))
    _write(tmp_path / "b/base_mme_results.json", "llava_hf_timed", "pretrained=org/llava-7b", _mme(1500.0, 1.0))
    _write(tmp_path / "c/sz_results.json", "llava_sparsezip", "pretrained=org/llava-7b,config=sparsezip_64", _pope(0.78, 0.5, 60, 2.0))
    _write(tmp_path / "d/vz_results.json", "llava_visionzip", "pretrained=org/llava-7b,config=visionzip_64,dominant=50", _pope(0.7, 0.4, 64, 2.1), version="0.7.4")
    _write(tmp_path / "d/vz2_results.json", "llava_visionzip", "pretrained=org/llava-7b,config=visionzip_64,dominant=50", _mme(1400.0, 0.3), version="0.7.3")
    (tmp_path / "e").mkdir()
    (tmp_path / "e/crashed_results.json").write_text("{ not json")
    return tmp_path


def test_rows_merge_tasks_and_compute_retention(results_dir):
    columns, rows = table(collect([results_dir]))
    by = {(r["model"], r["config"]): r for r in rows}
    base = by[("llava_hf_timed", "keep_all")]
    assert base["POPE acc"] == 0.8 and base["MME perception"] == 1500.0  # two files, one row
    assert base["POPE retention %"] == pytest.approx(100.0) and base["TTFT speed-up"] == pytest.approx(1.0)
    sz = by[("llava_sparsezip", "sparsezip_64")]
    assert sz["POPE retention %"] == pytest.approx(97.5)
    assert sz["visual tokens"] == 60 and sz["prefill TFLOPs"] == 2.0
    assert sz["POPE TTFT s"] == 0.5 and sz["TTFT speed-up"] == pytest.approx(4.0)
    assert sz["MME perception"] is None and "missing: MME" in sz["notes"]
    vz = by[("llava_visionzip", "visionzip_64,dominant=50")]
    assert vz["MME retention %"] == pytest.approx(100 * 1400 / 1500)
    assert "mixed lmms-eval versions" in vz["notes"]
    assert {"POPE acc", "POPE F1", "MME perception", "MME cognition", "MME acc", "MME acc+"} <= set(columns)


def test_unreadable_and_missing_inputs_become_rows(results_dir, tmp_path):
    _, rows = table(collect([results_dir, tmp_path / "does-not-exist"]))
    notes = " ".join(r["notes"] for r in rows if r["model"] == "?")
    assert "unreadable results file" in notes and "no such file or folder" in notes
    assert len(rows) == 5  # 3 model rows + 2 problem rows, none dropped


def test_no_baseline_is_noted(tmp_path):
    _write(tmp_path / "x_results.json", "llava_sparsezip", "pretrained=a/b,config=sparsezip_64", _pope(0.5, 1.0, 64, 1.0))
    _, rows = table(collect([tmp_path]))
    assert rows[0]["POPE retention %"] is None and "no llava_hf_timed row" in rows[0]["notes"]


def test_build_writes_markdown_csv_and_png(results_dir, tmp_path):
    out = tmp_path / "lb"
    markdown = build([results_dir], out, title="test")
    assert "| llava_sparsezip | sparsezip_64 |" in markdown and "—" in markdown
    csv_text = (out / "leaderboard.csv").read_text()
    assert csv_text.splitlines()[0].startswith("model,config,checkpoint")
    png = (out / "leaderboard_pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_empty_input_still_gives_a_table(tmp_path):
    markdown = build([tmp_path], tmp_path / "out")
    assert markdown.startswith("| model |")


def test_rows_over_their_named_budget_are_flagged(tmp_path):
    _write(tmp_path / "a_results.json", "llava_sparsezip", "pretrained=a/b,config=sparsezip_64", _pope(0.5, 1.0, 87, 1.0))
    _write(tmp_path / "b_results.json", "llava_visionzip", "pretrained=a/b,config=visionzip_64", _pope(0.5, 1.0, 64, 1.0))
    _write(tmp_path / "c_results.json", "llava_sparsevlm", "pretrained=a/b,config=sparsevlm_64", _pope(0.5, 1.0, 66.5, 1.0))
    _write(tmp_path / "d_results.json", "llava_sparsevlm", "pretrained=a/b,config=sparsevlm_128", _pope(0.5, 1.0, 140, 1.0))
    _, rows = table(collect([tmp_path]))
    notes = {r["config"]: r["notes"] for r in rows}
    assert "OVER BUDGET: 87.0 visual tokens for a 64-token config" in notes["sparsezip_64"]
    assert "OVER BUDGET" not in notes["visionzip_64"]
    assert "OVER BUDGET" not in notes["sparsevlm_64"]  # in-LLM: equal tokens within 5 %
    assert "OVER BUDGET: 140.0 visual tokens for a 128-token config" in notes["sparsevlm_128"]


def test_run_folders_reached_through_symlinks_are_read_by_every_command(tmp_path, capsys):
    """A folder of links to run folders: leaderboard and analyze both follow the links (each real file
    once, a link cycle walked once); a folder with no results is an error that says so, not an empty table."""
    from sparsezip_lmms.analysis.samples import load_runs
    from sparsezip_lmms.leaderboard import main

    runs = tmp_path / "runs"
    _write(runs / "a" / "x_results.json", "llava_hf_timed", "pretrained=m,config=keep_all", _pope(0.8, 1.0, 576, 2.0))
    _write(runs / "b" / "y_results.json", "llava_visionzip", "pretrained=m,config=visionzip_64", _pope(0.7, 0.5, 64, 0.5))
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for name in ("a", "b"):
        (gathered / name).symlink_to(runs / name, target_is_directory=True)
    (gathered / "b" / "loop").symlink_to(gathered, target_is_directory=True)  # a cycle: walked once
    rows = collect([gathered])
    assert sorted(r.model for r in rows) == ["llava_hf_timed", "llava_visionzip"] and not any(r.problems for r in rows)
    assert main([str(gathered), "--out", str(tmp_path / "lb")]) == 0
    assert "llava_visionzip" in (tmp_path / "lb" / "leaderboard.md").read_text()
    runs_read, problems = load_runs([gathered])
    assert sorted(run.model for run in runs_read) == ["llava_hf_timed", "llava_visionzip"] and problems == []

    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main([str(empty), "--out", str(tmp_path / "lb2")]) == 2
    err = capsys.readouterr().err
    assert "no results to tabulate" in err and f"{empty}: no *_results.json under this folder" in err
    assert not (tmp_path / "lb2").exists()


def test_rows_of_different_batch_size_or_limit_are_not_compared(tmp_path):
    """A batch-1 baseline of every document and a batch-2 run of 4 (``--limit 4``): two settings, so no
    TTFT speed-up or retention between them, and a note naming what differs."""

    def write(name, model, config, batch, limit, ttft):
        path = _write(tmp_path / f"{name}_results.json", model, f"pretrained=a/b,config={config}", _pope(0.5, ttft, 64, 1.0))
        data = json.loads(path.read_text())
        data["config"].update(batch_size=batch, limit=limit)
        path.write_text(json.dumps(data))

    write("base", "llava_hf_timed", "keep_all", "1", None, 2.0)
    write("fast", "llava_sparsezip", "sparsezip_64", "2", 4, 0.5)
    write("same", "llava_sparsezip", "sparsezip_64", "1", None, 1.0)
    columns, cells = table(collect([tmp_path]))
    assert {"batch size", "limit"} <= set(columns)
    by = {(c["model"], c["batch size"], c["limit"]): c for c in cells}
    fast, same = by[("llava_sparsezip", "2", "4")], by[("llava_sparsezip", "1", "all")]
    assert fast["TTFT speed-up"] is None and fast["avg retention %"] is None
    assert "not compared with llava_hf_timed (its run differs: batch size 1, limit all" in fast["notes"]
    assert same["TTFT speed-up"] == 2.0 and same["avg retention %"] == 100.0


def _with_data(path, dataset_path, task="pope_eff"):
    """Record the task's data in a results file as lmms-eval does (``configs[task]``)."""
    data = json.loads(path.read_text())
    data["configs"] = {task: {"task": task, "dataset_path": dataset_path, "test_split": "test"}}
    path.write_text(json.dumps(data))
    return path


def test_a_task_on_other_data_is_not_compared_and_is_another_row(tmp_path):
    """The same task name on other data: no retention or speed-up against it, and the same method run on two
    datasets gives two rows, each saying which data it is."""
    _with_data(_write(tmp_path / "base_results.json", "llava_hf_timed", "pretrained=org/m", _pope(0.8, 2.0, 576, 10.0)), "/data/pope_a")
    _with_data(_write(tmp_path / "vz_a_results.json", "llava_visionzip", "pretrained=org/m,config=visionzip_64", _pope(0.7, 0.5, 64, 2.0)), "/data/pope_a")
    _with_data(_write(tmp_path / "vz_b_results.json", "llava_visionzip", "pretrained=org/m,config=visionzip_64", _pope(0.6, 0.5, 64, 2.0)), "/data/pope_b")
    _, rows = table(collect([tmp_path]))
    vz = sorted((r for r in rows if r["model"] == "llava_visionzip"), key=lambda r: r["POPE acc"])
    assert [r["POPE acc"] for r in vz] == [0.6, 0.7]  # two rows, not the newer file winning
    assert vz[1]["POPE retention %"] == pytest.approx(87.5) and vz[1]["TTFT speed-up"] == pytest.approx(4.0)
    assert vz[0]["POPE retention %"] is None and vz[0]["TTFT speed-up"] is None
    assert "POPE not compared with llava_hf_timed: its task data differs (dataset_path /data/pope_a" in vz[0]["notes"]
    assert "task data: POPE dataset_path /data/pope_b" in vz[0]["notes"]


def test_the_baseline_is_found_however_its_checkpoint_and_dtype_were_spelled(tmp_path, monkeypatch):
    """A relative and an absolute path of one local checkpoint, and dtype=auto against the checkpoint's own
    float32: one setting, compared."""
    checkpoint = tmp_path / "tiny"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"text_config": {"dtype": "float32"}}))
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    _write(runs / "base_results.json", "llava_hf_timed", f"pretrained={checkpoint},dtype=float32", _pope(0.8, 2.0, 576, 10.0))
    _write(runs / "vz_results.json", "llava_visionzip", "pretrained=tiny,config=visionzip_64", _pope(0.7, 0.5, 64, 2.0))
    _, rows = table(collect([runs]))
    vz = next(r for r in rows if r["model"] == "llava_visionzip")
    assert vz["dtype"] == "float32" and vz["checkpoint"] == "tiny"  # shown as given
    assert vz["POPE retention %"] == pytest.approx(87.5), vz["notes"]


def test_runs_with_other_attention_or_generation_settings_are_not_compared(tmp_path):
    _write(tmp_path / "base_results.json", "llava_hf_timed", "pretrained=org/m", _pope(0.8, 2.0, 576, 10.0))
    _write(tmp_path / "eager_results.json", "llava_visionzip", "pretrained=org/m,config=visionzip_64,attn_implementation=eager", _pope(0.7, 0.5, 64, 2.0))
    path = _write(tmp_path / "gen_results.json", "llava_sparsezip", "pretrained=org/m,config=sparsezip_64", _pope(0.7, 0.5, 64, 2.0))
    data = json.loads(path.read_text())
    data["config"]["gen_kwargs"] = "max_new_tokens=4"
    path.write_text(json.dumps(data))
    _, rows = table(collect([tmp_path]))
    by = {r["model"]: r for r in rows}
    assert by["llava_visionzip"]["config"] == "visionzip_64"  # the attention is a condition, not the method
    for model, differs in (("llava_visionzip", "attention default"), ("llava_sparsezip", "generation (none)")):
        assert by[model]["POPE retention %"] is None
        assert f"not compared with llava_hf_timed (its run differs: {differs}" in by[model]["notes"], by[model]["notes"]


def test_terminal_view_fits_160_characters_and_explains_every_flag(tmp_path):
    long = "/very/long/path/" + "x" * 80 + "/checkpoint"
    _write(tmp_path / "base_results.json", "llava_hf_timed", f"pretrained={long}", _pope(0.8, 2.0, 576, 10.0))
    args = f"pretrained={long},config=visionzip_64,dominant=50,merging.contextual_num=16,prune_positions=contiguous"
    _write(tmp_path / "vz_results.json", "llava_visionzip", args, _pope(0.7, 0.5, 900, 2.0))
    text = build([tmp_path], tmp_path / "out", title="t", terminal=True)
    table_lines = text.split("flags:")[0].splitlines()
    assert max(len(line) for line in text.splitlines()) <= 160
    assert any("[1] OVER BUDGET" in line for line in table_lines)  # the flag in the row ...
    assert "[1] llava_visionzip:visionzip_64,dominant=50" in text and "OVER BUDGET: 900.0 visual tokens" in text  # ... explained
    assert long not in text and "…/" in text  # the path shortened for display, whole in the CSV
    assert long in (tmp_path / "out" / "leaderboard.csv").read_text()


def test_qwen_rows_are_compared_with_the_qwen_baseline(tmp_path):
    _write(tmp_path / "base_results.json", "qwen2_5_vl_hf_timed", "pretrained=org/qwen,max_pixels=200704", _pope(0.8, 2.0, 200, 10.0))
    _write(tmp_path / "vz_results.json", "qwen2_5_vl_visionzip", "pretrained=org/qwen,config=visionzip_qwen,max_pixels=200704", _pope(0.7, 0.5, 140, 2.0))
    _write(tmp_path / "px_results.json", "qwen2_5_vl_dart", "pretrained=org/qwen,config=dart_qwen,max_pixels=50176", _pope(0.7, 0.5, 100, 2.0))
    _, rows = table(collect([tmp_path]))
    by = {r["model"]: r for r in rows}
    assert by["qwen2_5_vl_visionzip"]["config"] == "visionzip_qwen"  # the pixel limits are a condition, not the method
    assert by["qwen2_5_vl_visionzip"]["POPE retention %"] == pytest.approx(87.5)
    assert by["qwen2_5_vl_dart"]["POPE retention %"] is None  # other image pixels: another setting
    assert "not compared with qwen2_5_vl_hf_timed (its run differs: image pixels default..200704" in by["qwen2_5_vl_dart"]["notes"]
