"""The tiny offline Qwen2.5-VL checkpoint (``sparsezip_lmms.demo.tiny_qwen``): its files and token ids, the chat
layout, the processor's geometry, stock ``generate`` on a left-padded batch of two image sizes, and
``sparsezip_lmms.qwen.compressed_generate`` on it (keep_all == ``generate``; VisionZip's kept counts)."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from sparsezip_lmms.config import load_config
from sparsezip_lmms.demo.tiny_checkpoint import build_tiny_qwen2_5_vl as reexported
from sparsezip_lmms.demo.tiny_qwen import SPECIAL_TOKENS, build_tiny_qwen2_5_vl, load_qwen_processor
from sparsezip_lmms.qwen import compressed_generate

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
QUESTION = "Is there a cat in the image? Answer the question using a single word or phrase."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def processor(checkpoint):
    return load_qwen_processor(checkpoint)


def image(seed: int, width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def messages(question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def batch(processor):
    """Two prompts (224 x 224 and 308 x 196 images), left-padded."""
    texts = [processor.apply_chat_template(messages(q), add_generation_prompt=True)
             for q in (QUESTION, "What is the color of the ball?")]  # fmt: skip
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=[image(0, 224, 224), image(1, 308, 196)], return_tensors="pt", padding=True)


def test_files_tokens_and_config(checkpoint, model):
    assert reexported is build_tiny_qwen2_5_vl
    names = {p.name for p in checkpoint.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "preprocessor_config.json"} <= names  # fmt: skip
    tok = AutoTokenizer.from_pretrained(checkpoint)
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS)
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # consecutive, in Qwen's order
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert tok.encode("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")[:1] == [ids[1]]
    cfg = model.config
    assert (cfg.image_token_id, cfg.video_token_id) == tuple(tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"]))
    assert (cfg.vision_start_token_id, cfg.vision_end_token_id) == tuple(
        tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    )
    assert cfg.text_config.vocab_size == len(tok) > max(ids)
    assert cfg.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    vision = cfg.vision_config
    assert vision.fullatt_block_indexes[-1] == vision.depth - 1 and vision.out_hidden_size == cfg.text_config.hidden_size
    assert model.dtype == torch.float32 and model.generation_config.eos_token_id == tok.eos_token_id


def test_the_same_bytes_every_build(checkpoint, tmp_path):
    again = build_tiny_qwen2_5_vl(tmp_path / "again")
    other = build_tiny_qwen2_5_vl(tmp_path / "other", seed=1)

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    for name in ("model.safetensors", "tokenizer.json", "config.json", "preprocessor_config.json"):
        assert digest(checkpoint / name) == digest(again / name), name
    assert digest(checkpoint / "model.safetensors") != digest(other / "model.safetensors")


def test_chat_template_is_qwen2_5_vl(processor, checkpoint):
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert processor.apply_chat_template(messages(), add_generation_prompt=True, tokenize=False) == expected
    assert AutoTokenizer.from_pretrained(checkpoint).apply_chat_template(messages(), add_generation_prompt=True, tokenize=False) == expected
    # lmms-eval's shape: a string system turn, an image given as {"type": "image", "image": ...}
    custom = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"type": "image", "image": "data:image/jpeg;base64,"}, {"type": "text", "text": "Hi"}]}]  # fmt: skip
    assert processor.apply_chat_template(custom, add_generation_prompt=False, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
    )


def test_image_geometry_and_pixel_kwargs(processor, checkpoint):
    grid = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image(0, 224, 224)], return_tensors="pt")
    assert grid["image_grid_thw"].tolist() == [[1, 16, 16]] and int((grid["input_ids"] == processor.image_token_id).sum()) == 64
    assert grid["pixel_values"].shape == (256, 3 * 2 * 14 * 14)
    small = load_qwen_processor(checkpoint, min_pixels=56 * 56, max_pixels=112 * 112)  # lmms-eval passes these
    assert small(text=["<|image_pad|>"], images=[image(0, 224, 224)])["image_grid_thw"].tolist() == [[1, 8, 8]]
    big = processor(text=["<|image_pad|>"], images=[image(0, 1000, 1000)])["image_grid_thw"]
    assert int(big.prod()) <= 448 * 448 // 196  # max_pixels default


def test_auto_processor(checkpoint):
    from transformers import AutoProcessor

    if HAS_TORCHVISION:
        proc = AutoProcessor.from_pretrained(checkpoint, min_pixels=56 * 56, max_pixels=112 * 112)
        assert type(proc).__name__ == "Qwen2_5_VLProcessor" and proc.image_processor.size["longest_edge"] == 112 * 112
    else:  # transformers 5.x loads Qwen2VLVideoProcessor for every Qwen2.5-VL checkpoint, and it needs torchvision
        with pytest.raises(ImportError, match="Torchvision"):
            AutoProcessor.from_pretrained(checkpoint)


def test_generate_and_compressed_generate(model, processor):
    inputs = batch(processor)
    mask = inputs["attention_mask"]
    assert bool(mask[:, -1].all()) and not bool(mask[:, 0].all())  # left padding
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16], [1, 14, 22]]
    assert "mm_token_type_ids" in inputs
    eos = processor.tokenizer.eos_token_id
    stock = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = stock[:, inputs["input_ids"].shape[1] :]
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 4
    args = (model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["image_grid_thw"])
    keep_all = compressed_generate(*args, load_config("keep_all"), 4, eos_token_id=eos)
    assert torch.equal(keep_all.sequences, new)
    assert [len(k) for k in keep_all.kept] == [64, 77]
    zipped = compressed_generate(*args, load_config("visionzip_qwen"), 4)
    assert zipped.sequences.shape == (2, 4)
    assert [len(k) for k in zipped.kept] == [int(0.65 * n) + max(int(0.05 * n), 1) for n in (64, 77)]
