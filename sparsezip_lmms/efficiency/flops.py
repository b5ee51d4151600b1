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

from dataclasses import dataclass


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


@dataclass(frozen=True)
class MethodWork:
    """What a method's FLOP count (``MethodSpec.flops``) may read about one request."""

    n_images: int  # vision-tower passes (images; LLaVA-NeXT: crops)
    dims: Dims
    text_tokens: int = 0  # question tokens of the prompt
    clip_text_flops: int = 0  # the CLIP text tower on the request's question segments ("clip_text" methods)
    candidates: list[int] | None = None  # "packed" methods on LLaVA-NeXT: each image's packed length


def compression_flops(
    config, n_images: int, dims: Dims, text_tokens: int = 0, clip_text_flops: int = 0, candidates: list[int] | None = None
) -> int:
    """The compression method's own work, dominant terms only (each method's ``MethodSpec.flops``,
    documented there; 0 for a method that declares none).

    ``n_images``: vision-tower passes (images; LLaVA-NeXT: crops). ``clip_text_flops``: CDPruner's CLIP
    text tower on the request's question segments (the caller knows how many there were).
    ``candidates``: DivPrune on LLaVA-NeXT, the packed sequence length of each image it chose from
    (None: every pass chooses from its N patches)."""
    from ..methods.registry import method_of

    spec = method_of(config)
    if spec.flops is None:
        return 0
    return int(spec.flops(config, MethodWork(n_images, dims, text_tokens, clip_text_flops, candidates)))


def kv_cache_bytes(cache_len_per_layer: list[int], dims: Dims, bytes_per_value: int) -> int:
    """Keys + values held after generation, summed over layers."""
    return sum(2 * dims.kv_heads * dims.head_dim * length * bytes_per_value for length in cache_len_per_layer)
