"""The batch never changes an answer: prompts with no image, one image and two images, mixed in one
request list, give the same answers and the same per-request token counts at batch 1, 3 and 8 (half
precision: 1 and 8), for every model id in the manifest, in every dtype/attention combination the CPU runs.

float32 / float64: identical answers and counts. float16 / bfloat16: the rounding of a padded batch
may differ from a single request's, so identical token counts (tokens entering the LLM, visual tokens,
SparseVLM's per-layer average) and no failed request. float64 with eager attention is refused for
padded batches (tests/test_fuzz.py), so it runs here at batch 1 only.

The checkpoints are tiny_checkpoint's geometry on a 3-layer CLIP and, except for SparseVLM (pruning at
layers 2, 6 and 15), a 4-layer LLM (``shallow_checkpoints``): what a batch may change is the padding,
the masks and the per-row spans, which the depth does not touch, and half precision on the CPU pays for
every layer (float16 matmuls have no fast CPU kernel).
"""

from __future__ import annotations

import random

import pytest

from sparsezip_lmms.config import load_config, prunes_in_llm
from sparsezip_lmms.demo.mini_datasets import _scene
from sparsezip_lmms.efficiency import get_record
from sparsezip_lmms.models.base import class_default_config
from sparsezip_lmms.models.manifest import DEDICATED_IDS
from _requests import make_requests

GEN = {"max_new_tokens": 4, "temperature": 0, "do_sample": False}
COMBINATIONS = [
    ("float64", "sdpa"),
    ("float32", "sdpa"),
    ("float32", "eager"),
    ("bfloat16", "sdpa"),
    ("bfloat16", "eager"),
    ("float16", "sdpa"),
    ("float16", "eager"),
]
EXACT = {"float64", "float32"}


def _docs():
    """8 prompts: 0, 1 and 2 images, assorted sizes and questions (one empty)."""
    rng = random.Random(5)
    one = lambda size: [_scene(rng, size)]  # noqa: E731
    return [
        (one((640, 480)), "Is there a cat in the image?"),
        ([], "Answer yes or no: is the sky blue?"),
        (one((300, 500)) + one((336, 336)), "Which of the two images is brighter?"),
        (one((120, 90)), ""),
        (one((800, 300)), "What colour is the largest shape?"),
        ([], "Say a colour."),
        (one((224, 224)) + one((500, 375)), "Do both images show a circle?"),
        (one((480, 640)), "Count the shapes."),
    ]


def _run(model_id, checkpoint, dtype, attn, batch_size, clip):
    from lmms_eval.models import get_model

    extra = {"clip_text_tower": str(clip)} if model_id == "llava_cdpruner" else {}
    if model_id == "llava_dart":  # the empty question leaves 3 tokens after the image: fewer text pivots than 4
        extra = {"pivot_text": 2}
    lmm = get_model(model_id)(
        pretrained=str(checkpoint), device="cpu", dtype=dtype, attn_implementation=attn, batch_size=batch_size,
        config=class_default_config(model_id), **extra,
    )  # fmt: skip
    task = f"mixed_{model_id}_{dtype}_{attn}_{batch_size}"
    docs = _docs()
    results = lmm.generate_until(make_requests(lmm, docs, GEN, task=task))
    records = [get_record(task, "test", i) for i in range(len(docs))]
    return [r.text for r in results], records


def _counts(records):
    return [(r.input_tokens, r.visual_tokens, r.visual_tokens_layer_avg, r.output_tokens) for r in records]


def _checkpoint(model_id, checkpoints):
    """The 16-layer LLM where the default config prunes beyond layer 3, else the 4-layer one."""
    cfg = load_config(class_default_config(model_id))
    deepest = max([*getattr(cfg, "pruning_layers", ()), getattr(cfg, "layer", 0) or 0, getattr(cfg, "prune_layer", 0) or 0])
    return checkpoints[16] if deepest >= 4 else checkpoints[4]


@pytest.mark.parametrize("model_id", sorted(DEDICATED_IDS))
@pytest.mark.parametrize("dtype, attn", COMBINATIONS)
def test_batch_size_does_not_change_answers_or_counts(model_id, dtype, attn, shallow_checkpoints, tiny_clip):
    checkpoint = _checkpoint(model_id, shallow_checkpoints)
    answers, records = _run(model_id, checkpoint, dtype, attn, 1, tiny_clip)
    assert all(r is not None and r.error is None for r in records), [r.error for r in records if r]
    if prunes_in_llm(load_config(class_default_config(model_id))):  # prompts without exactly one image run unpruned
        assert [("unpruned" in r.extra) for r in records] == [len(images) != 1 for images, _ in _docs()]
    for batch_size in (3, 8) if dtype in EXACT else (8,):  # half precision (counts only): one padded batch
        batched_answers, batched_records = _run(model_id, checkpoint, dtype, attn, batch_size, tiny_clip)
        assert all(r.error is None for r in batched_records), [r.error for r in batched_records]
        expected, got = _counts(records), _counts(batched_records)
        if dtype not in EXACT:  # answers (hence output lengths) may round differently
            expected, got = [c[:3] for c in expected], [c[:3] for c in got]
        assert got == expected, batch_size
        if dtype in EXACT:
            assert batched_answers == answers, batch_size
