"""Command line: ``python -m sparsezip_lmms {demo,leaderboard,bench,tasks-path,configs,show-config}``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="offline demo: tiny random LLaVA + mini POPE/MME/DocVQA through lmms-eval", add_help=False)
    sub.add_parser("tasks-path", help="print the folder to pass to lmms-eval --include_path")
    sub.add_parser("configs", help="list the named compression configs")
    show = sub.add_parser("show-config", help="print the effective config (name or path, plus key=value overrides)")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. merging.contextual_num=16")

    sub.add_parser("leaderboard", help="merge results folders into a table (Markdown, CSV) and a Pareto plot", add_help=False)
    sub.add_parser("bench", help="speed benchmark of every part (table + JSON)", add_help=False)
    if argv and argv[0] == "demo":  # these have their own options
        from .demo.run import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "leaderboard":
        from .leaderboard import main as leaderboard_main

        return leaderboard_main(argv[1:])
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "tasks-path":
        from .paths import tasks_path

        print(tasks_path())
    elif args.command == "configs":
        from .config import available_configs

        print("\n".join(available_configs()))
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
