"""Qwen2.5-VL vision tower: the merged image embeddings and VisionZip's scores and keys, from one forward.

Official rules 1 and 2 (``tests/data/visionzip_qwen/README.md``):

* **Score**: the attention probabilities of the **last** vision block (a full-attention block) over each
  image's S = 4N patches, in the ViT's window order, with the per-image block mask (images never attend to
  each other). Score of a merged token = mean over heads, sum over query rows, mean over its 4 patches,
  reordered from window order to raster order (``argsort(window_index)``). It sums to N per image.
* **Key**: k after the vision RoPE, mean over the 4 patches, raster order, mean over heads: ``[N, d]``.

The tower runs once, for the whole batch, with its own attention implementation (SDPA stays). A forward
pre-hook on the last block's ``attn`` (always removed) captures its input, rotary tables and ``cu_seqlens``;
q and k are recomputed from the module's own ``qkv`` with the RoPE applied in at least float32 (float64 stays
float64), and the probabilities are computed in query-row chunks so that no ``[H, S, S]`` is materialised.
:func:`split_images` pads the flat per-token outputs to ``[I, Nmax, ...]`` for the per-image selections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..compress.dtypes import at_least_float32

__all__ = ["VisionOutput", "check_grids", "image_columns", "merged_counts", "refuse_non_finite", "split_images", "vision_forward"]

# query rows x key columns x heads of one probability chunk (float32: 128 MiB), at most 1024 rows
_CHUNK_ELEMENTS = 1 << 25
_MAX_ROWS = 1024


@dataclass(frozen=True)
class VisionOutput:
    """``embeds`` [N_total, E] PatchMerger outputs in raster order, all images concatenated (model dtype);
    ``scores`` [N_total] and ``keys`` [N_total, d] (at least float32; None when not scored);
    ``counts``: N per image (host ints)."""

    embeds: Tensor
    scores: Tensor | None
    keys: Tensor | None
    counts: tuple[int, ...]


def check_grids(image_grid_thw: Tensor | None, merge: int, patches: int | None) -> list[tuple[int, int, int]]:
    """The grids as host ints, or ValueError: each (t, h, w) must hold whole merged tokens (h and w
    multiples of the spatial merge size ``merge``, t >= 1), and ``patches`` rows of ``pixel_values`` must be
    the sum of t*h*w."""
    if image_grid_thw is None:
        if patches:
            raise ValueError(f"pixel_values has {patches} patch rows but image_grid_thw is None")
        return []
    if image_grid_thw.ndim != 2 or image_grid_thw.shape[1] != 3:
        raise ValueError(f"image_grid_thw must be [n_images, 3], got {tuple(image_grid_thw.shape)}")
    grids = [tuple(int(v) for v in g) for g in image_grid_thw.tolist()]
    for i, (t, h, w) in enumerate(grids):
        if t < 1 or h < merge or w < merge or h % merge or w % merge:
            raise ValueError(
                f"image_grid_thw[{i}] = {(t, h, w)} is too small for one merged token or not a multiple of the "
                f"spatial merge size {merge} (need t >= 1 and h, w multiples of {merge}, at least {merge})"
            )
    total = sum(t * h * w for t, h, w in grids)
    if patches is not None and patches != total:
        raise ValueError(f"pixel_values has {patches} patch rows but image_grid_thw describes {total}")
    return grids


def merged_counts(grids: list[tuple[int, int, int]], merge: int) -> tuple[int, ...]:
    """N (merged tokens) per image: t * (h / merge) * (w / merge)."""
    return tuple(t * (h // merge) * (w // merge) for t, h, w in grids)


def image_columns(counts: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(image [N_total], column [N_total]): the image and the column inside it of every merged token."""
    n = torch.tensor(counts)  # [I] host
    image = torch.repeat_interleave(torch.arange(len(counts)), n).to(device)  # [N_total]
    column = (torch.arange(int(n.sum())) - (n.cumsum(0) - n).repeat_interleave(n)).to(device)  # [N_total]
    return image, column


def refuse_non_finite(embeds: Tensor, keep: Tensor | None = None) -> None:
    """ValueError when a visual token that would enter the LLM (``embeds`` [N_total, E]; ``keep`` [N_total] bool,
    None: all of them) holds NaN or inf, as a half-precision overflow can make it (one host sync)."""
    finite = torch.isfinite(embeds).all(-1)  # [N_total]
    if keep is not None:
        finite = finite | ~keep
    if not bool(finite.all()):
        raise ValueError(
            f"non-finite visual tokens (NaN or inf, {embeds.dtype}) from the vision tower or the method: refusing to "
            "feed them to the LLM"
        )


def split_images(flat: Tensor, counts: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """flat [N_total, ...] -> (padded [I, Nmax, ...], image [N_total], column [N_total]) with host-known
    counts; padding rows repeat the image's last token (masked by the selection)."""
    n = torch.tensor(counts)  # [I] host
    offsets = n.cumsum(0) - n  # [I]
    cols = torch.arange(int(n.max()))  # [Nmax]
    gather = (offsets.unsqueeze(1) + torch.minimum(cols.unsqueeze(0), n.unsqueeze(1) - 1)).to(flat.device)  # [I, Nmax]
    return (flat[gather], *image_columns(counts, flat.device))


def _window_index(visual: nn.Module, grid_thw: Tensor) -> Tensor:
    """The tower's own merged-token window order [N_total] (window position -> raster index)."""
    if hasattr(visual, "get_window_index"):  # transformers < 5.24 keeps it as a method
        return visual.get_window_index(grid_thw)[0]
    from transformers.vision_utils import get_vision_window_index

    cfg = visual.config
    return get_vision_window_index(
        grid_thw, spatial_merge_size=cfg.spatial_merge_size, window_size=cfg.window_size, patch_size=cfg.patch_size
    )[0]


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _q_k_after_rope(attn: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor, work: torch.dtype) -> tuple[Tensor, Tensor]:
    """q, k [S, H, hd] of a vision attention module on its (normed) input [S, C], RoPE applied in ``work``."""
    s = hidden.shape[0]
    q, k, _ = attn.qkv(hidden).reshape(s, 3, attn.num_heads, -1).unbind(1)  # [S, H, hd] each
    cos = cos.to(work).unsqueeze(-2)  # [S, 1, hd]
    sin = sin.to(work).unsqueeze(-2)
    q, k = q.to(work), k.to(work)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _column_sums(q: Tensor, k: Tensor, blocks: list[tuple[int, int]], scaling: float) -> Tensor:
    """[H, S] attention probability received by each patch (key column), summed over the query rows of its
    own block; softmax over the block's keys in q's dtype; chunked over query rows."""
    heads, total = q.shape[1], q.shape[0]
    col = q.new_zeros(heads, total)  # [H, S]
    for start, end in blocks:
        kb = k[start:end].transpose(0, 1)  # [H, Sb, hd]
        rows = max(1, min(_MAX_ROWS, _CHUNK_ELEMENTS // (heads * (end - start))))
        acc = q.new_zeros(heads, end - start)  # [H, Sb]
        for r in range(start, end, rows):
            qc = q[r : min(r + rows, end)].transpose(0, 1)  # [H, c, hd]
            probs = torch.softmax(torch.matmul(qc, kb.transpose(1, 2)) * scaling, dim=-1)  # [H, c, Sb]
            acc += probs.sum(1)
        col[:, start:end] = acc
    return col


@torch.no_grad()
def vision_forward(visual: nn.Module, pixel_values: Tensor, image_grid_thw: Tensor, score: bool) -> VisionOutput:
    """One forward of the whole batch's images through ``visual`` (a
    ``Qwen2_5_VisionTransformerPretrainedModel``), plus VisionZip's scores and keys when ``score``."""
    merge = visual.spatial_merge_size
    unit = merge * merge
    grids = check_grids(image_grid_thw, merge, pixel_values.shape[0])
    counts = merged_counts(grids, merge)
    last = len(visual.blocks) - 1
    if score and last not in list(visual.fullatt_block_indexes):
        raise ValueError(
            f"VisionZip scores the last vision block ({last}), which must be a full-attention block; "
            f"fullatt_block_indexes = {list(visual.fullatt_block_indexes)}"
        )
    captured: dict[str, object] = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["rope"] = kwargs.get("position_embeddings")

    handle = visual.blocks[last].attn.register_forward_pre_hook(grab, with_kwargs=True) if score else None
    try:
        out = visual(pixel_values.type(visual.dtype), grid_thw=image_grid_thw)
    finally:
        if handle is not None:
            handle.remove()
    embeds = getattr(out, "pooler_output", out)  # [N_total, E] raster order (a tensor before 5.x outputs)
    if not score:
        return VisionOutput(embeds, None, None, counts)

    attn = visual.blocks[last].attn
    hidden = captured["hidden"]  # [S, C] window order, after norm1
    work = at_least_float32(hidden.dtype)
    if captured["rope"] is None:
        raise ValueError("the last vision block received no position_embeddings: unsupported transformers version")
    cos, sin = captured["rope"]  # [S, hd] each, window order
    q, k = _q_k_after_rope(attn, hidden, cos, sin, work)  # [S, H, hd]
    # the block mask of the tower's full-attention blocks: one block per frame of each image (t = 1: per image)
    blocks, start = [], 0
    for t, h, w in grids:
        for _ in range(t):
            blocks.append((start, start + h * w))
            start += h * w
    col = _column_sums(q, k, blocks, float(attn.scaling))  # [H, S]
    reverse = torch.argsort(_window_index(visual, image_grid_thw).to(hidden.device))  # [N_total] raster -> window
    scores = col.mean(0).view(-1, unit).mean(1)[reverse]  # [N_total] raster order
    keys = k.reshape(-1, unit, k.shape[1], k.shape[2]).mean(1)[reverse].mean(1)  # [N_total, hd] raster order
    return VisionOutput(embeds, scores, keys, counts)
