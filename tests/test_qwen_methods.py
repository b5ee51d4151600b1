"""random, pool, SparseZip and CDPruner on Qwen2.5-VL (``sparsezip_lmms.qwen.compressed_generate``) on the tiny
random checkpoint in float64: each row alone == the same row in a left-padded batch of rows with images of
different sizes (one row with two images), each image's budget honoured, bad budgets refused by key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from sparsezip_lmms.config import ConfigError, load_config
from sparsezip_lmms.demo.tiny_qwen import build_tiny_qwen2_5_vl, load_qwen_processor
from sparsezip_lmms.qwen import compressed_generate
from sparsezip_lmms.qwen.select import pool_shape
from sparsezip_lmms.qwen.sparsezip import scaled_config

NEW = 3
# (width, height) of each row's images: 64, 24 and 12 + 8 merged tokens (28 px per merged token)
ROWS = (((224, 224),), ((168, 112),), ((112, 84), (56, 112)))
QUESTIONS = ("Is there a cat?", "What color is the ball?", "Which image is brighter?")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen_methods") / "tiny")
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path).double().eval(), load_qwen_processor(path)


def _image(seed: int, width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def _inputs(processor, rows):
    texts, images = [], []
    for r in rows:
        content = [{"type": "image"} for _ in ROWS[r]] + [{"type": "text", "text": QUESTIONS[r]}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
        images += [_image(10 * r + i, w, h) for i, (w, h) in enumerate(ROWS[r])]
    processor.tokenizer.padding_side = "left"
    out = processor(text=texts, images=images, return_tensors="pt", padding=True)
    return out["input_ids"], out["attention_mask"], out["pixel_values"].double(), out["image_grid_thw"]


def _run(model, rows, config):
    net, processor = model
    return compressed_generate(net, *_inputs(processor, rows), config, NEW)


CONFIGS = {
    "random": {"method": "random", "keep_ratio": 0.3, "seed": 5},
    "pool": {"method": "pool", "keep_ratio": 0.3},
    "sparsezip": "sparsezip_qwen",
    "sparsezip_text": "sparsezip_qwen_text",
    "sparsezip_visionzip_merge": ("sparsezip_qwen", {"merge": "visionzip", "reference_tokens": 256}),
    "cdpruner": "cdpruner_qwen",
}


def _config(name):
    spec = CONFIGS[name]
    if isinstance(spec, tuple):
        return load_config(*spec)
    return load_config(spec)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_alone_equals_batched_and_budgets(model, name):
    config = _config(name)
    batched = _run(model, [0, 1, 2], config)
    assert batched.image_rows == [0, 1, 2, 2]
    alone = [_run(model, [r], config) for r in range(3)]
    kept_alone = [k for out in alone for k in out.kept]
    assert all(torch.equal(a, b) for a, b in zip(kept_alone, batched.kept, strict=True))
    for r, out in enumerate(alone):
        assert torch.equal(out.sequences[0], batched.sequences[r]), (name, r)
        assert torch.equal(out.position_ids[0], batched.position_ids[r]), (name, r)
    counts = [64, 24, 12, 8]
    for kept, n in zip(batched.kept, counts):
        assert kept.dtype == torch.long and bool((kept.diff() > 0).all()) and 0 <= int(kept.min()) and int(kept.max()) < n
    sizes = [len(k) for k in batched.kept]
    if name in ("random", "cdpruner"):
        assert sizes == [int(round(0.3 * n)) if name == "random" else int(round(0.111 * n)) for n in counts]
    elif name == "pool":
        shapes = [(8, 8), (4, 6), (3, 4), (4, 2)]  # merged grids (rows, cols)
        assert sizes == [r * c for r, c in (pool_shape(int(round(0.3 * n)), h, w) for n, (h, w) in zip(counts, shapes))]
        assert all(s <= int(round(0.3 * n)) for s, n in zip(sizes, counts))
    else:  # SparseZip: at most the scaled k_max + contextual tokens of each image
        base = _config(name)
        for s, n in zip(sizes, counts):
            scaled = scaled_config(base, n)
            assert scaled.k_min <= s <= scaled.k_max + scaled.merging.contextual_num, (n, s)
    # the tokens entering the LLM: every row's prompt less the pruned image tokens
    net, processor = model
    ids, mask, _, _ = _inputs(processor, [0, 1, 2])
    image_tokens = (ids == net.config.image_token_id).sum(1).tolist()
    per_row = [sizes[0], sizes[1], sizes[2] + sizes[3]]
    assert [p.shape[1] for p in batched.position_ids] == [
        int(m.sum()) - n + k for m, n, k in zip(mask, image_tokens, per_row)
    ]


def test_random_is_seeded_and_pool_anchors_are_window_corners(model):
    a = _run(model, [2], load_config({"method": "random", "keep": 5, "seed": 1}))
    b = _run(model, [2], load_config({"method": "random", "keep": 5, "seed": 1}))
    c = _run(model, [2], load_config({"method": "random", "keep": 5, "seed": 2}))
    assert all(torch.equal(x, y) for x, y in zip(a.kept, b.kept)) and [len(k) for k in a.kept] == [5, 5]
    assert not all(torch.equal(x, y) for x, y in zip(a.kept, c.kept))
    pooled = _run(model, [0], load_config({"method": "pool", "keep": 16}))  # 8 x 8 -> 4 x 4 windows of 2 x 2
    assert pooled.kept[0].tolist() == [r * 8 + c for r in range(0, 8, 2) for c in range(0, 8, 2)]
    assert pool_shape(16, 8, 8) == (4, 4) and pool_shape(7, 3, 4) == (2, 3) and pool_shape(5, 1, 8) == (1, 5)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"method": "random", "keep": 30}, "'keep'"),  # 30 > the 24 tokens of row 1's image
        ({"method": "pool", "keep": 30}, "'keep'"),
        ({"method": "cdpruner", "keep": 30, "strip_answer_format": False}, "'keep'"),
        ({"method": "random", "keep_ratio": 0.01}, "'keep_ratio'"),  # rounds to 0 tokens
    ],
)
def test_budgets_beyond_an_image_refused_by_key(model, overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        _run(model, [1], load_config(overrides))


@pytest.mark.parametrize(
    "name, overrides, fragment",
    [
        ("random_qwen", {"keep_ratio": 1.5}, "keep_ratio"),
        ("pool_qwen", {"keep_ratio": 0.0}, "keep_ratio"),
        ("cdpruner_qwen", {"keep_ratio": -0.2}, "keep_ratio"),
        ("random_qwen", {"keep": 8}, r"'keep' \(8\) and 'keep_ratio'"),
    ],
)
def test_ratios_outside_0_1_refused_at_load(name, overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(name, overrides)


@pytest.mark.parametrize(
    "name, overrides, fragment",
    [
        ("sparsezip_64", {}, "reference_tokens"),
        ("sparsezip_qwen", {"cross_beta": 0.3}, "text_space"),
        ("sparsezip_qwen_text", {"text_source": "seed_keys"}, "text_source"),
        ("sparsezip_qwen", {"k_counts_cls": True}, "k_counts_cls"),
        ("sparsezip_qwen", {"k_max": 600}, "k_max"),
        ("sparsezip_qwen", {"merging.contextual_num": 530}, "contextual_num"),
        ("cdpruner_64", {}, "strip_answer_format"),
    ],
)
def test_qwen_only_keys_checked_before_running(name, overrides, fragment):
    from sparsezip_lmms.qwen.inputs import check_method

    with pytest.raises(ValueError, match=fragment):
        check_method(load_config(name, overrides))


def test_llava_refuses_the_per_image_keys():
    from types import SimpleNamespace

    from sparsezip_lmms.methods.builtin_checks import check_keep, check_sparsezip

    geometry = SimpleNamespace(patches=576, any_resolution=False)
    with pytest.raises(ConfigError, match="keep_ratio"):
        check_keep(load_config("random_qwen"), geometry)
    with pytest.raises(ConfigError, match="reference_tokens"):
        check_sparsezip(load_config("sparsezip_qwen"), geometry)


def test_sparsezip_scaling_is_the_llava_rule_at_the_reference_size():
    config = load_config("sparsezip_qwen")
    same = scaled_config(config, 576)
    assert (same.k_min, same.k_max, same.merging.contextual_num, same.dynk.c, same.dynk.scale) == (32, 54, 10, 77.1, 11.0)
    small = scaled_config(config, 24)
    assert (small.k_min, small.k_max, small.merging.contextual_num, small.k_counts_cls) == (1, 2, 1, False)


def test_random_draw_follows_the_image_not_the_prompt(model):
    """The same pixels keep the same merged tokens whatever the question, the row or the image's place."""
    net, processor = model
    config = load_config("random_qwen")
    img = _image(7, 168, 112)
    kept = []
    for content in ([{"type": "image"}, {"type": "text", "text": "Where?"}],
                    [{"type": "text", "text": "Look:"}, {"type": "image"}, {"type": "text", "text": "What is it?"}]):  # fmt: skip
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        out = processor(text=[text], images=[img], return_tensors="pt")
        kept.append(compressed_generate(net, out["input_ids"], out["attention_mask"], out["pixel_values"].double(),
                                        out["image_grid_thw"], config, 1).kept[0])  # fmt: skip
    assert torch.equal(kept[0], kept[1]) and len(kept[0]) == int(round(0.111 * 24))


def _vision(net, pixel_values, grid):
    from sparsezip_lmms.qwen.vision import vision_forward

    return vision_forward(net.model.visual, pixel_values, grid, score=True)


def test_sparsezip_contextual_tokens_sit_at_their_lowest_member(model):
    """sparsezip_qwen against sparsezip_trace on the same image: the dominant tokens at their own slots, each
    contextual token (the trace's merged token) at the lowest index of its cluster's members."""
    import importlib

    from sparsezip_lmms.qwen.sparsezip import sparsezip_qwen

    trace_of = importlib.import_module("sparsezip_lmms.compress.sparsezip").sparsezip_trace
    net, processor = model
    _, _, pv, grid = _inputs(processor, [0, 1])
    vis = _vision(net, pv, grid)
    config = load_config("sparsezip_qwen", {"reference_tokens": 128})
    keep, embeds = sparsezip_qwen(vis, config)  # [2, 64], [2, 64, E]
    for i, (start, n) in enumerate(((0, 64), (64, 24))):
        e, s, k = vis.embeds[start : start + n], vis.scores[start : start + n], vis.keys[start : start + n]
        hidden = torch.cat([e.mean(0, keepdim=True), e])[None]
        trace = trace_of(hidden, torch.cat([s.new_zeros(1), s])[None, None], torch.cat([k.mean(0, keepdim=True), k])[None],
                         scaled_config(config, n))  # fmt: skip
        comp = trace.compressed
        dominant = comp.index[0][comp.valid[0] & (comp.index[0] > 0)] - 1
        merged = comp.valid[0] & (comp.index[0] < 0)
        anchors = comp.members[0, merged, 1:].long().argmax(-1)  # [C] lowest member of each contextual token
        assert int(trace.k[0]) == len(dominant) and len(anchors) >= 1
        assert torch.equal(keep[i, :n].nonzero().squeeze(1), torch.cat([dominant, anchors]).sort().values)
        assert torch.equal(embeds[i, dominant], e[dominant]) and torch.equal(embeds[i, anchors], comp.tokens[0, merged])
        labels = trace.labels[0]  # [N] cluster of each non-dominant token
        for anchor in anchors.tolist():
            members = (labels == labels[anchor]).nonzero().squeeze(1)
            assert anchor == int(members.min())


def test_sparsezip_text_relevance_is_the_question_cosine_in_the_llm_space(model):
    """sparsezip_qwen_text by hand: each image's question is the text after its image run up to the next run
    (the vision markers left out; the first of two adjacent images has none), a merged token's relevance its
    mean cosine with those tokens' input embeddings; the trace with that relevance gives the kept tokens. A
    heavier text term changes what is kept when the question does."""
    from sparsezip_lmms.qwen.sparsezip import sparsezip_qwen

    net, processor = model
    cfg = net.config
    ids, mask, pv, grid = _inputs(processor, [0, 2])  # one image; then two adjacent images and a question
    vis = _vision(net, pv, grid)
    embed = net.model.language_model.embed_tokens
    questions, images = [[], [], []], 0
    markers = (cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id)
    for row in range(2):
        current, previous = None, None
        for t in ids[row][mask[row].bool()].tolist():
            if t == cfg.image_token_id and previous != t:
                current, images = images, images + 1
            elif t not in markers and current is not None:
                questions[current].append(t)
            previous = t
    assert questions[1] == [] and questions[0] and questions[2]
    config = load_config("sparsezip_qwen_text", {"reference_tokens": 128})
    out = compressed_generate(net, ids, mask, pv, grid, config, 1)
    for image, (start, n) in enumerate(((0, 64), (64, 12), (76, 8))):
        e = vis.embeds[start : start + n]
        q = embed(torch.tensor(questions[image], dtype=torch.long)) if questions[image] else e.new_zeros(0, e.shape[1])
        r = torch.nn.functional.cosine_similarity(e[:, None], q[None], dim=-1).mean(1) if len(q) else e.new_zeros(n)
        single = type(vis)(e, vis.scores[start : start + n], vis.keys[start : start + n], (n,))
        mean_unit = torch.nn.functional.normalize(q, dim=-1).mean(0) if len(q) else e.new_zeros(e.shape[1])  # [E]
        keep, _ = sparsezip_qwen(single, config, mean_unit[None])
        assert torch.equal(out.kept[image], keep[0].nonzero().squeeze(1)), image
        assert torch.allclose(torch.nn.functional.normalize(e, dim=-1) @ mean_unit, r, atol=1e-12)
    heavy = load_config("sparsezip_qwen_text", {"reference_tokens": 128, "cross_beta": 3.0})
    agnostic = compressed_generate(net, ids, mask, pv, grid, load_config("sparsezip_qwen", {"reference_tokens": 128}), 1)
    aware = compressed_generate(net, ids, mask, pv, grid, heavy, 1)
    assert torch.equal(aware.kept[1], agnostic.kept[1])  # no question: the text term is 0
    assert not torch.equal(aware.kept[0], agnostic.kept[0])


def test_cdpruner_relevance_is_the_prompt_embedding_cosine(model):
    """The OpenVINO GenAI Qwen-VL recipe by hand: the mean input embedding of the tokens outside the vision
    spans, its (not negated) cosine with each merged token, min-max per image; the DPP of cdpruner_select."""
    from sparsezip_lmms.compress.cdpruner import cdpruner_select

    net, processor = model
    ids, mask, pv, grid = _inputs(processor, [2])  # two images in one row
    cfg = net.config
    tokens = ids[0].tolist()
    text, inside = [], False
    for t in tokens:
        if t == cfg.vision_start_token_id:
            inside = True
        elif t == cfg.vision_end_token_id:
            inside = False
        elif not inside:
            text.append(t)
    query = net.model.language_model.embed_tokens(torch.tensor(text)).mean(0)  # [E]
    vis = _vision(net, pv, grid)
    out = compressed_generate(net, ids, mask, pv, grid, load_config("cdpruner_qwen", {"keep_ratio": 0.5}), 1)
    for image, (start, n) in enumerate(((0, 12), (12, 8))):
        e = vis.embeds[start : start + n]
        cos = torch.nn.functional.cosine_similarity(e, query[None], dim=-1)
        r = (cos - cos.min()) / (cos.max() - cos.min())
        expected = cdpruner_select(e[None], r[None], n // 2)[0].sort().values
        assert torch.equal(out.kept[image], expected), image


def test_sparsevlm_v15_with_original_positions(model):
    """SparseVLM v1.5 on M-RoPE: alone == batched, the schedule's counts plus the recycled tokens per layer,
    every position one of the unpruned prompt's (a recycled token at its density-peak centre's), no repeats."""
    from sparsezip_lmms.compress.sparsevlm_recycle import keep_count, recycle_sizes
    from sparsezip_lmms.qwen.positions import prompt_positions

    net, processor = model
    config = load_config("sparsevlm_64", {"pruning_layers": [0, 1], "schedule": [20, 8]})
    batched = _run(model, [0, 1], config)
    for r in range(2):
        alone = _run(model, [r], config)
        assert torch.equal(alone.kept[0], batched.kept[r]) and torch.equal(alone.sequences[0], batched.sequences[r])
        assert torch.equal(alone.position_ids[0], batched.position_ids[r])
    ids, mask, _, grid = _inputs(processor, [0, 1])
    positions, max_position = prompt_positions(net, ids, mask, grid, net.config.image_token_id)  # [3, B, L], [B]
    for r, n in enumerate((64, 24)):
        expected, v = [], n
        for k in (20, 8):
            kept = keep_count(k, v)
            v = kept + recycle_sizes(v - kept, config.recycle_ratio, config.cluster_divisor)[1]
            expected.append(v)
        assert batched.pruned.visual_tokens_per_layer[r].tolist() == expected + [expected[-1]]
        unpruned = {tuple(c) for c in positions[:, r][:, mask[r].bool()].T.tolist()}
        used = [tuple(c) for c in batched.position_ids[r].T.tolist()]
        assert set(used) <= unpruned and len(set(used)) == len(used)
        assert batched.decode_positions[r].tolist() == [int(max_position[r]) + n for n in range(1, NEW)]
        assert len(batched.kept[r]) <= 8 and bool((batched.kept[r] < n).all())


@pytest.mark.parametrize("name", ["keep_all", "fastv_default", "divprune_official"])
def test_non_finite_visual_tokens_are_refused_before_the_llm(model, name):
    """A NaN in a merged token (as a float16 overflow makes it) is a ValueError that says so, for the
    uncompressed path, an in-LLM rule and a selection alike, never a silent answer."""
    net, processor = model
    inputs = _inputs(processor, [0])

    def poison(_module, _args, output):  # [N_total, E]: every token of the image NaN
        return torch.full_like(output, float("nan"))

    handle = net.model.visual.merger.register_forward_hook(poison)
    try:
        with pytest.raises(ValueError, match="NaN or inf"):
            compressed_generate(net, *inputs, load_config(name), 1)
    finally:
        handle.remove()
    assert torch.isfinite(compressed_generate(net, *inputs, load_config(name), 1).logits).all()
