"""Every model id on a CUDA device, in float16 and bfloat16, with each attention implementation.

Skipped where torch sees no CUDA device (CI, CPU machines); ``scripts/gpu_check.sh`` runs it on a GPU.
In half precision a batch may round differently from a single request, so the batch-invariance
requirement here is on what the compression decides (visual tokens kept, LLM input lengths, the
SparseVLM layer averages), not on the generated text; the text is checked to be produced.
"""

from __future__ import annotations

import random

import pytest
import torch

from sparsezip_lmms.demo.mini_datasets import _scene
from sparsezip_lmms.efficiency import get_record
from sparsezip_lmms.models.base import class_default_config
from sparsezip_lmms.models.manifest import DEDICATED_IDS
from _requests import make_requests

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh)")

GEN = {"max_new_tokens": 4, "temperature": 0, "do_sample": False}


def _attention_implementations() -> list[str]:
    from transformers.utils import is_flash_attn_2_available

    return ["sdpa", "eager"] + (["flash_attention_2"] if is_flash_attn_2_available() else [])


def _docs():
    rng = random.Random(11)
    sizes = [(640, 480), (300, 500), (336, 336), (800, 300), (224, 224)]
    questions = ["Is there a cat in the image?", "What colour is the square?", "Is this a dog?", "Count the shapes.", "Is it red?"]
    return [([_scene(rng, size)], q) for size, q in zip(sizes, questions)]


def _run(model_id, checkpoint, dtype, attn, batch_size, task, clip):
    from lmms_eval.models import get_model

    extra = {"clip_text_tower": str(clip)} if model_id == "llava_cdpruner" else {}
    lmm = get_model(model_id)(
        pretrained=str(checkpoint), device="cuda", dtype=dtype, attn_implementation=attn, batch_size=batch_size,
        config=class_default_config(model_id), **extra,
    )  # fmt: skip
    docs = _docs()
    results = lmm.generate_until(make_requests(lmm, docs, GEN, task=task))
    records = [get_record(task, "test", i) for i in range(len(docs))]
    del lmm
    torch.cuda.empty_cache()
    return results, records


@pytest.mark.parametrize("model_id", sorted(DEDICATED_IDS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("attn", _attention_implementations() if torch.cuda.is_available() else ["sdpa"])
def test_batch_keeps_the_same_tokens_on_cuda(model_id, dtype, attn, tiny_checkpoint, tiny_clip):
    task = f"cuda_{model_id}_{dtype}_{attn}"
    single, single_records = _run(model_id, tiny_checkpoint, dtype, attn, 1, task + "_b1", tiny_clip)
    batched, batched_records = _run(model_id, tiny_checkpoint, dtype, attn, 4, task + "_b4", tiny_clip)
    for one, many, rec_one, rec_many in zip(single, batched, single_records, batched_records):
        assert rec_one.error is None and rec_many.error is None, (rec_one.error, rec_many.error)
        assert isinstance(one.text, str) and isinstance(many.text, str)
        assert one.token_counts.input_tokens == many.token_counts.input_tokens
        assert rec_one.visual_tokens == rec_many.visual_tokens
        assert rec_one.visual_tokens_layer_avg == pytest.approx(rec_many.visual_tokens_layer_avg)
        assert rec_one.peak_memory_bytes is not None and rec_one.peak_memory_bytes > 0  # measured on CUDA
        assert rec_one.ttft_s is not None and rec_one.ttft_s > 0
