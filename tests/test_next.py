"""LLaVA-NeXT (any-resolution) checkpoints: keep_all is the stock NeXT model, batched over mixed
aspect ratios; VisionZip compresses every crop in its official NeXT order; methods that do not
handle the tiles yet are refused before any weight is loaded."""

from __future__ import annotations

import pytest
import torch

from sparsezip_lmms.analysis.selection import parse_ranges
from sparsezip_lmms.config import ConfigError, load_config
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


def test_divprune_budget_beyond_a_packed_sequence_fails_that_request(tiny_next_checkpoint):
    """A DivPrune count is checked against each image's packed length, per request: the image too
    short for it fails visibly, the others run."""
    docs = _docs()
    lmm = _model("llava_divprune", tiny_next_checkpoint, config="divprune_64", keep=1500)
    results = lmm.generate_until(make_requests(lmm, docs, GEN))
    records = [get_record("unit", "test", i) for i in range(len(docs))]
    failed = [r for r in records if r.error is not None]
    assert failed and len(failed) < len(records)  # the 3-crop images (about 1400 tokens) fail, 5-crop ones run
    assert all("not below the packed sequence" in r.error for r in failed)
    assert all(res.text == "" for res, r in zip(results, records) if r.error is not None)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "model, config, low, high",
    [
        ("llava_hf_timed", "keep_all", 1000, 2928), ("llava_visionzip", "visionzip_next_320", 192, 320),
        ("llava_sparsezip", "sparsezip_next_320", 3, 320), ("llava_sparsevlm", "sparsevlm2_64", 30, 400),
        ("llava_fastv", "fastv_64", 30, 400), ("llava_divprune", "divprune_next_320", 100, 340),
        ("llava_cdpruner", "cdpruner_next_320", 300, 368),
    ],
)  # fmt: skip
def test_cli_runs_next(model, config, low, high, tmp_path, mini_tasks, tiny_next_checkpoint, tiny_clip):
    from sparsezip_lmms.demo.harness import lmms_eval_command

    from _inprocess import run_in_process

    include, names = mini_tasks
    out = tmp_path / "next"
    clip = f",clip_text_tower={tiny_clip}" if model == "llava_cdpruner" else ""
    cmd = lmms_eval_command(
        model, f"pretrained={tiny_next_checkpoint},config={config},dtype=float32{clip}", [names["pope"], names["mme"]], out,
        include_path=include, batch_size=4, extra=["--gen_kwargs", "max_new_tokens=2"],
    )  # fmt: skip
    run = run_in_process(cmd, out)
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


@pytest.mark.parametrize("name", ["visionzip_next_320", "sparsezip_next_320"])
def test_visionzip_on_next_compresses_every_crop_in_the_official_order(name, tiny_next_checkpoint):
    """VisionZip's official NeXT path, and SparseZip per crop on the same path: every crop compressed
    as the LLaVA-1.5 function compresses an image, laid out in the official order."""
    from sparsezip_lmms.llava.features import image_tokens
    from sparsezip_lmms.llava.next import crop_counts, tile_grids

    lmm = _model("llava_visionzip", tiny_next_checkpoint, config="visionzip_next_320")
    processor, config = lmm._image_processor, load_config(name)
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
            total = int(one.counts.sum())  # VisionZip: 64 per crop; SparseZip: its dynamic K + merged per crop
            assert expected.shape[0] == total == int(batched.counts[i]) and (total == count * 64 or name != "visionzip_next_320")
            torch.testing.assert_close(batched.features[i, :total], expected, rtol=1e-12, atol=1e-12)


def _records_at_batch_1_and_4(model_id, checkpoint, config, docs, **args):
    """The batch-1 records of ``docs``, after checking that batch 4 gives the same answers, selections
    and visual-token counts (every layer's)."""
    one = _model(model_id, checkpoint, config=config, **args)
    answers = [r.text for r in one.generate_until(make_requests(one, docs, GEN))]
    records = [get_record("unit", "test", i) for i in range(len(docs))]
    four = _model(model_id, checkpoint, batch_size=4, config=config, **args)
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


def test_sparsezip_on_next_per_image_shares_one_budget_over_the_crops(tiny_next_checkpoint):
    """``next_budget: per_image``: one K per image (from its crops' pooled scores), crops x K dominant
    tokens between them (each crop its CLS), shared unequally; batching does not change what is kept."""
    config = load_config("ablations/next_budget_per_image")
    shares = set()
    for record in _records_at_batch_1_and_4("llava_sparsezip", tiny_next_checkpoint, "ablations/next_budget_per_image", _docs()):
        entry = record.selection["images"][0]
        crops = [entry, *entry["tiles"]]
        dominant = [len(parse_ranges(c["kept"])) + 1 for c in crops if c["cls"]]  # CLS counted
        assert len(dominant) == entry["crops"]
        k, rest = divmod(sum(dominant), entry["crops"])
        assert rest == 0 and config.k_min <= k <= config.k_max
        assert all(len(c["merged"]) <= config.merging.contextual_num for c in crops)
        shares.add(len(set(dominant)) > 1)
    assert True in shares  # a test that can fail: the crops of some image take different shares


@pytest.mark.parametrize("config", ["random_64", "pool_64"])
def test_baselines_on_next_keep_their_budget_per_crop(config, tiny_next_checkpoint):
    """Random and pooling baselines run crop by crop (random draws keyed per crop): ``keep`` tokens
    of every crop, the same at batch 1 and 4."""
    draws = set()
    for record in _records_at_batch_1_and_4("llava_sparsezip", tiny_next_checkpoint, config, _docs()[:6]):
        entry = record.selection["images"][0]
        crops = [entry, *entry["tiles"]]
        assert len(crops) == entry["crops"] and record.visual_tokens == 64 * entry["crops"] == entry["tokens"]
        assert [entry["base_tokens"]] + [t["tokens"] for t in entry["tiles"]] == [64] * entry["crops"]
        draws.update(c.get("kept", "") for c in crops)
        if config == "pool_64":  # 64 pooling cells of every crop, no patch kept alone
            assert all(len(c["merged"]) == 64 and not parse_ranges(c["kept"]) for c in crops)
    if config == "random_64":
        assert len(draws) > 1  # every crop its own draw


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
        for layer, kept in zip(sorted(entry["layers"], key=int), layers):  # the same positions, by tile
            tiles = [set(parse_ranges(t)) for t in entry["layer_tiles"][layer]]
            assert len(tiles) == entry["crops"] - 1 and all(max(t, default=0) < 576 for t in tiles)
            base = {p for p in kept if p < 576}
            assert len(base) + sum(map(len, tiles)) + entry["layer_newlines"][layer] == len(kept)
    assert len(spans) > 1


def test_next_refuses_what_needs_llava_15_positions(tiny_next_checkpoint):
    with pytest.raises(ConfigError, match="span: fixed"):
        _model("llava_fastv", tiny_next_checkpoint, config="fastv_64", span="fixed")
    with pytest.raises(ConfigError, match="deferred pruning"):
        _model("llava_sparsezip", tiny_next_checkpoint, config="confound/agnostic_inside")


# ----------------------------------------------------------------------------- DivPrune and CDPruner


def _next_inputs(lmm, docs):
    """Processor outputs of ``docs``' images in one batch, float64 pixels."""
    images = [images[0] for images, _ in docs]
    inputs = lmm._image_processor(images=images, text=["<image>"] * len(images), return_tensors="pt", padding=True)
    return inputs["pixel_values"].to(torch.float64), inputs["image_sizes"]


def test_divprune_on_next_is_the_official_selection_over_each_packed_sequence(tiny_next_checkpoint):
    """Batched over images of different packed lengths, DivPrune equals the LLaVA-1.5 function run on
    each image's stock packed sequence alone (newline tokens included), budget round(ratio · L)."""
    from sparsezip_lmms.compress.divprune import divprune_select
    from sparsezip_lmms.config import load_config
    from sparsezip_lmms.llava.features import image_tokens, stock_image_tokens

    lmm = _model("llava_divprune", tiny_next_checkpoint, config="divprune_next_320")
    config = load_config("divprune_next_320")
    pixels, sizes = _next_inputs(lmm, _docs()[:6])
    with torch.no_grad():
        batched = image_tokens(lmm.model, pixels, config, image_sizes=sizes)
        stock = stock_image_tokens(lmm.model, pixels, sizes)
    lengths = stock.counts.tolist()
    assert len(set(lengths)) > 2
    for i, length in enumerate(lengths):
        k = int(round(config.keep_ratio * length))
        sequence = stock.features[i : i + 1, :length]  # [1, L, D]
        kept = divprune_select(sequence, k).sort(dim=1).values[0]  # [k] ascending, as LLaVA keeps them
        assert int(batched.counts[i]) == k and int(batched.candidates[i]) == length
        torch.testing.assert_close(batched.features[i, :k], sequence[0, kept], rtol=0, atol=0)
    records = _records_at_batch_1_and_4("llava_divprune", tiny_next_checkpoint, "divprune_next_320", _docs()[:6])
    for record, length in zip(records, lengths):
        entry = record.selection["images"][0]
        per_crop = [entry["base_tokens"]] + [tile["tokens"] for tile in entry["tiles"]]
        assert entry["tokens"] == record.visual_tokens == sum(per_crop) + entry["newlines"]


def test_divprune_record_counts_the_newlines_it_sent_even_with_repeated_picks(tiny_next_checkpoint):
    """bfloat16 with the official model-dtype distances: picks repeat. The record's newline count is the
    newline tokens among the tokens sent (counted), never ``tokens - base - tiles`` (which then exceeded
    the packed sequence's newlines); the default (distances in float32) sends distinct tokens."""
    from lmms_eval.models import get_model

    from sparsezip_lmms.config import load_config
    from sparsezip_lmms.llava.features import image_tokens, stock_image_tokens
    from sparsezip_lmms.llava.next import crop_counts
    from sparsezip_lmms.llava.selection import next_selections

    lmm = get_model("llava_divprune")(pretrained=str(tiny_next_checkpoint), device="cpu", dtype="bfloat16",
                                      batch_size=1, config="divprune_next_320")  # fmt: skip
    pixels, sizes = _next_inputs(lmm, _docs()[:6])
    pixels = pixels.to(torch.bfloat16)
    newline = lmm.model.model.image_newline  # [D]
    with torch.no_grad():
        stock = stock_image_tokens(lmm.model, pixels, sizes)
        official = image_tokens(lmm.model, pixels, load_config("divprune_next_320", {"distance_dtype": "model"}), image_sizes=sizes)
        default = image_tokens(lmm.model, pixels, load_config("divprune_next_320"), image_sizes=sizes)
    in_sequence = ((stock.features == newline).all(dim=-1) & stock.valid).sum(dim=1)  # [n] newlines per packed sequence
    for selected, repeats in ((official, True), (default, False)):
        sent = ((selected.features == newline).all(dim=-1) & selected.valid).sum(dim=1)  # [n] newline slots sent
        assert torch.equal(selected.newlines, sent) and bool((sent <= in_sequence).all())
        distinct = [len({tuple(t.tolist()) for t in selected.features[i, : int(n)]}) for i, n in enumerate(selected.counts)]
        assert (distinct != selected.counts.tolist()) == repeats, distinct
    entries = next_selections(official, crop_counts(sizes, lmm.model.config), 576)
    assert [e["newlines"] for e in entries] == official.newlines.tolist()


def test_positions_mask_keeps_a_last_position_beside_padding():
    from sparsezip_lmms.llava.next import positions_mask

    positions = torch.tensor([[1, 4, 5, 6, 6], [0, 6, 6, 6, 6]])  # 6 = past the row's count (L = 6)
    assert positions_mask(positions, 6).tolist() == [
        [False, True, False, False, True, True], [True, False, False, False, False, False],
    ]  # fmt: skip


def _official_cdpruner_tokens(lmm, pixels, sizes, questions, keep):
    """CDPruner's official LLaVA-1.6 path, one image at a time from the LLaVA-1.5 functions: the DPP on
    every crop, one joint min–max over the image's crops, then the stock packing applied to the masks
    (llava-hf's own pack_image_features on the mask, newline entries kept)."""
    from sparsezip_lmms.compress.cdpruner import cdpruner_patch_embeds, cdpruner_relevance, cdpruner_select
    from sparsezip_lmms.llava.clip_text import question_for_clip
    from sparsezip_lmms.llava.next import crop_counts
    from sparsezip_lmms.llava.scoring import feature_layer_hidden

    inner = lmm.model.model
    out = []
    for i, count in enumerate(crop_counts(sizes, lmm.model.config)):
        crops = pixels[i, :count]  # [c, 3, H, W]
        hidden = feature_layer_hidden(inner.vision_tower, crops, -2)  # [c, 1+N, C]
        patches = inner.multi_modal_projector(hidden[:, 1:])  # [c, N, D]
        embeds = cdpruner_patch_embeds(hidden, inner.vision_tower.post_layernorm, lmm._clip_text.visual_projection)
        text, mask = lmm._clip_text.embed([question_for_clip(questions[i])])  # [1, M, P]
        relevance = cdpruner_relevance(embeds, text.to(embeds.dtype), joint=True, text_mask=mask)  # one call: joint
        order = cdpruner_select(patches, relevance, keep)  # [c, k]
        crop_mask = torch.zeros(patches.shape[:2], dtype=patches.dtype).scatter_(1, order, 1.0)  # [c, N]
        (packed_mask,), _ = inner.pack_image_features(
            [crop_mask[..., None]], sizes[i : i + 1], "default", image_newline=torch.ones(1, dtype=patches.dtype)
        )
        (packed,), _ = inner.pack_image_features([patches], sizes[i : i + 1], "default", image_newline=inner.image_newline)
        out.append(packed[packed_mask[:, 0] > 0])
    return out


def test_cdpruner_on_next_is_the_official_per_crop_dpp_with_joint_relevance(tiny_next_checkpoint, tiny_clip):
    """Batched over images with 3 and 5 crops (the checkpoint's grid), CDPruner equals the official
    per-image path built from the LLaVA-1.5 functions; batch 1 and 4 agree through the model class."""
    from sparsezip_lmms.config import load_config
    from sparsezip_lmms.llava.clip_text import question_for_clip
    from sparsezip_lmms.llava.features import image_tokens

    lmm = _model("llava_cdpruner", tiny_next_checkpoint, config="cdpruner_next_320", next_grid="checkpoint", clip_text_tower=str(tiny_clip))
    config = load_config("cdpruner_next_320", {"next_grid": "checkpoint"})
    docs = _docs()[:6]
    pixels, sizes = _next_inputs(lmm, docs)
    questions = [question for _, question in docs]
    with torch.no_grad():
        embeds = lmm._clip_text.embed([question_for_clip(q) for q in questions])
        batched = image_tokens(lmm.model, pixels, config, clip_text=lmm._clip_text, question_embeds=embeds, image_sizes=sizes)
        expected = _official_cdpruner_tokens(lmm, pixels, sizes, questions, config.keep)
    assert len({e.shape[0] for e in expected}) > 2
    for i, tokens in enumerate(expected):
        assert int(batched.counts[i]) == tokens.shape[0]
        torch.testing.assert_close(batched.features[i, : tokens.shape[0]], tokens, rtol=1e-12, atol=1e-12)
    _records_at_batch_1_and_4(
        "llava_cdpruner", tiny_next_checkpoint, "cdpruner_next_320", docs, next_grid="checkpoint", clip_text_tower=str(tiny_clip)
    )


def test_cdpruner_on_next_tiles_every_image_2x2_by_default(tiny_next_checkpoint, tiny_clip):
    """The official fixed 672 x 672 resolution: 5 crops for every aspect ratio, keep per crop, the
    newline tokens of the stock packing kept; the record names the grid."""
    records = _records_at_batch_1_and_4(
        "llava_cdpruner", tiny_next_checkpoint, "cdpruner_next_160", _docs()[:6], clip_text_tower=str(tiny_clip)
    )
    tokens = set()
    for record in records:
        entry = record.selection["images"][0]
        assert entry["crops"] == 5 and entry["tile_grid"] == [2, 2] and len(entry["tiles"]) == 4
        assert entry["base_tokens"] == 32 and all(tile["tokens"] <= 32 for tile in entry["tiles"])
        assert 0 < entry["newlines"] <= 48 and record.visual_tokens == entry["tokens"] <= 160 + 48
        tokens.add(record.visual_tokens)
    assert len(tokens) > 1  # unpadding depends on the aspect ratio
