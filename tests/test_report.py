"""explain, analyze and the HTML report on real --log_samples runs of the tiny checkpoint, and the
report rendered in a headless browser."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from sparsezip_lmms.analysis.analyze import analyze
from sparsezip_lmms.analysis.explain import main as explain_main
from sparsezip_lmms.analysis.report import build_report
from sparsezip_lmms.analysis.selection import parse_ranges
from sparsezip_lmms.demo.harness import lmms_eval_command
from sparsezip_lmms.demo.mini_datasets import mme_rows

from _browser import browser_or_skip, render
from _inprocess import run_in_process

pytestmark = pytest.mark.e2e

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


def test_report_holds_leaderboard_analyses_and_overlays_of_every_run(logged_runs, tmp_path):
    root, task = logged_runs
    path = build_report([root], tmp_path / "report.html", gallery=2)
    page = path.read_text()
    assert "http://" not in page and "https://" not in page  # self-contained
    board = page.split('id="leaderboard"')[1].split("</table>")[0]
    for model, config in RUNS:
        assert f"<td class=\"text\">{model}</td><td class=\"text\">{config}</td>" in board
    for section in ("categories", "overlap", "sensitivity", "agreement"):
        assert f'id="{section}-' in page
    overlays = re.findall(r'<img class="overlay" alt="([^"]*)" src="data:image/png;base64,', page)
    assert len(overlays) == 2
    for alt in overlays:
        assert all(label in alt for label in LABELS)


def test_report_in_a_headless_browser(logged_runs, tmp_path):
    browser_or_skip()
    root, _ = logged_runs
    path = build_report([root], tmp_path / "report.html", gallery=2)
    shot = tmp_path / "report.png"
    out = render(
        path,
        width=1400,
        expression="""({
            rows: Array.from(document.querySelectorAll('#leaderboard tbody tr'))
                       .map(tr => Array.from(tr.cells).slice(0, 2).map(td => td.textContent)),
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
    print(f"screenshot: {shot}")


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


def test_explain_refuses_unknown_configs(tiny_checkpoint, tmp_path, capsys):
    image_path = tmp_path / "image.png"
    mme_rows(1)[0]["image"].save(image_path)
    code = explain_main(["--pretrained", str(tiny_checkpoint), "--image", str(image_path), "--question", "q",
                         "--configs", "no_such_config"])  # fmt: skip
    assert code == 2 and "no_such_config" in capsys.readouterr().err
