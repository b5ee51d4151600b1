"""What each request kept: merge membership from the compressors and the logged selection records."""

from __future__ import annotations

import random

import pytest
import torch

from sparsezip_lmms.analysis.selection import parse_ranges
from sparsezip_lmms.compress import pool, sparsezip, visionzip
from sparsezip_lmms.compress.baselines import pool_members
from sparsezip_lmms.config import load_config
from sparsezip_lmms.demo.mini_datasets import _scene
from sparsezip_lmms.llava.features import ImageTokens
from sparsezip_lmms.llava.selection import image_fingerprint, image_selections, request_records

from _compress_helpers import golden_inputs
from _requests import make_requests

GEN = {"max_new_tokens": 3, "temperature": 0, "do_sample": False}


def _merged_rows(out, b):
    """(members [M, 1+N] of image b's merged tokens, their tokens [M, C])."""
    rows = out.valid[b] & (out.index[b] < 0)
    return out.members[b][rows], out.tokens[b][rows]


# ----------------------------------------------------------------------------- compressors


def test_visionzip_members_are_its_contextual_groups():
    hidden, cls_attn, keys = golden_inputs()
    out = visionzip(hidden, cls_attn, keys, dominant=54, contextual=10)
    assert out.members.shape == (*out.index.shape, hidden.shape[1])
    for b in range(hidden.shape[0]):
        kept = set(out.index[b][out.valid[b] & (out.index[b] >= 0)].tolist())
        assert 0 in kept and len(kept) == 54
        members, tokens = _merged_rows(out, b)
        assert members.shape[0] == 10
        assert not out.members[b][out.index[b] >= 0].any()  # kept tokens have no members
        assert int(members.sum(0).max()) == 1  # every remaining token in exactly one group
        assert set(members.any(0).nonzero()[:, 0].tolist()) == set(range(hidden.shape[1])) - kept
        for group, token in zip(members, tokens):
            positions = group.nonzero()[:, 0]
            # a contextual token is its target's state plus the mean of the others assigned to it
            matches = [
                torch.allclose(token, hidden[b, t] + hidden[b, positions[positions != t]].mean(0), atol=1e-10)
                if len(positions) > 1 else torch.allclose(token, hidden[b, t], atol=1e-10)
                for t in positions.tolist()
            ]  # fmt: skip
            assert sum(matches) >= 1


@pytest.mark.parametrize("merge", ["kmeans", "visionzip"])
def test_sparsezip_members_follow_the_padded_token_order(merge):
    hidden, cls_attn, keys = golden_inputs()
    config = load_config("sparsezip_64", {"merge": merge, "merging.weighting": "mean"})
    out = sparsezip(hidden, cls_attn, keys, config)
    assert len(set(out.counts.tolist())) > 1  # dynamic K: padded rows differ per image
    for b in range(hidden.shape[0]):
        kept = set(out.index[b][out.valid[b] & (out.index[b] >= 0)].tolist())
        members, tokens = _merged_rows(out, b)
        assert members.shape[0] > 0
        assert not members[:, sorted(kept)].any()
        assert int(members.sum(0).max()) <= 1
        if merge == "kmeans":  # plain mean of the members' hidden states
            for group, token in zip(members, tokens):
                assert torch.allclose(token, hidden[b][group].mean(0), atol=1e-10)
    assert not out.members[~out.valid].any()


@pytest.mark.parametrize("k", [64, 128, 192, 50])
def test_pool_members_are_the_adaptive_pooling_windows(k):
    hidden = torch.randn(2, 577, 8, dtype=torch.float64)
    out = pool(hidden, k)
    for b in range(2):
        for group, token in zip(out.members[b], out.tokens[b]):
            assert not group[0]
            assert torch.allclose(token, hidden[b][group].mean(0), atol=1e-12)
    assert pool_members(24, 8, 8).sum().item() == 576  # 3x3 windows tile the grid


# ----------------------------------------------------------------------------- records


def test_image_selections_of_hand_made_tokens():
    # image 0: CLS, patches 3 and 4 (positions 4, 5), one merged token of patches 0 and 1; image 1: a
    # repeated patch (DivPrune) and padding
    index = torch.tensor([[0, 4, 5, -1], [3, 3, -1, -1]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    members = torch.zeros(2, 4, 10, dtype=torch.bool)
    members[0, 3, 1:3] = True
    tokens = ImageTokens(torch.zeros(2, 4, 1), valid, index, None, members)
    first, second = image_selections(tokens, 2, 9)
    assert first == {"tokens": 4, "cls": True, "kept": "3-4", "merged": ["0-1"]}
    assert second == {"tokens": 2, "cls": False, "kept": "2", "merged": [], "repeated": 1}  # 2 slots, 1 patch
    everything = image_selections(None, 1, 9)[0]
    assert everything == {"tokens": 9, "cls": False, "kept": "0-8"}
    records = request_records("visionzip", 9, [first, second], ["a", "b"], [2], prune_layer=3)
    assert records == [
        {
            "version": 1,
            "method": "visionzip",
            "grid": [3, 3],
            "images": [{"image": "a", **first, "prune_layer": 3}, {"image": "b", **second, "prune_layer": 3}],
        }
    ]


def test_image_fingerprint_is_the_pixels():
    rng = random.Random(0)
    a = _scene(rng, (64, 48))
    assert image_fingerprint(a) == image_fingerprint(a.copy())
    b = a.copy()
    b.putpixel((0, 0), (1, 2, 3))
    assert image_fingerprint(b) != image_fingerprint(a)


# ----------------------------------------------------------------------------- models


def _docs():
    rng = random.Random(5)
    return [([_scene(rng, size)], q) for size, q in zip([(640, 480), (300, 500), (336, 336)], ["Is there a cat?", "Colour?", "Count."])]


def _selections(model_id, checkpoint, batch_size=1, **args):
    from lmms_eval.models import get_model

    from sparsezip_lmms.efficiency.records import get_record

    lmm = get_model(model_id)(pretrained=str(checkpoint), device="cpu", dtype="float64", batch_size=batch_size, **args)
    docs = _docs()
    lmm.generate_until(make_requests(lmm, docs, GEN))
    return [get_record("unit", "test", i).selection for i in range(len(docs))]


def _sets(entry):
    kept = set(parse_ranges(entry["kept"]))
    merged = [set(parse_ranges(m)) for m in entry.get("merged", [])]
    return kept, merged


@pytest.mark.parametrize(
    "model_id,config",
    [
        ("llava_visionzip", "visionzip_64"), ("llava_sparsezip", "sparsezip_64"), ("llava_divprune", "divprune_64"),
        ("llava_sparsezip", "pool_64"), ("llava_vispruner", "vispruner_64"),
    ],
)  # fmt: skip
def test_vision_side_records_match_the_token_counts(model_id, config, tiny_checkpoint):
    one = _selections(model_id, tiny_checkpoint, config=config)
    batched = _selections(model_id, tiny_checkpoint, batch_size=3, config=config)
    assert one == batched  # what is kept does not depend on the batch
    for record in one:
        assert record["method"] == load_config(config).method and record["grid"] == [24, 24]
        (entry,) = record["images"]
        kept, merged = _sets(entry)
        assert entry["tokens"] == len(kept) + len(merged) + entry["cls"] or config.startswith("divprune")
        assert all(not (kept & group) for group in merged)
        if model_id == "llava_visionzip":  # VisionZip merges every patch it does not keep
            assert entry["cls"] and len(kept) == 53 and len(merged) == 10
            assert kept.union(*merged) == set(range(576))
        if config == "pool_64":
            assert not kept and len(merged) == 64
        if config == "vispruner_64":  # patches only, no CLS, nothing merged
            assert not entry["cls"] and not merged and len(kept) == 64


@pytest.mark.parametrize(
    "model_id, config",
    [
        ("llava_sparsevlm", "sparsevlm_64"), ("llava_sparsevlm", "sparsevlm2_64"), ("llava_fastv", "fastv_64"),
        ("llava_dart", "dart_64"), ("llava_cdpruner", "cdpruner_64"), ("llava_hf_timed", "keep_all"),
    ],
)  # fmt: skip
def test_llava15_records_do_not_depend_on_the_batch(model_id, config, tiny_checkpoint, tiny_clip):
    """The model ids the test above does not cover, on LLaVA-1.5: batch 1 and batch 3 write the same
    selection records (in-LLM layer records included)."""
    extra = {"clip_text_tower": str(tiny_clip)} if model_id == "llava_cdpruner" else {}
    one = _selections(model_id, tiny_checkpoint, config=config, **extra)
    assert one == _selections(model_id, tiny_checkpoint, batch_size=3, config=config, **extra)


def test_in_llm_records_hold_each_pruning_layer(tiny_checkpoint):
    for record in _selections("llava_sparsevlm", tiny_checkpoint, batch_size=3, config="sparsevlm_64"):
        (entry,) = record["images"]
        assert entry["kept"] == "0-575" and entry["tokens"] == 576
        layers = [set(parse_ranges(entry["layers"][str(layer)])) for layer in (2, 6, 15)]
        assert len(layers[0]) > len(layers[1]) > len(layers[2]) > 0
        assert layers[2] <= layers[1] <= layers[0]  # pruning only removes patches
    for record in _selections("llava_fastv", tiny_checkpoint, config="fastv_64"):
        (entry,) = record["images"]
        assert list(entry["layers"]) == ["1"] and len(parse_ranges(entry["layers"]["1"])) == 47
    for record in _selections("llava_dart", tiny_checkpoint, config="dart_64"):  # 4 + 8 x (64 // 8) at layer 1's output
        (entry,) = record["images"]
        assert list(entry["layers"]) == ["1"] and len(parse_ranges(entry["layers"]["1"])) == 68


def test_deferred_records_keep_the_vision_side_choice(tiny_checkpoint):
    before = _selections("llava_sparsezip", tiny_checkpoint, config="confound/agnostic_before")
    inside = _selections("llava_sparsezip", tiny_checkpoint, config="confound/agnostic_inside")
    for a, b in zip(before, inside):
        assert b["images"][0].pop("prune_layer") == 3
        assert a == b


def test_log_selection_false_logs_nothing(tiny_checkpoint):
    assert _selections("llava_visionzip", tiny_checkpoint, config="visionzip_64", log_selection="false") == [None] * 3
    from sparsezip_lmms.config import ConfigError

    with pytest.raises(ConfigError, match="log_selection must be true or false"):
        _selections("llava_visionzip", tiny_checkpoint, config="visionzip_64", log_selection="maybe")


@pytest.mark.parametrize(
    "model_id, config",
    [
        ("llava_sparsevlm", "sparsevlm_64"), ("llava_fastv", "fastv_64"), ("llava_visionzip", "visionzip_next_320"),
        ("llava_sparsezip", "sparsezip_next_320"), ("llava_divprune", "divprune_next_320"),
        ("llava_cdpruner", "cdpruner_next_320"), ("llava_hf_timed", "keep_all"), ("llava_dart", "dart_64"),
        ("llava_vispruner", "vispruner_64"),
    ],
)  # fmt: skip
def test_next_records_do_not_depend_on_the_batch(model_id, config, tiny_next_checkpoint, tiny_clip):
    """Every model id on LLaVA-NeXT, images of different sizes (packed spans of different lengths):
    batch 1 and batch 3 write the same selection records. In-LLM layer records keep each row's own span's
    positions only (a recycled token's id is past the row's span, though it may be inside a longer row's)."""
    extra = {"clip_text_tower": str(tiny_clip)} if model_id == "llava_cdpruner" else {}
    one = _selections(model_id, tiny_next_checkpoint, config=config, **extra)
    batched = _selections(model_id, tiny_next_checkpoint, batch_size=3, config=config, **extra)
    assert one == batched


def test_layer_records_keep_each_rows_own_span():
    """A recycled token of a short row (id 1000 + c: its span is under 1000) is not a position of that
    row, even where a longer row of the same batch has a position 1000."""
    from sparsezip_lmms.llava.selection import layer_kept_patches
    from sparsezip_lmms.pruning import recycled_id_base

    short, long = 900, 2400
    kept = [torch.tensor([[3, 7, recycled_id_base(short) + 1, -1], [5, 1001, 2300, 2399]])]  # [B, k_max]
    rows = layer_kept_patches(kept, (2,), [short, long])
    assert rows == [{"2": "3,7"}, {"2": "5,1001,2300,2399"}]
    assert layer_kept_patches(kept, (2,), 576) == [{"2": "3,7"}, {"2": "5"}]  # LLaVA-1.5: one span for all rows
