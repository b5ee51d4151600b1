"""The paper table as a section of ``report.html`` (the same numbers as ``python -m sparsezip_lmms table``)."""

from __future__ import annotations

import html
from pathlib import Path

from .render import CSV_FIELDS, agreement_table, csv_records, legend, main_table, notes, statistics_table
from .stats import DEFAULT_RESAMPLES
from .table import TableError, build


def paper_table_section(paths: list[str | Path], *, resamples: int = DEFAULT_RESAMPLES) -> str:
    """``<h2>`` section: one table per run setting, its legend, the statistics behind a ``<details>``, the
    definitions; where a number cannot be computed honestly, the section lists why instead."""
    from ..analysis.report import html_table
    from ..analysis.report_style import csv_link

    heading = '<h2 id="paper-table">Paper table</h2>'
    try:
        sections = build(paths, resamples=resamples)
    except TableError as err:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in err.problems)
        return heading + f'<p class="note warn">The paper table cannot be computed honestly from these runs:</p><ul>{items}</ul>'
    parts = [heading, '<p class="note">Rows: model id and config; columns: each benchmark in its canonical metric '
             "and scale, with retention against the same setting's uncompressed run. The same numbers as "
             "<code>python -m sparsezip_lmms table</code>.</p>"]  # fmt: skip
    for number, section in enumerate(sections, 1):
        parts.append(f"<h3>Table {number}</h3><p class=\"note\">{html.escape(section.setting)}</p>")
        if section.differs:
            parts.append(f'<p class="note">Differs from the other tables in: {html.escape(", ".join(section.differs))} '
                         "(never averaged together).</p>")  # fmt: skip
        head, rows = main_table(section)
        parts.append(html_table(head, rows, css_id=f"paper-table-{number}"))
        parts.append(f'<p class="note">{html.escape(legend(section))}</p>')
        agree_head, agree_rows = agreement_table(section)
        if agree_rows:
            parts.append('<p class="note">Agreement with the baseline: % of documents whose answer equals the '
                         "uncompressed model's.</p>" + html_table(agree_head, agree_rows, css_id=f"paper-agreement-{number}"))  # fmt: skip
        stat_head, stat_rows = statistics_table(section)
        parts.append(
            f"<details><summary>Intervals, agreement and paired tests ({len(stat_rows)} cells)</summary>"
            + html_table(stat_head, stat_rows, text_columns=2) + "</details>"
        )
    records = csv_records(sections)
    download = csv_link("paper_table.csv", CSV_FIELDS, ([r[f] for f in CSV_FIELDS] for r in records), text="every figure as CSV")
    definitions = "".join(f"<li>{html.escape(line[2:].replace('**', ''))}</li>" for line in notes(sections).splitlines() if line.startswith("- "))
    parts.append(f"<details><summary>How the numbers are defined ({download})</summary><ul>{definitions}</ul></details>")
    return "".join(parts)
