"""Which patches each method keeps for one image and one question, drawn on the image.

    python -m sparsezip_lmms explain --pretrained llava-hf/llava-1.5-7b-hf --image photo.jpg \\
        --question "Is there a dog in the image?" \\
        --configs visionzip_64,sparsezip_64,llava_sparsevlm:sparsevlm_64,llava_fastv --out explain.png

The checkpoint is loaded once; every entry of ``--configs`` (``MODEL_ID:CONFIG``, a config name or
path whose method picks the model id, or a bare model id with its default config, each optionally
followed by ``key=value`` overrides after a ``;``) runs on those weights through the same batched
code path as an lmms-eval run, and becomes one panel (in-LLM methods: one panel per pruning layer)
titled with the method, the tokens it kept and the answer it generated.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .overlay import TILE_CROP, Panel, model_view, overlay_figure, panels_of


def model_for_method(method: str) -> str:
    """The model id that runs configs of ``method``: the first of its ``MethodSpec.model_ids`` (the id made
    for it, e.g. ``none`` -> ``llava_hf_timed``, ``pool`` -> ``llava_sparsezip``), else ``llava_compressed``."""
    from ..methods.registry import get_method

    spec = get_method(method)
    return spec.model_ids[0] if spec.model_ids else "llava_compressed"


@dataclass(frozen=True)
class Choice:
    """One entry of ``--configs``: a model id, its config (None: the id's default) and overrides."""

    model_id: str
    config: str | None
    overrides: dict[str, str]

    @property
    def label(self) -> str:
        extra = "".join(f",{k}={v}" for k, v in self.overrides.items())
        return f"{self.model_id}:{self.config or 'default'}{extra}"


def parse_choice(text: str) -> Choice:
    """``MODEL:CONFIG``, ``CONFIG`` or ``MODEL``, then optionally ``;key=value;key=value``."""
    from ..config import ConfigError, load_config
    from ..models.manifest import MODEL_CLASSES

    head, *pairs = [part.strip() for part in text.split(";")]
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{text!r}: override {pair!r} is not key=value")
        overrides[key.strip()] = value.strip()
    if ":" in head:
        model_id, config = head.split(":", 1)
        if model_id not in MODEL_CLASSES:
            raise ValueError(f"{text!r}: unknown model id {model_id!r} (known: {', '.join(sorted(MODEL_CLASSES))})")
        return Choice(model_id, config or None, overrides)
    if head in MODEL_CLASSES:
        return Choice(head, None, overrides)
    try:
        method = load_config(head, overrides).method
    except ConfigError as err:
        raise ValueError(f"{text!r}: {err}") from None
    return Choice(model_for_method(method), head, overrides)


def split_choices(text: str) -> list[Choice]:
    """``--configs``: comma-separated entries (commas inside brackets do not split)."""
    from ..config import split_top_level

    return [parse_choice(item) for item in split_top_level(text, strict=True) if item]


@dataclass
class Explained:
    """What one method did with the image and question."""

    choice: Choice
    answer: str
    visual_tokens: int
    selection: dict[str, Any]


def explain(
    pretrained: str,
    image,
    question: str,
    choices: list[Choice],
    *,
    model_args: dict[str, Any] | None = None,
    max_new_tokens: int = 16,
) -> tuple[list[Explained], Any]:
    """Run every choice on ``image`` + ``question`` with the checkpoint loaded once. Returns the results
    and the first model instance (its processor tells how the vision tower crops)."""
    from lmms_eval.models import get_model
    from lmms_eval.protocol import ChatMessages

    from ..llava.selection import image_fingerprint

    if not choices:
        raise ValueError("explain needs at least one config")
    args = {"device": "cpu", "batch_size": 1, **(model_args or {})}
    first = choices[0]
    base = get_model(first.model_id)(
        pretrained=pretrained, config=first.config or "", **{**args, **first.overrides}, log_selection=True
    )
    messages = [{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": question}]}]
    text = base._chat_text(ChatMessages(messages=messages))
    fingerprint = image_fingerprint(image)
    gen = {"max_new_tokens": max_new_tokens, "temperature": 0, "do_sample": False, "num_beams": 1}
    results = []
    for i, choice in enumerate(choices):
        lmm = base if i == 0 else base.with_config(choice.model_id, choice.config, choice.overrides, args.get("clip_text_tower"))
        prune = lmm._prunes_in_llm
        out = lmm._generate_batch([text], [image], gen, prune=prune, questions=[question], fingerprints=[fingerprint])
        results.append(Explained(choice, out.texts[0], out.visual_tokens[0], out.selections[0]))
    return results, base


def crop_of(lmm) -> tuple[int, tuple[int, int]]:
    """(shortest-edge size, (crop height, crop width)) of the model's image processor."""
    processor = lmm._image_processor.image_processor
    size = processor.size.get("shortest_edge") or min(processor.size.get("height", 336), processor.size.get("width", 336))
    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else {"height": size, "width": size}
    return int(size), (int(crop["height"]), int(crop["width"]))


def tile_crop_of(lmm) -> int:
    """Side of one LLaVA-NeXT tile: the processor's crop height, else its size (as its patching does)."""
    processor = lmm._image_processor.image_processor
    crop = getattr(processor, "crop_size", None) or {}
    size = processor.size
    return int(crop.get("height") or size.get("height") or size.get("shortest_edge") or TILE_CROP)


def explained_panels(results: list[Explained]) -> list[Panel]:
    panels = []
    for result in results:
        grid = tuple(result.selection["grid"])
        label = result.choice.label
        for entry in result.selection["images"]:
            panels += panels_of(entry, grid, label, result.answer)
    return panels


def explain_figure(image, results: list[Explained], lmm, path: str | Path, title: str | None = None, columns: int = 4, dpi: int = 110) -> Path:
    """The overlay PNG of ``results`` on ``image`` as ``lmm``'s processor feeds it to the vision tower:
    LLaVA-1.5 the centre crop; LLaVA-NeXT the base view, and for records with tiles the base view next
    to the tile mosaic of each record's own tile grid. Returns its path."""
    resize, crop = crop_of(lmm)
    next_model = lmm.geometry.any_resolution
    view = model_view(image, resize, crop, squash=next_model)
    return overlay_figure(
        view, explained_panels(results), path, title=title, columns=columns, dpi=dpi,
        image=image if next_model else None, tile_crop=tile_crop_of(lmm) if next_model else TILE_CROP,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="llava-hf checkpoint (hub id or folder)")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--question", required=True)
    parser.add_argument("--configs", required=True, help="MODEL:CONFIG, CONFIG or MODEL entries, comma-separated")
    parser.add_argument("--model-args", default="", help="further model arguments for every entry (k=v,...), e.g. dtype=float16")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the PNG")
    parser.add_argument("--out", default="explain.png")
    parser.add_argument("--json", default=None, help="also write the answers and selection records here")
    args = parser.parse_args(argv)

    from PIL import Image

    from ..config import ConfigError, split_args_string

    try:
        choices = split_choices(args.configs)
        extra = split_args_string(args.model_args) if args.model_args else {}
    except (ValueError, ConfigError) as err:
        print(f"error: explain: {err}", file=sys.stderr)
        return 2
    image_path = Path(args.image)
    if not image_path.is_file():
        print(f"error: explain: no such image: {image_path}", file=sys.stderr)
        return 2
    image = Image.open(image_path).convert("RGB")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        results, base = explain(
            args.pretrained, image, args.question, choices,
            model_args={**extra, "device": device}, max_new_tokens=args.max_new_tokens,
        )  # fmt: skip
    except (ValueError, ConfigError, OSError) as err:
        print(f"error: explain: {err}", file=sys.stderr)
        return 1
    path = explain_figure(image, results, base, args.out, title=f"Q: {args.question}", columns=args.columns, dpi=args.dpi)
    for result in results:
        print(f"{result.choice.label}: {result.visual_tokens} visual tokens -> {result.answer!r}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {"label": r.choice.label, "answer": r.answer, "visual_tokens": r.visual_tokens, "selection": r.selection}
                    for r in results
                ],
                indent=1,
            )
        )
    print(f"written: {path}")
    return 0
