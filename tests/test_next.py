"""LLaVA-NeXT (any-resolution) checkpoints: keep_all is the stock NeXT model, batched over mixed
aspect ratios; VisionZip compresses every crop in its official NeXT order; methods that do not
handle the tiles yet are refused before any weight is loaded."""

from __future__ import annotations

import pytest
import torch

from sparsezip_lmms.analysis.selection import parse_ranges
from sparsezip_lmms.config import ConfigError
from sparsezip_lmms.demo.mini_datasets import mme_rows, pope_rows
from sparsezip_lmms.efficiency.flops import Dims, clip_layer_flops
from sparsezip_lmms.efficiency.records import get_record

from _requests import make_requests, user_turn

GEN = {"max_new_tokens": 4, "temperature": 0, "do_sample": False}
SUFFIX = "\nAnswer the question using a single word or phrase."


def _docs():
    """POPE and MME questions on images of six sizes and aspect ratios (3, 4 and 5 crops)."""
    rows = pope_rows(12, 0, questions_per_image=3)[::2] + mme_rows(4)[::2]
    return [([row["image"]], row["question"] + SUFFIX) for row in rows]


def _model(model_id, checkpoint, batch_size=1, **args):
    from lmms_eval.models import get_model

    return get_model(model_id)(pretrained=str(checkpoint), device="cpu", dtype="float64", batch_size=batch_size, **args)


@pytest.fixture(scope="module")
def stock(tiny_next_checkpoint):
    """Plain transformers LLaVA-NeXT, one request at a time: (answers, placeholder counts, crops)."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_checkpoint, dtype=torch.float64).eval()
    processor = AutoProcessor.from_pretrained(tiny_next_checkpoint)
    answers, counts, crops = [], [], []
    for images, question in _docs():
        text = processor.apply_chat_template(user_turn([None], question), add_generation_prompt=True, tokenize=False)
        inputs = processor(images=images, text=text, return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.float64)
        out = model.generate(**inputs, max_new_tokens=GEN["max_new_tokens"], do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        eos = processor.tokenizer.eos_token_id
        answers.append(processor.tokenizer.decode(new[: new.index(eos)] if eos in new else new, skip_special_tokens=True))
        counts.append(int((inputs["input_ids"] == model.config.image_token_id).sum()))
        crops.append(int(image_size_to_num_patches(inputs["image_sizes"][0].tolist(), model.config.image_grid_pinpoints, 336)))
    return answers, counts, crops


@pytest.mark.parametrize("batch_size", [1, 4])
def test_keep_all_on_next_is_the_stock_model(batch_size, tiny_next_checkpoint, stock):
    answers, counts, crops = stock
    assert len(set(answers)) > 1 and len(set(counts)) > 2 and set(crops) >= {3, 5}  # a test that can fail
    lmm = _model("llava_hf_timed", tiny_next_checkpoint, batch_size=batch_size)
    assert lmm.geometry.any_resolution
    docs = _docs()
    assert [r.text for r in lmm.generate_until(make_requests(lmm, docs, GEN))] == answers
    dims = Dims.from_llava_config(lmm.model.config, vision_layers_run=lmm.model.config.vision_config.num_hidden_layers)
    for i, (count, n_crops) in enumerate(zip(counts, crops)):
        record = get_record("unit", "test", i)
        assert record.visual_tokens == count  # base view + unpadded tiles + one newline per row
        assert record.selection["images"][0]["crops"] == n_crops
        clip = n_crops * dims.vision_layers_run * clip_layer_flops(dims.vision_tokens, dims.vision_width, dims.vision_mlp)
        projector = n_crops * 576 * (dims.vision_width * dims.llm_width + dims.llm_width * dims.llm_width)
        assert record.vision_flops == clip + projector  # CLIP and the projector on every crop


@pytest.mark.parametrize("model_id", ["llava_divprune", "llava_cdpruner"])
def test_methods_without_next_support_are_refused_before_loading(model_id, tiny_next_checkpoint, monkeypatch):
    from lmms_eval.models.chat.llava_hf import LlavaHf

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(LlavaHf, "__init__", never)
    with pytest.raises(ConfigError, match="LLaVA-NeXT .*does not run on NeXT's tiles yet"):
        _model(model_id, tiny_next_checkpoint)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "model, config, low, high",
    [
        ("llava_hf_timed", "keep_all", 1000, 2928), ("llava_visionzip", "visionzip_next_320", 192, 320),
        ("llava_sparsezip", "sparsezip_64", 3, 320), ("llava_sparsevlm", "sparsevlm2_64", 30, 400),
        ("llava_fastv", "fastv_64", 30, 400),
    ],
)  # fmt: skip
def test_cli_runs_next(model, config, low, high, tmp_path, mini_tasks, tiny_next_checkpoint):
    from sparsezip_lmms.demo.harness import lmms_eval_command, run_lmms_eval

    include, names = mini_tasks
    out = tmp_path / "next"
    cmd = lmms_eval_command(
        model, f"pretrained={tiny_next_checkpoint},config={config},dtype=float32", [names["pope"], names["mme"]], out,
        include_path=include, batch_size=4, extra=["--gen_kwargs", "max_new_tokens=2"],
    )  # fmt: skip
    run = run_lmms_eval(cmd, out, timeout=1200)
    for task in (names["pope"], names["mme"]):
        metrics = {k.split(",")[0]: v for k, v in run.results["results"][task].items()}
        assert metrics["eff_failed"] == 0 and low <= metrics["eff_visual_tokens"] <= high


# ----------------------------------------------------------------------------- VisionZip, crop by crop


def _official_visionzip_layout(crop_tokens, index, grid, side=24):
    """The official VisionZip NeXT order for one image, one crop at a time: the base view's tokens,
    the tiles' kept patches read row-major over the stitched tile grid, each tile's CLS, each tile's
    contextual tokens. crop_tokens / index: per crop [T, D] and [T] (CLIP positions, -1 merged)."""
    rows, cols = grid
    base, tiles = crop_tokens[0], list(zip(crop_tokens[1:], index[1:]))
    grid_tokens = {}
    for t, (tokens, idx) in enumerate(tiles):
        for token, position in zip(tokens, idx.tolist()):
            if position > 0:
                r, c = divmod(position - 1, side)
                grid_tokens[((t // cols) * side + r, (t % cols) * side + c)] = token
    dominant = [grid_tokens[key] for key in sorted(grid_tokens)]
    cls = [tokens[idx == 0][0] for tokens, idx in tiles]
    contextual = [token for tokens, idx in tiles for token in tokens[idx < 0]]
    return torch.stack([*base, *dominant, *cls, *contextual])


def test_visionzip_on_next_compresses_every_crop_in_the_official_order(tiny_next_checkpoint):
    from sparsezip_lmms.config import load_config
    from sparsezip_lmms.llava.features import image_tokens
    from sparsezip_lmms.llava.next import crop_counts, tile_grids

    lmm = _model("llava_visionzip", tiny_next_checkpoint, config="visionzip_next_320")
    processor, config = lmm._image_processor, load_config("visionzip_next_320")
    images = [row["image"] for row in pope_rows(12, 0, questions_per_image=3)[::3]] + [mme_rows(4)[2]["image"]]
    inputs = processor.image_processor(images, return_tensors="pt")
    pixels, sizes = inputs["pixel_values"].to(torch.float64), inputs["image_sizes"]
    counts, grids = crop_counts(sizes, lmm.model.config), tile_grids(sizes, lmm.model.config)
    assert len(set(counts)) > 1  # several tile grids in one batch
    with torch.no_grad():
        batched = image_tokens(lmm.model, pixels, config, image_sizes=sizes)
        for i, (count, grid) in enumerate(zip(counts, grids)):
            one = image_tokens(lmm.model, pixels[i, :count], config)  # the crops as LLaVA-1.5 images
            crop_tokens = [one.features[c][one.valid[c]] for c in range(count)]
            index = [one.source_index[c][one.valid[c]] for c in range(count)]
            expected = _official_visionzip_layout(crop_tokens, index, grid)
            assert expected.shape[0] == count * 64
            assert int(batched.counts[i]) == count * 64
            torch.testing.assert_close(batched.features[i, : count * 64], expected, rtol=1e-12, atol=1e-12)


def _records_at_batch_1_and_4(model_id, checkpoint, config, docs):
    """The batch-1 records of ``docs``, after checking that batch 4 gives the same answers, selections
    and visual-token counts (every layer's)."""
    one = _model(model_id, checkpoint, config=config)
    answers = [r.text for r in one.generate_until(make_requests(one, docs, GEN))]
    records = [get_record("unit", "test", i) for i in range(len(docs))]
    four = _model(model_id, checkpoint, batch_size=4, config=config)
    assert [r.text for r in four.generate_until(make_requests(four, docs, GEN))] == answers
    for i, record in enumerate(records):
        again = get_record("unit", "test", i)
        assert again.selection == record.selection and again.visual_tokens == record.visual_tokens
        assert again.visual_tokens_per_layer == record.visual_tokens_per_layer
    return records


def test_visionzip_on_next_batches_and_records(tiny_next_checkpoint):
    for first in _records_at_batch_1_and_4("llava_visionzip", tiny_next_checkpoint, "visionzip_next_160", _docs()):
        entry = first.selection["images"][0]
        assert first.visual_tokens == entry["crops"] * 32 == entry["tokens"]
        assert len(entry["tiles"]) == entry["crops"] - 1
        for crop in [entry, *entry["tiles"]]:
            assert crop["cls"] and len(crop["merged"]) == 5


def test_sparsezip_on_next_scores_every_crop_with_its_question(tiny_next_checkpoint):
    """Each crop is a LLaVA-1.5 SparseZip image scored against its image's question (its own dynamic
    budget), laid out like VisionZip; batching does not change what is kept."""
    for record in _records_at_batch_1_and_4("llava_sparsezip", tiny_next_checkpoint, "sparsezip_64", _docs()):
        entry = record.selection["images"][0]
        crops = [entry, *entry["tiles"]]
        tokens = [entry["base_tokens"]] + [tile["tokens"] for tile in entry["tiles"]]
        assert len(tokens) == entry["crops"] and sum(tokens) == entry["tokens"] == record.visual_tokens
        assert all(c["cls"] for c in crops) and max(tokens) <= 64 and len(set(tokens)) > 1  # a budget per crop


@pytest.mark.parametrize("model_id, config", [("llava_fastv", "fastv_64"), ("llava_sparsevlm", "sparsevlm_64"), ("llava_sparsevlm", "sparsevlm2_64")])
def test_in_llm_methods_on_next_prune_the_packed_image_span(model_id, config, tiny_next_checkpoint):
    """The visual span is each image's packed sequence (base view, tiles, newlines), its length per
    row; batching over different lengths does not change what is kept."""
    spans = set()
    for record in _records_at_batch_1_and_4(model_id, tiny_next_checkpoint, config, _docs()[:6]):
        (entry,) = record.selection["images"]
        spans.add(entry["tokens"])
        assert record.visual_tokens_per_layer[0] == entry["tokens"] > 1000
        layers = [set(parse_ranges(v)) for _, v in sorted(entry["layers"].items(), key=lambda kv: int(kv[0]))]
        assert all(max(kept) < entry["tokens"] for kept in layers)
        assert all(later <= earlier for earlier, later in zip(layers, layers[1:]))
    assert len(spans) > 1


def test_next_refuses_what_needs_llava_15_positions(tiny_next_checkpoint):
    with pytest.raises(ConfigError, match="span: fixed"):
        _model("llava_fastv", tiny_next_checkpoint, config="fastv_64", span="fixed")
    with pytest.raises(ConfigError, match="deferred pruning"):
        _model("llava_sparsezip", tiny_next_checkpoint, config="confound/agnostic_inside")
