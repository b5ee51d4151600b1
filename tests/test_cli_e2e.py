"""The real lmms-eval CLI on the tiny checkpoint and the mini datasets: lmms-eval's own entry point in
the test process (``_inprocess``), and in a subprocess where the exit code and the console are tested.

The CLI can exit 0 after a crash, so every assertion is on the files it wrote.
"""

from __future__ import annotations

import pytest

from sparsezip_lmms.demo.harness import HarnessError, lmms_eval_command, run_lmms_eval
from _inprocess import run_in_process

pytestmark = pytest.mark.e2e

POPE_METRICS = {"pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"}
MME_METRICS = {"mme_perception_score", "mme_cognition_score"}


def _run(tmp_path, mini_tasks, checkpoint, model, config, batch_size, tasks=("pope", "mme"), extra_args="", runner=run_in_process):
    include, names = mini_tasks
    out = tmp_path / f"{model}_{config.split(',')[0]}_{batch_size}"  # no commas in paths: lmms-eval splits on them
    cmd = lmms_eval_command(
        model,
        f"pretrained={checkpoint},config={config},dtype=float64{extra_args}",
        [names[t] for t in tasks],
        out,
        include_path=include,
        batch_size=batch_size,
        extra=["--gen_kwargs", "max_new_tokens=4"],
    )
    return runner(cmd, out, timeout=1200)


def _answers(run):
    return {
        task: {row["doc_id"]: row["filtered_resps"] for row in rows} for task, rows in sorted(run.samples.items())
    }


def _accuracy(run):
    """Task metrics without the efficiency figures (timings differ from run to run)."""
    return {
        task: {k: v for k, v in metrics.items() if not k.startswith("eff_") and "stderr" not in k}
        for task, metrics in run.results["results"].items()
    }


def _check_results(run, names, model):
    results = run.results["results"]
    assert set(results) == {names["pope"], names["mme"]}
    assert POPE_METRICS <= {k.split(",")[0] for k in results[names["pope"]]}
    assert MME_METRICS <= {k.split(",")[0] for k in results[names["mme"]]}
    assert run.results["n-samples"][names["pope"]]["effective"] == 12
    assert run.results["n-samples"][names["mme"]]["effective"] == 16
    assert "sparsezip_lmms.models.llava" in run.results["config"]["model_backend"]
    # every request reached the LLM with the compressed length reported to the harness
    for rows in run.samples.values():
        assert all(row["token_counts"][0]["input_tokens"] > 0 for row in rows)


@pytest.mark.parametrize(
    "model, config, max_visual",
    [
        ("llava_sparsezip", "sparsezip_64", 64), ("llava_visionzip", "visionzip_64", 64), ("llava_sparsevlm", "sparsevlm_64", 575),
        ("llava_divprune", "divprune_64", 64), ("llava_cdpruner", "cdpruner_64", 64),
        ("llava_fastv", "fastv_64", 576), ("llava_sparsevlm", "sparsevlm2_64", 576),
        ("llava_dart", "dart_64", 576), ("llava_vispruner", "vispruner_64", 64),
    ],
)  # fmt: skip
def test_cli_batch_1_and_4_agree(model, config, max_visual, tmp_path, mini_tasks, tiny_checkpoint, tiny_clip):
    _, names = mini_tasks
    extra = f",clip_text_tower={tiny_clip}" if model == "llava_cdpruner" else ""
    run1 = _run(tmp_path, mini_tasks, tiny_checkpoint, model, config, 1, extra_args=extra)
    run4 = _run(tmp_path, mini_tasks, tiny_checkpoint, model, config, 4, extra_args=extra)
    for run in (run1, run4):
        _check_results(run, names, model)
    assert _answers(run1) == _answers(run4)
    assert _accuracy(run1) == _accuracy(run4)
    for run in (run1, run4):
        for rows in run.samples.values():
            assert all(0 < row["eff_visual_tokens"] <= max_visual for row in rows)


def test_cli_bad_model_args_name_the_key(tmp_path, mini_tasks, tiny_checkpoint):
    with pytest.raises(HarnessError) as info:
        _run(tmp_path, mini_tasks, tiny_checkpoint, "llava_sparsezip", "sparsezip_64,merging.contextual_nmu=3", 1,
             tasks=("pope",), runner=run_lmms_eval)  # a subprocess: the console script's exit and log
    assert "unknown key 'merging.contextual_nmu'" in str(info.value)
    assert not list(tmp_path.rglob("*_results.json"))


def test_seed_config_row_shows_its_real_token_count(tmp_path, mini_tasks, tiny_checkpoint):
    """The seed's "64-token" SparseZip sends 1 + 54 + 32 = 87 tokens; the leaderboard says so."""
    from sparsezip_lmms.leaderboard import collect, table

    run = _run(tmp_path, mini_tasks, tiny_checkpoint, "llava_sparsezip", "sparsezip_seed_pope", 2, tasks=("pope",))
    for rows in run.samples.values():
        assert all(row["eff_record"]["visual_tokens"] == 87 for row in rows)
    _, rows = table(collect([tmp_path]))
    (row,) = [r for r in rows if r["config"] == "sparsezip_seed_pope"]
    assert row["visual tokens"] == 87 and "OVER BUDGET" not in row["notes"]  # its name states no budget
