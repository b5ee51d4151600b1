"""Section 7: VisionZip's scoring capture on a Qwen2.5-VL vision tower against an official-style eager block.

VisionZip on Qwen2.5-VL scores every merged token with the attention probabilities of the tower's last block
(a full-attention block), summed over the query rows of its own image, and keys after the vision RoPE. Two
ways of getting them, on the same random-weight tower and the same pixels:

* ``ours``   :func:`sparsezip_lmms.qwen.vision.vision_forward` with ``score=True``: the tower runs with its
             own attention (SDPA); the last block's input is captured by a pre-hook, q and k are recomputed
             and the probabilities are summed in query-row chunks (:data:`CHUNK_ELEMENTS` elements at most),
             never an ``[H, S, S]`` tensor for a large image;
* ``eager``  the official way (:func:`eager_scoring_forward`): the last block's attention computed eagerly,
             ``softmax(q kᵀ · scaling)`` materialised as ``[H, S, S]`` (float32) for each image, its output
             used by the block and its probabilities reduced to the scores. As the official code runs one
             image per prompt, each image of a batch gets its own ``[H, S_i, S_i]`` (the tower still runs
             the batch in one forward, like ours, so that the two differ in the last block only).

Timed, interleaved (``plain`` = the same tower with no scores):

* the whole tower: ``plain``, ``ours``, ``eager``;
* the last block's attention alone, on its captured input: ``block_sdpa`` (the module's own SDPA call),
  ``block_ours`` (the SDPA call plus our capture: q, k recomputed, chunked column sums) and
  ``block_eager`` (the eager attention and its column sums).

Memory: the analytic size of the largest attention-probability tensor each capture materialises
(ours: one chunk ``[H, rows, S_i]`` in the scores' dtype; eager: ``[H, S_i, S_i]`` float32), on every
device; on CUDA also ``torch.cuda.max_memory_allocated`` above the memory in use before the call.

Before timing, both must give the same scores and keys (``allclose`` in float32; a float32 copy of the tower
checks a half-precision run, at batch 1).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..compress.dtypes import at_least_float32
from ..qwen.vision import (
    _CHUNK_ELEMENTS,
    _MAX_ROWS,
    VisionOutput,
    _column_sums,
    _q_k_after_rope,
    _window_index,
    check_grids,
    merged_counts,
    vision_forward,
)
from .models import _empty_model, random_init_
from .timing import DeviceTimer, Stat, measure, paired_ratio

__all__ = [
    "CHUNK_ELEMENTS",
    "QWEN2_5_VL_7B_VISION",
    "SMOKE_QWEN_VISION",
    "EagerScoringAttention",
    "build_qwen_vision",
    "capture_tensor_bytes",
    "eager_scoring_forward",
    "qwen_section",
]

CHUNK_ELEMENTS = _CHUNK_ELEMENTS
# Qwen2.5-VL-7B-Instruct's vision_config (``fullatt_block_indexes`` is cut to the depth built)
QWEN2_5_VL_7B_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "in_channels": 3,
    "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "out_hidden_size": 3584, "tokens_per_second": 2, "hidden_act": "silu",
}  # fmt: skip
SMOKE_QWEN_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "out_hidden_size": 64}
CPU_DEPTH = 4  # blocks 0-2 windowed, block 3 full attention (the 7B's every-8th pattern cut short)
SMOKE_DEPTH = 2
QK_SCALE = 3.0
ANALYTIC_SIDES = (448, 896, 1344, 1792)  # image sides (px) of the analytic memory table
HEADROOM_BYTES = 4 << 30  # CUDA: a size is skipped when the eager block would not fit with this margin


def build_qwen_vision(
    depth: int, device: torch.device, dtype: torch.dtype, seed: int = 0, qk_scale: float = QK_SCALE, **overrides
) -> nn.Module:
    """A random ``Qwen2_5_VisionTransformerPretrainedModel`` with the 7B's vision config and ``depth`` blocks;
    the full-attention blocks are the 7B's that exist at this depth plus the last one (VisionZip scores it).
    The q and k rows of the last block's ``qkv`` are multiplied by ``qk_scale`` (peaked scores, so that the
    agreement check compares distinct values rather than a near-uniform attention)."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    dims = {**QWEN2_5_VL_7B_VISION, **overrides, "depth": depth}
    dims["fullatt_block_indexes"] = sorted({i for i in dims["fullatt_block_indexes"] if i < depth} | {depth - 1})
    config = Qwen2_5_VLVisionConfig(**dims)
    config._attn_implementation = "sdpa"
    model = _empty_model(Qwen2_5_VisionTransformerPretrainedModel, config)
    random_init_(model, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.blocks[depth - 1].attn.qkv.weight[: 2 * config.hidden_size] *= qk_scale
    return model.to(device=device, dtype=dtype).eval()


def qwen_pixels(side: int, batch: int, device, dtype, patch: int = 14, temporal: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(pixel_values [B * P, 3 * temporal * patch²], image_grid_thw [B, 3]) for ``batch`` square images of
    ``side`` px (random normalised pixels, P = (side / patch)² patches each)."""
    g = side // patch
    values = torch.randn(batch * g * g, 3 * temporal * patch * patch, generator=torch.Generator().manual_seed(seed))
    return values.to(device, dtype), torch.tensor([[1, g, g]] * batch, device=device)


class EagerScoringAttention(nn.Module):
    """The vision attention of one block computed eagerly, as the official VisionZip code does: per image
    (``cu_seqlens`` block) ``softmax(q kᵀ · scaling)`` in float32 as ``[H, S_i, S_i]``, its output used by
    the block; ``columns`` collects each block's probabilities summed over the query rows, mean over heads
    ([S_i], window order), ``keys`` the keys after the RoPE [S, H, hd]."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.inner = attn
        self.columns: list[Tensor] = []
        self.keys: Tensor | None = None

    def forward(self, hidden_states: Tensor, cu_seqlens: Tensor, position_embeddings=None, **kwargs) -> Tensor:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

        attn, s = self.inner, hidden_states.shape[0]
        q, k, v = attn.qkv(hidden_states).reshape(s, 3, attn.num_heads, -1).unbind(1)  # [S, H, hd] each
        q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
        outs = []
        for a, b in itertools.pairwise(cu_seqlens.tolist()):
            qb, kb, vb = (t[a:b].transpose(0, 1) for t in (q, k, v))  # [H, Sb, hd]
            probs = torch.softmax(torch.matmul(qb, kb.transpose(1, 2)) * attn.scaling, dim=-1, dtype=torch.float32)  # [H, Sb, Sb]
            self.columns.append(probs.mean(0).sum(0))  # [Sb]
            outs.append(torch.matmul(probs.to(vb.dtype), vb).transpose(0, 1))  # [Sb, H, hd]
            del probs
        self.keys = k
        return attn.proj(torch.cat(outs, dim=0).reshape(s, -1))


def _scores_and_keys(visual: nn.Module, grid: Tensor, columns: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patch column sums [S] and keys [S, H, hd] (window order) -> scores [N] and keys [N, hd] (raster)."""
    unit = visual.spatial_merge_size**2
    reverse = torch.argsort(_window_index(visual, grid).to(columns.device))
    work = at_least_float32(keys.dtype)
    scores = columns.to(work).view(-1, unit).mean(1)[reverse]
    keys = keys.to(work).reshape(-1, unit, keys.shape[1], keys.shape[2]).mean(1)[reverse].mean(1)
    return scores, keys


@torch.no_grad()
def eager_scoring_forward(visual: nn.Module, pixel_values: Tensor, image_grid_thw: Tensor) -> VisionOutput:
    """The official-style capture: one forward with the last block's attention eager ([H, S_i, S_i] per image),
    the scores and keys read from it. Same outputs as ``vision_forward(..., score=True)``."""
    merge = visual.spatial_merge_size
    counts = merged_counts(check_grids(image_grid_thw, merge, pixel_values.shape[0]), merge)
    block = visual.blocks[len(visual.blocks) - 1]
    original, eager = block.attn, EagerScoringAttention(block.attn)
    block.attn = eager
    try:
        out = visual(pixel_values.type(visual.dtype), grid_thw=image_grid_thw)
    finally:
        block.attn = original
    embeds = getattr(out, "pooler_output", out)
    scores, keys = _scores_and_keys(visual, image_grid_thw, torch.cat(eager.columns), eager.keys)
    return VisionOutput(embeds, scores, keys, counts)


def capture_tensor_bytes(patches: int, heads: int, score_bytes: int = 4) -> tuple[int, int]:
    """(ours, eager): bytes of the largest attention-probability tensor each capture materialises for one
    image of ``patches`` patches: ours one chunk [H, rows, S] in the scores' dtype, eager [H, S, S] float32."""
    rows = max(1, min(_MAX_ROWS, CHUNK_ELEMENTS // (heads * patches), patches))
    return heads * rows * patches * score_bytes, heads * patches * patches * 4


def _block_cases(visual: nn.Module, pixels: Tensor, grid: Tensor) -> dict[str, Callable[[], object]]:
    """The last block's attention on its captured input: SDPA alone, SDPA + our capture, eager."""
    attn = visual.blocks[len(visual.blocks) - 1].attn
    got: dict = {}

    def grab(module, args, kwargs):
        got.update(kwargs, hidden=args[0] if args else kwargs["hidden_states"])

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        vision_forward(visual, pixels, grid, score=False)
    finally:
        handle.remove()
    hidden, rope, cu = got["hidden"], got["position_embeddings"], got["cu_seqlens"]
    bounds = cu.tolist()
    blocks = list(itertools.pairwise(bounds))
    work = at_least_float32(hidden.dtype)

    def ours():
        out = attn(hidden, cu_seqlens=cu, position_embeddings=rope)
        q, k = _q_k_after_rope(attn, hidden, rope[0], rope[1], work)
        return out, _column_sums(q, k, blocks, float(attn.scaling)).mean(0)

    def eager():
        module = EagerScoringAttention(attn)
        return module(hidden, cu_seqlens=cu, position_embeddings=rope), torch.cat(module.columns)

    return {
        "block_sdpa": lambda: attn(hidden, cu_seqlens=cu, position_embeddings=rope),
        "block_ours": ours,
        "block_eager": eager,
    }


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _allclose(a: Tensor, b: Tensor, rtol: float) -> bool:
    a, b = a.double(), b.double()
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max())))


def check_agreement(visual: nn.Module, pixels: Tensor, grid: Tensor) -> dict:
    """Both captures on the same input: max |difference| of scores, keys, embeds; RuntimeError unless the
    scores and keys are allclose (the caller passes a float32 tower)."""
    ours = vision_forward(visual, pixels, grid, score=True)
    ref = eager_scoring_forward(visual, pixels, grid)
    check = {
        "dtype": str(visual.dtype).removeprefix("torch."),
        "scores_max_abs_diff": _max_diff(ours.scores, ref.scores),
        "keys_max_abs_diff": _max_diff(ours.keys, ref.keys),
        "embeds_max_abs_diff": _max_diff(ours.embeds, ref.embeds),
        "score_max_over_mean": float(ref.scores.max() / ref.scores.mean()),
        "scores_allclose": _allclose(ours.scores, ref.scores, 1e-4) and _allclose(ours.keys, ref.keys, 1e-5),
    }
    if not check["scores_allclose"]:
        raise RuntimeError(f"the capture and the eager reference disagree: {check}")
    return check


def _cuda_peaks(cases: dict[str, Callable[[], object]], device: torch.device) -> dict[str, int]:
    """Bytes allocated at the peak of one call of each case, above what was in use before it."""
    peaks = {}
    for name, fn in cases.items():
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        peaks[name] = int(torch.cuda.max_memory_allocated(device) - before)
        del result
    return peaks


def _sides(device: torch.device, smoke: bool) -> tuple[int, ...]:
    if smoke:
        return (112,)
    return (448, 896) if device.type == "cuda" else (448,)


def _fits(side: int, heads: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    patches = (side // 14) ** 2
    free, _ = torch.cuda.mem_get_info(device)
    return 3 * capture_tensor_bytes(patches, heads)[1] + HEADROOM_BYTES < free


@torch.no_grad()
def qwen_section(
    device: torch.device,
    dtype: torch.dtype,
    batches: list[int],
    repeats: int,
    warmup: int,
    timer: DeviceTimer,
    smoke: bool = False,
    depth: int | None = None,
    sides: tuple[int, ...] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Section 7: per image side and batch, the tower with our capture vs the eager reference vs no scores,
    the last block alone, and the attention tensors' sizes. The agreement check doubles as one warm-up."""
    device = torch.device(device)
    depth = depth or (SMOKE_DEPTH if smoke else 32 if device.type == "cuda" else CPU_DEPTH)
    sides = sides or _sides(device, smoke)
    visual = build_qwen_vision(depth, device, dtype, **(SMOKE_QWEN_VISION if smoke else {}))
    cfg = visual.config
    heads, patch, merge = cfg.num_heads, cfg.patch_size, cfg.spatial_merge_size
    score_bytes = torch.finfo(at_least_float32(dtype)).bits // 8
    out: dict = {
        "model": {
            "depth": depth, "hidden_size": cfg.hidden_size, "num_heads": heads, "intermediate_size": cfg.intermediate_size,
            "window_size": cfg.window_size, "fullatt_block_indexes": list(cfg.fullatt_block_indexes),
            "out_hidden_size": cfg.out_hidden_size, "parameters": sum(p.numel() for p in visual.parameters()),
        },  # fmt: skip
        "dtype": str(dtype).removeprefix("torch."),
        "memory": "largest_attention_bytes: analytic (ours one [H, rows, S_i] chunk in the scores' dtype, eager "
        "[H, S_i, S_i] float32)" + ("; cuda_peak_bytes: torch.cuda.max_memory_allocated above the memory in use "
                                    "before one call" if device.type == "cuda" else "; not measured on the CPU"),
        "rows": [],
        "skipped": [],
    }
    reference = None if dtype == torch.float32 else copy.deepcopy(visual).float()
    for side in sides:
        if not _fits(side, heads, device):
            out["skipped"].append({"image_px": side, "why": "the eager [H, S, S] would not fit in free GPU memory"})
            continue
        if reference is not None:  # half precision: the float32 check on a float32 copy, batch 1
            check32 = check_agreement(reference, *qwen_pixels(side, 1, device, torch.float32, patch))
        for batch in batches:
            if log:
                log(f"section 7: Qwen2.5-VL scoring capture, {side}x{side} px, batch {batch}")
            pixels, grid = qwen_pixels(side, batch, device, dtype, patch)
            check = check_agreement(visual, pixels, grid) if reference is None else {**check32, "batch": 1}
            if reference is not None:  # the timed dtype's differences, reported only
                ours, ref = vision_forward(visual, pixels, grid, True), eager_scoring_forward(visual, pixels, grid)
                check[f"{out['dtype']}_scores_max_abs_diff"] = _max_diff(ours.scores, ref.scores)
                del ours, ref
            cases = {
                "plain": lambda px=pixels, g=grid: vision_forward(visual, px, g, score=False),
                "ours": lambda px=pixels, g=grid: vision_forward(visual, px, g, score=True),
                "eager": lambda px=pixels, g=grid: eager_scoring_forward(visual, px, g),
            }
            stats = measure(cases, timer, repeats, max(0, warmup - 1))
            block = _block_cases(visual, pixels, grid)
            bstats = measure(block, timer, repeats, warmup)
            patches = (side // patch) ** 2
            ours_b, eager_b = capture_tensor_bytes(patches, heads, score_bytes)
            memory = {
                "largest_attention_bytes": {"ours": ours_b, "eager": eager_b},
                "largest_attention_eager_vs_ours": eager_b / ours_b,
                "cuda_peak_bytes": None,
            }
            if device.type == "cuda":
                for stat in (*stats.values(), *bstats.values()):
                    stat.last = None
                memory["cuda_peak_bytes"] = {**_cuda_peaks(cases, device), **_cuda_peaks(block, device)}
            out["rows"].append({
                "image_px": side, "batch": batch, "patches_per_image": patches,
                "merged_per_image": patches // merge**2,
                "times": {name: stat.to_dict() for name, stat in {**stats, **bstats}.items()},
                "ratios": _ratios(stats, bstats),
                "memory": memory,
                "check": check,
            })  # fmt: skip
            del stats, bstats, block, cases
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out["analytic_memory"] = [_analytic(s, heads, patch, score_bytes) for s in ANALYTIC_SIDES]
    return out


def _ratios(stats: dict[str, Stat], bstats: dict[str, Stat]) -> dict[str, float]:
    return {
        "ours_vs_plain": paired_ratio(stats, "ours", "plain"),
        "eager_vs_plain": paired_ratio(stats, "eager", "plain"),
        "eager_vs_ours": paired_ratio(stats, "eager", "ours"),
        "block_ours_vs_sdpa": paired_ratio(bstats, "block_ours", "block_sdpa"),
        "block_eager_vs_ours": paired_ratio(bstats, "block_eager", "block_ours"),
    }


def _analytic(side: int, heads: int, patch: int, score_bytes: int) -> dict:
    patches = (side // patch) ** 2
    ours, eager = capture_tensor_bytes(patches, heads, score_bytes)
    return {"image_px": side, "patches": patches, "ours_bytes": ours, "eager_bytes": eager, "eager_vs_ours": eager / ours}
