"""A tiny random-weight LLaVA-1.5 checkpoint in llava-hf format, built offline.

The geometry is LLaVA-1.5's where it matters to token compression: a CLIP vision tower with
image 336 and patch 14 (576 patches + CLS), 24 layers, features taken from layer -2 without CLS
("default" strategy), a 2-layer GELU projector, and a LLaMA decoder deep enough for SparseVLM's
pruning layers (2, 6, 15). Widths are small so that a whole lmms-eval run takes seconds on a CPU.
The tokenizer is a byte-level BPE trained here on a small corpus of benchmark-like prompts, with
an ``<image>`` token and a LLaVA-1.5-style chat template.

The weights are random: generations are arbitrary text. The checkpoint exists to exercise every
code path (loading, processor, compression, generation, harness) exactly as a real one would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from .tiny_qwen import build_tiny_qwen2_5_vl  # noqa: F401  (re-exported)

# The LLaVA-1.5 conversation format ("USER: <image>\n... ASSISTANT:"), images first in a turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_CORPUS = [
    "USER: <image>\nIs there a cat in the image? Answer the question using a single word or phrase. ASSISTANT: Yes",
    "USER: <image>\nIs there a dog in the image? Answer the question using a single word or phrase. ASSISTANT: No",
    "USER: <image>\nIs this photo taken in a place of worship? Please answer yes or no. ASSISTANT: yes no",
    "USER: <image>\nWhat is the date mentioned in this letter? Answer the question using a single word or phrase.",
    "ASSISTANT: 1/8/93 The total is 12.50 dollars. Page 3 of the report, ITC Limited, Corporation.",
    "Is the red square on the left of the blue circle? Are there two objects in the picture?",
    "A chat between a curious user and an artificial intelligence assistant.",
    "0 1 2 3 4 5 6 7 8 9 yes no Yes No YES NO . , ? ! : ; ' \" ( ) - / %",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained offline, wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=4096,
    )


# LLaVA-NeXT's any-resolution grids (llava-hf v1.6 checkpoints): up to 2 x 2 tiles of 336 plus the base view
NEXT_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _image_processor_classes() -> tuple[type, type]:
    """(CLIP, LLaVA-NeXT) image processor classes: the PIL ones where torchvision is absent (the CPU install
    removes it), named directly so that transformers does not warn about its fallback."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None:
        return transformers.CLIPImageProcessorPil, transformers.LlavaNextImageProcessorPil
    return transformers.CLIPImageProcessor, transformers.LlavaNextImageProcessor


def build_tiny_llava(
    out_dir: str | Path,
    *,
    vision_layers: int = 24,
    vision_width: int = 64,
    text_layers: int = 16,
    text_width: int = 64,
    seed: int = 0,
    next_grid: bool = False,
) -> Path:
    """Build, save and return the path of a tiny random LLaVA-1.5 checkpoint (llava-hf format); with
    ``next_grid``, a LLaVA-NeXT one (``model_type`` "llava_next": any-resolution tiles from
    :data:`NEXT_GRID_PINPOINTS`, the image-newline parameter, the NeXT processor).

    ``AutoModelForImageTextToText.from_pretrained(out_dir)`` and ``AutoProcessor.from_pretrained(out_dir)``
    load it back like a hub checkpoint.
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    CLIPImageProcessor, LlavaNextImageProcessor = _image_processor_classes()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    pixels = {
        "size": {"shortest_edge": 336},
        "crop_size": {"height": 336, "width": 336},
        "do_center_crop": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    processor_args = {
        "tokenizer": tokenizer,
        "patch_size": 14,
        "vision_feature_select_strategy": "default",
        "chat_template": CHAT_TEMPLATE,
        "image_token": "<image>",
        "num_additional_image_tokens": 1,
    }
    if next_grid:
        image_processor = LlavaNextImageProcessor(**pixels, image_grid_pinpoints=NEXT_GRID_PINPOINTS, do_pad=True)
        processor = LlavaNextProcessor(image_processor=image_processor, **processor_args)
    else:
        processor = LlavaProcessor(image_processor=CLIPImageProcessor(**pixels), **processor_args)
    vision = CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=2 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=336,
        patch_size=14,
        projection_dim=vision_width,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_width,
        intermediate_size=2 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        # head_dim 16: a RoPE base this large keeps SparseVLM v2.0's RoPE-only term positive over the
        # prompt (with LLaMA's 1e4 it turns negative beyond a distance of 91; LLaVA-1.5's head_dim 128 is fine)
        rope_parameters={"rope_type": "default", "rope_theta": 1e8},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config_args = {
        "vision_config": vision,
        "text_config": text,
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(seed)
    if next_grid:
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(**config_args, image_grid_pinpoints=NEXT_GRID_PINPOINTS))
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**config_args))
    _sharpen_attention(model)
    _answer_yes_or_no(model, processor, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@torch.no_grad()
def _sharpen_attention(model) -> None:
    """Scale the random query/key projections up so attention is peaked like a trained model's.

    With default random init every attention row is nearly uniform, which makes all token scores
    tie and top-k choices arbitrary; trained CLIP/LLaMA attention is far more peaked.
    """
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "k_proj")) and hasattr(module, "weight"):
            module.weight.mul_(4.0)


@torch.no_grad()
def _answer_yes_or_no(model, processor, seed: int, answer_gain: float = 50.0, stop_gain: float = 10.0) -> None:
    """Make the random model answer " Yes" or " No" and then stop, like an instruction-tuned one.

    The output rows of " Yes" and " No" get a large component along a random direction ``u`` of
    opposite sign, so the sign of the final hidden state along ``u`` — a function of the image and
    the question — picks the answer. The input embeddings of both words point along a second
    direction ``v`` (orthogonal to ``u``) that the end-of-sequence row also gets, so the step after
    an answer ends the sequence. Everything else stays random: accuracy is chance level, and
    compressing the visual tokens changes some answers, which is what the demo and tests need.
    Both directions are taken orthogonal to the mean final hidden state of a few calibration
    prompts, so that " Yes" and " No" are about equally likely.
    """
    tokenizer = processor.tokenizer
    yes, no = (tokenizer.convert_tokens_to_ids(t) for t in ("\u0120Yes", "\u0120No"))
    if tokenizer.unk_token_id in (yes, no):
        raise ValueError("the tiny tokenizer lacks the ' Yes' / ' No' tokens")
    generator = torch.Generator().manual_seed(seed + 1)
    mean_hidden = _mean_answer_state(model, processor, generator)  # [d]
    basis = torch.cat([mean_hidden[:, None], torch.randn(mean_hidden.numel(), 2, generator=generator)], dim=1)
    u, v = torch.linalg.qr(basis)[0][:, 1:].T  # orthonormal, both orthogonal to the mean state
    head = model.get_output_embeddings().weight  # [V, d]
    head[yes] += answer_gain * u
    head[no] -= answer_gain * u
    head[tokenizer.eos_token_id] = stop_gain * v
    embeddings = model.get_input_embeddings().weight  # [V, d]
    embeddings[yes] = embeddings[no] = 4.0 * v


def _mean_answer_state(model, processor, generator: torch.Generator) -> torch.Tensor:
    """Mean final (normed) hidden state at the answer position over benchmark-like prompts."""
    from .mini_datasets import docvqa_rows, mme_rows, pope_rows

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    rows = pope_rows(4, seed) + mme_rows(2, seed) + docvqa_rows(2, seed)
    prompts, images = [], []
    for row in rows:
        question = row["question"] + "\nAnswer the question using a single word or phrase."
        prompts.append(
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
        )
        images.append(row["image"].convert("RGB"))
    side, processor.tokenizer.padding_side = processor.tokenizer.padding_side, "left"
    try:
        inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    finally:
        processor.tokenizer.padding_side = side
    states = model.model(**inputs).last_hidden_state[:, -1]  # [n, d] (left padding: last = answer position)
    return states.mean(dim=0)


def build_clip_tokenizer():
    """A CLIP byte-level BPE tokenizer (``</w>`` word ends, lower-cased): the 256 byte symbols, their
    word-final forms and a few merges from the corpus. BOS ``<|startoftext|>`` and EOS
    ``<|endoftext|>`` are the last two ids, as in openai's CLIP."""
    from collections import Counter

    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 byte symbols
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pairs = Counter()
    for line in _CORPUS:
        for word, _ in byte_level.pre_tokenize_str(line.lower()):
            word = word.strip()
            if len(word) > 1:
                pairs[(word[0], word[1])] += 1
    merges = [(a, b) for (a, b), _ in pairs.most_common(32)]
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_clip(out_dir: str | Path, *, vision_width: int = 64, text_width: int = 32, seed: int = 0) -> Path:
    """A tiny random CLIP checkpoint (``CLIPModel`` + tokenizer) for CDPruner's text side.

    Its vision tower has the width of :func:`build_tiny_llava`'s (so ``visual_projection`` takes the LLaVA
    vision tower's features) but one layer, since only the projection is used; the text tower has 77
    positions and the legacy ``eos_token_id = 2`` of the openai checkpoints (pooling at the largest id).
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer()
    config = CLIPConfig(
        text_config=CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, projection_dim=32,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=1, num_attention_heads=4,
            image_size=336, patch_size=14, projection_dim=32,
        ),
        projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(seed + 7)
    model = CLIPModel(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    print(build_tiny_llava(args.out_dir))


if __name__ == "__main__":
    main()
