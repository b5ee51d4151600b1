"""LLaVA-NeXT overlays: the tile mosaic reproduces llava-hf's processor, tile selections land on the
right pixels, and the gallery and explain figures draw the base view with the tiles (offline, no model)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sparsezip_lmms.analysis.explain import Choice, Explained, explain_figure
from sparsezip_lmms.analysis.overlay import (
    BASE_GAP,
    DROPPED_ALPHA,
    TILE_GAP,
    draw_next_panel,
    draw_tiles,
    layout,
    model_view,
    overlay_figure,
    panels_of,
    tile_origin,
    tile_view,
)
from sparsezip_lmms.analysis.report import gallery_section
from sparsezip_lmms.analysis.samples import Run
from sparsezip_lmms.analysis.selection import format_ranges

CROP = 336
PATCH = 14  # 24 x 24 patches per crop
GRID = (24, 24)
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # the tiny NeXT checkpoint's
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def textured(width: int, height: int) -> Image.Image:
    """A smooth gradient with a few shapes: every region of it differs from every other."""
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    pixels = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)), (x + y) / 2], axis=-1)
    image = Image.fromarray((40 + pixels * 180).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 10, height // 8, width // 2, height // 2), fill=(250, 200, 10))
    draw.rectangle((width * 6 // 10, height * 5 // 10, width * 9 // 10, height * 9 // 10), fill=(200, 20, 60))
    return image


def processor_crops(image: Image.Image, pinpoints: list[list[int]]) -> np.ndarray:
    """[crops, 336, 336, 3] pixel values (0..255) llava-hf's processor makes of ``image``: base view, tiles."""
    from transformers import LlavaNextImageProcessor

    processor = LlavaNextImageProcessor(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, do_center_crop=True,
        image_mean=CLIP_MEAN.tolist(), image_std=CLIP_STD.tolist(), image_grid_pinpoints=pinpoints, do_pad=True,
    )  # fmt: skip
    values = np.asarray(processor(images=[image], return_tensors="np")["pixel_values"][0], dtype=np.float64)  # [crops, 3, H, W]
    return (values.transpose(0, 2, 3, 1) * CLIP_STD + CLIP_MEAN) * 255


def anyres_grid(image: Image.Image, pinpoints: list[list[int]]) -> tuple[int, int]:
    """(rows, cols) of the tile grid the processor picks for ``image``."""
    from transformers.image_processing_utils import select_best_resolution

    height, width = select_best_resolution((image.height, image.width), pinpoints)
    return height // CROP, width // CROP


def selection(kept: list[int], merged: tuple[list[int], ...] = (), cls: bool = False) -> dict:
    return {"tokens": len(kept) + len(merged) + cls, "cls": cls, "kept": format_ranges(kept),
            "merged": [format_ranges(m) for m in merged]}  # fmt: skip


def next_entry(tile_grid: tuple[int, int], tiles: list[dict], base: dict | None = None, **extra) -> dict:
    """A LLaVA-NeXT image record with a base view and ``tiles`` (row-major over ``tile_grid``)."""
    base = base or selection([0, 1, 2])
    total = base["tokens"] + sum(t["tokens"] for t in tiles)
    return {"image": "0" * 12, **base, "tokens": total, "base_tokens": base["tokens"],
            "crops": 1 + len(tiles), "tile_grid": list(tile_grid), "tiles": tiles, **extra}  # fmt: skip


def patch_centre(patch: int, tile: tuple[int, int] = (0, 0), origin=None) -> tuple[int, int]:
    """(x, y) of patch ``patch``'s centre in tile ``tile`` of a mosaic without gaps (or at ``origin``)."""
    row, col = divmod(patch, GRID[1])
    x0, y0 = origin if origin is not None else (tile[1] * CROP, tile[0] * CROP)
    return x0 + col * PATCH + PATCH // 2, y0 + row * PATCH + PATCH // 2


# ----------------------------------------------------------------------------- the tile view


@pytest.mark.parametrize(
    ("size", "pinpoints"),
    [((500, 300), PINPOINTS), ((300, 500), PINPOINTS), ((500, 300), [[672, 672]]), ((333, 517), [[1008, 336]])],
)
def test_tile_view_reproduces_the_processor(size, pinpoints):
    image = textured(*size)
    rows, cols = anyres_grid(image, pinpoints)
    view = tile_view(image, (rows, cols))
    assert view.size == (cols * CROP, rows * CROP)
    crops = processor_crops(image, pinpoints)  # [1 + rows*cols, 336, 336, 3]
    assert len(crops) == 1 + rows * cols
    mosaic = np.asarray(view, dtype=np.float64)  # [rows*336, cols*336, 3]
    for index, expected in enumerate(crops[1:]):
        r, c = divmod(index, cols)
        tile = mosaic[r * CROP : (r + 1) * CROP, c * CROP : (c + 1) * CROP]
        assert np.abs(tile - expected).mean() < 2.0, f"tile {(r, c)} differs from the processor's"
        padding = expected.max(axis=-1) < 0.5  # [336, 336] the processor's black padding
        assert np.array_equal(padding, tile.max(axis=-1) < 0.5), f"tile {(r, c)} is padded elsewhere"
    base = np.asarray(model_view(image, squash=True), dtype=np.float64)
    assert np.abs(base - crops[0]).mean() < 2.0


def test_tile_view_pads_both_sides_evenly():
    view = np.asarray(tile_view(Image.new("RGB", (500, 300), (255, 255, 255)), (1, 2)))  # 560 x 336 in 672 x 336
    lit = np.nonzero(view[CROP // 2, :, 0] > 128)[0]
    assert (lit[0], lit[-1]) == (56, 615)
    view = np.asarray(tile_view(Image.new("RGB", (500, 300), (255, 255, 255)), (2, 2)))  # 672 x 404 in 672 x 672
    lit = np.nonzero(view[:, CROP, 0] > 128)[0]
    assert (lit[0], lit[-1]) == (134, 537)


# ----------------------------------------------------------------------------- drawing the tiles


def test_a_kept_tile_patch_is_bright_where_it_lies_and_a_dropped_one_dark():
    image = Image.new("RGB", (500, 300), (255, 255, 255))  # 2x2 grid: the image covers rows 134..537
    kept_top_right, kept_bottom_left = 20 * 24 + 3, 2 * 24 + 5  # (row 20, col 3) and (row 2, col 5)
    tiles = [selection([]), selection([kept_top_right]), selection([kept_bottom_left], ([2 * 24 + 7],)), selection([])]
    (panel,) = panels_of(next_entry((2, 2), tiles), GRID, "method")
    mosaic = tile_view(image, panel.tile_grid)
    dark = 255 * (1 - DROPPED_ALPHA) + 1

    flat = np.asarray(draw_tiles(mosaic, panel, gap=0))  # same geometry as the tile view
    assert flat.shape == (2 * CROP, 2 * CROP, 3)
    for patch, tile in ((kept_top_right, (0, 1)), (kept_bottom_left, (1, 0))):
        x, y = patch_centre(patch, tile)
        assert flat[y, x].min() == 255, f"kept patch {patch} of tile {tile} is not bright"
        x, y = patch_centre(patch + 1, tile)
        assert flat[y, x].max() < dark, f"dropped patch {patch + 1} of tile {tile} is not dark"
    x, y = patch_centre(kept_top_right, (0, 0))  # the same patch, dropped in tile (0, 0)
    assert flat[y, x].max() < dark
    x, y = patch_centre(2 * 24 + 7, (1, 0))  # merged: tinted, neither white nor dark
    assert 0 < flat[y, x].std() and flat[y, x].max() > dark

    spaced = np.asarray(draw_tiles(mosaic, panel))  # tiles TILE_GAP apart
    assert spaced.shape == (2 * CROP + TILE_GAP, 2 * CROP + TILE_GAP, 3)
    x, y = patch_centre(kept_bottom_left, origin=tile_origin(1, 0))
    assert spaced[y, x].min() == 255 and spaced[y, x + PATCH].max() < dark
    assert spaced[:, CROP : CROP + TILE_GAP].min() == 255  # the white line between the tile columns

    picture = np.asarray(draw_next_panel(model_view(image, squash=True), mosaic, panel))
    assert picture.shape == (2 * CROP + TILE_GAP, CROP + BASE_GAP + 2 * CROP + TILE_GAP, 3)
    x0, y0 = tile_origin(0, 1)
    x, y = patch_centre(kept_top_right, origin=(CROP + BASE_GAP + x0, y0))
    assert picture[y, x].min() == 255 and picture[y, x + PATCH].max() < dark
    base_top = (2 * CROP + TILE_GAP - CROP) // 2  # the base view, centred vertically
    x, y = patch_centre(1, origin=(0, base_top))
    assert picture[y, x].min() == 255 and picture[y + PATCH, x].max() < dark  # base kept "0-2", 25 dropped


# ----------------------------------------------------------------------------- panels and figures


def test_panels_of_next_records():
    tiles = [selection([1, 2], ([3, 4],), cls=True) for _ in range(4)]
    (panel,) = panels_of(next_entry((2, 2), tiles, newlines=24), GRID, "m:c", "yes")
    assert panel.tile_grid == (2, 2) and len(panel.tiles) == 4
    assert panel.tiles[0].kept == frozenset({1, 2}) and panel.tiles[0].merged == ((3, 4),)
    assert panel.kept == frozenset({0, 1, 2})
    assert panel.title == 'm:c\n19 tokens · base view 3 · 4 tiles (2×2) · 24 newlines\nbase: 3 kept\n"yes"'

    in_llm = {"image": "x", "crops": 3, "tile_grid": [1, 2], "layers": {"2": "0-9"}, "newlines": 2}
    (layer,) = panels_of(in_llm, GRID, "m:c")
    assert layer.tile_grid is None and layer.title == "m:c\nafter layer 2: 10 patches · 2 newlines"
    no_tiles = {"image": "x", "tokens": 64, "kept": "0-63", "crops": 3, "tile_grid": [1, 2]}
    (base_only,) = panels_of(no_tiles, GRID, "m:c")
    assert base_only.tile_grid is None and base_only.title == "m:c\n64 tokens · 64 kept\nbase view of 3 crops"
    (llava15,) = panels_of({"image": "x", "tokens": 5, "cls": True, "kept": "0-2", "merged": ["3-4"]}, GRID, "m:c", "")
    assert llava15.title == "m:c\n5 tokens · CLS · 3 kept · 1 merged\n(empty answer)" and llava15.tile_grid is None
    incomplete = next_entry((2, 2), tiles[:3])  # tiles missing: the base view only
    assert panels_of(incomplete, GRID, "m:c")[0].tile_grid is None


def test_panels_of_in_llm_next_records_draw_each_layer_by_tile():
    in_llm = {
        "image": "x", "crops": 3, "tile_grid": [1, 2], "layers": {"2": "0-9,600-604,700", "6": "0-4,600"},
        "layer_tiles": {"2": ["3-7", "0"], "6": ["3", ""]}, "layer_newlines": {"2": 1, "6": 0},
    }  # fmt: skip
    first, second = panels_of(in_llm, GRID, "m:c")
    assert first.tile_grid == (1, 2) and first.kept == frozenset(range(10))  # packed 600-604, 700 are tiles
    assert [t.kept for t in first.tiles] == [frozenset(range(3, 8)), frozenset({0})]
    assert first.title == "m:c\nafter layer 2: 16 tokens · base view 10 · tiles 6 · 1 newlines"
    assert second.title == "m:c\nafter layer 6: 6 tokens · base view 5 · tiles 1" and second.tiles[1].kept == frozenset()
    missing = {**in_llm, "layer_tiles": {"2": ["3-7"]}}  # a tile short: that layer shows packed positions
    assert panels_of(missing, GRID, "m:c")[0].tile_grid is None


def test_layout_spans_columns():
    assert layout([1] * 5, 4) == [(0, 0, 1), (0, 1, 1), (0, 2, 1), (0, 3, 1), (1, 0, 1)]
    assert layout([1, 3, 2, 1], 5) == [(0, 0, 1), (0, 1, 3), (1, 0, 2), (1, 2, 1)]
    assert layout([1, 6], 4) == [(0, 0, 1), (1, 0, 4)]


def test_overlay_figure_draws_next_panels_wider(tmp_path):
    image = textured(500, 300)
    entry = next_entry((1, 2), [selection(list(range(0, 576, 3))), selection(list(range(0, 576, 5)))])
    panels = panels_of(entry, GRID, "m:c", "yes") + panels_of({"image": "x", "crops": 3, "layers": {"2": "0-99"}}, GRID, "n:d")
    view = model_view(image, squash=True)
    tiled = Image.open(overlay_figure(view, panels, tmp_path / "tiled.png", columns=5, image=image)).size
    base_only = Image.open(overlay_figure(view, panels, tmp_path / "base.png", columns=5)).size
    assert tiled[0] > base_only[0] and tiled[1] == base_only[1]  # one row: image, the 1x2 panel (3 columns), n:d


# ----------------------------------------------------------------------------- gallery and explain


def write_run(folder, task: str, model: str, config: str, entry: dict, dataset_dir) -> Run:
    """A results file naming the dataset and a samples file with one logged request (doc 0)."""
    folder.mkdir(parents=True)
    results = {"configs": {task: {"dataset_path": str(dataset_dir), "dataset_kwargs": {"load_from_disk": True}, "test_split": "test"}}}
    (folder / "stamp_results.json").write_text(json.dumps(results))
    row = {"doc_id": 0, "doc": {"question": "Is there a disc?"}, "target": "yes", "filtered_resps": ["yes"],
           "eff_selection": {"version": 1, "method": config, "grid": list(GRID), "images": [entry]}}  # fmt: skip
    samples = folder / f"stamp_samples_{task}.jsonl"
    samples.write_text(json.dumps(row) + "\n")
    return Run(model, config, "tiny-next", "float32", task, sources=[str(samples)])


@pytest.fixture
def dataset_dir(tmp_path):
    import datasets

    image = textured(500, 300)
    rows = datasets.Dataset.from_dict({"image": [image], "question": ["Is there a disc?"]}).cast_column("image", datasets.Image())
    path = tmp_path / "dataset"
    datasets.DatasetDict({"test": rows}).save_to_disk(str(path))
    return path, image


def test_gallery_draws_base_view_and_tiles(tmp_path, dataset_dir):
    import base64
    import io
    import re

    from sparsezip_lmms.llava.selection import image_fingerprint

    path, image = dataset_dir
    fingerprint = image_fingerprint(image)
    natural = next_entry((1, 2), [selection(list(range(40))), selection(list(range(100, 160)))], image=fingerprint)
    forced = next_entry((2, 2), [selection([i]) for i in range(4)], image=fingerprint)  # a method forcing 2x2
    in_llm = {"image": fingerprint, "crops": 3, "tile_grid": [1, 2], "layers": {"2": "0-99"}}
    task = "mini_mme"
    runs = [
        write_run(tmp_path / "a", task, "llava_visionzip", "visionzip_64", natural, path),
        write_run(tmp_path / "b", task, "llava_sparsezip", "sparsezip_64", forced, path),
    ]
    work = tmp_path / "work"
    work.mkdir()
    page = gallery_section(task, runs, work, count=1)
    assert "base view, then the tiles)" in page and "their base view" not in page and "differs" not in page
    (encoded,) = re.findall(r'<img class="overlay" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    tiled = Image.open(io.BytesIO(base64.b64decode(encoded))).size

    runs.append(write_run(tmp_path / "c", task, "llava_sparsevlm", "sparsevlm_64", in_llm, path))
    page = gallery_section(task, runs, work, count=1)
    assert "runs without tile records: their base view" in page
    assert (work / f"gallery_{task}_0_next.png").is_file()

    base_only = {"image": fingerprint, "tokens": 64, "kept": "0-63", "crops": 3, "tile_grid": [1, 2]}
    page = gallery_section(task, [write_run(tmp_path / "d", task, "llava_visionzip", "visionzip_64", base_only, path)], work, count=1)
    assert "(LLaVA-NeXT runs: their base view)" in page
    (encoded,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).size[0] < tiled[0]


def test_explain_figure_of_a_next_checkpoint(tmp_path):
    from transformers import LlavaNextImageProcessor

    image = textured(500, 300)
    processor = LlavaNextImageProcessor(size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP},
                                        do_center_crop=True, image_grid_pinpoints=PINPOINTS, do_pad=True)  # fmt: skip
    lmm = SimpleNamespace(geometry=SimpleNamespace(any_resolution=True), _image_processor=SimpleNamespace(image_processor=processor))
    entry = next_entry((1, 2), [selection(list(range(50))), selection(list(range(300, 360)))])
    record = {"version": 1, "method": "visionzip", "grid": list(GRID), "images": [entry]}
    results = [Explained(Choice("llava_visionzip", "visionzip_64", {}), "yes", entry["tokens"], record)]
    tiled = Image.open(explain_figure(image, results, lmm, tmp_path / "next.png", title="Q: disc?")).size
    llava15 = SimpleNamespace(geometry=SimpleNamespace(any_resolution=False), _image_processor=lmm._image_processor)
    plain = Image.open(explain_figure(image, results, llava15, tmp_path / "plain.png", title="Q: disc?")).size
    assert tiled[0] > plain[0]
