"""Selection analysis over hand-made ``--log_samples`` results folders with known overlaps and scores."""

import csv
import json

import pytest
from PIL import Image

from sparsezip_lmms.__main__ import main as cli
from sparsezip_lmms.analysis.analyze import (
    NO_SELECTIONS,
    AnalysisError,
    analyze,
    jaccard,
    normalise_answer,
)
from sparsezip_lmms.analysis.render import to_markdown as render_markdown
from sparsezip_lmms.analysis.selection import format_ranges, parse_ranges

TASK = "pope_eff_mini"
STAMP = "20250101_000000"

# doc_id -> (image, question, category, ground truth)
POPE_DOCS = {
    0: ("imgA", "Is there a dog in the image?", "adversarial", "yes"),
    1: ("imgA", "Is there a cat in the image?", "popular", "no"),
    2: ("imgA", "Is there a car in the image?", "random", "no"),
    3: ("imgB", "Is there a dog in the image?", "adversarial", "yes"),
    4: ("imgB", "Is there a tree in the image?", "random", "yes"),
    5: ("imgC", "Is there a bird in the image?", "popular", "no"),
    6: ("imgC", "Is there a bird in the image?", "popular", "no"),  # same question: not a text pair
}
AGNOSTIC = {"imgA": "0-3", "imgB": "10-13", "imgC": "20-23"}  # kept per image, whatever the question
AWARE = {0: "0-3", 1: "2-5", 2: "0-3", 3: "0,1", 4: "1,2", 5: "7", 6: "8"}  # kept per question


def _selection(image, kept=None, layers=None, method="visionzip"):
    entry = {"image": image, "tokens": 4, "cls": True, "kept": kept or "", "merged": []}
    if layers:
        entry["layers"] = layers
    return {"version": 1, "method": method, "grid": [24, 24], "images": [entry]}


def _pope_row(doc_id, answer, selection):
    image, question, category, truth = POPE_DOCS[doc_id]
    score = 1.0 if answer.lower().strip() == truth else 0.0
    entry = {"question_id": str(doc_id), "score": score, "prediction": answer.lower(), "ground_truth": truth}
    # as lmms-eval writes a samples line: no "doc" or "arguments" (the *_eff tasks log "eff_doc"),
    # the prompt as "input", a single answer as a plain string
    doc = {"question_id": str(doc_id), "question": question, "answer": truth, "image_source": image,
           "category": category}
    return {"doc_id": doc_id, "target": truth, "filtered_resps": answer, "doc_hash": f"hash{doc_id}",
            "pope_accuracy": entry, "pope_precision": entry, "eff_selection": selection, "eff_doc": doc,
            "input": question + "\nAnswer the question using a single word or phrase."}


def _write_run(folder, model, config, rows, task=TASK, stamp=STAMP, extra_lines=()):
    folder.mkdir(parents=True, exist_ok=True)
    results = {
        "results": {task: {"alias": task}},
        "configs": {},
        "config": {"model": model, "model_args": f"pretrained=/x,config={config}"},
    }
    (folder / f"{stamp}_results.json").write_text(json.dumps(results))
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    (folder / f"{stamp}_samples_{task}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


ANSWERS_ALL_YES = {d: "Yes" for d in POPE_DOCS}
ANSWERS_RIGHT = {d: POPE_DOCS[d][3].capitalize() + ("." if d == 4 else "") for d in POPE_DOCS}


@pytest.fixture
def pope_runs(tmp_path):
    """Five runs of one POPE task: two text-agnostic ones with identical selections, one disjoint,
    one text-aware and one in-LLM method with two pruning layers."""
    root = tmp_path / "results"

    def agnostic(doc_id):
        return _selection(POPE_DOCS[doc_id][0], AGNOSTIC[POPE_DOCS[doc_id][0]])

    _write_run(root / "vz", "llava_visionzip", "visionzip_4", [_pope_row(d, ANSWERS_ALL_YES[d], agnostic(d)) for d in POPE_DOCS])
    _write_run(root / "vz2", "llava_visionzip", "visionzip_4,dominant=3", [_pope_row(d, "Yes", agnostic(d)) for d in POPE_DOCS])
    _write_run(root / "far", "llava_random", "random_4",
               [_pope_row(d, "No", _selection(POPE_DOCS[d][0], "100-103")) for d in POPE_DOCS])
    _write_run(root / "sz", "llava_sparsezip", "sparsezip_4",
               [_pope_row(d, ANSWERS_RIGHT[d], _selection(POPE_DOCS[d][0], AWARE[d], method="sparsezip")) for d in POPE_DOCS],
               extra_lines=["{not json", "[1, 2]"])
    layers = {"2": "0-9", "6": "0-4"}
    _write_run(root / "fastv", "llava_fastv", "fastv_4",
               [_pope_row(d, "Yes", _selection(POPE_DOCS[d][0], "", layers, "fastv")) for d in POPE_DOCS])
    return root


VZ, VZ2, FAR, SZ = "llava_visionzip:visionzip_4", "llava_visionzip:visionzip_4,dominant=3", "llava_random:random_4", "llava_sparsezip:sparsezip_4"
FV2, FV6 = "llava_fastv:fastv_4@L2", "llava_fastv:fastv_4@L6"


def _cell(analysis, a, b):
    views = analysis.views
    return analysis.overlap.mean[views.index(a)][views.index(b)], analysis.overlap.n[views.index(a)][views.index(b)]


# ----------------------------------------------------------------------------- ranges


def test_format_and_parse_ranges_round_trip():
    assert format_ranges([8, 0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert format_ranges([]) == "" and parse_ranges("") == []
    assert parse_ranges("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    for indices in ([3], [0, 575], list(range(10)) + [20, 22, 23]):
        assert parse_ranges(format_ranges(indices)) == sorted(indices)


@pytest.mark.parametrize("text,item", [("5-3", "5-3"), ("1,1", "1"), ("4,2", "2"), ("0-3,3-5", "3-5"), ("a", "a"),
                                       ("1-", "1-"), ("1,,2", ""), (" 1", " 1"), ("1-2-3", "1-2-3")])
def test_parse_ranges_names_the_bad_item(text, item):
    with pytest.raises(ValueError, match=f"bad range item {item!r}"):
        parse_ranges(text)


def test_parse_ranges_checks_the_grid_size():
    assert parse_ranges("0-575", size=576)[-1] == 575
    with pytest.raises(ValueError, match="past the last position 575"):
        parse_ranges("570-576", size=576)


# ----------------------------------------------------------------------------- overlap, text sensitivity


def test_jaccard_of_known_sets():
    assert jaccard(frozenset({0, 1, 2, 3}), frozenset({2, 3, 4, 5})) == 2 / 6
    assert jaccard(frozenset({1}), frozenset({1})) == 1.0
    assert jaccard(frozenset({1}), frozenset({2})) == 0.0
    assert jaccard(frozenset(), frozenset()) is None


def test_overlap_identical_disjoint_and_partial(pope_runs):
    analysis = analyze([pope_runs])
    assert analysis.task == TASK and analysis.family == "pope"
    assert analysis.views == [FV2, FV6, FAR, SZ, VZ, VZ2]
    assert _cell(analysis, VZ, VZ2) == (1.0, 7)  # the same patches on every sample
    assert _cell(analysis, VZ, FAR) == (0.0, 7)  # none in common
    assert _cell(analysis, VZ, VZ) == (1.0, 7)
    # docs 0, 2: {0..3} vs {0..3} = 1; doc 1: {0..3} vs {2..5} = 2/6; the other four: 0
    value, n = _cell(analysis, VZ, SZ)
    assert n == 7 and value == pytest.approx((1 + 1 + 2 / 6) / 7)
    assert _cell(analysis, FV2, FV6) == (0.5, 7)  # {0..9} vs {0..4} at every sample
    assert _cell(analysis, SZ, VZ) == _cell(analysis, VZ, SZ)  # symmetric
    per_sample = {(s.view_a, s.view_b, s.doc_id): s.jaccard for s in analysis.overlap.samples}
    assert per_sample[(SZ, VZ, 1)] == 2 / 6 and per_sample[(SZ, VZ, 0)] == 1.0 and per_sample[(SZ, VZ, 3)] == 0.0


def test_text_sensitivity_agnostic_aware_and_in_llm(pope_runs):
    by_view = {r.view: r for r in analyze([pope_runs]).text_sensitivity}
    assert by_view[VZ].value == 1.0 and (by_view[VZ].images, by_view[VZ].pairs) == (2, 4)  # imgC: one question only
    assert by_view[FV2].value == 1.0 and by_view[FV6].value == 1.0
    # imgA: pairs (0,1) = 2/6, (0,2) = 1, (1,2) = 2/6 -> 5/9; imgB: {0,1} vs {1,2} = 1/3; imgC: no pair
    assert by_view[SZ].value == pytest.approx((5 / 9 + 1 / 3) / 2)
    assert (by_view[SZ].images, by_view[SZ].pairs) == (2, 4)


def test_in_llm_views_are_per_layer(tmp_path):
    rows = [_pope_row(d, "Yes", _selection(POPE_DOCS[d][0], "", {"6": "4,300", "2": "0-9,300"}, "fastv")) for d in (0, 1)]
    analysis = analyze([_write_run(tmp_path / "fastv", "llava_fastv", "fastv_4", rows)])
    assert analysis.views == ["llava_fastv:fastv_4@L2", "llava_fastv:fastv_4@L6"]
    assert analysis.overlap.mean[0][1] == 2 / 11


def test_empty_selections_are_undefined_not_zero(tmp_path):
    a = _write_run(tmp_path / "a", "llava_visionzip", "visionzip_4", [_pope_row(d, "Yes", _selection(POPE_DOCS[d][0], "")) for d in (0, 1)])
    b = _write_run(tmp_path / "b", "llava_visionzip", "visionzip_8",
                   [_pope_row(0, "Yes", _selection("imgA", "")), _pope_row(1, "Yes", _selection("imgA", "1"))])
    analysis = analyze([a, b])
    assert analysis.overlap.mean[0][1] == 0.0 and analysis.overlap.n[0][1] == 1 and analysis.overlap.undefined[0][1] == 1
    assert analysis.overlap.mean[0][0] is None  # never kept anything
    assert any("Jaccard undefined" in n for n in analysis.notes)


def test_multi_image_requests_are_skipped_and_counted(tmp_path):
    two = _selection("imgA", "0-3")
    two["images"].append({"image": "imgZ", "tokens": 4, "kept": "0-3"})
    rows = [_pope_row(0, "Yes", two), _pope_row(1, "No", _selection("imgA", "0-3"))]
    analysis = analyze([_write_run(tmp_path / "a", "llava_visionzip", "visionzip_4", rows)])
    assert analysis.runs[0].not_single_image == 1 and analysis.overlap.n[0][0] == 1
    assert any("without exactly one image" in n for n in analysis.notes)


def test_doc_hash_mismatch_is_warned_and_skipped(tmp_path):
    a = _write_run(tmp_path / "a", "llava_visionzip", "visionzip_4", [_pope_row(d, "Yes", _selection("imgA", "0-3")) for d in (0, 1)])
    changed = [_pope_row(d, "Yes", _selection("imgA", "0-3")) for d in (0, 1)]
    changed[1]["doc_hash"] = "other"
    b = _write_run(tmp_path / "b", "llava_visionzip", "visionzip_8", changed)
    analysis = analyze([a, b])
    assert analysis.overlap.n[0][1] == 1
    assert analysis.agreement[0].n_agree == 1
    assert any("doc_hash differs on 1 docs (1)" in n for n in analysis.notes)


# ----------------------------------------------------------------------------- scores and agreement


def test_pope_scores_per_category(pope_runs):
    rows = {(r.run, r.category): r for r in analyze([pope_runs]).categories}
    # all "Yes": right on docs 0, 3 (adversarial), 4 (random); wrong on 1, 5, 6 (popular) and 2 (random)
    assert (rows[(VZ, "adversarial")].n, rows[(VZ, "adversarial")].score) == (2, 100.0)
    assert (rows[(VZ, "popular")].n, rows[(VZ, "popular")].score) == (3, 0.0)
    assert (rows[(VZ, "random")].n, rows[(VZ, "random")].score) == (2, 50.0)
    assert rows[(VZ, "all")].n == 7 and rows[(VZ, "all")].score == pytest.approx(300 / 7)
    assert rows[(SZ, "all")].score == pytest.approx(600 / 7)  # "Yes." is scored wrong upstream
    assert rows[(VZ, "all")].accuracy_plus is None


def test_mme_accuracy_and_accuracy_plus(tmp_path):
    # (doc_id, question_id, category, score)
    plan = [(0, "a.jpg", "existence", 1.0), (1, "a.jpg", "existence", 1.0), (2, "b.jpg", "existence", 1.0),
            (3, "b.jpg", "existence", 0.0), (4, "c.jpg", "count", 1.0), (5, "c.jpg", "count", 1.0)]
    rows = []
    for doc_id, qid, category, score in plan:
        doc = {"question_id": qid, "question": f"q{doc_id}", "answer": "Yes", "category": category, "_sz_uid": str(doc_id)}
        rows.append({"doc_id": doc_id, "doc": doc, "filtered_resps": ["Yes"], "doc_hash": str(doc_id),
                     "mme_accuracy": {"question_id": qid, "category": category, "score": score},
                     "eff_selection": _selection(qid, "0-3")})
    folder = _write_run(tmp_path / "mme", "llava_visionzip", "visionzip_4", rows, task="mme_eff_mini")
    by = {r.category: r for r in analyze([folder]).categories}
    assert (by["existence"].n, by["existence"].score, by["existence"].accuracy_plus, by["existence"].mme_score) == (4, 75.0, 50.0, 125.0)
    assert (by["count"].score, by["count"].accuracy_plus, by["count"].mme_score) == (100.0, 100.0, 200.0)
    assert by["all"].n == 6 and by["all"].score == pytest.approx(500 / 6)
    assert by["all"].accuracy_plus == pytest.approx(200 / 3) and by["all"].mme_score == 325.0


def test_docvqa_mean_anls(tmp_path):
    rows = [{"doc_id": d, "doc": {"questionId": d, "question": "q", "answers": ["x"]}, "filtered_resps": ["x"],
             "anls": anls, "exact_match": 0.0} for d, anls in enumerate([1.0, 0.5, 0.0])]
    analysis = analyze([_write_run(tmp_path / "doc", "llava_visionzip", "visionzip_4", rows, task="docvqa_val_eff")])
    assert [(r.category, r.n, r.score) for r in analysis.categories] == [("all", 3, 0.5)]


def test_agreement_counts_and_scores(pope_runs):
    by = {(r.run_a, r.run_b): r for r in analyze([pope_runs]).agreement}
    vz_sz = by[(SZ, VZ)]  # SZ answers right ("Yes." on doc 4), VZ always "Yes": agree on docs 0, 3, 4
    assert (vz_sz.n_agree, vz_sz.n_disagree) == (3, 4)
    assert vz_sz.a_on_agree == pytest.approx(200 / 3) and vz_sz.b_on_agree == 100.0
    assert vz_sz.a_on_disagree == 100.0 and vz_sz.b_on_disagree == 0.0
    assert (by[(VZ, VZ2)].n_agree, by[(VZ, VZ2)].n_disagree, by[(VZ, VZ2)].a_on_disagree) == (7, 0, None)
    assert normalise_answer("  Yes. ") == "yes" and normalise_answer("NO") == "no"


# ----------------------------------------------------------------------------- bad inputs


def test_malformed_lines_are_counted_not_fatal(pope_runs):
    analysis = analyze([pope_runs])
    sz = next(r for r in analysis.runs if r.label == SZ)
    assert sz.malformed_lines == 2 and sz.samples == 7
    assert any(f"{SZ}: 2 malformed samples lines" in n for n in analysis.notes)


def test_malformed_selection_keeps_the_scores(tmp_path):
    rows = [_pope_row(0, "Yes", _selection("imgA", "5-3")), _pope_row(1, "No", _selection("imgA", "0-3"))]
    analysis = analyze([_write_run(tmp_path / "a", "llava_visionzip", "visionzip_4", rows)])
    assert analysis.runs[0].malformed_selections == 1 and analysis.runs[0].with_selection == 1
    assert next(r for r in analysis.categories if r.category == "all").n == 2
    assert any("'5-3'" in n for n in analysis.notes)


def test_runs_without_selections_still_get_scores(tmp_path):
    rows = [_pope_row(d, "Yes", None) for d in POPE_DOCS]
    a = _write_run(tmp_path / "a", "llava_visionzip", "visionzip_4", rows)
    b = _write_run(tmp_path / "b", "llava_hf_timed", "keep_all", rows)
    out = tmp_path / "out"
    assert cli(["analyze", str(a), str(b), "--out", str(out)]) == 0
    markdown = (out / "analysis.md").read_text()
    assert markdown.count(NO_SELECTIONS) >= 2 and "| llava_hf_timed:keep_all | all | 7 |" in markdown
    assert not (out / "overlap.png").exists() and (out / "categories.png").exists()
    assert len(list(csv.reader((out / "agreement.csv").open()))) == 2


def test_results_file_without_samples_file(tmp_path):
    a = _write_run(tmp_path / "a", "llava_visionzip", "visionzip_4", [_pope_row(0, "Yes", None)])
    b = tmp_path / "b"
    b.mkdir()
    (b / f"{STAMP}_results.json").write_text(json.dumps({"results": {TASK: {}}, "configs": {},
                                                         "config": {"model": "llava_sparsezip", "model_args": "pretrained=/x,config=sparsezip_4"}}))
    analysis = analyze([a, b])
    assert any("no samples file for pope_eff_mini (run lmms-eval with --log_samples)" in n for n in analysis.notes)
    with pytest.raises(AnalysisError, match="no samples for pope_eff_mini"):
        analyze([b])


def test_nothing_to_analyse_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["analyze", str(tmp_path / "empty")]) == 2
    assert "no *_results.json under this folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- command line


def test_cli_writes_every_file(pope_runs, tmp_path):
    out = tmp_path / "out"
    assert cli(["analyze", str(pope_runs), "--out", str(out)]) == 0
    names = ["analysis.md", "overlap.csv", "overlap_n.csv", "overlap_samples.csv", "text_sensitivity.csv",
             "text_sensitivity_images.csv", "categories.csv", "agreement.csv"]
    for name in names:
        assert (out / name).stat().st_size > 0, name
    for name in ["overlap.png", "text_sensitivity.png", "categories.png"]:
        with Image.open(out / name) as image:
            image.verify()
    matrix = list(csv.DictReader((out / "overlap.csv").open()))
    cell = next(r for r in matrix if r["view"] == VZ)
    assert float(cell[VZ2]) == 1.0 and float(cell[FAR]) == 0.0
    counts = next(r for r in csv.DictReader((out / "overlap_n.csv").open()) if r["view"] == VZ)
    assert counts[SZ] == "7"
    samples = list(csv.DictReader((out / "overlap_samples.csv").open()))
    assert len(samples) == 15 * 7 and set(samples[0]) == {"doc_id", "view_a", "view_b", "jaccard"}
    sensitivity = {r["view"]: r for r in csv.DictReader((out / "text_sensitivity.csv").open())}
    assert float(sensitivity[VZ]["value"]) == 1.0 and sensitivity[VZ]["pairs"] == "4"
    markdown = (out / "analysis.md").read_text()
    assert f"# Selection analysis: {TASK} (5 runs)" in markdown
    for figure in ["overlap.png", "text_sensitivity.png", "categories.png"]:
        assert f"]({figure})" in markdown
    assert "1.0 = the method ignores the question" in markdown
    assert "| llava_visionzip:visionzip_4 | adversarial | 2 | 100 |" in markdown


def test_cli_mixed_tasks_need_task(pope_runs, tmp_path, capsys):
    rows = [{"doc_id": 0, "doc": {"question": "q", "answers": ["x"]}, "filtered_resps": ["x"], "anls": 1.0}]
    _write_run(pope_runs / "docvqa", "llava_visionzip", "visionzip_4", rows, task="docvqa_val_eff")
    assert cli(["analyze", str(pope_runs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pick one with --task" in err and "docvqa_val_eff (1 run)" in err and f"{TASK} (5 runs)" in err
    assert cli(["analyze", str(pope_runs), "--task", "docvqa_val_eff", "--out", str(tmp_path / "out")]) == 0
    assert cli(["analyze", str(pope_runs), "--task", "mme_eff", "--out", str(tmp_path / "out")]) == 2


def test_next_in_llm_layer_records_are_read_as_base_view_positions():
    """LLaVA-NeXT in-LLM records name packed-sequence positions in ``layers`` (past the 24 x 24 grid for
    the tiles); they are read, not refused: the base view's patches (the first N positions) remain."""
    from sparsezip_lmms.analysis.samples import read_selection

    selection = {
        "version": 1, "method": "fastv", "grid": [24, 24],
        "images": [{"image": "abc", "kept": "0-575", "crops": 3, "tile_grid": [1, 2],
                    "layers": {"2": "3-5,574,690-693,1500"}, "layer_tiles": {"2": ["", "114-117"]}}],
    }  # fmt: skip
    (image,) = read_selection(selection)
    assert image.layers == {2: frozenset({3, 4, 5, 574})}
    llava15 = {**selection, "images": [{"image": "abc", "kept": "0-575", "layers": {"2": "3-5,690"}}]}
    with pytest.raises(ValueError, match="past the last position 575"):  # LLaVA-1.5 records stay strict
        read_selection(llava15)


def test_a_failed_run_is_reported_as_failed_not_as_missing_selections(pope_runs):
    """Every request of a run failed: analyze says so (as the leaderboard does), and does not claim
    the selections were not logged."""
    rows = []
    for doc_id in POPE_DOCS:
        row = _pope_row(doc_id, "", None)
        row["eff_failed"] = {"error": "RuntimeError('out of memory')"}
        rows.append(row)
    _write_run(pope_runs / "broken", "llava_sparsezip", "sparsezip_8", rows)
    result = analyze([pope_runs])
    (summary,) = [r for r in result.runs if r.config == "sparsezip_8"]
    assert summary.failed == len(POPE_DOCS)
    notes = [n for n in result.notes if n.startswith("llava_sparsezip:sparsezip_8")]
    assert any("FAILED: 7 of 7 requests (first error: RuntimeError('out of memory'))" in n for n in notes), notes
    assert any("no selections: every request failed" in n for n in notes)
    assert not any("no selections logged" in n for n in notes)
    assert all(r.failed == 0 for r in result.runs if r.config != "sparsezip_8")


def test_llava15_and_next_selections_are_never_compared(pope_runs):
    """A LLaVA-NeXT run of the same task (base-view positions) is not compared patch by patch with the
    LLaVA-1.5 runs: its overlap cells stay empty and a note names the two families."""
    rows = []
    for doc_id in POPE_DOCS:
        selection = _selection(POPE_DOCS[doc_id][0], AGNOSTIC[POPE_DOCS[doc_id][0]])
        selection["images"][0].update(crops=3, tile_grid=[1, 2])
        rows.append(_pope_row(doc_id, "Yes", selection))
    _write_run(pope_runs / "next", "llava_visionzip", "visionzip_next_320", rows)
    result = analyze([pope_runs])
    nxt = "llava_visionzip:visionzip_next_320"
    assert _cell(result, nxt, VZ) == (None, 0) and _cell(result, VZ, VZ2)[0] == 1.0  # same kept sets, not compared
    assert any("not compared across model families" in n and nxt in n for n in result.notes), result.notes


# ----------------------------------------------------------------------------- runs of different settings


def _set_config(folder, stamp=STAMP, configs=None, **config):
    """Record lmms-eval's --batch_size / --limit (``config``) and the task's data (``configs``) in a run's results file."""
    path = folder / f"{stamp}_results.json"
    data = json.loads(path.read_text())
    data["config"].update(config)
    data["configs"].update(configs or {})
    path.write_text(json.dumps(data))
    return folder


def _same_selections(folder, model, config, answers):
    rows = [_pope_row(d, answers[d], _selection(POPE_DOCS[d][0], AGNOSTIC[POPE_DOCS[d][0]])) for d in POPE_DOCS]
    return _write_run(folder, model, config, rows)


def test_runs_of_different_batch_size_are_not_compared(tmp_path):
    """Two methods at batch size 1 and a third at batch size 2, all with the same kept patches: the
    batch-1 pair is compared as before, the batch-2 run with neither (no overlap, no agreement), and
    the notes, analysis.md and the CSVs name the setting and what differs."""
    root = tmp_path / "results"
    _set_config(_same_selections(root / "vz", "llava_visionzip", "visionzip_4", ANSWERS_ALL_YES), batch_size="1")
    _set_config(_same_selections(root / "sz", "llava_sparsezip", "sparsezip_4", ANSWERS_RIGHT), batch_size="1")
    _set_config(_same_selections(root / "far", "llava_random", "random_4", ANSWERS_ALL_YES), batch_size="2")
    result = analyze([root])
    assert [(g.label, g.runs) for g in result.settings] == [
        ("setting A (batch size 2)", [FAR]), ("setting B (batch size 1)", [SZ, VZ])]  # fmt: skip
    assert _cell(result, SZ, VZ) == (1.0, 7)  # same setting: compared as before
    assert _cell(result, FAR, VZ) == (None, 0) and _cell(result, FAR, SZ) == (None, 0)
    assert [(a.run_a, a.run_b) for a in result.agreement] == [(SZ, VZ)]
    assert not any(FAR in (s.view_a, s.view_b) for s in result.overlap.samples)
    assert any(n.startswith("not compared: setting A vs setting B: batch size 2 vs 1 (setting A: llava_random:random_4;")
               for n in result.notes), result.notes  # fmt: skip

    out = tmp_path / "out"
    assert cli(["analyze", str(root), "--out", str(out)]) == 0
    markdown = (out / "analysis.md").read_text()
    assert "## Settings" in markdown and "- setting A (batch size 2): llava_random:random_4" in markdown
    agreement_section = markdown.split("## 4. Answer agreement")[1]
    assert "### setting A (batch size 2)\n\none run only in this setting: nothing to compare" in agreement_section
    assert f"| {SZ} | {VZ} | 3 | 4 |" in agreement_section and FAR + " |" not in agreement_section.split("### setting B")[1]
    assert len(list(csv.reader((out / "agreement.csv").open()))) == 2  # header + the one comparable pair
    cell = next(r for r in csv.DictReader((out / "overlap.csv").open()) if r["view"] == VZ)
    assert cell[FAR] == "" and float(cell[SZ]) == 1.0
    runs = {r["run"]: r for r in csv.DictReader((out / "runs.csv").open())}
    assert runs[FAR]["setting"] == "setting A (batch size 2)" and runs[VZ]["batch size"] == "1"
    for name in ("overlap_A.png", "overlap_B.png", "categories_A.png", "categories_B.png"):
        assert f"]({name})" in markdown and (out / name).is_file(), name


@pytest.mark.parametrize(
    "config, configs, differs, labels",
    [
        ({"limit": 4}, None, "limit all vs 4", ("[limit all]", "[limit 4]")),
        ({}, {TASK: {"dataset_path": "/data/pope_b", "test_split": "test"}},
         "task data dataset_path /data/pope_a vs /data/pope_b", ("[task data dataset_path /data/pope_a]", "[task data dataset_path /data/pope_b]")),
    ],
)  # fmt: skip
def test_one_method_with_another_limit_or_data_is_two_runs_not_compared(tmp_path, config, configs, differs, labels):
    """The same model:config run twice, with ``--limit 4`` or on other data (the same task name): two
    runs, labelled by what differs, neither merged nor compared."""
    data_a = {TASK: {"dataset_path": "/data/pope_a", "test_split": "test"}}
    _set_config(_same_selections(tmp_path / "all", "llava_visionzip", "visionzip_4", ANSWERS_ALL_YES), configs=data_a)
    four = _write_run(tmp_path / "four", "llava_visionzip", "visionzip_4",
                      [_pope_row(d, "No", _selection(POPE_DOCS[d][0], AGNOSTIC[POPE_DOCS[d][0]])) for d in range(4)])  # fmt: skip
    _set_config(four, stamp=STAMP, configs=configs or data_a, **config)
    result = analyze([tmp_path])
    assert [r.label for r in result.runs] == [f"{VZ} {labels[0]}", f"{VZ} {labels[1]}"]
    assert [r.samples for r in result.runs] == [7, 4]  # two runs: the documents are not merged
    assert result.agreement == [] and result.overlap.mean[0][1] is None and result.overlap.samples == []
    assert sum(n.startswith(f"not compared: setting A vs setting B: {differs} (") for n in result.notes) == 1, result.notes
    assert [len(result.part(g).categories) for g in result.settings] == [4, 4]  # each run's own table


def test_runs_of_one_setting_are_compared_as_before(tmp_path):
    """Batch size 2 and --limit 4 recorded by both runs: one setting, compared, no setting notes or groups."""
    for name, model, config in (("vz", "llava_visionzip", "visionzip_4"), ("sz", "llava_sparsezip", "sparsezip_4")):
        _set_config(_same_selections(tmp_path / name, model, config, ANSWERS_RIGHT if name == "sz" else ANSWERS_ALL_YES),
                    batch_size="2", limit=4, configs={TASK: {"dataset_path": "/data/pope", "test_split": "test"}})  # fmt: skip
    result = analyze([tmp_path])
    assert len(result.settings) == 1 and [(r.batch_size, r.limit) for r in result.runs] == [("2", "4"), ("2", "4")]
    assert _cell(result, SZ, VZ) == (1.0, 7)
    assert [(a.run_a, a.run_b, a.n_agree, a.n_disagree) for a in result.agreement] == [(SZ, VZ, 3, 4)]
    assert not any("not compared" in n for n in result.notes)
    assert "### setting" not in render_markdown(result)


def test_report_shows_settings_apart(tmp_path, monkeypatch):
    """report.html takes analyze's groups: one table per setting under its label, the note, no cross-setting pair."""
    from sparsezip_lmms.analysis import report

    # these fake runs name no dataset: the gallery draws on a grey canvas without importing `datasets`
    monkeypatch.setattr(report, "dataset_images", lambda *args: ({}, "no dataset in this test"))
    root = tmp_path / "results"
    _set_config(_same_selections(root / "vz", "llava_visionzip", "visionzip_4", ANSWERS_ALL_YES), batch_size="1")
    _set_config(_same_selections(root / "sz", "llava_sparsezip", "sparsezip_4", ANSWERS_RIGHT), batch_size="1")
    _set_config(_same_selections(root / "far", "llava_random", "random_4", ANSWERS_ALL_YES), batch_size="2")
    page = report.build_report([root], tmp_path / "report.html", gallery=1).read_text()
    assert "not compared: setting A vs setting B: batch size 2 vs 1" in page
    assert page.count("<h4>setting A (batch size 2)</h4>") == 5  # categories, overlap, sensitivity, agreement, gallery
    agreement_b = page.split('id="agreement-pope_eff_mini_B"')[1].split("</table>")[0]
    assert SZ in agreement_b and VZ in agreement_b
    agreement_a = page.split('id="agreement-pope_eff_mini_A"')[1].split("</table>")[0]
    assert "<td" not in agreement_a  # one run: no pair
    overlap_b = page.split('id="overlap-pope_eff_mini_B"')[1].split("</table>")[0]
    assert FAR not in overlap_b
