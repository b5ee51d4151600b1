"""Efficiency figures through the real CLI, the leaderboard built from them, and data parallelism."""

from __future__ import annotations

import socket
import sys

import pytest

from sparsezip_lmms.demo.harness import lmms_eval_command, run_lmms_eval
from sparsezip_lmms.leaderboard import build, collect, table
from _inprocess import run_in_process

pytestmark = pytest.mark.e2e
TASKS = ("pope", "mme", "docvqa_val")


def _cmd(model, config, checkpoint, mini_tasks, out, launcher=None, tasks=TASKS):
    include, names = mini_tasks
    return lmms_eval_command(
        model,
        f"pretrained={checkpoint},config={config},dtype=float64",
        [names[t] for t in tasks],
        out,
        include_path=include,
        batch_size=2,
        launcher=launcher,
        extra=["--gen_kwargs", "max_new_tokens=4"],
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mini_tasks, tiny_checkpoint):
    root = tmp_path_factory.mktemp("eff")
    out = {}
    for model, config in (("llava_hf_timed", "keep_all"), ("llava_sparsezip", "sparsezip_64")):
        path = root / model
        out[model] = run_in_process(_cmd(model, config, tiny_checkpoint, mini_tasks, path), path)
    return root, out


def test_every_sample_carries_its_figures(runs):
    _, out = runs
    for model, run in out.items():
        for task, rows in run.samples.items():
            for row in rows:
                record = row["eff_record"]
                assert not record.get("missing") and record["error"] is None, (model, task, row["doc_id"])
                assert record["ttft_s"] > 0 and record["e2e_s"] >= record["ttft_s"]
                assert record["input_tokens"] == row["token_counts"][0]["input_tokens"]
                assert record["prefill_flops"] == record["vision_flops"] + record["compression_flops"] + record["llm_prefill_flops"]
                assert record["kv_cache_bytes"] > 0
                assert record["peak_memory_bytes"] is None  # CPU: no per-request device counter
                if model == "llava_hf_timed":  # no method: nothing of its own to time
                    assert record["method_s"] == 0.0
                else:  # SparseZip's scoring and merging: a part of the vision phase
                    assert 0 < record["method_s"] < record["vision_s"]
        for task, metrics in run.results["results"].items():
            for stat in ("eff_ttft_s", "eff_ttft_s_p50", "eff_ttft_s_p90", "eff_e2e_s", "eff_prefill_tflops"):
                assert metrics[f"{stat},none"] > 0, (model, task, stat)
            assert metrics["eff_ttft_s_p50,none"] <= metrics["eff_ttft_s_p90,none"]
        # lmms-eval's own throughput block, filled the way its llava_hf fills it
        throughput = run.results["throughput"]
        generated = sum(row["eff_record"]["output_tokens"] for rows in run.samples.values() for row in rows)
        assert throughput["total_gen_tokens"] == generated > 0
        assert throughput["total_elapsed_time"] > 0 and throughput["avg_latency"] > 0


def test_leaderboard_from_real_runs(runs, tmp_path):
    root, _ = runs
    columns, rows = table(collect([root]))
    by_model = {r["model"]: r for r in rows}
    base, sz = by_model["llava_hf_timed"], by_model["llava_sparsezip"]
    assert base["visual tokens"] == 576
    assert sz["visual tokens"] <= 64
    assert sz["prefill TFLOPs"] < base["prefill TFLOPs"]
    for column in ("POPE acc", "POPE F1", "MME perception", "MME cognition", "MME acc", "MME acc+", "DocVQA ANLS", "DocVQA EM"):
        assert column in columns and base[column] is not None and sz[column] is not None, column
    assert sz["TTFT speed-up"] is not None and sz["TTFT speed-up"] > 0
    assert base["TTFT speed-up"] == pytest.approx(1.0)
    markdown = build([root], tmp_path / "lb")
    assert "llava_sparsezip" in markdown and "sparsezip_64" in markdown
    png = tmp_path / "lb" / "leaderboard_pareto.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_parallel_two_cpu_processes(runs, tmp_path, mini_tasks, tiny_checkpoint):
    """torchrun (gloo) with 2 ranks, in subprocesses: same answers as one process, every sample its own figures."""
    _, out = runs
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "lmms_eval"]
    dp = run_lmms_eval(
        _cmd("llava_sparsezip", "sparsezip_64", tiny_checkpoint, mini_tasks, tmp_path, launcher=launcher),
        tmp_path,
        timeout=1200,
        env={"OMP_NUM_THREADS": "1"},
    )
    single = out["llava_sparsezip"]
    assert sorted(dp.samples) == sorted(single.samples)
    for task, rows in dp.samples.items():
        ref = {r["doc_id"]: r for r in single.samples[task]}
        assert sorted(r["doc_id"] for r in rows) == sorted(ref)  # every document exactly once
        for row in rows:
            assert row["filtered_resps"] == ref[row["doc_id"]]["filtered_resps"]
            record = row["eff_record"]
            assert not record.get("missing") and record["error"] is None
            # figures belong to this document: its own prompt length and visual tokens
            assert record["input_tokens"] == ref[row["doc_id"]]["eff_record"]["input_tokens"]
            assert record["visual_tokens"] == ref[row["doc_id"]]["eff_record"]["visual_tokens"]
