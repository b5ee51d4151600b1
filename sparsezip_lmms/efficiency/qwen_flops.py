"""Analytic prefill FLOPs and KV-cache size of Qwen2.5-VL (one multiply-add = one FLOP, as ``flops``).

Per image of ``t × h × w`` patches (S = t·h·w; merged tokens N = S / 4):

* patch embedding: ``S · 1176 · c`` (a 3-D convolution over 2 × 14 × 14 × 3 values);
* every ViT block: ``4·S·c² + 3·S·c·m_v`` (projections, SwiGLU MLP) plus ``2·P·c`` for the attention,
  where P is the number of (query, key) pairs it scores: a **window** block attends within windows of
  ``w_m × w_m`` merged tokens (4 × 4 in Qwen2.5-VL: 64 patches; windows at the grid's edge are smaller),
  so ``P = 16 · Σ_rows r² · Σ_cols c²`` per frame; a **full-attention** block scores ``(h·w)²`` per frame;
* the patch merger: ``N · (4c · 4c + 4c · D)``.

The LLM layers count the grouped-query projections exactly: ``2·n·d·(H·hd) + 2·n·d·(H_kv·hd) + 2·n²·(H·hd)
+ 3·n·d·m`` (Qwen2's K/V heads are few: LLaVA's convention of full-width K/V would overcount them).
The methods' own work: VisionZip's and VisPruner's scoring of the last block (its q, k recomputed and
the scores, ``2·S·c² + S²·c``), VisionZip's merge (the others against the contextual targets), DivPrune's
``N²·D`` distances, VisPruner's rounds, SparseZip's scoring and merging (LLaVA's count on the image's N with its
scaled config), CDPruner's similarity, kernel and greedy MAP, the pool's one pass; CDPruner and text-aware
SparseZip add ``N·D`` for the product with the question. The in-LLM rules' selections are negligible (0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["QwenDims", "qwen_compression_flops", "qwen_kv_cache_bytes", "qwen_llm_flops", "qwen_vision_flops"]

PATCH_VALUES = 3 * 2 * 14 * 14  # a patch of the 3-D convolution: channels x temporal x 14 x 14


@dataclass(frozen=True)
class QwenDims:
    """The sizes the count needs, from a ``Qwen2_5_VLConfig``."""

    vision_width: int  # c
    vision_mlp: int  # m_v
    vision_heads: int
    vision_depth: int
    full_blocks: int  # blocks with full attention (the others are windowed)
    window: int  # window side in merged tokens
    merge: int  # spatial merge (2: 2 x 2 patches per merged token)
    out_width: int  # D, the LLM width the merger projects to
    llm_layers: int
    llm_width: int  # d
    llm_mlp: int  # m
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> "QwenDims":
        vision, text = config.vision_config, getattr(config, "text_config", config)
        heads = text.num_attention_heads
        merge = vision.spatial_merge_size
        return cls(
            vision_width=vision.hidden_size,
            vision_mlp=vision.intermediate_size,
            vision_heads=vision.num_heads,
            vision_depth=vision.depth,
            full_blocks=len(vision.fullatt_block_indexes),
            window=max(1, vision.window_size // merge // vision.patch_size),
            merge=merge,
            out_width=vision.out_hidden_size,
            llm_layers=text.num_hidden_layers,
            llm_width=text.hidden_size,
            llm_mlp=text.intermediate_size,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        )


def _window_pairs(h: int, w: int, dims: QwenDims) -> int:
    """(query, key) pairs one frame's window blocks score: windows of up to ``window²`` merged tokens."""
    hm, wm = h // dims.merge, w // dims.merge
    rows = [min(dims.window, hm - i) for i in range(0, hm, dims.window)]
    cols = [min(dims.window, wm - j) for j in range(0, wm, dims.window)]
    per_merged = dims.merge * dims.merge
    return per_merged * per_merged * sum(r * r for r in rows) * sum(c * c for c in cols)


def qwen_vision_flops(grids: Sequence[Sequence[int]], dims: QwenDims) -> int:
    """The ViT (window and full blocks) and the merger on images of ``grids`` ([t, h, w] in patches)."""
    c, m_v = dims.vision_width, dims.vision_mlp
    total = 0
    for t, h, w in grids:
        s = t * h * w
        window_blocks = dims.vision_depth - dims.full_blocks
        pairs = window_blocks * t * _window_pairs(h, w, dims) + dims.full_blocks * t * (h * w) ** 2
        total += s * PATCH_VALUES * c + dims.vision_depth * (4 * s * c * c + 3 * s * c * m_v) + 2 * pairs * c
        merged, wide = s // (dims.merge * dims.merge), c * dims.merge * dims.merge
        total += merged * (wide * wide + wide * dims.out_width)
    return total


def qwen_llm_flops(tokens_per_layer: Sequence[int], dims: QwenDims) -> int:
    """The LLM prefill: each layer with the tokens it processes (grouped-query K/V counted exactly)."""
    d, q_width, kv_width = dims.llm_width, dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    return sum(2 * n * d * q_width + 2 * n * d * kv_width + 2 * n * n * q_width + 3 * n * d * dims.llm_mlp for n in tokens_per_layer)


def qwen_compression_flops(config: Any, grids: Sequence[Sequence[int]], dims: QwenDims) -> int:
    """The method's own work on the images of ``grids`` (module docstring); 0 for keep_all and in-LLM rules."""
    method = getattr(config, "method", "none")
    c, d = dims.vision_width, dims.out_width
    total = 0
    for t, h, w in grids:
        s = t * h * w
        n = s // (dims.merge * dims.merge)
        capture = 2 * s * c * c + t * (h * w) ** 2 * c
        if method == "visionzip":
            dominant = int(config.dominant_ratio * n)
            contextual = max(int(config.contextual_ratio * n), 1)
            total += capture + (n - dominant) * contextual * (c // dims.vision_heads)  # keys: head-averaged
        elif method == "divprune":
            total += n * n * d + config.budget(n) * n
        elif method == "vispruner":
            from ..compress.vispruner import vispruner_schedule

            rounds = vispruner_schedule(config.budget(n), config.important_ratio, n)
            total += capture + n * d + sum(((r + 1) // 2) * (r // 2) * d for r, _ in rounds)
        elif method == "sparsezip":  # the LLaVA count of an image of n tokens with its scaled config
            relevance = n * d if config.cross_beta > 0 else 0  # text-aware: each merged token against the question
            total += capture + _sparsezip_selection_flops(config, n, dims) + relevance
        elif method == "cdpruner":  # similarity of the merged tokens, relevance, kernel, greedy MAP
            k = config.budget(n)
            total += n * n * d + n * d + n * n + n * k * (k + 1) // 2
        elif method == "pool":  # one pass over the merged tokens
            total += n * d
    return total


def _sparsezip_selection_flops(config: Any, n: int, dims: QwenDims) -> int:
    """SparseZip's scoring and merging on one image of ``n`` merged tokens (keys averaged per head, as
    captured): ``methods.builtin_flops.sparsezip_flops`` on those sizes, its CLS-row capture left out."""
    from types import SimpleNamespace

    from ..methods.builtin_flops import _capture, sparsezip_flops
    from ..qwen.sparsezip import scaled_config

    sizes = SimpleNamespace(vision_tokens=n + 1, vision_width=dims.vision_width, vision_heads=dims.vision_heads,
                            llm_width=dims.out_width)  # fmt: skip
    work = SimpleNamespace(dims=sizes, n_images=1, text_tokens=0)
    return sparsezip_flops(scaled_config(config, n), work) - _capture(work)


def qwen_kv_cache_bytes(cache_len_per_layer: Sequence[int], dims: QwenDims, bytes_per_value: int) -> int:
    """Keys and values held: each layer's length x 2 x KV heads x head size."""
    return sum(cache_len_per_layer) * 2 * dims.kv_heads * dims.head_dim * bytes_per_value
