"""The offline demo: tiny random LLaVA, LLaVA-NeXT and Qwen2.5-VL checkpoints on mini versions of eight
benchmarks through the real lmms-eval CLI, then the leaderboard, the paper table and the report."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..doctor import FAIL, format_table, run_checks
from ..analysis.report import build_report
from ..leaderboard import build as build_leaderboard
from ..paper.render import write as write_paper_table
from ..paper.table import TableError, build as build_paper_table
from .harness import lmms_eval_command, run_lmms_eval, write_local_tasks
from .mini_datasets import MINI_BUILDERS
from .tiny_checkpoint import build_tiny_clip, build_tiny_llava
from .tiny_qwen import build_tiny_qwen2_5_vl

def demo_runs() -> list[tuple[str, str]]:
    """(model id, its default config) for every dedicated model id of the manifest, the uncompressed one first."""
    from ..models.manifest import DEDICATED_IDS
    from ..models.base import class_default_config

    ids = sorted(DEDICATED_IDS, key=lambda model_id: (model_id != "llava_hf_timed", model_id))
    return [(model_id, class_default_config(model_id)) for model_id in ids] + EXTRA_RUNS


# beyond the defaults: SparseVLM v2.0, FastV at a budget, the four cells of the confound study, the random baseline
EXTRA_RUNS = [
    ("llava_sparsevlm", "sparsevlm2_64"),
    ("llava_fastv", "fastv_64"),
    ("llava_sparsezip", "confound/agnostic_before"),
    ("llava_sparsezip", "confound/agnostic_inside"),
    ("llava_sparsezip", "confound/aware_before"),
    ("llava_sparsezip", "confound/aware_inside"),
    ("llava_compressed", "random_64"),  # the generic id: any registered method from config=
]


# on the tiny LLaVA-NeXT checkpoint (any-resolution tiles): the stock model and VisionZip crop by crop
NEXT_RUNS = [("llava_hf_timed", "keep_all"), ("llava_visionzip", "visionzip_next_320")]

def qwen_runs() -> list[tuple[str, str]]:
    """On the tiny Qwen2.5-VL checkpoint: every Qwen2.5-VL model id with its default config, the stock model
    first, and the generic id with the random baseline."""
    from ..models.base import class_default_config
    from ..models.manifest import GENERIC_IDS, QWEN_IDS

    ids = sorted((m for m in QWEN_IDS if m not in GENERIC_IDS), key=lambda m: (m != "qwen2_5_vl_hf_timed", m))
    return [(m, class_default_config(m)) for m in ids] + [("qwen2_5_vl_compressed", "random_qwen")]
QWEN_PIXELS = ",min_pixels=3136,max_pixels=200704"  # 56² .. 448² pixels: at most 256 merged tokens per image


def tiny_model_args(model: str, root: Path) -> str:
    """Extra ``--model_args`` a model id needs on what :func:`prepare` built under ``root`` (CDPruner: the tiny CLIP)."""
    return f",clip_text_tower={root / 'tiny-clip'}" if model == "llava_cdpruner" else ""


# the benchmarks of the demo's paper table. Not MMBench: upstream's MMBench aggregation writes an Excel
# submission file, which fails on the control characters a random-weight model emits.
DEMO_TASKS = ("pope", "mme", "docvqa_val", "gqa", "scienceqa_img", "textvqa_val", "ocrbench", "seedbench")
_DATA_OF = {"mmbench_en_dev_static": "mmbench_en_dev"}  # a task that reads another task's mini data
# builder arguments: POPE/MME/DocVQA at their full mini size; SEED-Bench's image questions only (its video
# questions' frames would exceed the tiny LLaVA-NeXT's 4096 positions)
_DEMO_SIZES = {"pope": {}, "mme": {}, "docvqa_val": {}, "seedbench": {"n": 8, "videos": 0}}


def prepare(out_dir: Path, tasks: tuple[str, ...] = DEMO_TASKS) -> tuple[Path, Path, list[str]]:
    """Build the tiny checkpoint (and the tiny CLIP text tower CDPruner reads, ``tiny-clip/`` beside it),
    the mini datasets and their task YAMLs under ``out_dir``."""
    checkpoint = build_tiny_llava(out_dir / "tiny-llava")
    build_tiny_clip(out_dir / "tiny-clip")
    data_dirs = {
        name: MINI_BUILDERS[_DATA_OF.get(name, name)](out_dir / "data" / name, **_DEMO_SIZES.get(name, {"n": 8}))
        for name in tasks
    }  # the six later benchmarks at 8 documents each: the demo's runs stay short
    task_dir = out_dir / "tasks"
    names = write_local_tasks(task_dir, data_dirs)
    return checkpoint, task_dir, names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms demo", description=__doc__)
    parser.add_argument("--out", default="demo_output", help="working folder (default: ./demo_output)")
    parser.add_argument("--batch-size", type=int, default=4, help="lmms-eval --batch_size of every run (default: %(default)s)")
    parser.add_argument("--batch_size", dest="batch_size", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # lmms-eval's spelling
    parser.add_argument("--max-new-tokens", type=int, default=8, help="cap on generated tokens, keeps the demo short (default: %(default)s)")
    parser.add_argument("--runs", nargs="*", default=None, help="model:config pairs (default: every model id with its default config)")
    args = parser.parse_args(argv)

    checks = run_checks()
    if any(check.status == FAIL for check in checks):
        print(format_table(checks))
        print("\nthe environment cannot run the demo (rows marked FAIL above); fix them and run it again", file=sys.stderr)
        return 1
    print(format_table(checks).splitlines()[-1], "(python -m sparsezip_lmms doctor for the table)", flush=True)
    out = Path(args.out).resolve()
    runs = [tuple(r.split(":", 1)) for r in args.runs] if args.runs else demo_runs()
    print(f"building the tiny random-weight checkpoints and mini datasets under {out} ...", flush=True)
    checkpoint, task_dir, task_names = prepare(out)
    plan = [(model, config, checkpoint, "") for model, config in runs]
    if not args.runs:  # and LLaVA-NeXT: its own checkpoint, so its rows compare among themselves
        next_checkpoint = build_tiny_llava(out / "tiny-llava-next", next_grid=True)
        plan += [(model, config, next_checkpoint, "next__") for model, config in NEXT_RUNS]
        qwen_checkpoint = build_tiny_qwen2_5_vl(out / "tiny-qwen2_5_vl", text_layers=16)  # deep enough for every in-LLM default
        plan += [(model, config, qwen_checkpoint, "qwen__") for model, config in qwen_runs()]
    for model, config, weights, prefix in plan:
        result_dir = out / "results" / f"{prefix}{model}__{config.replace('/', '_')}"
        cmd = lmms_eval_command(
            model,
            f"pretrained={weights},config={config},dtype=float32,warmup={args.batch_size}"
            + ",log_selection=true"  # every id records its selection (LLaVA and Qwen2.5-VL)
            + tiny_model_args(model, out)
            + (QWEN_PIXELS if model.startswith("qwen2_5_vl") else ""),
            task_names,
            result_dir,
            include_path=task_dir,
            batch_size=args.batch_size,
            extra=["--gen_kwargs", f"max_new_tokens={args.max_new_tokens}"],
        )
        print(" ".join(shlex.quote(str(part)) for part in cmd), flush=True)  # the command, as it can be rerun
        run = run_lmms_eval(cmd, result_dir)
        print(f"  results: {run.results_path}", flush=True)
    board = build_leaderboard(
        [out / "results"],
        out / "leaderboard",
        title="Tiny checkpoint with RANDOM weights: the numbers show the mechanics, not model quality",
        terminal=True,
    )
    print("\n" + board)
    print(f"\nleaderboard files (every column, names whole): {out / 'leaderboard'}/leaderboard.{{md,csv}}, leaderboard_pareto.png")
    try:
        sections = build_paper_table([out / "results"])
        paths = write_paper_table(sections, out / "paper_table", title="Tiny checkpoints with RANDOM weights: mechanics, not quality")
        print(f"\npaper table ({len(sections)} tables, one per checkpoint; retention, 95% intervals, paired tests): {paths['md']} (.csv, .tex)")
    except TableError as err:  # e.g. --runs without the uncompressed baseline: no retention to compute
        print("\n".join(f"{'note' if args.runs else 'error'}: paper table: {p}" for p in err.problems), file=sys.stderr)
        if not args.runs:
            return 1
    report = build_report([out / "results"], out / "report.html", title="sparsezip-lmms demo (tiny checkpoint, RANDOM weights)")
    print(f"report (leaderboard, categories, overlap, overlays of every run; open in a browser): {report}")
    return 0
