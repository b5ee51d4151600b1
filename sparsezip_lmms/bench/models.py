"""Random-weight models at real LLaVA-1.5 dimensions, built in seconds and without any download.

* CLIP ViT-L/14-336 vision tower: 24 layers, width 1024, 16 heads, MLP 4096, 577 tokens.
* LLaVA-1.5 projector: 1024 -> 4096 (GELU) -> 4096.
* LLaMA/Vicuna-7B decoder: width 4096, MLP 11008, 32 heads, vocabulary 32064 (any layer count).

Weights are drawn from N(0, 0.02) (norm weights 1, biases 0), seeded. Construction skips
transformers' weight initialisation (``no_init_weights``) and fills the tensors directly, which is
what keeps the 0.3 B-parameter CLIP at a second or two on a CPU.

The decoder layers of one LLaMA share a single set of weight tensors (every layer keeps its own
attention module and ``layer_idx``, hence its own KV-cache slot). Every layer still runs its full
matrix products and streams its 0.8 GB (float32) of weights, which exceeds every CPU and GPU cache,
so the time per layer is that of an untied model; the RAM needed is that of one layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "CLIP_L_336",
    "LLAMA_7B",
    "LlamaDims",
    "build_clip",
    "build_llama",
    "build_projector",
    "random_init_",
]

# CLIP ViT-L/14 at 336 px, as in LLaVA-1.5 (openai/clip-vit-large-patch14-336).
CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


@dataclass(frozen=True)
class LlamaDims:
    width: int = 4096
    mlp: int = 11008
    heads: int = 32
    kv_heads: int = 32
    vocab: int = 32064

    def describe(self) -> str:
        return f"d={self.width}, m={self.mlp}, {self.heads} heads ({self.kv_heads} KV), vocab {self.vocab}"


LLAMA_7B = LlamaDims()  # Vicuna-7B / LLaVA-1.5-7B


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()


@torch.no_grad()
def random_init_(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """N(0, std) weights, zero biases, unit norm weights; every parameter is written exactly once."""
    seen: set[int] = set()
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if _is_norm(sub):
                param.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias":
                param.zero_()
            else:
                param.normal_(0.0, std, generator=generator)


def _empty_model(cls, config):
    """``cls(config)`` without transformers' (slow) weight initialisation; tensors are uninitialised."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return cls(config)


def build_clip(device: torch.device, dtype: torch.dtype, seed: int = 0, attn: str = "sdpa", **overrides) -> nn.Module:
    """A random ``CLIPVisionModel`` with CLIP-L/336 geometry and attention implementation ``attn``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**{**CLIP_L_336, **overrides})
    config._attn_implementation = attn
    model = _empty_model(CLIPVisionModel, config)
    random_init_(model, torch.Generator().manual_seed(seed))
    return model.to(device=device, dtype=dtype).eval()


def clip_sharing_weights(model: nn.Module, attn: str) -> nn.Module:
    """A second ``CLIPVisionModel`` on the very same weight tensors, with another attention implementation."""
    config = copy.deepcopy(model.config)
    config._attn_implementation = attn
    twin = _empty_model(type(model), config)
    twin.load_state_dict(model.state_dict(), assign=True)
    return twin.eval()


def build_projector(vision_width: int, llm_width: int, device, dtype, seed: int = 1) -> nn.Module:
    """LLaVA-1.5's ``LlavaMultiModalProjector`` (linear_1, GELU, linear_2), random weights."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**{**CLIP_L_336, "hidden_size": vision_width}),
        text_config=LlamaConfig(hidden_size=llm_width),
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    projector = LlavaMultiModalProjector(config)
    random_init_(projector, torch.Generator().manual_seed(seed))
    return projector.to(device=device, dtype=dtype).eval()


def build_llama(
    layers: int,
    dims: LlamaDims,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 2,
    attn: str = "sdpa",
) -> nn.Module:
    """A random ``LlamaForCausalLM`` with ``layers`` decoder layers sharing one set of weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=dims.width,
        intermediate_size=dims.mlp,
        num_hidden_layers=layers,
        num_attention_heads=dims.heads,
        num_key_value_heads=dims.kv_heads,
        vocab_size=dims.vocab,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn
    model = _empty_model(LlamaForCausalLM, config)
    decoder = model.model
    first = decoder.layers[0]
    for layer in decoder.layers[1:]:  # share the weights, keep each layer's own attention module / layer_idx
        layer.mlp = first.mlp
        layer.input_layernorm = first.input_layernorm
        layer.post_attention_layernorm = first.post_attention_layernorm
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(layer.self_attn, name, getattr(first.self_attn, name))
    random_init_(model, torch.Generator().manual_seed(seed))
    return model.to(device=device, dtype=dtype).eval()
