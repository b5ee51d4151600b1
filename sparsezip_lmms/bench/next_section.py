"""Section 6: LLaVA-NeXT-shaped inputs. Each image is 672 x 672, which gives 5 crops: the base view
plus 2 x 2 tiles.

Vision side. The stock path runs CLIP on the 5 crops, then the projector on 5 x 576 patch tokens.
Every method runs the product's own NeXT path (``llava.features.image_tokens`` with the image sizes,
on a stand-in with llava-hf's attribute layout around the bench's CLIP and projector):

* VisionZip and SparseZip (per crop, and with one budget per image) run ``scoring_inputs`` on the
  crops, compress each crop, project the kept tokens and lay them out per image (``per_crop_layout``);
* DivPrune projects every patch and selects jointly over the stock packed sequence (2928 tokens);
* CDPruner projects every patch and runs its DPP per crop, the relevance normalised per image.

Each is timed and compared with the plain CLIP forward on the same crops.

Prefill. The stock packed sequence is 576 + 48 x (48 + 1) = 2928 visual tokens (base view, unpadded
2 x 2 tile grid, a newline ending each row). It is timed against each method's output length, each
with the FLOPs bound of ``prefill``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

from ..config import load_config
from ..llava.features import ImageTokens, image_tokens, text_pull_back
from .prefill import PROMPT_AFTER, PROMPT_BEFORE, _bound, llava_prompt, llm_prefill
from .timing import DeviceTimer, measure, paired_ratio
from .vision import CLIP_EMBED_WIDTH, VisionBench, plain_forward

__all__ = ["NEXT_CONFIGS", "NEXT_FULL_TOKENS", "next_section", "next_stand_in", "next_tokens"]

CROPS = 5  # base view + 2 x 2 tiles (a 672 x 672 image)
IMAGE_SIDE = 672
LLAVA_V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6's grid
NEXT_FULL_TOKENS = 576 + 48 * (48 + 1)  # the stock packed sequence of such an image
NEXT_CONFIGS = (
    "visionzip_next_320",
    "visionzip_next_160",
    "sparsezip_next_320",
    "ablations/next_budget_per_image",
    "divprune_next_320",
    "cdpruner_next_320",
)


def next_stand_in(bench: VisionBench) -> SimpleNamespace:
    """The bench's CLIP and projector in llava-hf's LLaVA-NeXT attribute layout (``model.vision_tower``,
    ``model.multi_modal_projector``, ``model.image_newline``, ``config`` with llava-v1.6's grid), which
    the product's NeXT functions read."""
    from transformers import LlavaNextConfig

    config = LlavaNextConfig(
        vision_config=bench.clip.config.to_dict(),
        image_grid_pinpoints=LLAVA_V16_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    g = torch.Generator().manual_seed(4)
    newline = (torch.randn(bench.llm_width, generator=g) * 0.02).to(bench.device, bench.dtype)  # [D]
    inner = SimpleNamespace(vision_tower=bench.clip, multi_modal_projector=bench.projector, image_newline=newline)
    return SimpleNamespace(model=inner, config=config)


def next_tokens(bench: VisionBench, stand_in: SimpleNamespace, pixels: torch.Tensor, config) -> Callable[[], ImageTokens]:
    """The timed op of one config: ``image_tokens`` on NeXT images whose crops are ``pixels``
    [images, 5, 3, 336, 336], with the question inputs the method reads made beforehand."""
    images = pixels.shape[0]
    sizes = torch.tensor([[IMAGE_SIDE, IMAGE_SIDE]] * images, device=pixels.device)  # [images, 2]
    text_embeds, text_mask = bench.question(images)  # [images, Lt, D], [images, Lt]
    pull_back = text_pull_back(stand_in, config)
    clip_text, question = None, None
    if config.method == "cdpruner":
        g = torch.Generator().manual_seed(2)
        clip_question = torch.randn(images, 1, CLIP_EMBED_WIDTH, generator=g).to(bench.device)  # [images, 1, P]
        question = (clip_question, torch.ones(images, 1, dtype=torch.bool, device=bench.device))
        clip_text = SimpleNamespace(visual_projection=bench.visual_projection)
    return lambda: image_tokens(
        stand_in, pixels, config, text_embeds, text_mask, pull_back=pull_back, clip_text=clip_text,
        question_embeds=question, image_sizes=sizes,
    )  # fmt: skip


@torch.no_grad()
def next_section(
    bench: VisionBench,
    llm: nn.Module,
    dims,
    batch: int,
    repeats: int,
    warmup: int,
    timer: DeviceTimer,
) -> dict:
    """Vision-side ops and the prefill on NeXT-shaped inputs; times, ratios and FLOPs bounds."""
    pixels = bench.pixels(batch * CROPS)  # [B·5, 3, 336, 336]
    stand_in = next_stand_in(bench)
    images = pixels.view(batch, CROPS, *pixels.shape[1:])  # [B, 5, 3, 336, 336]
    configs = {name: load_config(name) for name in NEXT_CONFIGS}
    vision_cases = {
        "clip_plain": lambda: plain_forward(bench.clip, pixels),
        "stock_features": lambda: bench.projector(plain_forward(bench.clip, pixels)),
        **{name: next_tokens(bench, stand_in, images, cfg) for name, cfg in configs.items()},
    }
    vision = measure(vision_cases, timer, repeats=repeats, warmup=warmup)
    widths = {"keep_all": NEXT_FULL_TOKENS}
    for name, cfg in configs.items():
        widths[name] = int(vision[name].last.counts.max())  # the longest image of the batch
    for stat in vision.values():
        stat.last = None

    layers = llm.config.num_hidden_layers
    text = PROMPT_BEFORE + PROMPT_AFTER
    g = torch.Generator().manual_seed(5)
    prompts = {}  # one prefill per distinct length, keyed by it
    for width in sorted(set(widths.values()), reverse=True):
        visual = (torch.randn(batch, width, dims.width, generator=g) * 0.02).to(pixels.device, pixels.dtype)
        embeds, _ = llava_prompt(visual, torch.ones(batch, width, dtype=torch.bool, device=pixels.device))
        prompts[str(width)] = embeds
    prefill = measure({key: (lambda e=e: llm_prefill(llm, e, None)) for key, e in prompts.items()}, timer, repeats, warmup)
    for stat in prefill.values():
        stat.last = None
    n_full = NEXT_FULL_TOKENS + text
    rows = []
    for name, width in widths.items():
        measured = paired_ratio(prefill, str(NEXT_FULL_TOKENS), str(width))
        bound = _bound(n_full, [width + text] * layers, layers, dims)
        vision_ratio = paired_ratio(vision, name if name != "keep_all" else "stock_features", "clip_plain")
        rows.append(
            {
                "config": name,
                "method": configs[name].method if name in configs else "none",
                "visual_tokens": width,
                "vision_ratio_to_clip": vision_ratio,
                "prefill_median_s": prefill[str(width)].median,
                "prefill_speedup": measured,
                "speedup_bound": bound,
                "efficiency_ratio": measured / bound,
            }
        )
    return {
        "batch": batch,
        "crops_per_image": CROPS,
        "layers": layers,
        "dims": dims.describe(),
        "vision_times": {k: v.to_dict() for k, v in vision.items()},
        "prefill_times": {k: v.to_dict() for k, v in prefill.items()},
        "rows": rows,
    }
