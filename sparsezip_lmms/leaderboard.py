"""Leaderboard: merge lmms-eval results files into one table (Markdown, CSV) and a Pareto plot.

    python -m sparsezip_lmms leaderboard results/ more_results/ --out leaderboard/

One row per model id, config and setting (``Row.setting``: checkpoint, dtype, batch size, ``--limit``,
attention implementation, device kind, generation settings): the config is the ``--model_args`` label
(lists intact), the checkpoint the ``pretrained`` value as given (hub id or path; a local folder is one
checkpoint however it was spelled). The tasks of several runs merge into that row (the newest file wins
a task measured twice on the same data; on other data it is another row). Accuracy retention and
time-to-first-token speed-up are relative to the ``llava_hf_timed`` row of the same setting, task by task
on the same data. The terminal shows a compact view (``leaderboard_text``). Missing cells print as ``—``; a results file that cannot be read, whatever it holds,
becomes a row that says so, never a silently dropped row or a crash. Rows whose runs had failed
requests show how many and are marked ``FAILED``; every TTFT has the number of timed requests
behind it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .numbers import format_value, mean
from .results_files import checkpoint_id, describe_data, device_kind, resolved_dtype, results_files, task_data

BASELINE_MODEL = "llava_hf_timed"
# the uncompressed model id of each model family: a row is compared with its own family's
BASELINE_MODELS = {"llava": "llava_hf_timed", "qwen2_5_vl": "qwen2_5_vl_hf_timed"}


def baseline_of(model: str, default: str = BASELINE_MODEL) -> str:
    """The uncompressed model id a row of ``model`` is compared with (its family's)."""
    return next((base for prefix, base in BASELINE_MODELS.items() if model.startswith(prefix + "_")), default)

# task family -> (column label, metric key, is the retention metric)
TASK_METRICS: dict[str, list[tuple[str, str, bool]]] = {
    "pope": [("POPE acc", "pope_accuracy", True), ("POPE F1", "pope_f1_score", False)],
    "mme": [
        ("MME perception", "mme_perception_score", True),
        ("MME cognition", "mme_cognition_score", False),
        ("MME acc", "mme_accuracy", False),
        ("MME acc+", "mme_accuracy_plus", False),
    ],
    "docvqa": [("DocVQA ANLS", "anls", True), ("DocVQA EM", "exact_match", False)],
}
TASK_LABEL = {"pope": "POPE", "mme": "MME", "docvqa": "DocVQA"}
_ARG_KEYS_NOT_IN_LABEL = {
    "pretrained", "dtype", "device_map", "device", "warmup", "log_selection", "attn_implementation", "min_pixels", "max_pixels",
}  # fmt: skip


def task_family(task: str) -> str | None:
    for family in TASK_METRICS:
        if task.startswith(family):
            return family
    return None


@dataclass
class Row:
    model: str
    config: str
    checkpoint: str
    dtype: str = "auto"
    batch_size: str = "?"  # lmms-eval --batch_size: TTFT includes waiting for the batch
    limit: str = "all"  # lmms-eval --limit: the documents scored
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> metrics
    data: dict[str, str] = field(default_factory=dict)  # family -> the task's data as the results file records it
    sources: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    checkpoint_id: str = ""  # the checkpoint however it was spelled: a local folder's resolved path, else as given
    # the rest of the run's conditions, (name, value): attention implementation, device kind, generation settings
    conditions: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple:
        """What makes two results files one row: the same run setting (results of different tasks merge)."""
        return (self.model, self.config, *self.setting)

    @property
    def setting(self) -> tuple:
        """What a row and its baseline must share to be compared (accuracy retention, TTFT speed-up); each
        task is compared only where both measured it on the same data (``data``)."""
        return (self.checkpoint_id or self.checkpoint, self.dtype, self.batch_size, self.limit, self.conditions)

    def setting_items(self) -> list[tuple[str, str]]:
        """(name, value) of every part of the setting, as notes name them."""
        parts = [("checkpoint", self.checkpoint), ("dtype", self.dtype), ("batch size", self.batch_size), ("limit", self.limit)]
        return parts + list(self.conditions)


def _parse_model_args(model_args: Any) -> dict[str, str]:
    """``--model_args`` as recorded (a string, or a mapping) -> {key: value}; lists stay whole."""
    from .config import ConfigError, split_args_string

    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    try:
        return split_args_string(str(model_args or ""))
    except ConfigError:  # an entry without '=': keep the well-formed ones
        return split_args_string(",".join(p for p in str(model_args).split(",") if "=" in p))


def _default_config(model: str) -> str:
    try:
        from .models.base import class_default_config

        return class_default_config(model)
    except Exception:  # noqa: BLE001 - the leaderboard must work without the model stack
        return "default"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def read_results(path: Path) -> tuple[Row | None, str | None]:
    """(row with this file's tasks, problem) for one ``*_results.json``; never raises."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"top level is a {type(data).__name__}, not an object")
        config, results = data.get("config"), data.get("results")
        if not isinstance(config, dict):
            raise TypeError(f"'config' is {type(config).__name__}, not an object")
        if not isinstance(results, dict):
            raise TypeError(f"'results' is {type(results).__name__}, not an object")
        model = str(config.get("model", "?"))
        args = _parse_model_args(config.get("model_args"))
    except (OSError, ValueError, TypeError, RecursionError) as err:
        return None, f"{path}: unreadable results file ({type(err).__name__}: {err})"
    label = args.get("config") or _default_config(model)
    overrides = [f"{k}={v}" for k, v in args.items() if k != "config" and k not in _ARG_KEYS_NOT_IN_LABEL]
    if overrides:
        label += "," + ",".join(overrides)
    limit = config.get("limit")
    if isinstance(limit, float) and limit.is_integer():  # lmms-eval records --limit 8 as 8.0
        limit = int(limit)
    checkpoint = args.get("pretrained", "?") or "?"
    row = Row(
        model=model, config=label, checkpoint=checkpoint, dtype=resolved_dtype(args.get("dtype", "auto"), checkpoint),
        batch_size=str(config.get("batch_size", "?")), limit="all" if limit in (None, "") else str(limit),
    )  # fmt: skip
    configs = data.get("configs") if isinstance(data.get("configs"), dict) else {}
    row.checkpoint_id = checkpoint_id(checkpoint)
    generation = config.get("gen_kwargs")
    row.conditions = (
        ("attention", args.get("attn_implementation") or "default"),
        ("image pixels", f"{args.get('min_pixels', 'default')}..{args.get('max_pixels', 'default')}"),
        ("device", device_kind(config.get("device"))),
        ("generation", "" if generation in (None, "", {}) else json.dumps(generation, sort_keys=True, default=str)),
    )  # the lmms-eval version is not: a row merges tasks of several versions and says so (notes)
    row.sources.append(str(path))
    row.versions.add(str(data.get("lmms_eval_version", "unknown")))
    for task, metrics in results.items():
        family = task_family(str(task))
        if family is None or not isinstance(metrics, dict):
            continue
        row.tasks[family] = {str(key).split(",")[0]: value for key, value in metrics.items()}
        row.data[family] = task_data(configs.get(task))
    if not row.tasks:
        row.problems.append(f"{path.name}: no POPE/MME/DocVQA results")
    return row, None


def collect(paths: list[str | Path]) -> list[Row]:
    """Rows from results files found under ``paths`` (files or folders), oldest first so newer wins."""
    files, found_problems = results_files(paths)  # symlinked run folders followed, each file once
    problems = [Row("?", "?", "?", problems=[problem]) for problem in found_problems]
    rows: dict[tuple[str, ...], list[Row]] = {}
    for path in files:
        row, problem = read_results(path)
        if row is None:
            problems.append(Row("?", "?", "?", sources=[str(path)], problems=[problem]))
            continue
        group = rows.setdefault(row.key, [])
        # a task measured again on other data is another run: it starts a row of its own
        merged = next((r for r in group if all(r.data.get(f, d) == d for f, d in row.data.items())), None)
        if merged is None:
            merged = Row(
                row.model, row.config, row.checkpoint, row.dtype, row.batch_size, row.limit,
                checkpoint_id=row.checkpoint_id, conditions=row.conditions,
            )  # fmt: skip
            group.append(merged)
        merged.tasks.update(row.tasks)
        merged.data.update(row.data)
        merged.sources += row.sources
        merged.versions |= row.versions
        merged.problems += row.problems
    for group in rows.values():
        if len(group) > 1:  # the same setting on different task data: say which data each row is
            for r in group:
                r.problems.append("task data: " + "; ".join(f"{TASK_LABEL[f]} {describe_data(d)}" for f, d in sorted(r.data.items())))
    return [r for group in rows.values() for r in group] + problems












IN_LLM_MODELS = {"llava_sparsevlm", "llava_fastv", "llava_dart"}  # their visual tokens are a layer average ("equal tokens")


def row_config(row: Row) -> Any | None:
    """The row's config, loaded from its label (name and overrides), or None where it no longer loads."""
    from .config import ConfigError, load_config, split_top_level

    name, *overrides = split_top_level(row.config)
    try:
        return load_config(name, dict(item.split("=", 1) for item in overrides if "=" in item))
    except (ConfigError, OSError):
        return None


def prunes_inside_llm(row: Row, config: Any | None = None) -> bool:
    """True when the row's method prunes inside the LLM (``MethodSpec.stage`` "llm"), so that its visual
    tokens are a layer average: read from its config (``row_config``) where it still loads, else from its
    model id."""
    from .methods.registry import method_of

    config = row_config(row) if config is None else config
    return row.model in IN_LLM_MODELS if config is None else method_of(config).stage == "llm"


def budget_note(row: Row, config: Any | None = None) -> str | None:
    """What the row's method says about its own token count (``MethodSpec.budget_note``), where its config
    still loads: e.g. DART's official count keeps 68 tokens at "64"."""
    from .methods.registry import method_of

    config = row_config(row) if config is None else config
    if config is None:
        return None
    spec = method_of(config)
    return None if spec.budget_note is None else spec.budget_note(config)


def pareto_frontier(points: list[tuple]) -> list[tuple[float, float]]:
    """The (x, y) of the points no cheaper point beats: by increasing x (time), each one with a higher y
    (score) than every point before it. ``points``: (x, y, ...) tuples."""
    frontier, best = [], -math.inf
    for x, y, *_ in sorted(points):
        if y > best:
            frontier.append((x, y))
            best = y
    return frontier


IN_LLM_TOLERANCE = 0.05


def named_budget(config_label: str) -> int | None:
    """The token budget a config's name states (``sparsezip_64`` -> 64, ``ablations/x`` -> None)."""
    import re

    found = re.search(r"_(\d+)$", config_label.split(",")[0])
    return int(found.group(1)) if found else None


def table(rows: list[Row], baseline_model: str = BASELINE_MODEL) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and one dict per row (numbers or None)."""
    families = [f for f in TASK_METRICS if any(f in r.tasks for r in rows)] or list(TASK_METRICS)
    baselines: dict[tuple[str, ...], list[Row]] = {}
    for r in rows:
        if r.model in (baseline_model, *BASELINE_MODELS.values()):
            baselines.setdefault(r.setting, []).append(r)
    columns = ["model", "config", "checkpoint", "dtype", "batch size", "limit", "failed requests", "visual tokens", "prefill TFLOPs"]
    for family in families:
        columns += [label for label, _, _ in TASK_METRICS[family]]
        columns += [f"{TASK_LABEL[family]} TTFT s", f"{TASK_LABEL[family]} timed n", f"{TASK_LABEL[family]} retention %"]
    columns += ["avg retention %", "TTFT speed-up", "notes"]

    out = []
    for row in rows:
        same_setting = baselines.get(row.setting, [])
        base = same_setting[0] if same_setting else None
        data_notes: list[str] = []
        cells: dict[str, Any] = {"model": row.model, "config": row.config, "checkpoint": row.checkpoint, "dtype": row.dtype}
        cells["batch size"], cells["limit"] = row.batch_size, row.limit
        failed = [_number(m.get("eff_failed")) for m in row.tasks.values()]
        cells["failed requests"] = int(sum(f for f in failed if f)) if any(f is not None for f in failed) else None
        cells["visual tokens"] = mean([_number(row.tasks[f].get("eff_visual_tokens")) for f in families if f in row.tasks], exact=False)
        cells["prefill TFLOPs"] = mean([_number(row.tasks[f].get("eff_prefill_tflops")) for f in families if f in row.tasks], exact=False)
        retentions, speedups = [], []
        for family in families:
            metrics = row.tasks.get(family, {})
            base_metrics = _baseline_metrics(row, family, same_setting, data_notes, baseline_of(row.model, baseline_model))
            for label, key, is_main in TASK_METRICS[family]:
                cells[label] = _number(metrics.get(key))
                if is_main:
                    ours, ref = cells[label], _number(base_metrics.get(key))
                    retention = 100.0 * ours / ref if ours is not None and ref else None
                    cells[f"{TASK_LABEL[family]} retention %"] = retention
                    retentions.append(retention)
            ttft = _number(metrics.get("eff_ttft_s"))
            cells[f"{TASK_LABEL[family]} TTFT s"] = ttft
            timed = _number(metrics.get("eff_timed"))
            cells[f"{TASK_LABEL[family]} timed n"] = None if timed is None else int(timed)
            base_ttft = _number(base_metrics.get("eff_ttft_s"))
            speedups.append(base_ttft / ttft if ttft and base_ttft else None)
        cells["avg retention %"] = mean(retentions, exact=False)
        cells["TTFT speed-up"] = mean(speedups, exact=False)
        notes = []
        if cells["failed requests"]:
            errors = [m.get("eff_first_error") for m in row.tasks.values() if m.get("eff_first_error")]
            notes.append(f"FAILED: {cells['failed requests']} requests" + (f" (first error: {errors[0]})" if errors else ""))
        notes += row.problems + data_notes
        budget, tokens = named_budget(row.config), cells["visual tokens"]
        config = row_config(row) if budget is not None else None  # loaded once for both questions
        in_llm = budget is not None and prunes_inside_llm(row, config)
        limit = None if budget is None else budget * (1 + IN_LLM_TOLERANCE if in_llm else 1)
        if limit is not None and tokens is not None and tokens > limit + 1e-9:
            why = budget_note(row, config) or (
                "a mean over the LLM's layers: the name's budget is the equal-tokens count of LLaVA-1.5-7B's 32 layers, "
                "a shallower LLM weighs its unpruned first layers more" if in_llm
                else "more visual tokens enter the LLM than the budget in the config's name"
            )  # fmt: skip
            notes.append(f"OVER BUDGET: {tokens:.1f} visual tokens for a {budget}-token config" + (f" ({why})" if why else ""))
        if base is None and row.model != "?":
            others = [
                b for group in baselines.values() for b in group
                if (b.checkpoint_id or b.checkpoint, b.dtype) == (row.checkpoint_id or row.checkpoint, row.dtype)
            ]  # fmt: skip
            if others:  # a baseline exists, but of another setting: name what differs instead of comparing
                mine = dict(row.setting_items())
                differs = sorted({f"{name} {value or '(none)'}" for b in others for name, value in b.setting_items()
                                  if name not in ("checkpoint", "dtype") and mine.get(name) != value})  # fmt: skip
                theirs = {name for b in others for name, value in b.setting_items() if mine.get(name) != value}
                this = ", ".join(f"{name} {mine[name] or '(none)'}" for name in mine if name in theirs)
                notes.append(f"not compared with {baseline_of(row.model, baseline_model)} (its run differs: {', '.join(differs)}; this row: {this})")
            else:
                notes.append(f"no {baseline_of(row.model, baseline_model)} row for this checkpoint and dtype")
        missing = [TASK_LABEL[f] for f in families if f not in row.tasks and row.model != "?"]
        if missing:
            notes.append("missing: " + ", ".join(missing))
        if len(row.versions) > 1:
            notes.append("mixed lmms-eval versions: " + ", ".join(sorted(row.versions)))
        cells["notes"] = "; ".join(notes)
        out.append(cells)
    out.sort(key=lambda c: (c["checkpoint"], c["dtype"], c["model"] != baseline_of(c["model"], baseline_model), c["model"], c["config"]))
    return columns, out


def _baseline_metrics(row: Row, family: str, candidates: list[Row], notes: list[str], baseline_model: str) -> dict[str, Any]:
    """The metrics of ``family`` of the baseline row of the same setting that measured it on the same data
    ({} when none); a baseline that measured it on other data is named in ``notes`` instead."""
    if row.model == baseline_model or family not in row.tasks:
        return next((b.tasks.get(family, {}) for b in candidates if b is row), candidates[0].tasks.get(family, {}) if candidates else {})
    measured = [b for b in candidates if family in b.tasks and b.model == baseline_model]
    same = [b for b in measured if b.data.get(family, "") == row.data.get(family, "")]
    if same:
        return same[0].tasks[family]
    if measured:
        notes.append(
            f"{TASK_LABEL[family]} not compared with {baseline_model}: its task data differs "
            f"({describe_data(measured[0].data.get(family, ''))}; this row: {describe_data(row.data.get(family, ''))})"
        )
    return {}


def to_markdown(columns: list[str], rows: list[dict[str, Any]], title: str | None = None) -> str:
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c), markdown=True) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(columns: list[str], rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})


def _point_name(row: dict[str, Any], several_checkpoints: bool = False) -> str:
    """A point's legend entry: model:config, with its checkpoint's folder name when the plot has several
    (LLaVA-1.5's and LLaVA-NeXT's keep_all are two runs)."""
    where = f" @ {Path(str(row['checkpoint'])).name}" if several_checkpoints else ""
    return f"{row['model']}:{row['config']}{where}" + (" (FAILED requests)" if row.get("failed requests") else "")


def pareto_plot(rows: list[dict[str, Any]], path: Path, title: str = "accuracy vs time to first token") -> Path:
    """One panel per task: main accuracy metric against mean TTFT, one point per config, frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in TASK_METRICS if any(r.get(f"{TASK_LABEL[f]} TTFT s") is not None for r in rows)]
    panels = max(1, len(families))
    several = len({(r.get("checkpoint"), r.get("dtype")) for r in rows}) > 1
    names = sorted({_point_name(r, several) for r in rows})
    # 20 colours, and a marker of its own per colour cycle: every run is told apart
    colors = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}
    markers = {name: "os^Dv<>pPX"[(i // 20 + i) % 10] for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.6), squeeze=False)
    for ax, family in zip(axes[0], families or [None]):
        if family is None:
            ax.text(0.5, 0.5, "no timed results", ha="center", va="center")
            continue
        label = next(lbl for lbl, _, main in TASK_METRICS[family] if main)
        points = [
            (r[f"{TASK_LABEL[family]} TTFT s"], r[label], _point_name(r, several))
            for r in rows
            if r.get(f"{TASK_LABEL[family]} TTFT s") is not None and r.get(label) is not None
        ]
        for x, y, name in points:
            ax.scatter(x, y, s=40, color=colors[name], marker=markers[name], label=name)
        frontier = pareto_frontier(points)
        if len(frontier) > 1:
            ax.plot(*zip(*frontier), linestyle="--", linewidth=1, color="grey")
        ax.set_xlabel("time to first token (s, mean)")
        ax.set_ylabel(label)
        ax.set_title(TASK_LABEL[family])
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    handles = [
        plt.Line2D([], [], linestyle="", marker=markers[n], color=colors[n], label=n) for n in names
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, max(1, len(names))), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * (len(names) // 4), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build(
    paths: list[str | Path],
    out_dir: str | Path | None = None,
    title: str | None = None,
    rows: list[Row] | None = None,
    terminal: bool = False,
) -> str:
    """Collect (unless ``rows`` were collected from ``paths`` already), tabulate, and (with ``out_dir``)
    write leaderboard.md/.csv/_pareto.png. Returns the Markdown, or with ``terminal`` the compact view a
    terminal prints (``leaderboard_text``: 160 characters per line, flags explained below it)."""
    rows = collect(paths) if rows is None else rows
    columns, cells = table(rows)
    markdown = to_markdown(columns, cells, title)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "leaderboard.md").write_text(markdown + "\n")
        write_csv(columns, cells, out / "leaderboard.csv")
        pareto_plot(cells, out / "leaderboard_pareto.png", title or "accuracy vs time to first token")
    if not terminal:
        return markdown
    from .leaderboard_text import terminal_table

    families = [f for f in TASK_METRICS if any(f in r.tasks for r in rows)]
    mains = [(label, f"{TASK_LABEL[f]} retention %") for f in families for label, _, main in TASK_METRICS[f] if main]
    return terminal_table(columns, cells, mains, title=title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms leaderboard", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("paths", nargs="+", help="results folders or *_results.json files")
    parser.add_argument("--out", default="leaderboard", help="folder for leaderboard.md, .csv and _pareto.png (default: %(default)s)")
    parser.add_argument("--title", default=None, help="title of the table and the plot (default: none; the plot's: accuracy vs time to first token)")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: leaderboard: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = collect(args.paths)
    if not any(row.sources for row in rows):  # no results file found (problem rows have no source): not a table
        problems = [problem for row in rows for problem in row.problems]
        print(f"error: leaderboard: no results to tabulate: {'; '.join(problems)}", file=sys.stderr)
        return 2
    print(build(args.paths, args.out, args.title, rows=rows, terminal=True))
    print(f"\nwritten (every column, names whole): {Path(args.out) / 'leaderboard.md'}, leaderboard.csv, leaderboard_pareto.png")
    return 0
