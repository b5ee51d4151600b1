"""Our lmms-eval model classes driven in-process on the tiny checkpoint (float64, CPU)."""

from __future__ import annotations

import random

import pytest
import torch

from sparsezip_lmms.demo.mini_datasets import _scene
from _requests import make_requests, user_turn

GEN = {"max_new_tokens": 6, "temperature": 0, "do_sample": False}


def _docs():
    rng = random.Random(3)
    sizes = [(640, 480), (300, 500), (336, 336), (120, 90), (800, 300)]
    questions = ["Is there a cat in the image?", "What colour is the square?", "Is this a dog?", "", "Count the shapes."]
    return [([_scene(rng, size)], q) for size, q in zip(sizes, questions)]


def _model(model_id, checkpoint, batch_size=1, **args):
    from lmms_eval.models import get_model

    return get_model(model_id)(pretrained=str(checkpoint), device="cpu", dtype="float64", batch_size=batch_size, **args)


def _stock_answers(model, processor, docs, max_new_tokens):
    """Plain transformers LLaVA generation, one request at a time (what llava_hf does)."""
    answers = []
    for images, question in docs:
        text = processor.apply_chat_template(user_turn([None] * len(images), question), add_generation_prompt=True, tokenize=False)
        inputs = processor(images=images, text=text, return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.float64)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        eos = processor.tokenizer.eos_token_id
        new = new[: new.index(eos)] if eos in new else new
        answers.append(processor.tokenizer.decode(new, skip_special_tokens=True))
    return answers


def _answers(lmm, docs, gen=GEN):
    return [r.text for r in lmm.generate_until(make_requests(lmm, docs, gen))]


@pytest.fixture(scope="module")
def stock_answers(llava_pair):
    model, processor = llava_pair
    return _stock_answers(model, processor, _docs(), GEN["max_new_tokens"])


@pytest.mark.parametrize("model_id", ["llava_hf_timed", "llava_sparsezip", "llava_visionzip"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_keep_all_reproduces_plain_llava(model_id, batch_size, tiny_checkpoint, stock_answers):
    lmm = _model(model_id, tiny_checkpoint, batch_size=batch_size, config="keep_all")
    assert _answers(lmm, _docs()) == stock_answers


def test_token_counts_and_records_are_reported(tiny_checkpoint):
    from sparsezip_lmms.efficiency import get_record

    lmm = _model("llava_hf_timed", tiny_checkpoint, batch_size=2)
    docs = _docs()[:3]
    results = lmm.generate_until(make_requests(lmm, docs, GEN, task="unit_counts"))
    for doc_id, result in enumerate(results):
        assert result.token_counts.input_tokens > 576  # prompt text + 576 image tokens
        assert 0 <= result.token_counts.output_tokens <= GEN["max_new_tokens"]
        record = get_record("unit_counts", "test", doc_id)
        assert record.visual_tokens == 576 and record.error is None
        assert record.input_tokens == result.token_counts.input_tokens
        assert record.e2e_s > 0 and record.vision_s > 0 and record.ttft_s > 0


def test_prompt_without_image_and_multiple_images(tiny_checkpoint):
    lmm = _model("llava_hf_timed", tiny_checkpoint, batch_size=3)
    rng = random.Random(0)
    docs = [([], "Say yes or no."), ([_scene(rng, (200, 200)), _scene(rng, (300, 100))], "Which image is brighter?"), _docs()[0]]
    results = lmm.generate_until(make_requests(lmm, docs, GEN, task="unit_mixed"))
    assert all(isinstance(r.text, str) for r in results)
    from sparsezip_lmms.efficiency import get_record

    assert [get_record("unit_mixed", "test", i).visual_tokens for i in range(3)] == [0, 2 * 576, 576]
    assert all(get_record("unit_mixed", "test", i).error is None for i in range(3))


def test_one_bad_request_does_not_sink_its_batch(tiny_checkpoint):
    from sparsezip_lmms.efficiency import get_record

    lmm = _model("llava_hf_timed", tiny_checkpoint, batch_size=3)
    docs = _docs()[:3]
    requests = make_requests(lmm, docs, GEN, task="unit_bad")
    lmm.task_dict["unit_bad"]["test"][1]["images"] = ["not an image"]
    results = lmm.generate_until(requests)
    assert results[1].text == "" and get_record("unit_bad", "test", 1).error
    good = _answers(_model("llava_hf_timed", tiny_checkpoint, batch_size=1), [docs[0], docs[2]])
    assert [results[0].text, results[2].text] == good
