"""Command line of sparsezip_lmms: python -m sparsezip_lmms COMMAND [options]; COMMAND --help for a command's options."""

from __future__ import annotations

import argparse
import json
import sys


# sub-commands with their own options: name -> (module, function)
_WITH_OWN_OPTIONS = {
    "demo": ("sparsezip_lmms.demo.run", "main"),
    "doctor": ("sparsezip_lmms.doctor", "main"),
    "leaderboard": ("sparsezip_lmms.leaderboard", "main"),
    "analyze": ("sparsezip_lmms.analysis.analyze", "main"),
    "explain": ("sparsezip_lmms.analysis.explain", "main"),
    "report": ("sparsezip_lmms.analysis.report", "main"),
    "sweep": ("sparsezip_lmms.sweep", "main"),
    "bench": ("sparsezip_lmms.bench", "main"),
    "calibrate": ("sparsezip_lmms.calibrate", "main"),
    "import-config": ("sparsezip_lmms.seed_config", "main"),
    "eff-tasks": ("sparsezip_lmms.eff_tasks", "main"),
    "table": ("sparsezip_lmms.paper.render", "main"),
}


def _run_with_own_options(command: str, argv: list[str]) -> int:
    """Run a sub-command; an lmms-eval run that failed ends it with exit code 1 and the failure shown."""
    import importlib

    from .demo.harness import HarnessError

    module, function = _WITH_OWN_OPTIONS[command]
    try:
        return int(getattr(importlib.import_module(module), function)(argv) or 0)
    except HarnessError as err:
        print(f"error: {command}: {err}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of the commands below")
    sub.add_parser("demo", help="offline demo: tiny random LLaVA/NeXT/Qwen2.5-VL on eight mini benchmarks through lmms-eval, leaderboard, paper table, report", add_help=False)
    sub.add_parser("doctor", help="environment check: versions against the lock, torch build, lmms-eval, model ids, tasks", add_help=False)
    sub.add_parser("tasks-path", help="print the folder to pass to lmms-eval --include_path")
    sub.add_parser("configs", help="list the named compression configs")
    sub.add_parser("methods", help="list the registered compression methods (built-in and installed plugins)")
    show = sub.add_parser("show-config", help="print the effective config (name or path, plus key=value overrides)")
    show.add_argument("config", help="a config name (python -m sparsezip_lmms configs lists them) or a YAML path")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. merging.contextual_num=16")

    sub.add_parser("leaderboard", help="merge results folders into a table (Markdown, CSV) and a Pareto plot", add_help=False)
    sub.add_parser("analyze", help="compare --log_samples runs of one task: kept-patch overlap, text sensitivity, categories, agreement", add_help=False)
    sub.add_parser("explain", help="one image + question through several configs -> PNG of the kept patches per method", add_help=False)
    sub.add_parser("report", help="one self-contained HTML page: leaderboard, Pareto plots, categories, overlap, overlay gallery", add_help=False)
    sub.add_parser("sweep", help="one lmms-eval run per config x grid override x task (resumable), then leaderboard and report", add_help=False)
    sub.add_parser("bench", help="speed benchmark of every part (table + JSON)", add_help=False)
    sub.add_parser("calibrate", help="fit SparseZip's dynamic K on a task's images and write a config", add_help=False)
    sub.add_parser("eff-tasks", help="write TASK_eff wrappers of any lmms-eval task: its own metrics plus the eff_* efficiency metrics", add_help=False)
    sub.add_parser("table", help="the paper table: benchmarks in canonical metrics, retention, 95%% intervals, paired tests (Markdown, CSV, LaTeX)", add_help=False)
    sub.add_parser("import-config", help="convert a seed SparseZip YAML into this package's config", add_help=False)
    if argv and argv[0] in _WITH_OWN_OPTIONS:
        return _run_with_own_options(argv[0], argv[1:])
    args = parser.parse_args(argv)
    if args.command == "tasks-path":
        from .paths import tasks_path

        print(tasks_path())
    elif args.command == "configs":
        from .config import available_configs

        print("\n".join(available_configs()))
    elif args.command == "methods":
        from .methods import all_methods, broken_methods

        print(f"{'method':<12} {'stage':<9} {'families':<27} model ids (and the generic id of each family)")
        for spec in all_methods():
            generic = ["llava_compressed"] + (["qwen2_5_vl_compressed"] if "qwen2_5_vl" in spec.families else [])
            ids = ", ".join(dict.fromkeys([*spec.model_ids, *generic]))
            print(f"{spec.name:<12} {spec.stage:<9} {','.join(spec.families):<27} {ids}")
            print(f"{'':<12} {spec.description}")
        for name, why in broken_methods().items():
            print(f"error: {name}: {why}", file=sys.stderr)
        if broken_methods():
            return 2
    elif args.command == "show-config":
        from .config import ConfigError, config_to_dict, load_config

        try:
            pairs = dict(item.split("=", 1) for item in args.overrides)
        except ValueError:
            parser.error("overrides must look like key=value")
        try:
            print(json.dumps(config_to_dict(load_config(args.config, pairs)), indent=2))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
