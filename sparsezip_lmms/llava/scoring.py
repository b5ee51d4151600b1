"""Scoring inputs of the compression methods, captured from one partial CLIP forward.

:func:`scoring_inputs` runs the CLIP vision tower up to the feature layer (LLaVA-1.5: hidden-state
index −2, i.e. the output of encoder layer 22 of 24) with the model's own attention implementation
(SDPA by default) and returns what :mod:`sparsezip_lmms.compress` needs:

* ``hidden``   ``[B, 1+N, C]``  equal to ``model(pixel_values, output_hidden_states=True).hidden_states[layer]``
* ``cls_attn`` ``[B, H, 1+N]``  that layer's attention probabilities of the CLS query row, per head
* ``keys``     ``[B, 1+N, Ck]`` that layer's key projections (with bias), averaged over heads

The CLS row is recomputed from the layer's own ``q_proj``/``k_proj`` on its layer-normed input, which a
forward pre-hook on the layer's ``self_attn`` captures; no full attention matrix is materialised, the
hook is always removed, and the layers after the feature layer are not run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..compress.dtypes import at_least_float32

__all__ = ["ScoringInputs", "resolve_vision_transformer", "scoring_inputs"]


@dataclass(frozen=True)
class ScoringInputs:
    """hidden [B, 1+N, C] (model dtype); cls_attn [B, H, 1+N] and keys [B, 1+N, Ck] (float32, or
    float64 for a float64 model)."""

    hidden: Tensor
    cls_attn: Tensor
    keys: Tensor


def resolve_vision_transformer(vision_model: nn.Module) -> nn.Module:
    """The module holding ``embeddings``, ``pre_layrnorm`` and ``encoder.layers``.

    Accepts a transformers 5.x ``CLIPVisionModel`` (flat), a LLaVA's ``vision_tower`` (the same
    class), or a wrapper with a ``vision_model`` attribute (the transformers 4.x layout).
    """

    def ok(m: object) -> bool:
        return all(hasattr(m, a) for a in ("embeddings", "pre_layrnorm", "encoder")) and hasattr(m.encoder, "layers")

    if ok(vision_model):
        return vision_model
    inner = getattr(vision_model, "vision_model", None)
    if inner is not None and ok(inner):
        return inner
    raise ValueError(
        "vision_model must be a CLIP vision model with embeddings, pre_layrnorm and encoder.layers "
        f"(or hold one as .vision_model), got {type(vision_model).__name__}"
    )


def _layer_index(layer: int, num_layers: int) -> int:
    """Encoder layer whose output is ``hidden_states[layer]`` (hidden_states[0] = embeddings)."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer must be an int, got {type(layer).__name__}")
    h = layer if layer >= 0 else num_layers + 1 + layer
    if not 1 <= h <= num_layers:
        raise ValueError(
            f"layer {layer} does not name the output of an encoder layer "
            f"(valid: 1..{num_layers} or -{num_layers}..-1)"
        )
    return h - 1


def cls_row_attention(attn: nn.Module, normed: Tensor) -> tuple[Tensor, Tensor]:
    """CLS-row attention probabilities and head-averaged keys of a CLIP attention module.

    normed [B, L, C] is the module's (layer-normed) input. Returns (cls_attn [B, H, L], keys [B, L, d]),
    in float32 or float64 (never half precision).
    """
    b, length, _ = normed.shape
    heads, d = attn.num_heads, attn.head_dim
    work = at_least_float32(normed.dtype)
    # the CLS query is read from the projection of every row: a one-row product per image would take another
    # kernel path (a matrix-vector product at batch 1) and round differently at different batch sizes
    q = attn.q_proj(normed)[:, :1].to(work).view(b, 1, heads, d).transpose(1, 2)  # [B, H, 1, d]
    k = attn.k_proj(normed).to(work).view(b, length, heads, d).transpose(1, 2)  # [B, H, L, d]
    # an elementwise product and a sum over d, not a batched matrix product: the same rounding at any batch
    # size (top-k selections on these scores must not depend on the batch an image shares)
    logits = ((q * attn.scale) * k).sum(dim=-1, keepdim=True).transpose(-1, -2)  # [B, H, 1, L]
    cls_attn = logits.softmax(dim=-1).squeeze(2)  # [B, H, L]
    keys = k.mean(dim=1)  # [B, L, d] averaged over heads
    return cls_attn, keys


@torch.no_grad()
def scoring_inputs(vision_model: nn.Module, pixel_values: Tensor, layer: int = -2) -> ScoringInputs:
    """Run the CLIP vision tower once, up to ``hidden_states[layer]``, and capture the scoring inputs.

    ``layer`` indexes ``hidden_states`` as transformers does (−2 → output of the second-to-last
    encoder layer); the attention row and keys come from that same encoder layer.
    """
    vt = resolve_vision_transformer(vision_model)
    layers = vt.encoder.layers
    index = _layer_index(layer, len(layers))
    if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a [B, 3, H, W] tensor, got {shape}")

    attn = layers[index].self_attn
    captured: dict[str, Tensor] = {}

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["normed"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        hidden = _run_to_layer(vt, pixel_values, index)  # [B, 1+N, C]
    finally:
        handle.remove()
    cls_attn, keys = cls_row_attention(attn, captured["normed"])
    return ScoringInputs(hidden=hidden, cls_attn=cls_attn, keys=keys)


def _run_to_layer(vt: nn.Module, pixel_values: Tensor, index: int) -> Tensor:
    """Embeddings, pre-layernorm and encoder layers 0..index: hidden_states[index + 1], [B, 1+N, C]."""
    device = vt.embeddings.patch_embedding.weight.device
    hidden = vt.pre_layrnorm(vt.embeddings(pixel_values.to(device)))  # [B, 1+N, C]
    for encoder_layer in vt.encoder.layers[: index + 1]:
        hidden = encoder_layer(hidden, None)  # [B, 1+N, C]; no attention mask for images
    return hidden


@torch.no_grad()
def feature_layer_hidden(vision_model: nn.Module, pixel_values: Tensor, layer: int = -2) -> Tensor:
    """``hidden_states[layer]`` of the CLIP vision tower, [B, 1+N, C], without running the layers after it."""
    vt = resolve_vision_transformer(vision_model)
    if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a [B, 3, H, W] tensor, got {shape}")
    return _run_to_layer(vt, pixel_values, _layer_index(layer, len(vt.encoder.layers)))
