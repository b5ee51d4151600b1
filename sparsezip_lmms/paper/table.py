"""The paper table: rows = checkpoint × method × budget, columns = benchmarks in their canonical metric.

    python -m sparsezip_lmms table RESULTS_DIR [...] --out DIR

Reads lmms-eval results folders written with ``--log_samples`` (any task; the standard set in
:mod:`.benchmarks` in its canonical metric and scale). A row is one model id and config in one run
setting (the leaderboard's: checkpoint, dtype, batch size, ``--limit``, attention, device kind, image
pixels, generation settings). Rows of one setting form a section with its baseline: the family's
uncompressed model id (``llava_hf_timed`` / ``qwen2_5_vl_hf_timed``). Rows of different settings are never
compared or averaged: each setting is a section of its own, headed by what differs.

Per cell: the score, its 95% interval, and (against the baseline, same documents) a paired test; the
p-values of a section are Holm-adjusted together, and a difference not significant at 5% after the
adjustment is marked. Per row: retention (score / baseline score, %) per benchmark, "Avg." = the mean
retention over the benchmarks every row of the section has, the answer agreement with the baseline
per benchmark, visual tokens, prefill TFLOPs, TTFT and the method's own time per request.

Anything that cannot be computed honestly — a run with failed requests, no samples log, a section without
its baseline, a recomputed score that differs from the results file — is an error naming the run and
what is missing: the command then writes nothing and exits with status 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..leaderboard import baseline_of, read_results
from ..results_files import results_files, task_data
from .benchmarks import Benchmark, benchmark_of, generic_benchmark
from .scores import ColumnScore, ScoreError, agreement, paired_test, score_column
from .stats import DEFAULT_RESAMPLES, DEFAULT_SEED, holm, is_number

ALPHA = 0.05


class TableError(ValueError):
    """Numbers the table cannot compute honestly; ``problems`` lists each (run, task, what is missing)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class TaskRun:
    benchmark: Benchmark
    task: str  # the task name as run
    metrics: dict[str, Any]  # results["results"][task], keys without the filter suffix
    samples: list[dict]
    version: str
    data: str
    source: str


@dataclass
class TableRow:
    model: str
    config: str
    checkpoint: str
    setting: tuple
    setting_items: list[tuple[str, str]]
    tasks: dict[str, TaskRun] = field(default_factory=dict)  # benchmark name -> run
    scores: dict[str, ColumnScore] = field(default_factory=dict)  # column label -> score
    pvalues: dict[str, float] = field(default_factory=dict)  # column label -> raw p
    adjusted: dict[str, float] = field(default_factory=dict)  # column label -> Holm-adjusted p
    tests: dict[str, str] = field(default_factory=dict)  # column label -> test name
    retention: dict[str, float] = field(default_factory=dict)  # benchmark label -> %
    agreement: dict[str, float] = field(default_factory=dict)  # benchmark label -> %
    average: float | None = None
    efficiency: dict[str, float | None] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.model == baseline_of(self.model)


@dataclass
class Section:
    setting_items: list[tuple[str, str]]
    rows: list[TableRow]
    benchmarks: list[Benchmark]  # in table order
    averaged: list[str]  # benchmark labels every row has (the Avg.)
    differs: list[str] = field(default_factory=list)  # what sets this section apart from the others

    @property
    def setting(self) -> str:
        return setting_text(self.setting_items)


def setting_text(items: list[tuple[str, str]]) -> str:
    """A run setting in one line ("checkpoint: X; dtype: Y; ..."), parts without a value left out."""
    return "; ".join(f"{k}: {v}" for k, v in items if v not in ("", None))


def _samples(results_path: Path, task: str) -> list[dict] | None:
    stamp = results_path.name[: -len("_results.json")]
    path = results_path.parent / f"{stamp}_samples_{task}.jsonl"
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(paths: list[str | Path]) -> tuple[list[TableRow], list[str]]:
    """Rows from the results files under ``paths`` (newest file wins a benchmark measured twice in a row)."""
    files, problems = results_files(paths)
    rows: dict[tuple, TableRow] = {}
    for path in files:
        row, problem = read_results(path)
        if row is None:
            problems.append(problem)
            continue
        data = json.loads(path.read_text())
        configs, versions = data.get("configs") or {}, data.get("versions") or {}
        key = (row.model, row.config, row.setting)
        target = rows.setdefault(key, TableRow(row.model, row.config, row.checkpoint, row.setting, row.setting_items()))
        for task, raw in (data.get("results") or {}).items():
            if not isinstance(raw, dict) or task not in configs:
                continue  # a group's summary line
            metrics = {str(k).split(",")[0]: v for k, v in raw.items() if "stderr" not in str(k)}
            failed = metrics.get("eff_failed")
            where = f"{path} task {task}"
            if is_number(failed) and failed > 0:
                problems.append(f"{where}: {int(failed)} failed request(s) (first error: {metrics.get('eff_first_error')})")
                continue
            samples = _samples(path, task)
            if samples is None:
                problems.append(f"{where}: no samples log beside the results (run lmms-eval with --log_samples)")
                continue
            benchmark = benchmark_of(task) or generic_benchmark(task, metrics)
            target.tasks[benchmark.name] = TaskRun(
                benchmark, task, metrics, samples, str(versions.get(task, "?")), task_data(configs.get(task)), str(path)
            )
    return [r for r in rows.values() if r.tasks], problems


def _efficiency(row: TableRow) -> dict[str, float | None]:
    def mean_of(key: str) -> float | None:
        values = [t.metrics.get(key) for t in row.tasks.values() if is_number(t.metrics.get(key))]
        return sum(values) / len(values) if values else None

    return {
        "visual tokens": mean_of("eff_visual_tokens"),
        "prefill TFLOPs": mean_of("eff_prefill_tflops"),
        "TTFT s": mean_of("eff_ttft_s"),
        "method s": mean_of("eff_method_s"),
    }


def _sections(rows: list[TableRow]) -> list[list[TableRow]]:
    groups: dict[tuple, list[TableRow]] = {}
    for row in rows:
        groups.setdefault(row.setting, []).append(row)
    return [sorted(g, key=lambda r: (not r.is_baseline, r.model, r.config)) for g in groups.values()]


def _differences(sections: list[list[TableRow]]) -> list[list[str]]:
    """Per section, the setting parts whose value differs between sections ("checkpoint X", "dtype Y")."""
    items = [dict(group[0].setting_items) for group in sections]
    varying = [k for k in items[0] if len({str(i.get(k)) for i in items}) > 1] if len(items) > 1 else []
    return [[f"{k} {i.get(k)}" for k in varying] for i in items]


def build(paths: list[str | Path], *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> list[Section]:
    """The table's sections; a :class:`TableError` listing every number that cannot be computed honestly."""
    rows, problems = collect(paths)
    if not rows and not problems:
        problems.append(f"no task results under {', '.join(map(str, paths))}")
    sections = []
    grouped = _sections(rows)
    for group, differs in zip(grouped, _differences(grouped) if grouped else []):
        try:
            sections.append(_section(group, differs, resamples, seed, problems))
        except ScoreError as err:
            problems.append(str(err))
    if problems:
        raise TableError(problems)
    return sections


def _section(group: list[TableRow], differs: list[str], resamples: int, seed: int, problems: list[str]) -> Section:
    baselines = [r for r in group if r.is_baseline]
    names = list(dict.fromkeys(b for r in group for b in r.tasks))
    benchmarks = [next(r.tasks[n].benchmark for r in group if n in r.tasks) for n in names]
    setting = setting_text(group[0].setting_items)
    if len(baselines) != 1:
        what = "no" if not baselines else f"{len(baselines)}"
        problems.append(
            f"setting [{setting}]: {what} baseline row ({baseline_of(group[0].model)}): retention and paired tests "
            f"need exactly one uncompressed run of the same checkpoint and setting (rows: "
            + ", ".join(f"{r.model}:{r.config}" for r in group) + ")"
        )
        return Section(group[0].setting_items, group, benchmarks, [], differs)
    baseline = baselines[0]
    for row in group:
        row.efficiency = _efficiency(row)
        for name, run in row.tasks.items():
            strict = benchmark_of(run.task) is not None
            where = f"{row.model}:{row.config} ({run.source}) task {run.task}"
            base = baseline.tasks.get(name)
            if base is None and row is not baseline:
                problems.append(f"{where}: the baseline {baseline.model} has no {run.task} run in this setting: no retention")
                continue
            if base is not None and (base.version, base.data) != (run.version, run.data):
                problems.append(f"{where}: task version/data differ from the baseline's ({run.version} vs {base.version}): not compared")
                continue
            for column in run.benchmark.columns:
                if column.metric not in run.metrics:
                    continue
                row.scores[column.label] = score_column(
                    column, run.samples, run.metrics[column.metric], where, strict=strict, resamples=resamples, seed=seed
                )
                if row is not baseline and row.scores[column.label].low is not None:
                    p, test = paired_test(column, run.samples, base.samples, where, resamples=resamples, seed=seed)
                    if p is not None:
                        row.pvalues[column.label], row.tests[column.label] = p, test
            score, base_score = _main_score(row, name), _main_score(baseline, name)
            if score is not None and base_score:
                row.retention[run.benchmark.label] = 100.0 * score / base_score
            agreed = agreement(run.samples, base.samples) if base is not None else None
            if agreed is not None:
                row.agreement[run.benchmark.label] = agreed
    # Holm over every (row, column) test of the section: one family
    family = [(row, label) for row in group for label in row.pvalues]
    for (row, label), adjusted in zip(family, holm([row.pvalues[label] for row, label in family])):
        row.adjusted[label] = adjusted
    averaged = [b.label for b in benchmarks if all(b.label in r.retention for r in group)]
    for row in group:
        if averaged:
            row.average = sum(row.retention[label] for label in averaged) / len(averaged)
    return Section(group[0].setting_items, group, benchmarks, averaged, differs)


def _main_score(row: TableRow, benchmark: str) -> float | None:
    run = row.tasks.get(benchmark)
    if run is None:
        return None
    main = next((c for c in run.benchmark.columns if c.main and c.label in row.scores), None)
    return None if main is None else row.scores[main.label].value


def not_significant(row: TableRow, label: str) -> bool:
    return label in row.adjusted and row.adjusted[label] >= ALPHA
