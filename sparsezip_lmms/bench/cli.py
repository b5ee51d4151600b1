"""``python -m sparsezip_lmms bench``: speed of every part, random weights at real dimensions.

Sections (``--sections``, default all):

1. ``vision``    CLIP-L/336 forward: LLaVA's plain SDPA call vs ``scoring_inputs`` vs the official
                 VisionZip capture (eager, ``output_attentions=True``), batch 1 and 8;
2. ``ops``       every compression config's op relative to the CLIP forward of the same batch;
3. ``prefill``   LLaVA-shaped LLM prefill, 576 visual tokens vs each config's budget, against the
                 FLOPs bound (32 LLaMA-7B layers on a GPU, fewer on a CPU);
4. ``pruning``   our in-LLM pruning decoder vs an eager, one-prompt-at-a-time (official-style)
                 computation, for SparseVLM v1.5, SparseVLM v2.0, FastV, DART and a deferred VisionZip
                 selection, batch 1 and 8 (``sparsevlm`` is accepted for it);
5. ``harness``   the lmms-eval CLI on the tiny checkpoint, samples/s at batch 1 vs batch 8;
6. ``next``      LLaVA-NeXT-shaped inputs (5 crops per image): every method's NeXT vision side (VisionZip,
                 SparseZip per crop and per image, DivPrune, CDPruner) vs the stock features, and the
                 prefill of the packed 2928 visual tokens vs each method's output length;
7. ``qwen``      Qwen2.5-VL vision tower (7B geometry; 4 blocks on a CPU, 32 on a GPU): VisionZip's scoring
                 capture (chunked) vs an official-style eager last block ([H, S, S]) vs no scores, the last
                 block alone, and the largest attention tensor of each, batch 1 and 8.

Prints Markdown tables to stdout and writes everything (every sample time) to ``--json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .models import LLAMA_7B, LlamaDims, build_llama
from .report import evaluate_targets, render

__all__ = ["Settings", "main", "run"]

SECTIONS = ("vision", "ops", "prefill", "pruning", "harness", "next", "qwen")
SECTION_ALIASES = {"sparsevlm": "pruning"}  # the name section 4 had when it timed SparseVLM v1.5 alone
PRUNING_METHODS = ("sparsevlm", "sparsevlm2", "fastv", "dart", "deferred")
# --quick times the prefill at these configs only (one per budget); the full run does every config.
QUICK_PREFILL_CONFIGS = ("keep_all", "visionzip_64", "visionzip_128", "visionzip_192", "sparsezip_64")
# --smoke: every section's code path at the smallest sizes that still run it (the test suite's tier; its
# timings measure nothing). The token geometry stays LLaVA's (577 CLIP tokens, 5 NeXT crops of 576); the
# widths and depths shrink. Section 4's LLaMA keeps 16 layers (SparseVLM prunes at 2, 6 and 15) and a head
# size of 64 (SparseVLM v2.0's RoPE-only term must stay positive over the 636-token prompt).
SMOKE_CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4}
SMOKE_LLAMA = LlamaDims(width=256, mlp=512, heads=4, kv_heads=4, vocab=512)
SMOKE_PRUNING_LLAMA = LlamaDims(width=256, mlp=512, heads=4, kv_heads=2, vocab=512)


@dataclass
class Settings:
    device: str
    dtype: str
    quick: bool
    sections: list[str]
    batches: list[int]  # sections 1-2 and 7
    prefill_batches: list[int]  # section 3
    repeats: int  # vision (sections 1 and 7)
    warmup: int
    ops_repeats: int
    ops_warmup: int
    llm_repeats: int  # sections 3 and 4
    llm_warmup: int
    llm_layers: int
    pruning_llm_layers: int  # section 4
    pruning_dims: dict
    pruning_methods: list[str]
    pruning_budgets: list[int]
    pruning_plain: bool
    pruning_batch: int
    harness_model: str
    harness_config: str
    harness_batches: list[int]
    harness_tasks: list[str]
    harness_limit: int | None
    max_new_tokens: int
    workdir: str | None = None
    smoke: bool = False
    clip_overrides: dict | None = None  # sections 1-3 and 6: CLIP-L/336 unless given (--smoke)
    llm_dims: dict | None = None  # sections 3 and 6: LLaMA-7B unless given (--smoke)


def _plain(doc: str) -> str:
    """The module docstring as plain --help text: the section table's ``name`` cells keep their width."""
    return re.sub(r"^(\d\. )``(\w+)``", r"\1\2    ", doc, flags=re.M).replace("``", "")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparsezip_lmms bench", description=_plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="where to time (default: cuda when available, else cpu)")
    p.add_argument("--quick", action="store_true", help="one repeat of every measurement at real sizes: ~3 minutes on a 2-core CPU (default: off)")
    p.add_argument("--smoke", action="store_true",
                   help="every section's code path on tiny widths (implies --quick; times nothing meaningful): "
                   "the test suite's check that the bench runs (default: off)")  # fmt: skip
    p.add_argument("--json", default="bench_results.json", help="where to write the JSON (default: %(default)s)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated subset of " + ",".join(SECTIONS) + " (sparsevlm = pruning) (default: all)")  # fmt: skip
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="model dtype (default: float32 on CPU, float16 on CUDA)")  # fmt: skip
    p.add_argument("--batches", default=None, help="batch sizes of sections 1-2 and 7 (default: 1,8; quick: 1)")
    p.add_argument("--prefill-batches", default=None, help="batch sizes of section 3 (default: 1,8 on GPU; 1 on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of sections 1, 3, 4, 7 (default: 3 CPU, 20 GPU; quick: 1 CPU, 3 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up rounds of sections 1, 3, 4, 7 (default: 1 CPU, 3 GPU; quick: 0 CPU, 1 GPU)")
    p.add_argument("--llm-layers", type=int, default=None, help="LLaMA layers in section 3 (default: 32 GPU, 2 CPU, 1 quick)")
    p.add_argument("--pruning-llm-layers", dest="pruning_llm_layers", type=int, default=None,
                   help="LLaMA layers in section 4 (default 16 CPU, 32 GPU)")  # fmt: skip
    p.add_argument("--pruning-width", dest="pruning_width", type=int, default=None,
                   help="LLaMA width in section 4 (default 4096; quick on CPU 1024)")  # fmt: skip
    p.add_argument("--pruning-methods", default=None,
                   help="in-LLM methods of section 4, subset of " + ",".join(PRUNING_METHODS) + " (default: all)")  # fmt: skip
    p.add_argument("--pruning-budgets", dest="pruning_budgets", default=None,
                   help="budgets of every method in section 4 (default: 64,128,192 GPU; 64 CPU)")  # fmt: skip
    p.add_argument("--pruning-plain", dest="pruning_plain", action=argparse.BooleanOptionalAction,
                   default=None, help="also time the unpruned prefill in section 4 (default: on, off with --quick)")  # fmt: skip
    p.add_argument("--pruning-batch", dest="pruning_batch", type=int, default=None,
                   help="also time ours at this batch against the eager reference run prompt by prompt "
                   "(default: 8; off with --quick)")  # fmt: skip
    p.add_argument("--harness-model", default="llava_sparsezip", help="model id the harness section runs (default: %(default)s)")
    p.add_argument("--harness-config", default="sparsezip_64", help="config the harness section runs (default: %(default)s)")
    p.add_argument("--harness-batch", type=int, default=8, help="batch size compared with batch 1 (default 8)")
    p.add_argument("--harness-tasks", default=None, help="mini tasks (default pope,mme; quick pope)")
    p.add_argument("--harness-limit", type=int, default=None, help="lmms-eval --limit per task (default: every request of the mini task)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="harness generation length (default 4; quick 1)")
    p.add_argument("--workdir", default=None, help="folder for the harness checkpoint/data/results (default: temporary)")
    for old in ("layers", "width", "budgets", "batch"):  # the former names of section 4's options, hidden
        p.add_argument(f"--sparsevlm-{old}", dest=f"pruning_{'llm_layers' if old == 'layers' else old}",
                       type=None if old == "budgets" else int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--sparsevlm-plain", dest="pruning_plain", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def settings_from_args(args: argparse.Namespace) -> Settings:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    gpu, smoke = device == "cuda", args.smoke
    quick = args.quick or smoke
    sections = [SECTION_ALIASES.get(s.strip(), s.strip()) for s in args.sections.split(",") if s.strip()]
    sections = list(dict.fromkeys(sections))  # "sparsevlm,pruning" runs section 4 once
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"error: unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    methods = [m.strip() for m in (args.pruning_methods or ",".join(PRUNING_METHODS)).split(",") if m.strip()]
    unknown = sorted(set(methods) - set(PRUNING_METHODS))
    if unknown:
        raise SystemExit(f"error: unknown in-LLM method(s) {unknown}; choose from {','.join(PRUNING_METHODS)}")
    if quick:
        repeats, warmup, ops, llm = (3, 1, (5, 1), (3, 1)) if gpu else (1, 0, (3, 1), (1, 0))
    elif gpu:
        repeats, warmup, ops, llm = 20, 3, (50, 5), (10, 3)
    else:
        repeats, warmup, ops, llm = 3, 1, (20, 2), (3, 1)
    repeats = args.repeats if args.repeats is not None else repeats
    warmup = args.warmup if args.warmup is not None else warmup
    llm = (args.repeats, llm[1]) if args.repeats is not None else llm
    llm = (llm[0], args.warmup) if args.warmup is not None else llm
    width = args.pruning_width or (1024 if quick and not gpu else 4096)
    svlm_dims = LLAMA_7B if width == 4096 else LlamaDims(width, _mlp_for(width), max(1, width // 128), max(1, width // 128))
    if smoke and not args.pruning_width:
        svlm_dims = SMOKE_PRUNING_LLAMA
    return Settings(
        device=device,
        dtype=args.dtype or ("float16" if gpu else "float32"),
        quick=quick,
        sections=sections,
        batches=_ints(args.batches) if args.batches else ([1] if quick else [1, 8]),
        prefill_batches=_ints(args.prefill_batches) if args.prefill_batches else ([1, 8] if gpu else [1]),
        repeats=repeats,
        warmup=warmup,
        ops_repeats=ops[0],
        ops_warmup=ops[1],
        llm_repeats=llm[0],
        llm_warmup=llm[1],
        llm_layers=args.llm_layers or (32 if gpu else 1 if quick else 2),
        pruning_llm_layers=args.pruning_llm_layers or (32 if gpu else 16),
        pruning_dims=asdict(svlm_dims),
        pruning_methods=methods,
        pruning_budgets=_ints(args.pruning_budgets) if args.pruning_budgets else ([64, 128, 192] if gpu else [64]),
        pruning_plain=args.pruning_plain if args.pruning_plain is not None else not quick,
        pruning_batch=args.pruning_batch or (1 if quick else 8),
        harness_model=args.harness_model,
        harness_config=args.harness_config,
        harness_batches=[1, args.harness_batch],
        harness_tasks=(args.harness_tasks or ("pope" if quick else "pope,mme")).split(","),
        harness_limit=args.harness_limit,
        max_new_tokens=args.max_new_tokens or (1 if quick else 4),
        workdir=args.workdir,
        smoke=smoke,
        clip_overrides=dict(SMOKE_CLIP) if smoke else None,
        llm_dims=asdict(SMOKE_LLAMA) if smoke else None,
    )


def _mlp_for(width: int) -> int:
    """LLaMA's MLP width for a model width: 8/3 · d rounded up to a multiple of 256 (4096 -> 11008)."""
    return 256 * -(-int(8 * width / 3) // 256)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meta(s: Settings, argv: list[str]) -> dict:
    import transformers

    cuda = s.device == "cuda"
    return {
        "command": "python -m sparsezip_lmms bench " + " ".join(argv),
        "device": s.device,
        "device_name": torch.cuda.get_device_name() if cuda else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": s.dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "quick": s.quick,
        "smoke": s.smoke,
        "settings": {
            "repeats": s.repeats,
            "warmup": s.warmup,
            "ops_repeats": s.ops_repeats,
            "ops_warmup": s.ops_warmup,
            "llm_repeats": s.llm_repeats,
            "llm_warmup": s.llm_warmup,
            **asdict(s),
        },
        "load_average_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


_T0 = time.perf_counter()
_EVENTS: list[dict] = []  # (time, 1-minute load average, message) of every step, saved in the JSON


def _log(msg: str) -> None:
    elapsed = time.perf_counter() - _T0
    load = _loadavg()
    _EVENTS.append({"t_s": round(elapsed, 1), "load_1min": load[0] if load else None, "step": msg})
    print(f"[bench {elapsed:7.1f} s, load {load[0] if load else float('nan'):.2f}] {msg}", file=sys.stderr, flush=True)


def run(s: Settings, argv: list[str]) -> dict:
    """Run the selected sections and return the report (also the JSON content)."""
    from .timing import DeviceTimer

    device, dtype = torch.device(s.device), getattr(torch, s.dtype)
    llm_dims = LlamaDims(**s.llm_dims) if s.llm_dims else LLAMA_7B
    timer = DeviceTimer(device)
    report: dict = {"meta": _meta(s, argv)}
    started = time.perf_counter()
    _EVENTS.clear()
    torch.manual_seed(0)

    needs_vision = any(x in s.sections for x in ("vision", "ops", "prefill", "next"))
    compressed = None
    if needs_vision:
        from .timing import measure
        from .vision import (
            VisionBench,
            compression_section,
            plain_forward,
            vision_section,
        )

        _log(f"building CLIP{'' if not s.clip_overrides else ' (smoke sizes)'} + projector (random weights)")
        vb = VisionBench.build(device, dtype, llm_dims.width, **(s.clip_overrides or {}))
        clip_times: dict[int, float] = {}
        captured = None
        if "vision" in s.sections:
            _log(f"section 1: vision, batches {s.batches}")
            report["vision"], captured = vision_section(vb, s.batches, s.repeats, s.warmup, timer)
            clip_times = {int(b): e["times"]["plain"]["median_s"] for b, e in report["vision"]["batches"].items()}
        op_batches = sorted(set(s.batches) | (set(s.prefill_batches) if "prefill" in s.sections else set()))
        if "ops" in s.sections or "prefill" in s.sections:
            for b in op_batches:
                if b not in clip_times:  # section 1 not run: time the plain forward here
                    pixels = vb.pixels(b)
                    case = {"plain": lambda px=pixels: plain_forward(vb.clip, px)}
                    with torch.no_grad():
                        clip_times[b] = measure(case, timer, s.repeats, s.warmup)["plain"].median
            _log("section 2: compression ops")
            ops, compressed = compression_section(
                vb, op_batches, clip_times, s.ops_repeats, s.ops_warmup, timer, captured=captured
            )
            if "ops" in s.sections:
                report["compression"] = ops
        if "prefill" in s.sections:
            from .prefill import prefill_section

            _log(f"section 3: prefill, {s.llm_layers} LLaMA layers")
            llm = build_llama(s.llm_layers, llm_dims, device, dtype)
            with_svlm = s.llm_layers > max(load_pruning_layers())
            report["prefill"] = prefill_section(
                llm,
                vb.projector,
                {b: compressed[b] for b in s.prefill_batches},
                llm_dims,
                s.llm_repeats,
                s.llm_warmup,
                timer,
                with_svlm,
                configs=QUICK_PREFILL_CONFIGS if s.quick else None,
            )
            if not with_svlm:
                report["prefill"]["note"] = (
                    f"SparseVLM rows need more than {max(load_pruning_layers())} layers (its pruning layers); "
                    "see section 4"
                )
            del llm
        if "next" in s.sections:
            from .next_section import next_section

            _log(f"section 6: LLaVA-NeXT-shaped inputs, {s.llm_layers} LLaMA layers")
            llm = build_llama(s.llm_layers, llm_dims, device, dtype)
            report["next"] = next_section(vb, llm, llm_dims, s.prefill_batches[0], s.llm_repeats, s.llm_warmup, timer)
            del llm
        del vb, compressed, captured
        gc.collect()

    if "qwen" in s.sections:
        from .qwen_section import qwen_section

        report["qwen"] = qwen_section(device, dtype, s.batches, s.repeats, s.warmup, timer, smoke=s.smoke, log=_log)
        gc.collect()

    if "pruning" in s.sections:
        from .in_llm_section import in_llm_section

        dims = LlamaDims(**s.pruning_dims)
        _log(f"section 4: in-LLM pruning {','.join(s.pruning_methods)}, {s.pruning_llm_layers} layers, {dims.describe()}")
        llm = build_llama(s.pruning_llm_layers, dims, device, dtype)
        report["pruning"] = in_llm_section(
            llm, dims, s.pruning_budgets, s.llm_repeats, s.llm_warmup, timer, s.pruning_plain, s.pruning_batch,
            s.pruning_methods,
        )  # fmt: skip
        del llm
        gc.collect()

    if "harness" in s.sections:
        from .harness_section import harness_section

        _log(f"section 5: lmms-eval, {s.harness_model} {s.harness_config} in {s.dtype}, batches {s.harness_batches}")
        report["harness"] = harness_section(
            s.harness_model,
            s.harness_config,
            s.harness_batches,
            tuple(s.harness_tasks),
            s.harness_limit,
            s.max_new_tokens,
            s.device,
            Path(s.workdir) if s.workdir else None,
            dtype=s.dtype,
        )

    _log("done")
    report["meta"]["steps"] = list(_EVENTS)
    report["targets"] = evaluate_targets(report)
    report["meta"]["duration_s"] = time.perf_counter() - started
    report["meta"]["load_average_end"] = _loadavg()
    return report


def load_pruning_layers() -> list[int]:
    from ..config import load_config

    return list(load_config("sparsevlm_64").pruning_layers)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    settings = settings_from_args(args)
    report = run(settings, argv)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(render(report))
    print(f"JSON: {args.json} ({report['meta']['duration_s']:.0f} s)")
    pruning = report.get("pruning")
    differ = [r["config"] for r in (pruning or {}).get("rows", []) if not r["check"]["kept_identical"]]
    if differ:
        # in half precision near-ties may legitimately resolve differently (different rounding of the scores)
        exact = settings.dtype == "float32"
        _log(f"{'ERROR' if exact else 'warning'}: the eager reference kept different tokens than ours for {differ}")
        return 1 if exact else 0
    return 0
