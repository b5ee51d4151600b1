"""The tiny random LLaMA checkpoints of the in-LLM golden sets, rebuilt from their recipe.

Each checkpoint is a pure function of (config.json, seed): one ``torch.Generator`` seeded with the
seed draws every tensor with ``torch.randn(..., dtype=float32) * std`` in a fixed order (norm weights
add 1). Rebuilding bit for bit (checked by SHA-256 over the float32 bytes in draw order) keeps
megabytes of weights out of the repository; only the small config.json is stored.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# set folder name -> (seed, SHA-256 of the float32 tensors in draw order)
RECIPES = {
    "sparsevlm": (1234, "72931bbaf2cb8fb978075d058a88c7d8de4186469009a4903287ddc6ab72e68a"),
    "sparsevlm2": (2024, "63153b52fb3372a83eb961432ce5b5ac0021e23676d81cd322cfd226d2660f8e"),
    "fastv": (4242, "7146a0e2e36b415cb57af032f957f98e9fa754df69df27cc17d14f7bc2a474ef"),
    "dart": (5151, "24c247b2435cf43bc32a2882b51f121fa8f378685470bc2dd9c6ab8ad4a89f2a"),
}


def _draws(config: LlamaConfig, seed: int) -> list[tuple[str, torch.Tensor]]:
    """(parameter name, float32 tensor) in the recipe's order."""
    g = torch.Generator().manual_seed(seed)
    h, i, vocab = config.hidden_size, config.intermediate_size, config.vocab_size

    def randn(*shape: int, std: float, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std + offset

    out = [("model.embed_tokens.weight", randn(vocab, h, std=0.5))]
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        out += [
            (p + "self_attn.q_proj.weight", randn(h, h, std=2.0 / math.sqrt(h))),
            (p + "self_attn.k_proj.weight", randn(h, h, std=2.0 / math.sqrt(h))),
            (p + "self_attn.v_proj.weight", randn(h, h, std=1.0 / math.sqrt(h))),
            (p + "self_attn.o_proj.weight", randn(h, h, std=0.5 / math.sqrt(h))),
            (p + "mlp.gate_proj.weight", randn(i, h, std=1.0 / math.sqrt(h))),
            (p + "mlp.up_proj.weight", randn(i, h, std=1.0 / math.sqrt(h))),
            (p + "mlp.down_proj.weight", randn(h, i, std=0.5 / math.sqrt(i))),
            (p + "input_layernorm.weight", randn(h, std=0.1, offset=1.0)),
            (p + "post_attention_layernorm.weight", randn(h, std=0.1, offset=1.0)),
        ]
    out += [("model.norm.weight", randn(h, std=0.1, offset=1.0)), ("lm_head.weight", randn(vocab, h, std=2.0 / math.sqrt(h)))]
    return out


def tiny_llama(folder: Path, dtype: torch.dtype = torch.float64, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """The golden set's LLaMA (``folder`` holds its config.json; the folder's name picks the recipe)."""
    seed, expected = RECIPES[folder.parent.name]
    config = LlamaConfig.from_pretrained(str(folder))
    config._attn_implementation = attn_implementation
    draws = _draws(config, seed)
    digest = hashlib.sha256()
    for _, tensor in draws:
        digest.update(tensor.numpy().tobytes())
    if digest.hexdigest() != expected:
        raise RuntimeError(f"rebuilt weights of {folder} differ from the golden set's (SHA-256 {digest.hexdigest()})")
    model = LlamaForCausalLM(config)
    model.load_state_dict(dict(draws), strict=True)  # every parameter, nothing else (RoPE buffers are not state)
    return model.to(dtype).eval()


def left_padded_prompts(cases, meta, samples):
    """The golden set's prompts ``samples`` (``<s>/inputs_embeds``), left padded: (inputs_embeds [B, L, d],
    attention_mask [B, L], image_start [B]: ``meta["samples"][s]["v_token_start"]`` shifted by the padding)."""
    rows = [cases[f"{s}/inputs_embeds"] for s in samples]
    width = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), width, rows[0].shape[1], dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        embeds[b, width - row.shape[0] :] = row
        mask[b, width - row.shape[0] :] = 1
    starts = torch.tensor([width - r.shape[0] + meta["samples"][s]["v_token_start"] for s, r in zip(samples, rows)])
    return embeds, mask, starts
