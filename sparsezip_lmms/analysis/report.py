"""One self-contained HTML page from results folders: leaderboard, Pareto plots, per-category scores,
overlap of the kept patches, text sensitivity, answer agreement, and a gallery of overlays.

    python -m sparsezip_lmms report results/ more_results/ --out report.html

Everything is inside the file (CSS inline, figures as base64 PNG), so it opens offline and can be
sent as one attachment. The analyses need ``--log_samples`` runs; the gallery reads each sample's
image back from the task's dataset (the path the results file records: a local ``load_from_disk``
folder or the hub cache) and draws what every run kept on it, one panel per run (per pruning layer
for in-LLM methods); where the dataset cannot be read it draws on a grey canvas and says so. Runs
are compared only within one setting (checkpoint, dtype, batch size, ``--limit``, the task's data:
:mod:`.settings`): the tables, figures and galleries of runs of different settings stand apart, one
per setting under its label, with the notes ``analyze`` gives naming what differs.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from PIL import Image

# a number in the HTML tables: 4 significant digits (from 1000 up: one decimal), None as —
from ..numbers import format_value as fmt

if TYPE_CHECKING:
    from .analyze import Analysis
    from .samples import Run

from .report_style import CSS, breakable, compact_leaderboard, csv_link, display_label, pair_summary, wrap

PAIRS_INLINE = 10  # runs up to which every pair of runs is listed; beyond, a runs x runs matrix and the top pairs
MATRIX_INLINE = 10  # views up to which the overlap table is shown open; beyond, behind a <details>


# ----------------------------------------------------------------------------- html pieces


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def html_table(columns: list[str], rows: Iterable[Iterable[Any]], css_id: str | None = None, text_columns: int = 1,
               wrap_text: bool = True) -> str:  # fmt: skip
    """A table; the first ``text_columns`` columns are left-aligned text (with ``wrap_text``: wrapping at
    the separators of long labels), the rest numbers."""

    def cell(tag: str, i: int, value: Any) -> str:
        cls = ' class="text"' if i < text_columns else ""
        shown = breakable(value) if wrap_text and (i < text_columns or tag == "th") else _esc(value)
        return f"<{tag}{cls}>{shown}</{tag}>"

    head = "".join(cell("th", i, c) for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    ident = f' id="{_esc(css_id)}"' if css_id else ""
    ident += ' class="dense"' if len(columns) > 10 else ""  # many columns: smaller type, to fit the page
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def png_img(data: bytes, alt: str, css_class: str = "") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    cls = f' class="{_esc(css_class)}"' if css_class else ""
    return f'<img{cls} alt="{_esc(alt)}" src="data:image/png;base64,{encoded}">'


# ----------------------------------------------------------------------------- sections


def leaderboard_section(paths: list[Path], work: Path) -> str:
    """The leaderboard's main columns (names and paths shortened, notes as flags with their reason, the
    page's width), then every column behind a <details> and as a CSV, then the Pareto plot."""
    from ..leaderboard import TASK_LABEL, TASK_METRICS, collect, table
    from .plots import pareto_plot

    rows = collect(paths)
    columns, cells = table(rows)
    plot = pareto_plot(cells, work / "pareto.png")
    mains = [(label, f"{TASK_LABEL[f]} retention %") for f, metrics in TASK_METRICS.items()
             for label, _, main in metrics if main and label in columns]  # fmt: skip
    full = html_table(columns, ([fmt(c.get(col)) for col in columns] for c in cells), css_id="leaderboard-full", text_columns=4)
    download = csv_link("leaderboard.csv", columns, ([c.get(col) for col in columns] for c in cells))
    return (
        "<h2>Leaderboard</h2>"
        '<p class="note">One row per model id and config, under its checkpoint, dtype, batch size and --limit; a task\'s '
        "column holds its main score and (in brackets) its retention, relative to the llava_hf_timed row of the same "
        "checkpoint, dtype, batch size and limit (a row without one says why in its notes); TTFT speed-up likewise. "
        "A note's flag shows the whole note on hovering and in the numbered list below the table.</p>"
        + compact_leaderboard(columns, cells, mains)
        + f"<details><summary>Every column, names and paths whole ({len(columns)} columns; {download})</summary>{full}</details>"
        + "<h3>Accuracy vs time to first token</h3>"
        + png_img(plot.read_bytes(), "Pareto plot", "pareto")
    )


def grouped_notes(notes: list[str], runs: list[str]) -> list[str]:
    """One line per note; the same note of several runs (``<run>: <note>``) once, the runs behind a <details>."""
    by_text: dict[str, list[str]] = {}
    for note in notes:
        run = next((r for r in runs if note.startswith(f"{r}: ")), None)
        by_text.setdefault(note[len(run) + 2 :] if run else note, []).append(run or "")
    out = []
    for text, who in by_text.items():
        named = [w for w in who if w]
        if len(named) > 1:
            out.append(f'<details class="note warn"><summary>{len(named)} runs: {_esc(text)}</summary>'
                       f"{breakable(', '.join(named))}</details>")  # fmt: skip
        else:
            out += [f'<p class="note warn">{_esc(f"{w}: {text}" if w else text)}</p>' for w in who]
    return out


def _figure(path: Any, alt: str) -> str:
    return png_img(Path(path).read_bytes(), alt) if path is not None and Path(path).is_file() else ""


def analysis_section(analysis: Analysis, work: Path) -> str:
    """Per-category scores, overlap, text sensitivity and agreement of one task (``analyze.Analysis``);
    where the runs have several settings, each table and figure once per setting group, under its label
    (``Analysis.by_setting``, as ``analysis.md`` does)."""
    from ..leaderboard import TASK_LABEL
    from .analyze import figure_titles
    from .metrics import ALL, SCORE_LABEL
    from .plots import category_plot, overlap_plot, text_sensitivity_plot

    task = analysis.task
    slug = "".join(ch if ch.isalnum() else "_" for ch in task)
    parts = [f'<h2 id="task-{_esc(slug)}">{_esc(task)}</h2>']
    groups = analysis.by_setting()
    if len(groups) > 1:
        from .render import SETTINGS_HOW

        parts.append(f'<p class="note">{_esc(SETTINGS_HOW)}</p><ul>'
                     + "".join(f"<li>{_esc(g.label)}: {_esc(', '.join(g.runs))}</li>" for g in analysis.settings) + "</ul>")  # fmt: skip
    parts += grouped_notes(analysis.notes, [r.label for r in analysis.runs])

    def per_setting(body: Callable[[Analysis, str, str, dict[str, dict[str, str]]], None]) -> None:
        for group, suffix, part in groups:
            if group is not None:
                parts.append(f"<h4>{_esc(group.label)}</h4>")
            body(part, suffix, f"{slug}{suffix}", figure_titles(part.family, group))

    family_label = TASK_LABEL.get(analysis.family, analysis.family)
    unit = SCORE_LABEL[analysis.family]

    def categories(part: Analysis, suffix: str, ident: str, titles: dict[str, dict[str, str]]) -> None:
        if not part.categories:
            parts.append(f'<p class="note">No scored samples{" in this setting" if suffix else ""}: nothing to show.</p>')
            return
        mme = part.family == "mme"
        runs = list(dict.fromkeys(c.run for c in part.categories))
        names = list(dict.fromkeys(c.category for c in part.categories if c.category != ALL)) + [ALL]
        by = {(c.run, c.category): c for c in part.categories}
        head = ["run"] + [f"{name} ({unit})" if name == ALL else name for name in names]
        head += ["MME score (sum)"] if mme else []
        rows = [[display_label(run)] + [fmt(getattr(by.get((run, name)), "score", None)) for name in names]
                + ([fmt(getattr(by.get((run, ALL)), "mme_score", None))] if mme else []) for run in runs]  # fmt: skip
        what = "per sub-category" if len(names) > 1 else "over all questions"
        parts.append(f'<p class="note">{_esc(family_label)} {_esc(unit)} {what}, one row per run'
                     + (" (the last column: MME's own score, acc + acc+ per subtask, summed over the subtasks)" if mme else "") + ".</p>")  # fmt: skip
        parts.append(html_table(head, rows, css_id=f"categories-{ident}"))
        columns = ["run", "category", "n", unit] + (["acc+ %", "MME score (acc + acc+)"] if mme else [])
        long_rows = [[c.run, c.category, c.n, c.score] + ([c.accuracy_plus, c.mme_score] if mme else []) for c in part.categories]
        shown = [[display_label(r[0]), *r[1:3], *(fmt(v) for v in r[3:])] for r in long_rows]
        parts.append(f"<details><summary>Per run and category, with the samples behind each score ("
                     f"{csv_link(f'categories_{ident}.csv', columns, long_rows)})</summary>"
                     f"{html_table(columns, shown, css_id=f'categories-long-{ident}', text_columns=2)}</details>")  # fmt: skip
        if len(names) == 1:
            parts.append(f'<p class="note">{_esc(family_label)} has no sub-categories: no chart (the table has each run\'s score).</p>')
            return
        path = category_plot(part.categories, part.family, work / f"categories_{ident}.png", **titles["categories"])
        parts.append(_figure(path, f"scores per category, {task}"))

    def overlap(part: Analysis, suffix: str, ident: str, titles: dict[str, dict[str, str]]) -> None:
        matrix = part.overlap
        if not matrix.views:
            parts.append('<p class="note">No selections logged for this task.</p>')
            return
        if all(v is None for i, line in enumerate(matrix.mean) for j, v in enumerate(line) if i != j):
            parts.append('<p class="note">No pair of views with selections on the same samples: no overlap to show.</p>')
            return
        numbered = len(matrix.views) > 4
        rows = [[f"{i}. {display_label(view)}" if numbered else display_label(view)] + [fmt(v) for v in line]
                for i, (view, line) in enumerate(zip(matrix.views, matrix.mean), 1)]  # fmt: skip
        head = ["view", *(map(str, range(1, len(matrix.views) + 1)) if numbered else map(display_label, matrix.views))]
        table = html_table(head, rows, css_id=f"overlap-{ident}")
        if len(matrix.views) > MATRIX_INLINE:
            table = f"<details><summary>The matrix as numbers ({len(matrix.views)} views)</summary>{table}</details>"
        parts.append(table)
        parts.append(_figure(overlap_plot(matrix, work / f"overlap_{ident}.png", **titles["overlap"]), f"overlap matrix, {task}"))

    def sensitivity(part: Analysis, suffix: str, ident: str, titles: dict[str, dict[str, str]]) -> None:
        if not part.overlap.views:
            parts.append('<p class="note">No selections logged for this task.</p>')
            return
        if all(t.value is None for t in part.text_sensitivity):
            parts.append('<p class="note">No image with two different questions: text sensitivity is undefined here.</p>')
            return
        rows = [[display_label(t.view), fmt(t.value), t.images, t.pairs, t.note] for t in part.text_sensitivity]
        parts.append(html_table(["view", "text sensitivity", "images", "pairs", "note"], rows, css_id=f"sensitivity-{ident}"))
        path = text_sensitivity_plot(part.text_sensitivity, work / f"sensitivity_{ident}.png", **titles["text"])
        parts.append(_figure(path, f"text sensitivity, {task}"))

    def agreement(part: Analysis, suffix: str, ident: str, titles: dict[str, dict[str, str]]) -> None:
        if not part.agreement:
            why = "one run only" + (" in this setting" if suffix else "") + ": nothing to compare."
            parts.append(f'<table class="empty" id="agreement-{_esc(ident)}"><caption>{_esc(why)}</caption></table>')
            return
        columns = ["run A", "run B", "agree", "disagree", f"A {unit} on agree", f"B {unit} on agree",
                   f"A {unit} on disagree", f"B {unit} on disagree"]  # fmt: skip
        pairs = [[a.run_a, a.run_b, a.n_agree, a.n_disagree, a.a_on_agree, a.b_on_agree, a.a_on_disagree, a.b_on_disagree]
                 for a in part.agreement]  # fmt: skip
        download = csv_link(f"agreement_{ident}.csv", columns, pairs, f"every pair: agreement_{ident}.csv")
        runs = list(dict.fromkeys(r for a in part.agreement for r in (a.run_a, a.run_b)))
        if len(runs) > PAIRS_INLINE:
            parts.append(f'<p class="note">{len(runs)} runs, {len(pairs)} pairs: % of the samples on which two runs '
                         f"answer the same (runs numbered), then the least and most agreeing pairs; {download}.</p>")  # fmt: skip
            parts.append(pair_summary(runs, part.agreement, unit, ident))
            return
        shown = [[display_label(r[0]), display_label(r[1]), r[2], r[3], *(fmt(v) for v in r[4:])] for r in pairs]
        parts.append(html_table(columns, shown, css_id=f"agreement-{ident}", text_columns=2, wrap_text=False))
        parts.append(f'<p class="note">{download}</p>')

    parts.append("<h3>Scores per sub-category</h3>")
    per_setting(categories)
    parts.append("<h3>Overlap of the kept patches (mean Jaccard)</h3>")
    per_setting(overlap)
    if analysis.overlap.views:
        parts.append(
            '<p class="note">1.0 = the same patches, 0.0 = none in common; in-LLM methods have one view per pruning '
            "layer (@L&lt;layer&gt;).</p>"
        )
        parts.append("<h3>Text sensitivity</h3>")
        per_setting(sensitivity)
        parts.append(
            '<p class="note">Mean overlap of a method\'s selections for different questions on the same image: '
            "1.0 = the method ignores the question.</p>"
        )
    parts.append("<h3>Answer agreement</h3>")
    per_setting(agreement)
    return "".join(parts)


# ----------------------------------------------------------------------------- gallery


@dataclass
class LoggedRequest:
    """One run's logged sample, as the gallery draws it."""

    answer: str
    question: str | None
    target: str | None
    selection: dict[str, Any] | None


def logged_requests(samples_path: Path) -> dict[int, LoggedRequest]:
    """doc_id -> what one samples file logged (malformed lines are skipped; ``analyze`` counts them)."""
    out: dict[int, LoggedRequest] = {}
    for line in samples_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("doc_id"), int):
            continue
        answer = row.get("filtered_resps")
        while isinstance(answer, list):
            answer = answer[0] if answer else ""
        doc = row.get("doc") if isinstance(row.get("doc"), dict) else row.get("eff_doc") or {}
        selection = row.get("eff_selection")
        out[row["doc_id"]] = LoggedRequest(
            answer=answer if isinstance(answer, str) else "",
            question=doc.get("question") if isinstance(doc.get("question"), str) else row.get("input"),
            target=None if row.get("target") is None else str(row.get("target")),
            selection=selection if isinstance(selection, dict) and selection.get("images") else None,
        )
    return out


def results_of(samples_path: Path) -> Path:
    """The ``*_results.json`` written with a ``*_samples_<task>.jsonl``."""
    stamp = samples_path.name.split("_samples_")[0]
    return samples_path.with_name(f"{stamp}_results.json")


def dataset_images(results_path: Path, task: str, doc_ids: list[int]) -> tuple[dict[int, Image.Image], str | None]:
    """({doc_id: the document's first image}, problem) from the dataset the results file names."""
    try:
        import datasets

        config = json.loads(results_path.read_text(encoding="utf-8"))["configs"][task]
        path, kwargs = config["dataset_path"], dict(config.get("dataset_kwargs") or {})
        split = config.get("test_split") or config.get("validation_split")
        if kwargs.pop("load_from_disk", False):
            docs = datasets.load_from_disk(path)[split]
        else:
            kwargs.pop("token", None)
            docs = datasets.load_dataset(path, config.get("dataset_name"), split=split, **kwargs)
        out = {}
        for doc_id in doc_ids:
            row = docs[int(doc_id)]
            image = next((v for v in row.values() if isinstance(v, Image.Image)), None)
            if image is not None:
                out[doc_id] = image.convert("RGB")
        return out, None
    except Exception as err:  # noqa: BLE001 - the gallery then draws on a grey canvas and says why
        return {}, f"images of {task} not readable from its dataset ({type(err).__name__}: {err})"


def gallery_docs(requests: dict[str, dict[int, LoggedRequest]], count: int) -> list[int]:
    """``count`` doc ids spread evenly over those every run logged a single-image selection for."""
    shared = None
    for by_doc in requests.values():
        ids = {d for d, r in by_doc.items() if r.selection is not None and len(r.selection["images"]) == 1}
        shared = ids if shared is None else shared & ids
    ordered = sorted(shared or ())
    if count <= 0:  # --gallery 0: no overlays (not a division by zero)
        return []
    if len(ordered) <= count:
        return ordered
    step = len(ordered) / count
    return [ordered[int(i * step)] for i in range(count)]


def next_caption_note(panels: list) -> str:
    """What the panels of LLaVA-NeXT runs show (``overlay.Panel`` list): base view and tiles where the
    records have tiles, else the base view only."""
    tiled = sum(1 for panel in panels if panel.tile_grid is not None)
    if not tiled:
        return " (LLaVA-NeXT runs: their base view)"
    if tiled == len(panels):
        return " (LLaVA-NeXT runs: base view, then the tiles)"
    return " (LLaVA-NeXT runs: base view, then the tiles; runs without tile records: their base view)"


def gallery_section(task: str, runs: list[Run], work: Path, count: int, columns: int = 5) -> str:
    """Overlays of ``count`` requests of ``task``: one figure per request, one panel per run (and layer);
    runs of different settings (``settings.group_runs``: other documents or conditions) drawn apart,
    one gallery per setting under its label."""
    from .settings import group_runs, run_labels

    labels = run_labels(runs)  # runs of one model:config on two checkpoints or settings stay apart
    groups = group_runs(labels, runs)
    run_of = dict(zip(labels, runs))
    parts = [f"<h3>Gallery: {_esc(task)}</h3>"]
    if len(groups) > 1:
        parts.append('<p class="note">Runs of different settings are drawn apart, one gallery per setting.</p>')
    for group in groups:
        if len(groups) > 1:
            parts.append(f"<h4>{_esc(group.label)}</h4>")
        tag = "" if len(groups) == 1 else f"_{group.name}"
        parts.append(_gallery(task, {label: run_of[label] for label in group.runs}, work, count, columns, tag))
    return "".join(parts)


GALLERY_TITLE_WIDTH = 44  # characters per line of a panel's title (7.5 pt in a 3.1 in column): no overlap


def _wrapped(panel: Any) -> Any:
    """An ``overlay.Panel`` whose title lines fit its column (paths shortened, long lines wrapped)."""
    from dataclasses import replace

    return replace(panel, title=wrap(display_label(panel.title), GALLERY_TITLE_WIDTH))


def _gallery(task: str, runs: dict[str, Run], work: Path, count: int, columns: int, tag: str) -> str:
    """The overlays of the runs of one setting ({label: samples.Run}); ``tag`` ends their file names."""
    from ..llava.selection import image_fingerprint
    from .overlay import model_view, overlay_figure, panels_of

    requests: dict[str, dict[int, LoggedRequest]] = {}
    results_path = None
    for label, run in runs.items():
        merged: dict[int, LoggedRequest] = {}
        for source in run.sources:
            if source.endswith(".jsonl") and Path(source).is_file():
                merged.update(logged_requests(Path(source)))
                results_path = results_path or results_of(Path(source))
        requests[label] = merged
    docs = gallery_docs(requests, count)
    if not docs:
        return '<p class="note">No request with a selection logged by every run.</p>'
    images, problem = dataset_images(results_path, task, docs) if results_path else ({}, "no results file found")
    parts = ['<div class="gallery">']
    if problem:
        parts.append(f'<p class="note warn">{_esc(problem)}; the selections are drawn on a grey canvas.</p>')
    for doc_id in docs:
        first = next(r[doc_id] for r in requests.values())
        # LLaVA-1.5 runs see the centre crop, LLaVA-NeXT runs (records with "crops") the squashed base view
        views: dict[bool, dict[str, LoggedRequest]] = {}
        for label, by_doc in requests.items():
            views.setdefault("crops" in by_doc[doc_id].selection["images"][0], {})[label] = by_doc[doc_id]
        image = images.get(doc_id)
        for squash, entries in sorted(views.items()):
            fingerprint = entries[next(iter(entries))].selection["images"][0]["image"]
            panels = []
            for label, request in entries.items():
                selection = request.selection
                panels += [_wrapped(panel) for panel in
                           panels_of(selection["images"][0], tuple(selection["grid"]), display_label(label), request.answer)]  # fmt: skip
            caption_note = next_caption_note(panels) if squash else ""
            if image is None:
                picture = Image.new("RGB", (336, 336), (150, 150, 150))
            else:
                picture = model_view(image, squash=squash)
                if image_fingerprint(image) != fingerprint:
                    caption_note += " (the dataset's image differs from the one the runs logged)"
            # NeXT panels with tiles draw their tile mosaic (each for its own tile grid) from the image
            qwen = any("grid" in r.selection["images"][0] for r in entries.values())  # each image its own grid
            original = (image if image is not None else picture) if squash or qwen else None
            name = f"gallery_{task}_{doc_id}_{'next' if squash else 'crop'}{tag}.png"
            path = overlay_figure(picture, panels, work / name, columns=columns, dpi=90, image=original)
            alt = f"overlays, {task} doc {doc_id}: {', '.join(entries)}"
            caption = f"doc {doc_id}: {first.question or ''} — expected: {first.target or '—'}{caption_note}"
            parts.append(f"<figure>{png_img(path.read_bytes(), alt, 'overlay')}"
                         f"<figcaption>{_esc(caption)}</figcaption></figure>")  # fmt: skip
    parts.append("</div>")
    return "".join(parts)


# ----------------------------------------------------------------------------- page


def build_report(paths: list[str | Path], out_html: str | Path, title: str | None = None, gallery: int = 3) -> Path:
    """Write the HTML report of the results under ``paths`` to ``out_html``; returns its path. A task
    that cannot be analysed gets a section saying why; only a page with nothing at all raises."""
    from ..paper.html import paper_table_section
    from .analyze import AnalysisError, analyze
    from .samples import load_runs

    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    runs, problems = load_runs(paths)
    tasks = sorted({run.task for run in runs})
    title = title or "sparsezip-lmms report"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sections = [paper_table_section(paths), leaderboard_section(paths, work)]
        galleries = []
        for task in tasks:
            try:
                sections.append(analysis_section(analyze(paths, task), work))
            except AnalysisError as err:
                sections.append(f"<h2>{_esc(task)}</h2><p class=\"note warn\">{_esc(err)}</p>")
            task_runs = sorted((r for r in runs if r.task == task), key=lambda r: r.label)
            if gallery > 0:
                galleries.append(gallery_section(task, task_runs, work, gallery))
        contents = "".join(f'<li><a href="#task-{_esc("".join(c if c.isalnum() else "_" for c in t))}">{_esc(t)}</a></li>' for t in tasks)
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        notes = "".join(f'<p class="note warn">{_esc(p)}</p>' for p in problems)
        page = (
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_esc(title)}</h1><p class=\"note\">Written {stamp} from {len(paths)} path(s): "
            f"{_esc(', '.join(map(str, paths)))}</p>{notes}"
            f"<ul><li><a href=\"#paper-table\">Paper table</a></li>{contents}<li><a href=\"#gallery\">Gallery</a></li></ul>"
            + "".join(sections)
            + '<h2 id="gallery">Gallery of overlays</h2>'
            + '<p class="note">What every run kept for a few requests (the image as the vision tower saw it: shortest side '
            "336, centre crop; LLaVA-NeXT runs: the base view, the whole image squashed to 336, then the tiles of the "
            "image resized and padded to the tile grid). Bright, outlined: kept patch; tinted: merged into a token (one "
            "colour per token); dark: dropped.</p>"
            + "".join(galleries)
            + "</body></html>"
        )
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(out)  # a failed build never leaves half a page in place of a good one
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms report", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("paths", nargs="+", help="results folders or *_results.json files (--log_samples runs)")
    parser.add_argument("--out", default="report.html", help="the HTML file to write (default: %(default)s)")
    parser.add_argument("--title", default=None, help="the page title (default: sparsezip-lmms report)")
    parser.add_argument("--gallery", type=int, default=3, help="requests per task in the overlay gallery (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.paths, args.out, args.title, args.gallery)
    except FileNotFoundError as err:
        print(f"error: report: {err}", file=sys.stderr)
        return 2
    print(f"written: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0
