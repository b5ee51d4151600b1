"""Sections 1 and 2: the CLIP forward with and without the scoring capture, and the compression ops.

Vision variants, all on the same random CLIP-L/336 weights:

* ``plain``       what LLaVA runs: ``LlavaModel.get_image_features`` calls
                  ``vision_tower(pixel_values, output_hidden_states=-2)`` (transformers 5: all 24 layers
                  run with SDPA, only ``hidden_states[-2]`` is kept);
* ``plain_to_m2`` the same SDPA layers, stopped at the feature layer (23 layers, no capture);
* ``scoring``     ``sparsezip_lmms.llava.scoring_inputs`` (SDPA, 23 layers, CLS row + keys captured);
* ``official``    the official VisionZip capture: eager attention and ``output_attentions=True`` on all
                  24 layers (24 maps of [B, 16, 577, 577]), the key "metric" of layer −2 taken by a hook
                  on its ``k_proj``, CLS row read from ``attentions[-2]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..compress import (
    PullBack,
    compress,
    image_keys,
    needs_scoring_inputs,
    needs_text,
    projector_pull_back,
    selects_after_projector,
    text_relevance,
)
from ..config import load_config
from ..efficiency.flops import Dims, clip_layer_flops, compression_flops
from ..llava.scoring import ScoringInputs, scoring_inputs
from .models import build_clip, build_projector, clip_sharing_weights
from .timing import DeviceTimer, measure, paired_ratio

__all__ = ["VisionBench", "compression_configs", "compression_section", "official_capture", "vision_section"]

def compression_configs() -> tuple[str, ...]:
    """Every named config that compresses on the vision side (all but the in-LLM methods SparseVLM v1.5 /
    v2.0 and FastV, timed in section 4), ordered by method then budget: keep_all, visionzip_*,
    sparsezip_* (+ dynamic), ablations/*, random_*, pool_*. The LLaVA-NeXT budgets (``*_next_*``) are
    timed on NeXT-shaped inputs in section 6; the Qwen2.5-VL ones (``*_qwen*``) are not LLaVA configs."""
    from ..config import available_configs
    from ..methods.registry import method_of

    names = [
        n for n in available_configs()
        if method_of(load_config(n)).stage != "llm" and "_next_" not in n and "_qwen" not in n  # other geometries
    ]  # fmt: skip
    order = {"none": 0, "visionzip": 1, "sparsezip": 2, "divprune": 3.1, "cdpruner": 3.2, "random": 4, "pool": 5}

    def key(name: str) -> tuple:
        method = load_config(name).method
        group = 3 if name.startswith("ablations/") else order.get(method, 6)
        digits = "".join(ch for ch in name if ch.isdigit())
        return (group, int(digits) if digits else 10**6, name)

    return tuple(sorted(names, key=key))


QUESTION_TOKENS = 24  # question tokens that the text-aware score reads (a POPE/MME-length question)
CLIP_EMBED_WIDTH = 768  # CLIP-L/336's image and text embed width (CDPruner's relevance)


@dataclass
class VisionBench:
    """The models shared by sections 1-3."""

    device: torch.device
    dtype: torch.dtype
    clip: nn.Module  # SDPA
    clip_eager: nn.Module  # same weights, eager attention
    projector: nn.Module
    llm_width: int
    pull_back: PullBack  # the projector's folded pull-back, made once as the model class does
    visual_projection: nn.Module  # CDPruner: CLIP-L's 1024 -> 768 image-embed projection (random)

    @classmethod
    def build(cls, device: torch.device, dtype: torch.dtype, llm_width: int, **clip_overrides) -> VisionBench:
        """CLIP-L/336 (``clip_overrides`` change its widths or depth, e.g. for ``--smoke``), the projector
        into ``llm_width``, and CDPruner's image-embed projection."""
        clip = build_clip(device, dtype, **clip_overrides)
        eager = clip_sharing_weights(clip, "eager")
        projector = build_projector(clip.config.hidden_size, llm_width, device, dtype)
        torch.manual_seed(3)
        visual_projection = nn.Linear(clip.config.hidden_size, CLIP_EMBED_WIDTH, bias=False).to(device, torch.float32)
        return cls(device, dtype, clip, eager, projector, llm_width, projector_pull_back(projector), visual_projection)

    def pixels(self, batch: int, seed: int = 0) -> torch.Tensor:
        """[B, 3, 336, 336] normalised-image-like pixels (smooth random fields, not white noise)."""
        g = torch.Generator().manual_seed(seed)
        coarse = torch.randn(batch, 3, 21, 21, generator=g)  # [B, 3, 21, 21]
        fine = torch.nn.functional.interpolate(coarse, size=(336, 336), mode="bilinear", align_corners=False)
        return fine.to(self.device, self.dtype)  # [B, 3, 336, 336]

    def question(self, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(text_embeds [B, Lt, D], text_mask [B, Lt]) standing in for the question's LLM embeddings."""
        g = torch.Generator().manual_seed(seed)
        embeds = torch.randn(batch, QUESTION_TOKENS, self.llm_width, generator=g) * 0.02  # [B, Lt, D]
        mask = torch.ones(batch, QUESTION_TOKENS, dtype=torch.bool)  # [B, Lt]
        return embeds.to(self.device, self.dtype), mask.to(self.device)


# --------------------------------------------------------------------------- section 1


def plain_forward(clip: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """LLaVA's vision call: every layer with SDPA, ``hidden_states[-2]`` kept. [B, 577, 1024]."""
    return clip(pixel_values, output_hidden_states=-2).hidden_states[-2]


def plain_to_feature_layer(clip: nn.Module, pixel_values: torch.Tensor, layer: int = -2) -> torch.Tensor:
    """The SDPA layers up to ``hidden_states[layer]`` only, nothing captured. [B, 577, 1024]."""
    layers = clip.encoder.layers
    stop = len(layers) + 1 + layer if layer < 0 else layer
    hidden = clip.pre_layrnorm(clip.embeddings(pixel_values))  # [B, 577, C]
    for encoder_layer in layers[:stop]:
        hidden = encoder_layer(hidden, None)
    return hidden


def official_capture(clip_eager: nn.Module, pixel_values: torch.Tensor) -> ScoringInputs:
    """The official VisionZip way: an eager forward returning every layer's attention matrix.

    Returns the same three tensors as :func:`scoring_inputs` (hidden [B, 577, C], CLS row
    [B, H, 577], head-averaged keys [B, 577, d]) read from the full outputs.
    """
    attn = clip_eager.encoder.layers[-2].self_attn
    captured: dict[str, torch.Tensor] = {}

    def grab_keys(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured["keys"] = output  # [B, 577, H * d] with bias

    handle = attn.k_proj.register_forward_hook(grab_keys)
    try:
        out = clip_eager(pixel_values, output_hidden_states=True, output_attentions=True)
    finally:
        handle.remove()
    b, length, _ = captured["keys"].shape
    keys = captured["keys"].view(b, length, attn.num_heads, attn.head_dim).mean(dim=2)  # [B, 577, d]
    cls_attn = out.attentions[-2][:, :, 0, :]  # [B, H, 577]
    return ScoringInputs(hidden=out.hidden_states[-2], cls_attn=cls_attn, keys=keys)


@torch.no_grad()
def vision_section(
    bench: VisionBench, batches: list[int], repeats: int, warmup: int, timer: DeviceTimer
) -> tuple[dict, dict[int, ScoringInputs]]:
    """Section 1: the four vision variants per batch size; ratios are paired per round.

    Returns (the section, {batch: the scoring inputs of the last timed call}).
    """
    out: dict = {"batches": {}}
    captured: dict[int, ScoringInputs] = {}
    for batch in batches:
        pixels = bench.pixels(batch)
        cases: dict[str, Callable[[], object]] = {
            "plain": lambda px=pixels: plain_forward(bench.clip, px),
            "plain_to_m2": lambda px=pixels: plain_to_feature_layer(bench.clip, px),
            "scoring": lambda px=pixels: scoring_inputs(bench.clip, px, layer=-2),
            "official": lambda px=pixels: official_capture(bench.clip_eager, px),
        }
        stats = measure(cases, timer, repeats=repeats, warmup=warmup)
        ours, theirs = stats["scoring"].last, stats["official"].last
        captured[batch] = ours
        out["batches"][str(batch)] = {
            "times": {name: stat.to_dict() for name, stat in stats.items()},
            "ratios": {
                "scoring_vs_plain": paired_ratio(stats, "scoring", "plain"),
                "scoring_vs_plain_to_m2": paired_ratio(stats, "scoring", "plain_to_m2"),
                "official_vs_plain": paired_ratio(stats, "official", "plain"),
                "official_vs_scoring": paired_ratio(stats, "official", "scoring"),
            },
            "agreement": {  # the two captures compute the same inputs (max relative difference)
                "hidden": _rel(ours.hidden, theirs.hidden),
                "cls_attn": _rel(ours.cls_attn, theirs.cls_attn),
                "keys": _rel(ours.keys, theirs.keys),
            },
        }
        for stat in stats.values():
            stat.last = None
    return out, captured


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# --------------------------------------------------------------------------- section 2


def projected_selection_case(
    bench: VisionBench, inputs: ScoringInputs, config, with_projector: bool = True
) -> Callable[[], object]:
    """DivPrune / CDPruner as ``image_tokens`` runs them: the projector on all N patches, the selection on
    the projected tokens (CDPruner: patch embeds and a one-segment CLIP question embed), the gather.
    Returns the kept vision-side tokens (the projector is per token, so section 3 can project them).
    ``with_projector=False`` times the selection alone, on patches projected beforehand."""
    from ..compress import Compressed, cdpruner_relevance, cdpruner_select, divprune_select
    from ..compress.cdpruner import cdpruner_patch_embeds

    b = inputs.hidden.shape[0]
    g = torch.Generator().manual_seed(2)
    clip_question = torch.randn(b, 1, CLIP_EMBED_WIDTH, generator=g).to(bench.device)  # [B, 1, P]
    projected = None if with_projector else bench.projector(inputs.hidden[:, 1:])  # [B, N, D]

    def run():
        patches = bench.projector(inputs.hidden[:, 1:]) if projected is None else projected  # [B, N, D]
        if config.method == "divprune":
            order = divprune_select(
                patches, config.budget(patches.shape[1]), mask_chosen=config.mask_chosen,
                compute_dtype=config.compute_dtype(patches.dtype),
            )  # fmt: skip
        else:
            embeds = cdpruner_patch_embeds(inputs.hidden, bench.clip.post_layernorm, bench.visual_projection)  # [B, N, P]
            relevance = cdpruner_relevance(embeds, clip_question.to(embeds.dtype))  # [B, N]
            order = cdpruner_select(patches, relevance, config.keep, distinct=config.distinct)
        kept = order.sort(dim=1).values  # [B, k]
        tokens = inputs.hidden[:, 1:].gather(1, kept[..., None].expand(-1, -1, inputs.hidden.shape[-1]))  # [B, k, C]
        return Compressed(tokens=tokens, valid=torch.ones(kept.shape, dtype=torch.bool, device=kept.device), index=kept + 1)

    return run


def compression_case(bench: VisionBench, inputs: ScoringInputs, config, question) -> Callable[[], object]:
    """What ``image_tokens`` does between the CLIP forward and the projector, for one config."""
    if selects_after_projector(config):
        return projected_selection_case(bench, inputs, config)
    text_embeds, text_mask = question
    use_text = needs_text(config)
    scored = needs_scoring_inputs(config)
    cls_attn, keys = (inputs.cls_attn, inputs.keys) if scored else (None, None)
    # the random baseline keys its draws on the float32 pixels, as the model class does
    pixels = bench.pixels(inputs.hidden.shape[0]).float() if config.method == "random" else None

    def run():
        relevance = None
        if use_text:
            relevance = _relevance(bench, inputs, config, text_embeds, text_mask)  # [B, N]
        fingerprints = image_keys(pixels) if pixels is not None else None
        return compress(inputs.hidden, cls_attn, keys, config, text_relevance=relevance, image_keys=fingerprints)

    return run


def _dims(bench: VisionBench) -> Dims:
    """FLOP-count dimensions of the benchmark's LLaVA (CLIP-L/336, 24 layers run by the plain forward)."""
    vc = bench.clip.config
    return Dims(
        clip_projection=CLIP_EMBED_WIDTH,
        llm_layers=32,
        llm_width=bench.llm_width,
        llm_mlp=11008,
        kv_heads=32,
        head_dim=bench.llm_width // 32,
        vision_layers_run=vc.num_hidden_layers,
        vision_width=vc.hidden_size,
        vision_mlp=vc.intermediate_size,
        vision_tokens=(vc.image_size // vc.patch_size) ** 2 + 1,
        vision_heads=vc.num_attention_heads,
    )


def text_case(bench: VisionBench, inputs: ScoringInputs, config, question) -> Callable[[], object]:
    text_embeds, text_mask = question
    pull_back = _pull_back(bench, config)
    return lambda: _relevance(bench, inputs, config, text_embeds, text_mask, pull_back)


def _relevance(bench: VisionBench, inputs: ScoringInputs, config, text_embeds, text_mask, pull_back=None):
    """The text relevance ``image_tokens`` computes for a text-aware SparseZip config, [B, N]."""
    if config.text_source == "seed_keys":  # the seed's (reproduction only)
        from ..compress import seed_key_relevance

        return seed_key_relevance(inputs.keys, text_embeds, text_mask)[:, 1:]
    pull_back = pull_back if pull_back is not None else _pull_back(bench, config)
    return text_relevance(inputs.hidden[:, 1:], text_embeds, text_mask, bench.projector, config.text_space, pull_back)


def _pull_back(bench: VisionBench, config) -> PullBack | None:
    return bench.pull_back if config.text_space == "vision" else None


@torch.no_grad()
def compression_section(
    bench: VisionBench,
    batches: list[int],
    clip_times: dict[int, float],
    repeats: int,
    warmup: int,
    timer: DeviceTimer,
    configs: tuple[str, ...] | None = None,
    captured: dict[int, ScoringInputs] | None = None,
) -> tuple[dict, dict[int, dict]]:
    """Section 2: every config's op (text relevance + ``compress``) relative to the CLIP forward.

    Returns (the section, {batch: {config: Compressed}} for section 3).
    """
    out: dict = {"batches": {}}
    compressed: dict[int, dict] = {}
    for batch in batches:
        inputs = (captured or {}).get(batch) or scoring_inputs(bench.clip, bench.pixels(batch))
        question = bench.question(batch)
        loaded = {name: load_config(name) for name in (configs or compression_configs())}
        cases = {name: compression_case(bench, inputs, cfg, question) for name, cfg in loaded.items()}
        text_cases = {
            f"text:{name}": text_case(bench, inputs, cfg, question) for name, cfg in loaded.items() if needs_text(cfg)
        }
        selection_cases = {
            f"select:{name}": projected_selection_case(bench, inputs, cfg, with_projector=False)
            for name, cfg in loaded.items()
            if selects_after_projector(cfg)
        }
        stats = measure({**cases, **text_cases, **selection_cases}, timer, repeats=repeats, warmup=warmup)
        clip_s = clip_times[batch]
        dims = _dims(bench)
        clip_flops = batch * dims.vision_layers_run * clip_layer_flops(dims.vision_tokens, dims.vision_width, dims.vision_mlp)
        rows = []
        compressed[batch] = {}
        for name, cfg in loaded.items():
            result = stats[name].last
            compressed[batch][name] = result
            op_s = stats[name].median
            text_s = stats[f"text:{name}"].median if f"text:{name}" in stats else 0.0
            select_s = stats[f"select:{name}"].median if f"select:{name}" in stats else None
            rows.append(
                {
                    "config": name,
                    "method": cfg.method,
                    "tokens_max": int(result.tokens.shape[1]),
                    "tokens_mean": float(result.counts.double().mean()),
                    "op": stats[name].to_dict(),
                    "text_relevance_s": text_s,
                    "ratio_to_clip": op_s / clip_s,
                    # the op's analytic FLOPs (efficiency.flops.compression_flops) over the plain CLIP forward's
                    "flops_share_of_clip": compression_flops(cfg, batch, dims, QUESTION_TOKENS) / clip_flops,
                }
            )
            if select_s is not None:  # DivPrune / CDPruner: the selection without the projector on all N patches
                rows[-1].update(selection_s=select_s, selection_ratio_to_clip=select_s / clip_s)
        out["batches"][str(batch)] = {"clip_forward_s": clip_s, "rows": rows}
    return out, compressed
