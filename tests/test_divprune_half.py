"""DivPrune on the model path in half precision: the distances are computed in at least float32 by
default, so the kept tokens are distinct source patches as in float32; ``distance_dtype: model`` runs in
the model's dtype as the official code does (in bfloat16 its self-distance noise picks chosen tokens again)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from sparsezip_lmms.config import load_config
from sparsezip_lmms.demo.mini_datasets import _scene
from sparsezip_lmms.llava.features import image_tokens


@pytest.fixture(scope="module")
def bf16_model_and_pixels(shallow_checkpoints):
    checkpoint = shallow_checkpoints[4]
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.bfloat16).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    rng = random.Random(3)
    images = [_scene(rng, size) for size in ((640, 480), (300, 500), (336, 336))]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]  # [3, 3, 336, 336]
    return model, pixels


def _kept(model, pixels, overrides=None):
    with torch.no_grad():
        out = image_tokens(model, pixels.to(model.dtype), load_config("divprune_64", overrides))
    return out.source_index  # [3, 64] CLIP positions of the kept tokens


def test_bfloat16_keeps_64_distinct_patches_like_float32(bf16_model_and_pixels):
    model, pixels = bf16_model_and_pixels
    kept = _kept(model, pixels)
    assert kept.shape == (3, 64)
    assert [len(set(row.tolist())) for row in kept] == [64, 64, 64]


def test_distance_dtype_model_is_the_official_half_precision_selection(bf16_model_and_pixels):
    from sparsezip_lmms.compress.divprune import divprune_select
    from sparsezip_lmms.llava.scoring import feature_layer_hidden

    model, pixels = bf16_model_and_pixels
    kept = _kept(model, pixels, {"distance_dtype": "model"})
    with torch.no_grad():  # the official computation: no cast, bfloat16 throughout
        hidden = feature_layer_hidden(model.model.vision_tower, pixels.to(model.dtype), layer=-2)
        patches = model.model.multi_modal_projector(hidden[:, 1:])  # [3, 576, D] bfloat16
        official = divprune_select(patches, 64).sort(dim=1).values + 1
    assert torch.equal(kept, official)
    assert any(len(set(row.tolist())) < 64 for row in kept)  # the official drift this key reproduces


def test_the_selection_record_counts_repeated_picks(bf16_model_and_pixels):
    from sparsezip_lmms.llava.selection import image_selections

    model, pixels = bf16_model_and_pixels
    with torch.no_grad():
        official = image_tokens(model, pixels.to(model.dtype), load_config("divprune_64", {"distance_dtype": "model"}))
        default = image_tokens(model, pixels.to(model.dtype), load_config("divprune_64"))
    for entry, row in zip(image_selections(official, 3, 576), official.source_index, strict=True):
        distinct = len(set(row.tolist()))
        assert entry["tokens"] == 64 and entry.get("repeated", 0) == 64 - distinct
    assert any("repeated" in entry for entry in image_selections(official, 3, 576))
    assert not any("repeated" in entry for entry in image_selections(default, 3, 576))
