"""The float64 numerics of the Qwen2.5-VL golden sets (tests/data/visionzip_qwen, tests/data/dart_qwen): their
fixtures were made with RMSNorm statistics, the vision RoPE and the text M-RoPE in float64. The same numerics
are given to one float64 model instance by swapping its modules (never the transformers classes): every
``Qwen2_5_VLRMSNorm``, the vision rotary table, each vision block's ``attn`` (eager, per ``cu_seqlens`` block,
the RoPE applied in float64 where 5.x applies it after ``q.float()``) and the text rotary table.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen_modeling



def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class F64RMSNorm(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight, self.variance_epsilon = norm.weight, norm.variance_epsilon

    def forward(self, x):
        h = x.to(torch.float64)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(x.dtype)


class F64VisionRope(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        spatial = head_dim // 2
        self.inv_freq = 1.0 / theta ** (torch.arange(0, spatial, 2, dtype=torch.float64) / spatial)

    def forward(self, x, position_ids):  # position_ids [S, 2] (h, w)
        freqs = position_ids[..., None].double() * self.inv_freq  # [S, 2, hd/4]
        emb = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
        emb = torch.cat([emb, emb], dim=-1)  # [S, hd]
        return emb.cos(), emb.sin()


class F64VisionAttention(qwen_modeling.Qwen2_5_VLVisionAttention):
    """The eager vision attention with the RoPE in the input dtype (float64), per cu_seqlens block."""

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, **kwargs):
        s = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(s, 3, self.num_heads, -1).unbind(1)  # [S, H, hd]
        cos, sin = (t.to(q.dtype).unsqueeze(-2) for t in position_embeddings)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        outs = []
        bounds = cu_seqlens.tolist()
        for a, b in itertools.pairwise(bounds):
            qb, kb, vb = (t[a:b].transpose(0, 1) for t in (q, k, v))  # [H, Sb, hd]
            probs = torch.softmax(torch.matmul(qb, kb.transpose(1, 2)) * self.scaling, dim=-1)
            outs.append(torch.matmul(probs, vb).transpose(0, 1))  # [Sb, H, hd]
        return self.proj(torch.cat(outs, dim=0).reshape(s, -1))


class F64TextRope(nn.Module):
    def __init__(self, config, mrope_section):
        super().__init__()
        dim = config.hidden_size // config.num_attention_heads
        theta = config.rope_parameters["rope_theta"]
        self.inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        self.mrope_section = list(mrope_section)

    def forward(self, x, position_ids):
        freqs = position_ids.expand(3, -1, -1)[..., None].double() * self.inv_freq  # [3, B, L, hd/2]

        def recompose(f):
            f = torch.cat([m[i % 3] for i, m in enumerate(f.split(self.mrope_section, dim=-1))], dim=-1)
            return torch.cat((f, f), dim=-1)

        return recompose(freqs.cos()).to(x.dtype), recompose(freqs.sin()).to(x.dtype)


def float64_numerics(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, qwen_modeling.Qwen2_5_VLRMSNorm):
                setattr(module, child_name, F64RMSNorm(child))
    visual = model.model.visual
    vcfg = visual.config
    visual.rotary_pos_emb = F64VisionRope(vcfg.hidden_size // vcfg.num_heads, vcfg.rope_parameters["rope_theta"])
    for block in visual.blocks:
        swapped = F64VisionAttention(vcfg).to(torch.float64)
        swapped.load_state_dict(block.attn.state_dict())
        block.attn = swapped
    lm = model.model.language_model
    lm.rotary_emb = F64TextRope(lm.config, lm.rotary_emb.mrope_section)
    return model
