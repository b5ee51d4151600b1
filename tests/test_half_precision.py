"""Half precision, as users run it on a GPU, on every device this machine has: the CPU always (its
bfloat16/float16 stand in for the GPU's), CUDA when torch sees one (``scripts/gpu_check.sh``).

For every model id and config family (LLaVA-1.5 and LLaVA-NeXT, SparseVLM v1.5 and v2.0, FastV, deferred
pruning, the vision-side and projected methods; every Qwen2.5-VL config family on a tiny Qwen2.5-VL) in
float16 and bfloat16, at batch 1 and 3: no request
fails (non-finite visual tokens are refused, so none reached the LLM), the visual tokens sent are distinct
source patches or declared merges, and the token counts (LLM input, visual tokens, the in-LLM layer
average) equal float32's, where the method's decision is integer-valued (SparseZip's dynamic K: within
one token, docs/ALGORITHMS.md "Precision rules"). The kept sets may differ from float32's on near ties.

The checkpoints are small (a 3-layer CLIP; a 4-layer LLM, or 16 layers where pruning reaches layer 15;
the NeXT checkpoint), the images small, one short request each; one model is loaded per checkpoint and
dtype, and its configs switch on the loaded weights (``with_config``).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from sparsezip_lmms.demo.mini_datasets import _scene
from sparsezip_lmms.efficiency import get_record
from _requests import make_requests

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
HALF = ["bfloat16", "float16"]
GEN = {"max_new_tokens": 2, "temperature": 0, "do_sample": False}
# (model id, config, checkpoint): "llm4" / "llm16" shallow LLaVA-1.5, "next" the tiny LLaVA-NeXT
CASES = [
    ("llava_hf_timed", "keep_all", "llm4"),
    ("llava_visionzip", "visionzip_64", "llm4"),
    ("llava_sparsezip", "sparsezip_64", "llm4"),
    ("llava_sparsezip", "random_64", "llm4"),
    ("llava_divprune", "divprune_64", "llm4"),
    ("llava_cdpruner", "cdpruner_64", "llm4"),
    ("llava_fastv", "fastv_default", "llm4"),
    ("llava_dart", "dart_64", "llm4"),
    ("llava_vispruner", "vispruner_64", "llm4"),
    ("llava_sparsevlm", "sparsevlm_64", "llm16"),
    ("llava_sparsevlm", "sparsevlm2_64", "llm16"),
    ("llava_sparsezip", "confound/aware_inside", "llm4"),
    ("llava_compressed", "pool_64", "llm4"),
    ("llava_hf_timed", "keep_all", "next"),
    ("llava_visionzip", "visionzip_next_320", "next"),
    ("llava_divprune", "divprune_next_320", "next"),
    ("llava_sparsevlm", "sparsevlm2_64", "next"),
    ("llava_dart", "dart_64", "next"),
]
DYNAMIC_K = {"sparsezip_64", "confound/aware_inside"}
_LOADED: dict = {}
_REFERENCE: dict = {}


def _docs():
    rng = random.Random(11)
    sizes, questions = [(640, 480), (300, 500), (336, 336)], ["Is there a cat?", "What colour is the square?", "Count."]
    return [([_scene(rng, size)], q) for size, q in zip(sizes, questions)]


def _model(checkpoint, device, dtype, clip):
    """One loaded model per (checkpoint, device, dtype) for the whole file (its weights are only read)."""
    from lmms_eval.models import get_model

    key = (str(checkpoint), device, dtype)
    if key not in _LOADED:
        _LOADED[key] = get_model("llava_hf_timed")(pretrained=str(checkpoint), device=device, dtype=dtype, batch_size=1)
    return _LOADED[key]


def _run(case, checkpoints, device, dtype, batch_size, clip):
    model_id, config, kind = case
    base = _model(checkpoints[kind], device, dtype, clip)
    lmm = base.with_config(model_id, config, clip_text_tower=str(clip) if model_id == "llava_cdpruner" else None)
    lmm.batch_size_per_gpu = batch_size
    task = f"half_{model_id}_{config}_{kind}_{device}_{dtype}_{batch_size}".replace("/", "_")
    results = lmm.generate_until(make_requests(lmm, _docs(), GEN, task=task))
    records = [get_record(task, "test", i) for i in range(len(results))]
    return results, records


def _counts(records):
    return [(r.input_tokens, r.visual_tokens, round(r.visual_tokens_layer_avg, 6)) for r in records]


@pytest.fixture(scope="module")
def checkpoints(shallow_checkpoints, tiny_next_checkpoint):
    return {"llm4": shallow_checkpoints[4], "llm16": shallow_checkpoints[16], "next": tiny_next_checkpoint}


@pytest.fixture(autouse=True)
def _sync_debug(request):
    """SPARSEZIP_SYNC_DEBUG=warn (scripts/gpu_check.sh): CUDA warns at every synchronising call."""
    mode = os.environ.get("SPARSEZIP_SYNC_DEBUG")
    if mode and torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode(mode)
        yield
        torch.cuda.set_sync_debug_mode(0)
    else:
        yield


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}:{c[1]}:{c[2]}")
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_keeps_float32_token_counts(case, dtype, device, checkpoints, tiny_clip):
    key = (case, device)
    if key not in _REFERENCE:
        _REFERENCE[key] = _run(case, checkpoints, device, "float32", 1, tiny_clip)[1]
    reference = _REFERENCE[key]
    assert all(r.error is None for r in reference), [r.error for r in reference]
    for batch_size in (1, 3):
        results, records = _run(case, checkpoints, device, dtype, batch_size, tiny_clip)
        assert all(r.error is None for r in records), [r.error for r in records]  # finite tokens, no failure
        assert all(isinstance(r.text, str) for r in results)
        got, expected = _counts(records), _counts(reference)
        if case[1] in DYNAMIC_K:  # K is read from a score: a rounding boundary may move it by one
            assert all(abs(g[1] - e[1]) <= 1 and abs(g[0] - e[0]) <= 1 for g, e in zip(got, expected)), (got, expected)
        else:
            assert got == expected, batch_size
        for record in records:  # distinct source patches (DivPrune's default keeps them so in every dtype)
            assert all("repeated" not in image for image in record.selection["images"]), record.selection
            if device == "cuda":
                assert record.peak_memory_bytes and record.peak_memory_bytes > 0
                assert record.ttft_s is not None and record.ttft_s > 0


# ----------------------------------------------------------------------------- Qwen2.5-VL

QWEN_CONFIGS = [
    "keep_all", "visionzip_qwen", "divprune_official", "vispruner_qwen", "sparsezip_qwen", "sparsezip_qwen_text",
    "cdpruner_qwen", "random_qwen", "pool_qwen", "dart_qwen", "fastv_default", "sparsevlm2_64", "sparsevlm_64",
]  # fmt: skip
QWEN_DYNAMIC_K = {"sparsezip_qwen", "sparsezip_qwen_text"}


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    """A tiny Qwen2.5-VL with 16 LLM layers (SparseVLM v2.0 prunes at layers 2, 6 and 15)."""
    from sparsezip_lmms.demo.tiny_qwen import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("half_qwen") / "tiny-qwen2.5-vl", text_layers=16)


def _qwen_counts(checkpoint, device, dtype):
    """{(config, batch): [(input tokens, visual tokens, layer average) per prompt]} for three prompts of
    different image sizes, as one left-padded batch (batch 3) and each alone (batch 1)."""
    from lmms_eval.models import get_model
    from lmms_eval.protocol import ChatMessages

    from sparsezip_lmms.models.qwen_pipeline import qwen_batch

    lmm = get_model("qwen2_5_vl_compressed")(pretrained=str(checkpoint), config="keep_all", device=device, dtype=dtype,
                                             min_pixels=3136, max_pixels=50176)  # fmt: skip
    prompts = [
        lmm.chat_prompt(ChatMessages(messages=[{"role": "user", "content": [
            {"type": "image", "url": image}, {"type": "text", "text": question}]}]))
        for (image,), question in _docs()
    ]  # fmt: skip
    counts = {}
    for name in QWEN_CONFIGS:
        config = type(lmm).resolve_config(name, {}, 16)
        for rows in ([0, 1, 2], [0], [1], [2]):
            out = qwen_batch(lmm, [prompts[r][0] for r in rows], [i for r in rows for i in prompts[r][1]], GEN, config)
            assert all(isinstance(t, str) for t in out.texts)
            got = list(zip(out.input_tokens, out.visual_tokens, [round(a, 6) for a in out.layer_avg]))
            counts.setdefault((name, 1 if len(rows) == 1 else 3), []).extend(got)
    return counts


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("device", DEVICES)
def test_qwen_half_precision_keeps_float32_token_counts(dtype, device, qwen_checkpoint):
    """Every Qwen2.5-VL config family in float16 and bfloat16, at batch 1 and 3 over mixed image sizes: no
    refusal (non-finite visual tokens are refused before the LLM), the token counts of float32 (SparseZip's
    dynamic K within one token)."""
    key = ("qwen", device)
    if key not in _REFERENCE:
        _REFERENCE[key] = _qwen_counts(qwen_checkpoint, device, "float32")
    reference = _REFERENCE[key]
    got = _qwen_counts(qwen_checkpoint, device, dtype)
    for (name, batch), counts in got.items():
        expected = reference[(name, 3)]  # float32 as one batch
        if name in QWEN_DYNAMIC_K:
            assert all(abs(g[1] - e[1]) <= 1 and abs(g[0] - e[0]) <= 1 for g, e in zip(counts, expected)), (name, batch)
        else:
            assert counts == expected, (name, batch, counts, expected)
