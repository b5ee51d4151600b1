"""Analytic prefill FLOPs and KV-cache size.

Convention (the one token-compression papers use, e.g. FastV and SparseVLM): one multiply-add
counts as one FLOP, and per transformer layer with n tokens, width d and MLP width m

    LLaMA layer (SwiGLU MLP, 3 matrices):  4·n·d² + 2·n²·d + 3·n·d·m
    CLIP layer  (GELU MLP, 2 matrices):    4·n·c² + 2·n²·c + 2·n·c·m_v

The 4·n·d² term is the Q, K, V and output projections, 2·n²·d the attention scores and the weighted
sum. Grouped-query K/V projections are counted at full width (exact for LLaVA-1.5's LLaMA/Vicuna).
Norms, softmax, RoPE and the LM head are left out. A prefill sums the LLaMA term over layers with
the number of tokens each layer actually processes (SparseVLM shrinks it after its pruning layers),
plus the vision tower, the projector and the compression method's own work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import IN_LLM_METHODS


@dataclass(frozen=True)
class Dims:
    """The sizes the FLOP count needs, read from a transformers LLaVA config."""

    llm_layers: int
    llm_width: int  # d
    llm_mlp: int  # m
    kv_heads: int
    head_dim: int
    vision_layers_run: int  # CLIP layers executed (LLaVA-1.5 reads layer -2)
    vision_width: int  # c
    vision_mlp: int  # m_v
    vision_tokens: int  # 1 + N
    vision_heads: int
    clip_projection: int = 0  # CDPruner: width of the CLIP image/text embeds (0 = not used)

    @classmethod
    def from_llava_config(cls, config, vision_layers_run: int | None = None) -> "Dims":
        text, vision = config.text_config, config.vision_config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        patches = (vision.image_size // vision.patch_size) ** 2
        if vision_layers_run is None:
            layer = config.vision_feature_layer if isinstance(config.vision_feature_layer, int) else -1
            vision_layers_run = layer + 1 if layer >= 0 else vision.num_hidden_layers + 1 + layer
        return cls(
            llm_layers=text.num_hidden_layers,
            llm_width=text.hidden_size,
            llm_mlp=text.intermediate_size,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vision_layers_run=vision_layers_run,
            vision_width=vision.hidden_size,
            vision_mlp=vision.intermediate_size,
            vision_tokens=patches + 1,
            vision_heads=vision.num_attention_heads,
        )


def llm_layer_flops(n: int, d: int, m: int) -> int:
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def clip_layer_flops(n: int, c: int, m_v: int) -> int:
    return 4 * n * c * c + 2 * n * n * c + 2 * n * c * m_v


def llm_prefill_flops(tokens_per_layer: list[int], dims: Dims) -> int:
    return sum(llm_layer_flops(n, dims.llm_width, dims.llm_mlp) for n in tokens_per_layer)


def vision_flops(n_images: int, visual_tokens_out: int, dims: Dims) -> int:
    """CLIP layers that run for ``n_images`` images plus the projector on ``visual_tokens_out`` tokens."""
    clip = n_images * dims.vision_layers_run * clip_layer_flops(dims.vision_tokens, dims.vision_width, dims.vision_mlp)
    projector = visual_tokens_out * (dims.vision_width * dims.llm_width + dims.llm_width * dims.llm_width)
    return clip + projector


def compression_flops(
    config, n_images: int, dims: Dims, text_tokens: int = 0, clip_text_flops: int = 0, candidates: list[int] | None = None
) -> int:
    """The compression method's own work, dominant terms only (documented per method).

    ``n_images``: vision-tower passes (images; LLaVA-NeXT: crops). ``clip_text_flops``: CDPruner's CLIP
    text tower on the request's question segments (the caller knows how many there were).
    ``candidates``: DivPrune on LLaVA-NeXT, the packed sequence length of each image it chose from
    (None: every pass chooses from its N patches)."""
    n = dims.vision_tokens - 1  # patches
    c = dims.vision_width
    ck = c // dims.vision_heads  # width of the head-averaged keys
    method = config.method
    if method in ("none", "random", "pool") or method in IN_LLM_METHODS:
        return 0
    if method == "divprune":
        # (the projector on every patch is in vision_flops) the L x L cosine distances of the candidates,
        # then one running-min update of L entries per pick
        lengths = candidates if candidates is not None else [n] * n_images
        return sum(length * length * dims.llm_width + config.budget(length) * length for length in lengths)
    if method == "cdpruner":
        d, k, p = dims.llm_width, config.keep, dims.clip_projection or c
        # per pass: the N x N similarity of the projected patches, the patch embeds (visual_projection),
        # their cosine with the question, the kernel, and the greedy MAP (step t updates N entries
        # against t earlier vectors)
        per_image = n * n * d + n * c * p + n * p + n * n + n * k * (k + 1) // 2
        return n_images * per_image + clip_text_flops
    # the capture recomputes the feature layer's projections it reads: the CLS query row (c·c) and the
    # keys of all 1+N tokens ((1+N)·c·c), then the CLS row against them ((1+N)·c)
    capture = c * c + (n + 1) * c * c + (n + 1) * c
    if method == "visionzip":
        remaining = n - (config.dominant - 1)
        return n_images * (capture + remaining * config.contextual * ck)
    # sparsezip
    per_image = capture
    source_visual = config.dynk.source == "visual"
    if not config.skip_hybrid_attn or (not config.skip_dynamic_k and source_visual):
        # cosine similarities of the mutual-information term: the hybrid score runs whenever it ranks the
        # patches or dynamic K reads it (dynk.source visual)
        per_image += n * n * ck
    if config.cross_beta > 0 and text_tokens:
        if config.text_source == "seed_keys":
            # mean of the question embeddings, then its first Ck dims against every unit key
            per_image += text_tokens * dims.llm_width + (n + 1) * ck
        elif config.text_space == "vision":
            # question -> CLIP space through the folded (W2·W1)ᵀ (made once per model), then cosine with every patch
            per_image += text_tokens * dims.llm_width * c + text_tokens * n * c
        else:
            # every patch -> LLM space through the projector, then cosine with the question
            per_image += n * (c * dims.llm_width + dims.llm_width * dims.llm_width) + text_tokens * n * dims.llm_width
    k = config.merging.contextual_num
    merge = "visionzip" if config.skip_ctx_merge else config.merge  # skip_ctx_merge: the seed's VisionZip merge
    if merge != "none" and k > 0:
        if merge == "visionzip":
            per_image += n * k * ck  # every remaining token against the k targets
        else:
            m = config.merging
            # as compress.cluster.cluster_merge: ceil(factor·k) seeds when reducing agglomeratively, or always
            # with seeds "factor"
            wide = max(k, math.ceil(m.kmeans_init_factor * k))
            seeds = wide if (m.agglomerative or m.seeds == "factor") else k
            per_image += (m.kmeans_iters + 1) * n * seeds * ck  # Lloyd steps + the final assignment
            if m.agglomerative and seeds > k and m.linkage == "midpoint":
                # each merge recomputes the cosines of the current centres, then a re-assignment to the survivors
                per_image += sum(w * w * ck for w in range(k + 1, seeds + 1)) + n * k * ck
    return n_images * per_image


def kv_cache_bytes(cache_len_per_layer: list[int], dims: Dims, bytes_per_value: int) -> int:
    """Keys + values held after generation, summed over layers."""
    return sum(2 * dims.kv_heads * dims.head_dim * length * bytes_per_value for length in cache_len_per_layer)
