"""explain, analyze and the HTML report on real --log_samples runs of the tiny checkpoint (e2e), the
report of many hand-made runs as a reader sees it (compact leaderboard, summarised pairs, one-line empty
sections, no clipped text in any figure), and both rendered in a headless browser."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import matplotlib.figure
import pytest
from PIL import Image

from sparsezip_lmms.analysis.analyze import analyze
from sparsezip_lmms.analysis.explain import main as explain_main
from sparsezip_lmms.analysis.report import build_report
from sparsezip_lmms.analysis.report_style import breakable, display_label, texts_outside, wrap
from sparsezip_lmms.analysis.selection import parse_ranges
from sparsezip_lmms.demo.harness import lmms_eval_command
from sparsezip_lmms.demo.mini_datasets import mme_rows

from _browser import browser_or_skip, render
from _inprocess import run_in_process

RUNS = [("llava_visionzip", "visionzip_64"), ("llava_sparsezip", "sparsezip_64"), ("llava_sparsevlm", "sparsevlm_64")]
LABELS = [f"{model}:{config}" for model, config in RUNS]


@pytest.fixture(scope="module")
def logged_runs(tmp_path_factory, mini_tasks, tiny_checkpoint):
    """Three --log_samples runs (vision-side, merging + text-aware, in-LLM) of mini MME's first 4 images."""
    include, names = mini_tasks
    root = tmp_path_factory.mktemp("logged")
    for model, config in RUNS:
        out = root / f"{model}__{config}"
        cmd = lmms_eval_command(
            model, f"pretrained={tiny_checkpoint},config={config},dtype=float64", [names["mme"]], out,
            include_path=include, batch_size=4, extra=["--gen_kwargs", "max_new_tokens=2", "--limit", "8"],
        )  # fmt: skip
        run_in_process(cmd, out)
    return root, names["mme"]


@pytest.mark.e2e
def test_analysis_of_real_runs(logged_runs):
    root, task = logged_runs
    analysis = analyze([root])
    assert analysis.task == task and [r.with_selection for r in analysis.runs] == [8, 8, 8]
    sensitivity = {row.view: row for row in analysis.text_sensitivity}
    # every image has two questions (the "count" image asks the same one twice: not a pair); a
    # text-agnostic method keeps the same patches for both
    assert sensitivity["llava_visionzip:visionzip_64"].value == 1.0
    assert sensitivity["llava_visionzip:visionzip_64"].images == 3
    assert {f"llava_sparsevlm:sparsevlm_64@L{layer}" for layer in (2, 6, 15)} <= set(sensitivity)
    views = analysis.overlap.views
    for i in range(len(views)):
        assert analysis.overlap.mean[i][i] == 1.0
    categories = {(c.run, c.category): c.n for c in analysis.categories}
    assert categories[("llava_visionzip:visionzip_64", "all")] == 8


@pytest.mark.e2e
def test_report_holds_leaderboard_analyses_and_overlays_of_every_run(logged_runs, tmp_path):
    root, task = logged_runs
    path = build_report([root], tmp_path / "report.html", gallery=2)
    page = path.read_text()
    assert "http://" not in page and "https://" not in page  # self-contained
    board = page.split('id="leaderboard-full"')[1].split("</table>")[0]  # every column, names whole
    for model, config in RUNS:
        assert f"<td class=\"text\">{breakable(model)}</td><td class=\"text\">{breakable(config)}</td>" in board
    for section in ("categories", "overlap", "sensitivity", "agreement"):
        assert f'id="{section}-' in page
    # no uncompressed run among these: the paper table says why it has no numbers instead of showing blanks
    paper = page.split('id="paper-table"')[1].split("<h2")[0]
    assert "cannot be computed honestly" in paper and "no baseline row (llava_hf_timed)" in paper
    overlays = re.findall(r'<img class="overlay" alt="([^"]*)" src="data:image/png;base64,', page)
    assert len(overlays) == 2
    for alt in overlays:
        assert all(label in alt for label in LABELS)


@pytest.mark.e2e
def test_report_in_a_headless_browser(logged_runs, tmp_path):
    browser_or_skip()
    root, _ = logged_runs
    path = build_report([root], tmp_path / "report.html", gallery=2)
    shot = tmp_path / "report.png"
    out = render(
        path,
        width=1400,
        expression="""({
            rows: Array.from(document.querySelectorAll('#leaderboard tbody tr:not(.group)'))
                       .map(tr => tr.cells[0].textContent.split(':')),
            images: Array.from(document.images).map(img => ({alt: img.alt, ok: img.complete && img.naturalWidth > 0,
                                                             shown: img.getBoundingClientRect().width > 0})),
        })""",
        screenshot_path=shot,
    )
    value = out["value"]
    assert sorted(map(tuple, value["rows"])) == sorted(RUNS)
    gallery = [image for image in value["images"] if image["alt"].startswith("overlays,")]
    assert len(gallery) == 2 and all(image["ok"] and image["shown"] for image in gallery)
    assert all(image["ok"] for image in value["images"])
    assert out["requests"] == [] and out["console_errors"] == []
    assert Image.open(shot).size[0] == 1400
    reader_checks(path, tmp_path / "report-reader.png")  # notes column in view, charts unscaled, screenshot kept


@pytest.mark.e2e
def test_explain_draws_every_method(tiny_checkpoint, tmp_path):
    image_path = tmp_path / "image.png"
    mme_rows(1)[0]["image"].save(image_path)
    out, record = tmp_path / "explain.png", tmp_path / "explain.json"
    code = explain_main([
        "--pretrained", str(tiny_checkpoint), "--image", str(image_path), "--question", "Is there a red square?",
        "--configs", "visionzip_64,llava_sparsezip:sparsezip_64;cross_beta=0,llava_sparsevlm:sparsevlm_64,llava_fastv",
        "--model-args", "dtype=float64", "--device", "cpu", "--max-new-tokens", "2",
        "--out", str(out), "--json", str(record),
    ])  # fmt: skip
    assert code == 0
    assert Image.open(out).size[0] > 0
    results = json.loads(record.read_text())
    assert [r["label"] for r in results] == [
        "llava_visionzip:visionzip_64", "llava_sparsezip:sparsezip_64,cross_beta=0",
        "llava_sparsevlm:sparsevlm_64", "llava_fastv:default",
    ]  # fmt: skip
    visionzip, sparsezip, sparsevlm, fastv = (r["selection"]["images"][0] for r in results)
    assert visionzip["tokens"] == 64 and len(parse_ranges(visionzip["kept"])) == 53
    assert sparsezip["tokens"] == results[1]["visual_tokens"]
    assert sorted(sparsevlm["layers"], key=int) == ["2", "6", "15"]
    assert len(parse_ranges(fastv["layers"]["1"])) == 288  # fastv_default: K=2, R=0.5 of 576


@pytest.mark.e2e
def test_explain_refuses_unknown_configs(tiny_checkpoint, tmp_path, capsys):
    image_path = tmp_path / "image.png"
    mme_rows(1)[0]["image"].save(image_path)
    code = explain_main(["--pretrained", str(tiny_checkpoint), "--image", str(image_path), "--question", "q",
                         "--configs", "no_such_config"])  # fmt: skip
    assert code == 2 and "no_such_config" in capsys.readouterr().err


# ----------------------------------------------------------------------------- many hand-made runs, as a reader sees them

MME_TASK, DOC_TASK = "mme_eff_mini", "docvqa_eff_mini"
SUBTASKS = ["OCR", "artwork", "celebrity", "code_reasoning", "color", "commonsense_reasoning", "count", "existence",
            "landmark", "numerical_calculation", "position", "posters", "scene", "text_translation"]  # fmt: skip
TOWER = "/home/someone/checkpoints/openai/clip-vit-large-patch14-336-with-a-very-long-folder-name"
CHECKPOINT = "/home/someone/experiments/2026/checkpoints/tiny-llava-1.5-7b-hf-random-weights"
N_RUNS = 11  # more than the report lists pair by pair (report.PAIRS_INLINE)


def _methods(n):
    """(model, config, extra model_args) of n runs of one checkpoint: the baseline first, long labels."""
    out = [("llava_hf_timed", "keep_all", "")]
    for i in range(1, n):
        if i % 4 == 1:  # a config label carrying a path, as CDPruner's text tower makes one
            out.append(("llava_cdpruner", f"cdpruner_{16 * i}", f",clip_text_tower={TOWER}"))
        else:
            out.append((f"llava_method{i}", f"method{i}_64_with_a_rather_long_configuration_name", ""))
    return out


def _mme_line(doc_id, run_index):
    category = SUBTASKS[doc_id // 2]
    right = (doc_id + run_index) % 3 != 0
    entry = {"question_id": f"{category}/{doc_id // 2}.png", "category": category, "score": float(right)}
    start = (run_index * 7 + doc_id % 2 * 3) % 40
    selection = {"version": 1, "method": "m", "grid": [24, 24],
                 "images": [{"image": "img", "tokens": 64, "cls": False, "kept": f"{start}-{start + 60}", "merged": []}]}
    return {"doc_id": doc_id, "doc_hash": f"h{doc_id}", "target": "Yes", "filtered_resps": "Yes" if right else "No",
            "mme_accuracy": entry, "mme_perception_score": entry, "input": f"Is there a {category}? (q{doc_id % 2})",
            "eff_selection": selection}  # fmt: skip


def write_many_runs(root, n=N_RUNS):
    """n runs (a llava_hf_timed baseline first) of a mini MME with 14 subtasks, selections logged, and of a
    mini DocVQA without selections (no sub-categories): long labels, a path in a config, one run over budget."""
    for i, (model, config, extra) in enumerate(_methods(n)):
        folder = root / f"run{i:02d}"
        folder.mkdir(parents=True)
        for k, task in enumerate((MME_TASK, DOC_TASK)):
            metrics = {"eff_ttft_s,none": 0.5 / (1 + 0.1 * i), "eff_timed,none": 28, "eff_prefill_tflops,none": 1.0 + 0.01 * i,
                       "eff_visual_tokens,none": 576 if i == 0 else 64}  # fmt: skip
            if task == MME_TASK:
                metrics.update({"mme_perception_score,none": 1200.0 - 10 * i, "mme_cognition_score,none": 300.0})
                lines = [_mme_line(d, i) for d in range(2 * len(SUBTASKS))]
            else:
                metrics.update({"anls,none": 0.5 - 0.01 * i, "exact_match,none": 0.4})
                lines = [{"doc_id": d, "doc_hash": f"d{d}", "target": "x", "filtered_resps": f"a{(d + i) % 2}",
                          "anls": 0.5 if (d + i) % 2 else 1.0, "input": "What is written?"} for d in range(6)]  # fmt: skip
            results = {"results": {task: {"alias": task, **metrics}}, "configs": {}, "lmms_eval_version": "0.5",
                       "config": {"model": model, "batch_size": 1, "limit": None,
                                  "model_args": f"pretrained={CHECKPOINT},config={config},dtype=float32{extra}"}}  # fmt: skip
            (folder / f"2026010{k + 1}_000000_results.json").write_text(json.dumps(results))
            (folder / f"2026010{k + 1}_000000_samples_{task}.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    return root


@pytest.fixture(scope="module")
def many_runs_report(tmp_path_factory):
    """report.html of write_many_runs, and {figure file: (clipped texts, (width, height) px)} of every
    figure the report made (the overlay gallery on a grey canvas: these runs name no dataset)."""
    from sparsezip_lmms.analysis import report

    root = write_many_runs(tmp_path_factory.mktemp("many") / "results")
    figures = {}
    save = matplotlib.figure.Figure.savefig

    def checked_save(fig, path, *args, **kwargs):
        dpi = kwargs.get("dpi") or fig.dpi
        fig.set_dpi(dpi)
        figures[Path(str(path)).name] = (texts_outside(fig), tuple(round(v) for v in fig.get_size_inches() * dpi))
        return save(fig, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.figure.Figure, "savefig", checked_save)
        patch.setattr(report, "dataset_images", lambda *args: ({}, "no dataset in this test"))
        path = report.build_report([root], root.parent / "report.html", gallery=1)
    return path, path.read_text(encoding="utf-8"), figures


def _section(page, start, end="<h2"):
    return page.split(start, 1)[1].split(end, 1)[0]


def _csv_of(html_part, name):
    data = re.search(rf'download="{re.escape(name)}" href="data:text/csv;base64,([^"]+)"', html_part).group(1)
    return base64.b64decode(data).decode("utf-8").splitlines()


def test_every_figure_keeps_its_text_inside_and_is_shown_unscaled(many_runs_report):
    _, _, figures = many_runs_report
    names = set(figures)
    assert {"pareto.png", f"categories_{MME_TASK}.png", f"overlap_{MME_TASK}.png", f"sensitivity_{MME_TASK}.png"} <= names
    assert any(n.startswith("gallery_") for n in names) and not any(DOC_TASK in n for n in names)  # DocVQA: no chart
    for name, (clipped, (width, _)) in figures.items():
        assert clipped == [], (name, clipped)
        assert width <= 1400, (name, width)  # the page shows it at (nearly) its own size: text stays readable


def test_leaderboard_is_compact_flags_carry_their_reason_and_the_full_table_is_behind_details(many_runs_report):
    _, page, _ = many_runs_report
    board = _section(page, 'id="leaderboard"', "</table>")
    heads = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", board)
    assert heads[0] == "run" and heads[-1] == "notes" and len(heads) <= 10
    assert "MME perception (retention)" in heads and "DocVQA ANLS (retention)" in heads
    shown = re.sub(r' title="[^"]*"', "", board).replace("<wbr>", "")  # the title attributes keep them whole
    assert CHECKPOINT not in shown and TOWER not in shown and CHECKPOINT in board  # paths shortened for display
    assert "…/checkpoints/tiny-llava-1.5-7b-hf-random-weights · dtype float32" in board
    flag = re.search(r'<span class="flag" title="(OVER BUDGET: [^"]+)">\[(\d+)\] OVER BUDGET</span>', board)
    assert flag and "for a 16-token config" in flag.group(1)
    footnotes = _section(page, '<ol class="flags">', "</ol>")
    assert "OVER BUDGET: 64.0 visual tokens for a 16-token config" in footnotes
    details = _section(page, "<details><summary>Every column", "</details>")
    assert 'id="leaderboard-full"' in details and CHECKPOINT in details.replace("<wbr>", "")  # whole names there
    rows = _csv_of(details, "leaderboard.csv")
    assert len(rows) == N_RUNS + 1 and CHECKPOINT in rows[1] and "notes" in rows[0]


def test_many_runs_agreement_is_a_matrix_and_top_pairs_with_the_full_csv(many_runs_report):
    _, page, _ = many_runs_report
    section = _section(page, f'id="task-{MME_TASK}"').split("<h3>Answer agreement</h3>")[1]
    matrix = _section(section, f'id="agreement-{MME_TASK}"', "</table>")
    assert matrix.count("<tr>") == N_RUNS + 1  # header + one row per run, not one per pair
    top = _section(section, f'id="agreement-top-{MME_TASK}"', "</table>")
    assert "least agreeing pairs" in top and "most agreeing pairs" in top and top.count("<tr>") <= 14
    pairs = N_RUNS * (N_RUNS - 1) // 2
    assert f"{N_RUNS} runs, {pairs} pairs" in section
    assert len(_csv_of(section, f"agreement_{MME_TASK}.csv")) == pairs + 1


def test_empty_sections_say_so_in_one_line_and_score_columns_name_their_metric(many_runs_report):
    _, page, _ = many_runs_report
    doc = _section(page, f'id="task-{DOC_TASK}"')
    assert "<img" not in doc
    assert "DocVQA has no sub-categories: no chart" in doc and "No selections logged for this task." in doc
    assert "<h3>Text sensitivity</h3>" not in doc
    assert f"{N_RUNS} runs: no selections logged" in doc and doc.count("no selections logged") == 1  # one line, runs listed
    assert re.search(r"<th>all \(ANLS\)</th>", doc)
    mme = _section(page, f'id="task-{MME_TASK}"')
    assert re.search(r"<th>all \(accuracy %\)</th>", mme) and "MME score (sum)" in mme
    assert not re.search(r"<th[^>]*>score</th>", page)  # never a bare "score"
    overlap = mme.split("<h3>Overlap of the kept patches")[1]
    assert overlap.index("<details><summary>The matrix as numbers") < overlap.index(f'id="overlap-{MME_TASK}"')


def test_category_plot_splits_many_categories_and_tells_every_run_apart(tmp_path):
    from sparsezip_lmms.analysis import plots
    from sparsezip_lmms.analysis.metrics import CategoryScore

    runs = [f"llava_m{i}:config_{i}" for i in range(25)]
    rows = [CategoryScore(run, c, 2, 50.0 + i) for i, run in enumerate(runs) for c in SUBTASKS + ["all"]]
    seen = {}
    save = matplotlib.figure.Figure.savefig

    def keep(fig, path, *args, **kwargs):
        seen["fig"] = fig
        return save(fig, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.figure.Figure, "savefig", keep)
        plots.category_plot(rows, "mme", tmp_path / "categories.png")
    fig = seen["fig"]
    assert len(fig.axes) >= 3 and texts_outside(fig) == []  # several panel rows, nothing clipped
    assert [t.get_text() for t in fig.legends[0].get_texts()] == runs  # the legend lists every run
    styles = {(tuple(bar.get_facecolor()), bar.get_hatch()) for bar in fig.axes[0].patches}
    assert len(styles) == len(runs)  # 20 colours, then hatched
    assert Image.open(tmp_path / "categories.png").size[0] <= 1300


def test_text_check_finds_clipped_text_and_labels_are_shortened():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), layout="constrained")
    ax.set_title("a title")
    assert texts_outside(fig) == []
    fig.text(0.95, 0.5, "a label running off the right edge")
    assert len(texts_outside(fig)) == 1 and "running off" in texts_outside(fig)[0]
    plt.close(fig)
    assert display_label(f"llava_cdpruner:cdpruner_64,clip_text_tower={TOWER}") == (
        "llava_cdpruner:cdpruner_64,clip_text_tower=…/openai/clip-vit-large-patch14-336-with-a-very-long-folder-name")
    assert all(len(line) <= 20 for line in wrap("llava_sparsevlm:sparsevlm_64,a_long_option=1", 20).split("\n"))


READER_FACTS = """(() => {
  const notes = [...document.querySelectorAll('#leaderboard th:last-child, #leaderboard td.notes')]
    .map(e => e.getBoundingClientRect());
  return {
    viewport: document.documentElement.clientWidth,
    scrollWidth: document.documentElement.scrollWidth,
    notesLeft: Math.min(...notes.map(r => r.left)), notesRight: Math.max(...notes.map(r => r.right)),
    images: [...document.images].map(img => ({alt: img.alt, ok: img.complete && img.naturalWidth > 0,
      natural: img.naturalWidth, shown: img.getBoundingClientRect().width})),
  };
})()"""


def reader_checks(path, shot):
    """The report at 1,400 px as a reader sees it: no horizontal scroll, the leaderboard's notes column in
    the viewport, every image loaded and shown at >= 0.7 of its own width; a screenshot at ``shot``."""
    out = render(path, width=1400, expression=READER_FACTS, screenshot_path=shot)
    facts = out["value"]
    assert facts["scrollWidth"] <= facts["viewport"] == 1400, facts
    assert 0 <= facts["notesLeft"] < facts["notesRight"] <= facts["viewport"], facts
    for image in facts["images"]:
        assert image["ok"] and image["shown"] >= 0.7 * image["natural"], image
    assert out["requests"] == [] and out["console_errors"] == []
    assert Image.open(shot).size[0] == 1400
    print(f"screenshot: {shot}")
    return facts


def test_many_runs_report_in_a_headless_browser(many_runs_report, tmp_path):
    browser_or_skip()
    path, _, _ = many_runs_report
    facts = reader_checks(path, tmp_path / "report.png")
    assert len(facts["images"]) == 5  # Pareto, MME categories, overlap, text sensitivity, one overlay
