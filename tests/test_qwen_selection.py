"""Qwen2.5-VL selection records (``qwen.selection``) and their overlays, on the tiny random checkpoint.

Each image of a request is recorded on its own merged grid ([h/2, w/2] of ``image_grid_thw``, images of
several sizes in one batch); a record is the same whatever batch its request ran in; the analysis reads the
records back and the overlay draws one 28 × 28-pixel cell per merged token on the image as Qwen resized it.
"""

from __future__ import annotations

import pytest
import torch

from sparsezip_lmms.analysis.overlay import overlay_figure, panel_picture, panels_of, qwen_view
from sparsezip_lmms.analysis.samples import read_selection
from sparsezip_lmms.analysis.selection import parse_ranges
from sparsezip_lmms.llava.selection import image_fingerprint
from sparsezip_lmms.models.qwen_pipeline import resize_image, smart_resize

from _requests import make_requests

MIN_PIXELS, MAX_PIXELS = 3136, 50176  # 56² .. 224²: at most 64 merged tokens per image
GEN = {"max_new_tokens": 2, "temperature": 0, "do_sample": False}
# (width, height) of each prompt's images: four sizes, one prompt with two images
PROMPT_SIZES = [[(224, 224)], [(300, 170)], [(120, 260), (168, 112)], [(168, 112)]]
CONFIGS = {"visionzip_qwen": "qwen2_5_vl_visionzip", "dart_qwen": "qwen2_5_vl_dart"}


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    from sparsezip_lmms.demo.tiny_qwen import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen_selection") / "tiny-qwen2.5-vl")


def _image(width, height, seed):
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=gen) * 255).to(torch.uint8).numpy())


def _docs():
    seeds = iter(range(100))
    return [([_image(w, h, next(seeds)) for w, h in sizes], f"Is there a cat{'?' * (i + 1)}") for i, sizes in enumerate(PROMPT_SIZES)]


def _merged_grid(image) -> list[int]:
    """[rows, cols] of an image's merged tokens: its smart_resize size in 28-pixel cells."""
    height, width = smart_resize(image.height, image.width, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return [height // 28, width // 28]


@pytest.fixture(scope="module")
def runs(qwen_checkpoint):
    """{config: (docs, records of the four requests in one batch, the same requests one by one)}."""
    from lmms_eval.models import get_model

    out = {}
    for config, model_id in CONFIGS.items():
        lmm = get_model(model_id)(pretrained=str(qwen_checkpoint), device="cpu", dtype="float32", config=config,
                                  min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)  # fmt: skip
        docs = _docs()
        requests = make_requests(lmm, docs, GEN, task="selection")
        items = [lmm._prepare(i, request) for i, request in enumerate(requests)]
        together = [record for _, record in lmm._run_batch(items)]
        alone = [record for item in items for _, record in lmm._run_batch([item])]
        out[config] = (docs, together, alone, lmm)
    return out


def test_vision_side_records_give_each_image_its_own_grid(runs):
    docs, records, _, _ = runs["visionzip_qwen"]
    for (images, _), record in zip(docs, records):
        selection = record.selection
        assert record.error is None and selection["version"] == 1 and selection["method"] == "visionzip"
        assert len(selection["images"]) == len(images)
        for image, entry, n, kept in zip(images, selection["images"], record.extra["image_tokens"], record.extra["image_tokens_kept"]):
            rows, cols = entry["grid"]
            assert entry["grid"] == _merged_grid(image) and rows * cols == n
            assert entry["image"] == image_fingerprint(image) and entry["cls"] is False
            picked = parse_ranges(entry["kept"], n)
            assert len(picked) == entry["tokens"] == kept == int(0.65 * n) + max(int(0.05 * n), 1)
        assert sum(entry["tokens"] for entry in selection["images"]) == record.visual_tokens
        grids = {tuple(entry["grid"]) for entry in selection["images"]}
        assert selection["grid"] == (list(grids.pop()) if len(grids) == 1 else None)  # the two-image prompt: null
        read = read_selection(selection)  # the analyses read every image on its own grid
        assert [r.view for r in read] == ["qwen2_5_vl"] * len(images)
        assert [len(r.kept) for r in read] == [entry["tokens"] for entry in selection["images"]]


def test_in_llm_records_hold_what_each_pruning_layer_kept(runs):
    docs, records, _, _ = runs["dart_qwen"]
    for (images, _), record in zip(docs, records):
        selection = record.selection
        if len(images) != 1:  # DART prunes one image per prompt: the two-image prompt ran unpruned
            assert "unpruned" in record.extra and selection["method"] == "none" and selection["grid"] is None
            assert [entry["grid"] for entry in selection["images"]] == [_merged_grid(image) for image in images]
            assert all("layers" not in entry and entry["tokens"] == len(parse_ranges(entry["kept"])) for entry in selection["images"])
            continue
        (entry,) = selection["images"]
        (n,), (kept,) = record.extra["image_tokens"], record.extra["image_tokens_kept"]
        assert selection["method"] == "dart" and entry["grid"] == selection["grid"] == _merged_grid(images[0])
        assert entry["tokens"] == n and parse_ranges(entry["kept"]) == list(range(n))  # every merged token enters
        assert list(entry["layers"]) == ["1"]  # dart_qwen prunes at layer 2's input: layer 1's output
        layer_kept = parse_ranges(entry["layers"]["1"], n)
        assert len(layer_kept) == kept == 4 + 8 * int(n * (1 - 0.778) / 8) < n
        (read,) = read_selection(selection)
        assert read.view == "qwen2_5_vl" and read.layers == {1: frozenset(layer_kept)}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_records_do_not_depend_on_the_batch(runs, config):
    """Four prompts of mixed image sizes (one with two images) in one batch: each record as alone."""
    _, together, alone, _ = runs[config]
    assert [r.selection for r in together] == [r.selection for r in alone]
    assert all(r.selection is not None for r in together)


def test_no_record_without_log_selection(runs):
    docs, _, _, lmm = runs["visionzip_qwen"]
    lmm.log_selection = False
    try:
        item = lmm._prepare(0, make_requests(lmm, docs[:1], GEN, task="selection")[0])
        ((_, record),) = lmm._run_batch([item])
    finally:
        lmm.log_selection = True
    assert item.fingerprints is None and record.error is None and record.selection is None


def _bright_cells(picture, grid) -> set[int]:
    """Merged tokens whose 28 × 28 cell is drawn undimmed (its centre pixel as bright as the grey image)."""
    rows, cols = grid
    pixels = picture.load()
    return {r * cols + c for r in range(rows) for c in range(cols) if pixels[c * 28 + 14, r * 28 + 14][0] > 150}


def test_overlay_draws_each_kept_token_as_a_cell_of_the_resized_image(runs, tmp_path):
    from PIL import Image

    docs, records, _, _ = runs["visionzip_qwen"]
    (image,), _ = docs[1]  # 300 × 170: a grid of its own shape, not square
    selection = records[1].selection
    (entry,) = selection["images"]
    grid, kept = tuple(entry["grid"]), set(parse_ranges(entry["kept"]))
    # the view is the image exactly as the adapter resized it for the processor
    assert qwen_view(image, grid).tobytes() == resize_image(image, MIN_PIXELS, MAX_PIXELS).tobytes()

    grey = Image.new("RGB", image.size, (200, 200, 200))
    (panel,) = panels_of(entry, (24, 24), "qwen2_5_vl_visionzip")  # the image's own grid wins over the one given
    assert panel.grid == grid and panel.pixels == (grid[0] * 28, grid[1] * 28) and panel.kept == frozenset(kept)
    picture = panel_picture(panel, Image.new("RGB", (336, 336)), grey)
    assert picture.size == (grid[1] * 28, grid[0] * 28)
    assert _bright_cells(picture, grid) == kept and 0 < len(kept) < grid[0] * grid[1]

    # in-LLM: one panel per pruning layer, each on the image's own grid
    _, dart_records, _, _ = runs["dart_qwen"]
    (dart_entry,) = dart_records[1].selection["images"]
    (layer_panel,) = panels_of(dart_entry, tuple(dart_records[1].selection["grid"]), "qwen2_5_vl_dart")
    layer_picture = panel_picture(layer_panel, grey, grey)
    assert _bright_cells(layer_picture, grid) == set(parse_ranges(dart_entry["layers"]["1"]))

    path = overlay_figure(grey, [panel, layer_panel], tmp_path / "qwen.png", title="Q", image=grey)
    assert path.is_file() and Image.open(path).format == "PNG"


def test_explain_on_a_qwen_checkpoint(runs, qwen_checkpoint, tmp_path):
    """``explain --pretrained <Qwen2.5-VL>``: CONFIG entries pick the Qwen ids, every entry runs on the one
    loaded checkpoint through the batched path of an lmms-eval run (the same selection as the request's
    record), the figure draws each panel on the image as Qwen resized it."""
    import json

    from PIL import Image

    from sparsezip_lmms.analysis.explain import main

    docs, records, _, _ = runs["visionzip_qwen"]
    (image,), question = docs[1]
    image.save(tmp_path / "image.png")
    argv = [
        "--pretrained", str(qwen_checkpoint), "--image", str(tmp_path / "image.png"), "--question", question,
        "--configs", "visionzip_qwen,qwen2_5_vl_dart,cdpruner_qwen", "--device", "cpu", "--max-new-tokens", "2",
        "--model-args", f"dtype=float32,min_pixels={MIN_PIXELS},max_pixels={MAX_PIXELS}",
        "--out", str(tmp_path / "explain.png"), "--json", str(tmp_path / "explain.json"),
    ]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((tmp_path / "explain.json").read_text())
    assert [r["label"].split(":")[0] for r in rows] == ["qwen2_5_vl_visionzip", "qwen2_5_vl_dart", "qwen2_5_vl_cdpruner"]
    assert all(r["error"] is None for r in rows)
    assert rows[0]["selection"]["images"] == records[1].selection["images"]  # as the lmms-eval request kept it
    assert rows[0]["visual_tokens"] == records[1].visual_tokens
    assert rows[1]["visual_tokens_per_layer"] and "after layer 1" in rows[1]["kept"]
    assert Image.open(tmp_path / "explain.png").format == "PNG"
    # a LLaVA model id cannot run on the Qwen checkpoint: that entry fails by name, the others are drawn
    argv[argv.index("--configs") + 1] = "visionzip_qwen,llava_fastv"
    assert main(argv) == 1
    rows = json.loads((tmp_path / "explain.json").read_text())
    assert rows[0]["error"] is None and "does not run Qwen2.5-VL checkpoints" in rows[1]["error"]