"""Section 6: LLaVA-NeXT-shaped inputs. Each image is 672 x 672, which gives 5 crops: the base view
plus 2 x 2 tiles.

Vision side. The stock path runs CLIP on the 5 crops, then the projector on 5 x 576 patch tokens.
VisionZip on NeXT (``llava.next``) runs ``scoring_inputs`` on the crops, compresses each crop with the
LLaVA-1.5 op, projects the kept tokens and lays them out per image (``per_crop_layout``). Both are
timed and compared with the plain CLIP forward on the same crops.

Prefill. The stock packed sequence is 576 + 48 x (48 + 1) = 2928 visual tokens (base view, unpadded
2 x 2 tile grid, a newline ending each row). It is timed against VisionZip's 5 x 64 = 320 and
5 x 32 = 160, each with the FLOPs bound of ``prefill``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..compress import compress
from ..config import load_config
from ..llava.features import ImageTokens
from ..llava.next import per_crop_layout
from ..llava.scoring import scoring_inputs
from .prefill import PROMPT_AFTER, PROMPT_BEFORE, _bound, llava_prompt, llm_prefill
from .timing import DeviceTimer, measure, paired_ratio
from .vision import VisionBench, plain_forward

__all__ = ["NEXT_CONFIGS", "NEXT_FULL_TOKENS", "next_section"]

CROPS = 5  # base view + 2 x 2 tiles (a 672 x 672 image)
GRID = (2, 2)
NEXT_FULL_TOKENS = 576 + 48 * (48 + 1)  # the stock packed sequence of such an image
NEXT_CONFIGS = ("visionzip_next_320", "visionzip_next_160")


def visionzip_next_tokens(bench: VisionBench, pixels: torch.Tensor, config, images: int) -> ImageTokens:
    """VisionZip on ``images`` NeXT images whose crops are ``pixels`` [images·5, 3, 336, 336]."""
    inputs = scoring_inputs(bench.clip, pixels, layer=-2)
    out = compress(inputs.hidden, inputs.cls_attn, inputs.keys, config)
    crops = ImageTokens(bench.projector(out.tokens), out.valid, out.index)
    return per_crop_layout(crops, [CROPS] * images, [GRID] * images, 24)


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
    configs = {name: load_config(name) for name in NEXT_CONFIGS}
    vision_cases = {
        "clip_plain": lambda: plain_forward(bench.clip, pixels),
        "stock_features": lambda: bench.projector(plain_forward(bench.clip, pixels)),
        **{name: (lambda c=cfg: visionzip_next_tokens(bench, pixels, c, batch)) for name, cfg in configs.items()},
    }
    vision = measure(vision_cases, timer, repeats=repeats, warmup=warmup)
    widths = {"keep_all": NEXT_FULL_TOKENS}
    for name, cfg in configs.items():
        widths[name] = int(vision[name].last.features.shape[1])
    for stat in vision.values():
        stat.last = None

    layers = llm.config.num_hidden_layers
    text = PROMPT_BEFORE + PROMPT_AFTER
    g = torch.Generator().manual_seed(5)
    prompts = {}
    for name, width in widths.items():
        visual = (torch.randn(batch, width, dims.width, generator=g) * 0.02).to(pixels.device, pixels.dtype)
        embeds, _ = llava_prompt(visual, torch.ones(batch, width, dtype=torch.bool, device=pixels.device))
        prompts[name] = embeds
    prefill = measure({name: (lambda e=e: llm_prefill(llm, e, None)) for name, e in prompts.items()}, timer, repeats, warmup)
    for stat in prefill.values():
        stat.last = None
    n_full = NEXT_FULL_TOKENS + text
    rows = []
    for name, width in widths.items():
        measured = paired_ratio(prefill, "keep_all", name)
        bound = _bound(n_full, [width + text] * layers, layers, dims)
        vision_ratio = paired_ratio(vision, name if name != "keep_all" else "stock_features", "clip_plain")
        rows.append(
            {
                "config": name,
                "visual_tokens": width,
                "vision_ratio_to_clip": vision_ratio,
                "prefill_median_s": prefill[name].median,
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
