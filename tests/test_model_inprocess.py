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


@pytest.mark.parametrize("model_id", ["llava_hf_timed", "llava_sparsezip", "llava_visionzip", "llava_sparsevlm"])
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


@pytest.mark.parametrize(
    "model_id, config, phase",
    [("llava_hf_timed", "keep_all", None), ("llava_visionzip", "visionzip_64", "vision_s"), ("llava_fastv", "fastv_64", "prefill_s")],
)
def test_method_time_is_its_own_step(model_id, config, phase, tiny_checkpoint):
    """method_s: the method's own steps, inside the phase where they run (vision or the LLM prefill)."""
    from sparsezip_lmms.efficiency import get_record

    lmm = _model(model_id, tiny_checkpoint, batch_size=2, config=config)
    lmm.generate_until(make_requests(lmm, _docs()[:2], GEN, task=f"unit_method_{model_id}"))
    for doc_id in range(2):
        record = get_record(f"unit_method_{model_id}", "test", doc_id)
        if phase is None:
            assert record.method_s == 0.0
        else:
            assert 0 < record.method_s < getattr(record, phase)


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


@pytest.mark.parametrize(
    "model_id, config, check",
    [
        ("llava_sparsezip", "sparsezip_64", lambda r: r.visual_tokens <= 64 and r.compression_flops > 0),
        ("llava_sparsezip", "ablations/text_space_llm", lambda r: r.visual_tokens <= 64),
        ("llava_sparsezip", "pool_64", lambda r: r.visual_tokens == 64),
        ("llava_sparsezip", "random_64", lambda r: r.visual_tokens == 64),
        ("llava_visionzip", "visionzip_64", lambda r: r.visual_tokens == 64),
        ("llava_sparsevlm", "sparsevlm_64", lambda r: r.visual_tokens == 576 and r.visual_tokens_layer_avg < 576),
    ],
)
def test_compressing_models_handle_awkward_images(model_id, config, check, tiny_checkpoint):
    """Grayscale, RGBA, 10x10 and extreme aspect ratios, an empty question, batch of 3."""
    from PIL import Image

    from sparsezip_lmms.efficiency import get_record

    rng = random.Random(1)
    gray = _scene(rng, (300, 200)).convert("L")
    rgba = _scene(rng, (200, 300)).convert("RGBA")
    tiny = _scene(rng, (10, 10))
    strip = Image.new("RGB", (600, 4), (10, 200, 30))
    docs = [([gray], "Is it gray?"), ([rgba], ""), ([tiny], "Tiny?"), ([strip], "A strip?")]
    lmm = _model(model_id, tiny_checkpoint, batch_size=3, config=config)
    task = f"unit_awkward_{model_id}_{config.replace('/', '_')}"
    results = lmm.generate_until(make_requests(lmm, docs, GEN, task=task))
    assert len(results) == 4
    for i in range(4):
        record = get_record(task, "test", i)
        assert record.error is None, record.error
        assert check(record), record


def _visual_tokens(lmm, docs, monkeypatch):
    """Answers and, per image, (source index [T], visual tokens [T, D]) of its valid tokens as they
    entered the LLM (``image_tokens`` wrapped for this test only)."""
    import sparsezip_lmms.families.llava as base

    seen, original = [], base.image_tokens

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        for valid, index, features in zip(out.valid, out.source_index, out.features):
            seen.append((index[valid], features[valid]))
        return out

    with monkeypatch.context() as patch:
        patch.setattr(base, "image_tokens", recording)
        answers = _answers(lmm, docs)
    return answers, seen


@pytest.mark.parametrize("config", ["sparsezip_64", "random_64"])
def test_compressed_tokens_do_not_depend_on_batch_size(config, tiny_checkpoint, monkeypatch):
    """Every image enters the LLM with the same tokens at batch 1 and 4 (random_64: keyed draws)."""
    docs = _docs()
    lmm_one = _model("llava_sparsezip", tiny_checkpoint, batch_size=1, config=config)
    lmm_four = _model("llava_sparsezip", tiny_checkpoint, batch_size=4, config=config)
    one, tokens_one = _visual_tokens(lmm_one, docs, monkeypatch)
    four, tokens_four = _visual_tokens(lmm_four, docs, monkeypatch)
    assert one == four
    assert len(tokens_one) == len(tokens_four) == len(docs)
    for index, features in tokens_one:  # batches reorder requests: match each image in the other run
        matches = [
            f for i, f in tokens_four if torch.equal(i, index) and torch.allclose(f, features, atol=1e-10)
        ]
        assert len(matches) == 1


def test_loading_our_models_leaves_plain_llava_untouched(llava_pair, stock_answers, tiny_checkpoint):
    """Isolation: after our models ran in this process, plain transformers LLaVA answers the same,
    and no transformers class or module instance carries anything of ours."""
    import transformers.models.clip.modeling_clip as clip
    import transformers.models.llama.modeling_llama as llama

    before = {
        name: dict(vars(cls))
        for name, cls in (("clip_attn", clip.CLIPAttention), ("clip_layer", clip.CLIPEncoderLayer), ("llama_layer", llama.LlamaDecoderLayer))
    }
    for model_id, config in (("llava_sparsezip", "sparsezip_64"), ("llava_visionzip", "visionzip_64"), ("llava_sparsevlm", "sparsevlm_64")):
        lmm = _model(model_id, tiny_checkpoint, batch_size=2, config=config)
        _answers(lmm, _docs()[:2])
        for module in lmm.model.modules():  # transformers installs its own output-capturing hooks
            hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
            assert not [h for h in hooks if getattr(h, "__module__", "").startswith("sparsezip_lmms")]
    after = {
        name: dict(vars(cls))
        for name, cls in (("clip_attn", clip.CLIPAttention), ("clip_layer", clip.CLIPEncoderLayer), ("llama_layer", llama.LlamaDecoderLayer))
    }
    assert before == after
    model, processor = llava_pair
    assert _stock_answers(model, processor, _docs(), GEN["max_new_tokens"]) == stock_answers


def test_question_mask_covers_the_tokens_after_each_image(tiny_checkpoint):
    lmm = _model("llava_hf_timed", tiny_checkpoint)
    ids = torch.tensor([[0, 0, 5, 9, 9, 6, 7, 9, 9, 8], [5, 9, 9, 6, 6, 6, 6, 6, 6, 6]])
    lmm.model.config.image_token_id = 9
    mask = lmm._question_mask(ids, (ids != 0).long(), n_images=3)
    assert mask.tolist() == [
        [False] * 5 + [True, True, False, False, False],  # image 0: tokens up to the next image
        [False] * 9 + [True],  # image 1
        [False] * 3 + [True] * 7,  # image 2 (second row)
    ]


def test_text_relevance_changes_which_patches_are_kept(llava_pair):
    """With a strong text term, two questions about one image keep different patches."""
    from sparsezip_lmms.config import load_config
    from sparsezip_lmms.llava.features import image_tokens

    model, processor = llava_pair
    image = _scene(random.Random(5), (336, 336))
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"].to(torch.float64)
    config = load_config("sparsezip_64", {"cross_beta": 5.0})
    embed = model.get_input_embeddings()
    kept = []
    for question in ("Is there a red square?", "What is the total amount in dollars?"):
        ids = processor.tokenizer(question, return_tensors="pt", add_special_tokens=False)["input_ids"]
        text = embed(ids)  # [1, L, D]
        out = image_tokens(model, pixels, config, text, torch.ones(ids.shape, dtype=torch.bool))
        kept.append(set(out.source_index[out.valid & (out.source_index >= 0)].tolist()))
    assert kept[0] != kept[1]
    neutral = image_tokens(model, pixels, load_config("sparsezip_64", {"cross_beta": 0.0}))
    assert neutral.counts.item() <= 64


def test_model_folds_the_projector_pull_back_once(tiny_checkpoint, llava_pair):
    """text_space vision: the model keeps one folded pull-back and keeps the same patches with it."""
    from sparsezip_lmms.config import load_config
    from sparsezip_lmms.llava.features import image_tokens, text_pull_back

    assert _model("llava_sparsezip", tiny_checkpoint, config="sparsezip_64")._pull_back is not None
    for config in ("ablations/text_space_llm", "ablations/text_off"):
        assert _model("llava_sparsezip", tiny_checkpoint, config=config)._pull_back is None
    assert _model("llava_visionzip", tiny_checkpoint, config="visionzip_64")._pull_back is None

    model, processor = llava_pair
    pixels = processor.image_processor(images=[_scene(random.Random(6), (336, 336))], return_tensors="pt")
    pixels = pixels["pixel_values"].to(torch.float64)
    ids = processor.tokenizer("Is there a red square?", return_tensors="pt", add_special_tokens=False)["input_ids"]
    text, mask = model.get_input_embeddings()(ids), torch.ones(ids.shape, dtype=torch.bool)
    config = load_config("sparsezip_64", {"cross_beta": 5.0})
    folded = image_tokens(model, pixels, config, text, mask, pull_back=text_pull_back(model, config))
    direct = image_tokens(model, pixels, config, text, mask)
    assert torch.equal(folded.source_index, direct.source_index)
    assert torch.allclose(folded.features, direct.features, atol=1e-10)


def test_a_cuda_device_without_cuda_runs_on_the_cpu_with_one_warning():
    """lmms-eval's default --device is cuda; on a CPU machine the model loads on the CPU, saying so."""
    import torch
    from loguru import logger

    from sparsezip_lmms.models.arguments import placement

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        for asked in ({"device": "cuda"}, {}, {"device": "cuda:0", "device_map": "auto"}):
            args = placement(asked)
            assert args["device"] == "cpu" and args["device_map"] == "cpu", asked
    finally:
        logger.remove(sink)
    assert len(messages) == 3 and all("no CUDA device: running on the CPU" in m for m in messages)
    assert placement({"device": "cpu"}) == {"device": "cpu", "device_map": "cpu"}
