"""Section 5: end to end through the real lmms-eval CLI on the tiny checkpoint, batch 1 against batch B.

Each run writes per-request efficiency records (``--log_samples`` rows, ``eff_record``). Under
batching a request's ``e2e_s`` is the time of its whole batch and ``batch_size`` says how many
requests shared it, so ``Σ e2e_s / batch_size`` over the timed requests is the model time they took;
samples/s = timed requests / that sum. The first batch of every run is warm-up (``warmup=<batch>``)
and excluded. The CLI wall time (process start, imports and model loading included) is reported too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..demo.harness import lmms_eval_command, run_lmms_eval
from ..demo.run import prepare, tiny_model_args

__all__ = ["harness_section", "samples_per_second"]


def samples_per_second(rows: list[dict]) -> tuple[float, int]:
    """(samples/s over the non-warm-up requests, how many there were) from ``--log_samples`` rows."""
    records = [row["eff_record"] for row in rows if not row["eff_record"].get("warmup")]
    records = [r for r in records if r.get("e2e_s") is not None and not r.get("error")]
    if not records:
        raise ValueError("no timed request in the run (all warm-up?)")
    busy = sum(r["e2e_s"] / r["batch_size"] for r in records)
    return len(records) / busy, len(records)


def harness_section(
    model: str,
    config: str,
    batches: list[int],
    tasks: tuple[str, ...],
    limit: int | None,
    max_new_tokens: int,
    device: str,
    workdir: Path | None = None,
    dtype: str = "float32",
) -> dict:
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sparsezip_bench_"))
    checkpoint, task_dir, names = prepare(root, tasks=tasks)
    out: dict = {
        "model": model,
        "config": config,
        "tasks": names,
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "dtype": dtype,
        "workdir": str(root),
        "batches": {},
    }
    for batch in batches:
        result_dir = root / "results" / f"bs{batch}"
        extra = ["--gen_kwargs", f"max_new_tokens={max_new_tokens}"]
        if limit:
            extra += ["--limit", str(limit)]
        cmd = lmms_eval_command(
            model,
            f"pretrained={checkpoint},config={config},dtype={dtype},warmup={batch}" + tiny_model_args(model, root),
            names,
            result_dir,
            include_path=task_dir,
            batch_size=batch,
            device=device,
            extra=extra,
        )
        t0 = time.perf_counter()
        run = run_lmms_eval(cmd, result_dir)
        wall = time.perf_counter() - t0
        rows = [row for task_rows in run.samples.values() for row in task_rows]
        rate, timed = samples_per_second(rows)
        out["batches"][str(batch)] = {
            "samples": len(rows),
            "timed_samples": timed,
            "samples_per_s": rate,
            "wall_s": wall,
            "wall_samples_per_s": len(rows) / wall,
            "command": " ".join(cmd),
        }
    first = str(batches[0])
    out["ratios"] = {
        f"bs{b}_vs_bs{first}": out["batches"][str(b)]["samples_per_s"] / out["batches"][first]["samples_per_s"]
        for b in batches[1:]
    }
    out["ratios"].update(
        {
            f"wall_bs{b}_vs_bs{first}": out["batches"][str(b)]["wall_samples_per_s"]
            / out["batches"][first]["wall_samples_per_s"]
            for b in batches[1:]
        }
    )
    return out
