"""The paper table as Markdown, CSV (one line per row × column, every figure) and LaTeX, and its command."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from .benchmarks import Benchmark
from .stats import DEFAULT_RESAMPLES, DEFAULT_SEED
from .table import ALPHA, Section, TableError, TableRow, build, not_significant

MARK = "†"
EFFICIENCY = ("visual tokens", "prefill TFLOPs", "TTFT s", "method s")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _columns(section: Section) -> list[tuple[Benchmark, str]]:
    return [(b, c.label) for b in section.benchmarks for c in b.columns if any(c.label in r.scores for r in section.rows)]


def _method(row: TableRow) -> str:
    return f"{row.config} ({row.model})"


def _cell(row: TableRow, benchmark: Benchmark, label: str) -> str:
    score = row.scores.get(label)
    if score is None:
        return "—"
    text = _fmt(score.value)
    main = next((c for c in benchmark.columns if c.main), None)
    if main is not None and main.label == label and benchmark.label in row.retention and not row.is_baseline:
        text += f" ({row.retention[benchmark.label]:.1f}%)"
    return text + (MARK if not_significant(row, label) else "")


def _efficiency_cells(row: TableRow) -> list[str]:
    """Visual tokens to one decimal; the others to 3 significant digits (tiny models' TFLOPs are small)."""
    cells = []
    for name in EFFICIENCY:
        value = row.efficiency.get(name)
        cells.append(_fmt(value) if name == "visual tokens" or value is None else f"{value:.3g}")
    return cells


def main_table(section: Section) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a section's table: method, efficiency, each column's score (retention, mark), Avg."""
    columns = _columns(section)
    head = ["Method", *EFFICIENCY, *[label for _, label in columns], "Avg. %"]
    rows = [
        [_method(row), *_efficiency_cells(row), *[_cell(row, b, label) for b, label in columns], _fmt(row.average)]
        for row in section.rows
    ]
    return head, rows


def agreement_table(section: Section) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per row and benchmark, the share of documents answered as the baseline answered them."""
    labels = [b.label for b in section.benchmarks]
    rows = [[_method(row), *[_fmt(row.agreement.get(label)) for label in labels]] for row in section.rows if not row.is_baseline]
    return ["Method", *[f"{label} agr. %" for label in labels]], rows


def markdown(sections: list[Section], *, title: str | None = None) -> str:
    out = [f"# {title}", ""] if title else []
    for number, section in enumerate(sections, 1):
        out.append(f"## Table {number}: {section.setting}")
        if section.differs:
            out.append(f"\nDiffers from the other tables in: {', '.join(section.differs)} (never averaged together).")
        head, rows = main_table(section)
        out += ["", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in rows]
        out += ["", legend(section)]
        agree_head, agree_rows = agreement_table(section)
        if agree_rows:
            out += ["", "Agreement with the baseline: % of documents whose answer equals the uncompressed model's.", ""]
            out += ["| " + " | ".join(agree_head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(agree_head) - 1)) + "|"]
            out += ["| " + " | ".join(cells) + " |" for cells in agree_rows]
        stat_head, stat_rows = statistics_table(section)
        out += ["", "| " + " | ".join(stat_head) + " |", "|" + "|".join(["---"] * len(stat_head)) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in stat_rows] + [""]
    out.append(notes(sections))
    return "\n".join(out) + "\n"


def legend(section: Section) -> str:
    averaged = ", ".join(section.averaged) or "none (no benchmark is in every row)"
    base = next((r for r in section.rows if r.is_baseline), None)
    zero = [b.label for b in section.benchmarks if base is not None and b.label not in base.retention]
    unretained = f" No retention for {', '.join(zero)}: the baseline scores 0 there." if zero else ""
    return (
        f"Scores with their retention in parentheses (score / the baseline's score on the same task, %). "
        f"Avg. = mean retention over the benchmarks every row has: {averaged}. {MARK} = the difference to the "
        f"baseline is not significant at {ALPHA:.0%} (Holm-adjusted over the {sum(len(r.pvalues) for r in section.rows)} "
        "tests of this table; a column without an interval has no test and no mark). TTFT and method time: seconds "
        "per request, mean over the row's tasks." + unretained
    )


def statistics_table(section: Section) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per row and column, the score, its interval, documents, agreement and the paired test."""
    head = ["Method", "Column", "score", "95% interval", "n", "agreement %", "p", "p (Holm)", "test"]
    rows = []
    for row in section.rows:
        for benchmark, label in _columns(section):
            score = row.scores.get(label)
            if score is None:
                continue
            interval = f"[{score.low:.1f}, {score.high:.1f}]" if score.low is not None else f"— ({score.note})"
            p, adjusted = row.pvalues.get(label), row.adjusted.get(label)
            rows.append([
                _method(row), label, _fmt(score.value), interval, str(score.n), _fmt(row.agreement.get(benchmark.label)),
                "—" if p is None else f"{p:.3g}", "—" if adjusted is None else f"{adjusted:.3g}", row.tests.get(label, "—"),
            ])  # fmt: skip
    return head, rows


def notes(sections: list[Section]) -> str:
    columns = {c.label: c for s in sections for b in s.benchmarks for c in b.columns}
    intervals = sorted({score.method for s in sections for r in s.rows for score in r.scores.values() if score.method})
    lines = ["### How the numbers are defined", ""]
    lines += [f"- **{label}**: {column.convention}" for label, column in columns.items()]
    lines += [
        f"- 95% intervals: {'; '.join(intervals) or 'none computed'}.",
        "- Paired tests against the baseline on the same documents: McNemar's exact test where each document is "
        "right or wrong, a paired bootstrap (same resampled documents for both runs) for aggregate scores; "
        f"p-values Holm-adjusted per table; {MARK} marks adjusted p ≥ {ALPHA}.",
        "- Agreement: share of documents whose answer equals the baseline's answer (after the task's filters).",
    ]
    return "\n".join(lines)


CSV_FIELDS = [
    "table", "setting", "model", "config", "baseline", "column", "score", "ci_low", "ci_high", "n", "interval",
    "retention_pct", "avg_retention_pct", "agreement_pct", "p", "p_holm", "test", "significant",
    *EFFICIENCY,
]  # fmt: skip


def csv_records(sections: list[Section]) -> list[dict]:
    """One record per row × column, every figure (the keys are :data:`CSV_FIELDS`)."""
    records = []
    for number, section in enumerate(sections, 1):
        for row in section.rows:
            for benchmark, label in _columns(section):
                score = row.scores.get(label)
                if score is None:
                    continue
                main = next((c for c in benchmark.columns if c.main), None)
                records.append({
                    "table": number, "setting": section.setting, "model": row.model, "config": row.config,
                    "baseline": row.is_baseline, "column": label, "score": score.value, "ci_low": score.low,
                    "ci_high": score.high, "n": score.n, "interval": score.method or score.note,
                    "retention_pct": row.retention.get(benchmark.label) if main is not None and main.label == label else None,
                    "avg_retention_pct": row.average, "agreement_pct": row.agreement.get(benchmark.label),
                    "p": row.pvalues.get(label), "p_holm": row.adjusted.get(label), "test": row.tests.get(label),
                    "significant": None if label not in row.adjusted else not not_significant(row, label),
                    **{name: row.efficiency.get(name) for name in EFFICIENCY},
                })  # fmt: skip
    return records


def csv_text(sections: list[Section]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(csv_records(sections))
    return buffer.getvalue()


def _tex(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def latex(sections: list[Section]) -> str:
    out = []
    for section in sections:
        columns = _columns(section)
        head = ["Method", "Tokens", "TFLOPs", *[label for _, label in columns], "Avg."]
        out += [
            f"% {_tex(section.setting)}",
            r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
            r"\toprule",
            " & ".join(_tex(h) for h in head) + r" \\",
            r"\midrule",
        ]
        for row in section.rows:
            cells = [_tex(row.config), _fmt(row.efficiency.get("visual tokens"), 0), _fmt(row.efficiency.get("prefill TFLOPs"), 3)]
            cells += [_tex(_cell(row, b, label)).replace(MARK, r"$^\dagger$") for b, label in columns]
            cells.append(_fmt(row.average) + (r"\%" if row.average is not None else ""))
            out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


def write(sections: list[Section], out: Path, *, title: str | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "paper_table.md", "csv": out / "paper_table.csv", "tex": out / "paper_table.tex"}
    paths["md"].write_text(markdown(sections, title=title))
    paths["csv"].write_text(csv_text(sections))
    paths["tex"].write_text(latex(sections))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms table", description=__doc__)
    parser.add_argument("results", nargs="+", help="lmms-eval results folders or files (runs with --log_samples)")
    parser.add_argument("--out", default="paper_table", help="folder for paper_table.{md,csv,tex} (default: %(default)s)")
    parser.add_argument("--title", default=None, help="a title line for the Markdown")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap draws (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.resamples < 100:
        parser.error("--resamples must be at least 100")
    try:
        sections = build(args.results, resamples=args.resamples, seed=args.seed)
    except TableError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"table: {len(err.problems)} number(s) cannot be computed honestly; nothing written", file=sys.stderr)
        return 2
    paths = write(sections, Path(args.out), title=args.title)
    print(markdown(sections, title=args.title))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
