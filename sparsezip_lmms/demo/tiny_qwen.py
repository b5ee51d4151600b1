"""A tiny random-weight Qwen2.5-VL checkpoint in the hub's layout, built offline.

The geometry is Qwen2.5-VL's where it matters to token compression: a vision tower with patch 14,
temporal patch 2 and 2 x 2 patch merging, windowed attention (window 112) with full-attention blocks
1 and 3 (the last block is a full-attention one, whose attention VisionZip scores), and a decoder with
M-RoPE (``mrope_section`` [2, 3, 3] over a head dimension of 16) and grouped KV heads. Widths and depths
are small so that a run takes seconds on a CPU; so is the image processor's pixel budget (56² to 448²
pixels by default): a 224 x 224 image is 16 x 16 patches, 64 merged tokens.

The tokenizer is a byte-level BPE trained here with Qwen2's pre-tokenizer on a small corpus of
benchmark-like prompts, followed by Qwen's special tokens with their exact strings and hub order
(``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ..., ``<|vision_start|>``, ``<|vision_end|>``,
``<|vision_pad|>``, ``<|image_pad|>``, ``<|video_pad|>``); the chat template is Qwen2.5-VL's.

The files are those of a hub checkpoint (``config.json``, ``generation_config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``, ``preprocessor_config.json``).
transformers 5.x cannot build *any* Qwen2.5-VL processor without torchvision (``AutoProcessor`` always loads
a ``Qwen2VLVideoProcessor``, which needs it), so :func:`load_qwen_processor` gives an image-only one there.
The weights are random: generations are arbitrary text.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

# The chat template of Qwen/Qwen2.5-VL-7B-Instruct (its chat_template.json), unchanged.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's special tokens in their hub order (ids 151643-151656 there; here right after the BPE vocabulary)
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

_CORPUS = [
    "system\nYou are a helpful assistant.\nuser\n",
    "Is there a cat in the image? Answer the question using a single word or phrase.\nassistant\nYes",
    "Is there a dog in the image? Answer the question using a single word or phrase.\nassistant\nNo",
    "Is there a person in the image? Is there a car in the image? Is there a bottle in the image?",
    "Is this photo taken in a place of worship? Please answer yes or no.",
    "Is the red square on the left of the blue circle? Are there two objects in the picture?",
    "What is the color of the ball? red, green, blue, yellow, orange, purple, black, white, gray, brown, pink.",
    "What is the date mentioned in this letter? What is the title of the document? What is the total amount?",
    "How many people are in the picture? How many apples are on the table? Count the objects.",
    "Answer with the option's letter from the given choices directly. A. B. C. D.",
    "Look at the chart and answer the question. Which bar is the highest? What is the value of the largest slice?",
    "The total is 12.50 dollars. Page 3 of the report, 1/8/93, ITC Limited, Corporation.",
    "yes no Yes No YES NO true false left right top bottom above below inside outside",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 20 50 100 2024 3.14 0.5 1,000",
    ". , ? ! : ; ' \" ( ) - / % + = * # @ & $",
]

# OpenAI CLIP's normalisation, as in Qwen2.5-VL's preprocessor_config.json
_MEAN = [0.48145466, 0.4578275, 0.40821073]
_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tokenizer(vocab_size: int = 512):
    """Qwen2's tokenizer class (``Qwen2Tokenizer``, which ``Qwen2TokenizerFast`` names in 5.x) over a byte-level
    BPE of ``vocab_size`` tokens trained offline with Qwen2's normaliser and pre-tokenizer, then
    :data:`SPECIAL_TOKENS`; eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos / unk (as on the hub)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS * 20, trainer)
    vocab = dict(sorted(bpe.get_vocab().items(), key=lambda item: item[1]))
    vocab.update({token: len(vocab) + i for i, token in enumerate(SPECIAL_TOKENS)})
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
        errors="replace",
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _image_processor_class() -> type:
    """``Qwen2VLImageProcessor``, or its PIL variant where torchvision is absent (the CPU install removes it),
    named directly so that transformers does not warn about its fallback."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None:
        return transformers.Qwen2VLImageProcessorPil
    return transformers.Qwen2VLImageProcessor


def build_tiny_qwen2_5_vl(
    out_dir: str | Path,
    *,
    text_layers: int = 3,
    seed: int = 0,
    min_pixels: int = 56 * 56,
    max_pixels: int = 448 * 448,
) -> Path:
    """Build, save and return the path of a tiny random Qwen2.5-VL checkpoint (float32, the same bytes for
    the same arguments). ``Qwen2_5_VLForConditionalGeneration.from_pretrained(out_dir)`` loads the model;
    ``AutoProcessor.from_pretrained(out_dir, min_pixels=..., max_pixels=...)`` the processor where
    torchvision is installed, :func:`load_qwen_processor` anywhere; ``min_pixels``/``max_pixels`` are the
    saved image processor's defaults.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>") for name in
           ("endoftext", "im_end", "vision_start", "vision_end", "image_pad", "video_pad")}  # fmt: skip
    config = Qwen2_5_VLConfig(
        vision_config={
            "depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "in_channels": 3,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [1, 3], "out_hidden_size": 64, "tokens_per_second": 2, "hidden_act": "silu",
        },
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": text_layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "max_window_layers": text_layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["endoftext"], "eos_token_id": ids["im_end"], "pad_token_id": ids["endoftext"],
        },
        image_token_id=ids["image_pad"],
        video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=False,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    generation = model.generation_config
    generation.bos_token_id, generation.pad_token_id, generation.eos_token_id = ids["endoftext"], ids["endoftext"], ids["im_end"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    image_processor = _image_processor_class()(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2,
        image_mean=_MEAN, image_std=_STD,
    )  # fmt: skip
    image_processor.save_pretrained(out)
    return out


def load_qwen_processor(path: str | Path, **kwargs):
    """The checkpoint's processor: ``AutoProcessor.from_pretrained(path, **kwargs)`` where torchvision is
    installed; otherwise a ``Qwen2_5_VLProcessor`` for images only (no video processor: transformers 5.x builds
    its ``Qwen2VLVideoProcessor`` with torchvision only, and refuses a processor without one), made of
    ``AutoImageProcessor.from_pretrained(path, **kwargs)``, the tokenizer and its chat template."""
    import importlib.util

    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, Qwen2_5_VLProcessor

    if importlib.util.find_spec("torchvision") is not None:
        return AutoProcessor.from_pretrained(path, **kwargs)

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(path)
    return ImageOnlyQwen2_5_VLProcessor(
        image_processor=AutoImageProcessor.from_pretrained(path, **kwargs),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-layers", type=int, default=3)
    args = parser.parse_args(argv)
    print(build_tiny_qwen2_5_vl(args.out_dir, seed=args.seed, text_layers=args.text_layers))


if __name__ == "__main__":
    main()
