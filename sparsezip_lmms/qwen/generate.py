"""Qwen2.5-VL with a selection before the LLM (or none): one vision forward, splicing, one LLM prefill, greedy decode.

:func:`compressed_generate` runs the whole batch at once:

1. the vision tower on every image of the batch (one forward; :mod:`.vision` adds the scores and keys);
2. per image its own N, budget and selection: VisionZip
   (:func:`sparsezip_lmms.compress.visionzip_qwen.visionzip_qwen_select`, batched over images; contextual tokens
   at their targets' places, the other non-dominant tokens removed), or a rule of :mod:`.select` (DivPrune,
   VisPruner, random, pool, SparseZip, CDPruner; pooled / merged tokens at an anchor token's place);
3. the unpruned prompt's M-RoPE positions sliced by the kept sequence positions, rows re-padded on the left;
4. the language model (``model.model.language_model``) on ``inputs_embeds`` with the 2-D attention mask
   ``[B, L']`` and 3-row positions ``[3, B, L']`` passed explicitly, one ``DynamicCache``; then greedy decoding,
   the n-th fed-back token at ``max_position + n`` on all three rows of each row.

In-LLM methods (DART, FastV, SparseVLM v2.0 and v1.5) run in :mod:`.in_llm`. With ``keep_all`` (method
``none``) nothing is pruned and the result is the stock model's greedy generation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache

from ..compress.dtypes import at_least_float32
from ..compress.visionzip_qwen import (
    QwenZip,
    QwenZipImage,
    unpack_image,
    visionzip_qwen_select,
)
from ..efficiency.clock import MethodTimer, method_step
from ..llava.compat import cache_kwargs
from .inputs import check_batch, check_method
from .positions import decode_position_ids, left_pack, prompt_positions
from .select import RULES, SCORED, image_questions, question_vectors, select_images
from .vision import VisionOutput, check_grids, image_columns, merged_counts, refuse_non_finite, split_images, vision_forward

__all__ = ["QwenDebug", "QwenGeneration", "compressed_generate"]


@dataclass(frozen=True)
class QwenDebug:
    """Intermediate values (``debug=True``), per image in batch order or per row, on the CPU:
    ``attn_mean`` [N] and ``attn_key`` [N, d] (None for keep_all), ``image_embeds`` [N, E] (raster order),
    ``selections`` (:class:`QwenZipImage`, None for keep_all), ``inputs_embeds`` [L'_b, E] per row."""

    attn_mean: list[Tensor] | None
    attn_key: list[Tensor] | None
    image_embeds: list[Tensor]
    selections: list[QwenZipImage] | None
    inputs_embeds: list[Tensor]


@dataclass(frozen=True)
class QwenGeneration:
    """``sequences`` [B, new] greedy ids; ``logits`` [B, new, V] (at least float32; row 0 is the prefill's
    last position, row n follows the n-th fed-back token); ``kept``: per image (batch order) the kept merged-token
    indices, ascending: the slots that enter the LLM (VisionZip: dominant and contextual targets; pool: each
    cell's top-left anchor; SparseZip: dominant tokens and each contextual token's lowest member; all of
    them for keep_all); ``position_ids``: per row
    the ``[3, L'_b]`` positions of its kept prompt tokens (no padding); ``keep_seq``: per row the kept
    sequence positions, counted over the row's attended tokens; ``decode_positions`` [B, new−1] the position
    of each fed-back token (all three rows); ``image_rows``: the row of each image. Lists hold CPU tensors."""

    sequences: Tensor
    logits: Tensor
    kept: list[Tensor]
    position_ids: list[Tensor]
    keep_seq: list[Tensor]
    decode_positions: Tensor
    image_rows: list[int]
    debug: QwenDebug | None = None
    pruned: object | None = None  # in-LLM methods: the pruning decoder's ``PrunedOutput`` (pivots, scores, ...)


def _select(vis: VisionOutput, config: object) -> tuple[QwenZip, Tensor, Tensor]:
    """VisionZip on every image: (selection [I, Nmax], keep [N_total] bool, embeds [N_total, E] with the
    contextual tokens at their targets' rows)."""
    scores, image, column = split_images(vis.scores, vis.counts)  # [I, Nmax]
    keys, _, _ = split_images(vis.keys, vis.counts)  # [I, Nmax, d]
    embeds, _, _ = split_images(vis.embeds, vis.counts)  # [I, Nmax, E]
    sel = visionzip_qwen_select(scores, keys, embeds, vis.counts, config.dominant_ratio, config.contextual_ratio)
    return sel, sel.keep[image, column], sel.embeds[image, column]


def _language_model(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None)
    if lm is None or not hasattr(inner, "visual") or not hasattr(model, "lm_head"):
        raise ValueError(f"model must be a Qwen2_5_VLForConditionalGeneration, got {type(model).__name__}")
    return lm


@torch.no_grad()
def compressed_generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    pixel_values: Tensor | None,
    image_grid_thw: Tensor | None,
    config: object,
    max_new_tokens: int,
    *,
    eos_token_id: int | None = None,
    pixel_values_videos: Tensor | None = None,
    video_grid_thw: Tensor | None = None,
    debug: bool = False,
    method_timer: MethodTimer | None = None,
) -> QwenGeneration:
    """Greedy generation of a Qwen2.5-VL batch with ``config``'s method applied per image (VisionZip with
    ``dominant_ratio``/``contextual_ratio``, a rule of :mod:`.select`, an in-LLM method) or without
    compression (``keep_all``); :func:`.inputs.check_method` says which configs run.

    input_ids [B, L] (left padding expected; any padding works: rows are re-packed), attention_mask [B, L],
    pixel_values [P, C·T·p·p] of all images in order, image_grid_thw [n_images, 3]. Runs exactly
    ``max_new_tokens`` steps unless ``eos_token_id`` is given and every row produced it (finished rows then
    continue with the pad token, as ``generate``).
    """
    if pixel_values_videos is not None or video_grid_thw is not None:
        raise ValueError("videos are not supported: pass images only (pixel_values_videos / video_grid_thw given)")
    method = check_method(config)
    lm = _language_model(model)
    cfg = model.config
    visual = model.model.visual
    merge = visual.spatial_merge_size
    grids = check_grids(image_grid_thw, merge, None if pixel_values is None else pixel_values.shape[0])
    counts = merged_counts(grids, merge)
    image_token = cfg.image_token_id
    rows = check_batch(input_ids, attention_mask, counts, pixel_values is not None, image_token,
                       getattr(cfg, "video_token_id", None), max_new_tokens)  # fmt: skip
    if method == "llm":
        from .in_llm import in_llm_generate

        return QwenGeneration(**in_llm_generate(
            model, input_ids, attention_mask, pixel_values, image_grid_thw, config, max_new_tokens, counts, rows,
            eos_token_id, method_timer,
        ))  # fmt: skip
    device = input_ids.device
    attended = attention_mask.bool()  # [B, L]
    image_mask = input_ids == image_token  # [B, L]
    embed = lm.embed_tokens(input_ids)  # [B, L, E]
    batch, _, width = embed.shape

    sel, vis, selected_keep = None, None, None  # selected_keep [I, Nmax]: the picks of the rules in .select
    keep = attended  # [B, L]
    if counts:
        vis = vision_forward(visual, pixel_values.to(device), image_grid_thw.to(device), score=method in SCORED)
        flat = vis.embeds  # [N_total, E]
        if method == "visionzip":
            with method_step(method_timer):
                sel, keep_flat, flat = _select(vis, config)  # keep_flat [N_total] bool
        elif method in RULES:
            with method_step(method_timer):
                question, image_question = None, None
                if method == "cdpruner":
                    question = question_vectors(input_ids, attention_mask, embed, cfg.vision_start_token_id,
                                                cfg.vision_end_token_id, image_token)  # ([B, E], [B])  # fmt: skip
                elif method == "sparsezip" and config.cross_beta > 0:
                    image_question = image_questions(input_ids, attention_mask, embed, image_token,
                                                     cfg.vision_start_token_id, cfg.vision_end_token_id, len(counts))  # [I, E]  # fmt: skip
                selected_keep, replaced = select_images(
                    method, vis, config, pixel_values=pixel_values.to(device), grids=grids, merge=merge,
                    question=question, image_question=image_question, rows=rows,
                )  # [I, Nmax] bool, [I, Nmax, E] or None  # fmt: skip
                image, column = image_columns(counts, device)  # [N_total] each
                keep_flat = selected_keep[image, column]  # [N_total] bool
                if replaced is not None:
                    flat = replaced[image, column]  # [N_total, E] pooled / merged tokens at their anchors
        if method != "none":
            keep_image = image_mask.masked_scatter(image_mask, keep_flat)  # [B, L] kept image tokens
            keep = attended & (~image_mask | keep_image)
        refuse_non_finite(flat, keep_flat if method != "none" else None)
        embed = embed.masked_scatter(image_mask.unsqueeze(-1), flat.to(embed.dtype))  # [B, L, E]
    positions, max_position = prompt_positions(model, input_ids, attention_mask, image_grid_thw, image_token)  # [3, B, L], [B]

    index, valid, _ = left_pack(keep)  # [B, L'], [B, L']
    x = embed.gather(1, index.unsqueeze(-1).expand(-1, -1, width)).masked_fill(~valid.unsqueeze(-1), 0)  # [B, L', E]
    pos = positions.gather(2, index.unsqueeze(0).expand(3, -1, -1)).masked_fill(~valid.unsqueeze(0), 0)  # [3, B, L']
    mask = valid.long()  # [B, L']

    logit_dtype = at_least_float32(model.lm_head.weight.dtype)
    cache = DynamicCache(config=lm.config)
    call = cache_kwargs(type(lm).forward, cache)
    out = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=True, **call)
    step_logits = model.lm_head(out.last_hidden_state[:, -1]).to(logit_dtype)  # [B, V]
    tokens, logits = [], [step_logits]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    pad = cfg.text_config.pad_token_id if getattr(cfg.text_config, "pad_token_id", None) is not None else eos_token_id
    for n in range(1, max_new_tokens + 1):
        tok = step_logits.argmax(-1)  # [B]
        if eos_token_id is not None:
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            done = done | (tok == eos_token_id)
        tokens.append(tok)
        if n == max_new_tokens or (eos_token_id is not None and bool(done.all())):
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)  # [B, L'+n]
        out = lm(inputs_embeds=lm.embed_tokens(tok[:, None]), attention_mask=mask,
                 position_ids=decode_position_ids(max_position, n), use_cache=True, **call)  # fmt: skip
        step_logits = model.lm_head(out.last_hidden_state[:, -1]).to(logit_dtype)  # [B, V]
        logits.append(step_logits)

    sequences = torch.stack(tokens, dim=1)  # [B, new]
    steps = sequences.shape[1]
    decode = max_position.unsqueeze(1) + torch.arange(1, steps, device=device)  # [B, new-1]
    return QwenGeneration(
        sequences=sequences,
        logits=torch.stack(logits, dim=1),  # [B, new, V]
        kept=_kept(sel, counts) if selected_keep is None else [row.nonzero().squeeze(1) for row in selected_keep.cpu()],
        position_ids=[p[:, v] for p, v in zip(pos.cpu().unbind(1), valid.cpu())],
        keep_seq=_keep_seq(attended, index, valid),
        decode_positions=decode,
        image_rows=rows,
        debug=_debug(vis, sel, x, valid) if debug else None,
    )


def _kept(sel: QwenZip | None, counts: tuple[int, ...]) -> list[Tensor]:
    """Kept merged-token indices of each image (CPU, ascending): one host copy of the keep mask."""
    if sel is None:
        return [torch.arange(n) for n in counts]
    keep = sel.keep.cpu()  # [I, Nmax]
    return [row.nonzero().squeeze(1) for row in keep]


def _keep_seq(attended: Tensor, index: Tensor, valid: Tensor) -> list[Tensor]:
    """Per row, the kept sequence positions counted over the row's attended tokens (CPU)."""
    rank = attended.long().cumsum(1) - 1  # [B, L]
    kept = rank.gather(1, index).cpu()  # [B, L']
    return [k[v] for k, v in zip(kept, valid.cpu())]


def _cpu(image: QwenZipImage) -> QwenZipImage:
    return QwenZipImage(*(getattr(image, f.name).cpu() for f in fields(image)))


def _debug(vis: VisionOutput | None, sel: QwenZip | None, x: Tensor, valid: Tensor) -> QwenDebug:
    """Per-image and per-row intermediates on the CPU (host syncs; debugging only)."""
    counts = vis.counts if vis is not None else ()
    split = (lambda t: list(t.cpu().split(list(counts)))) if counts else (lambda t: [])
    return QwenDebug(
        attn_mean=split(vis.scores) if vis is not None and vis.scores is not None else None,
        attn_key=split(vis.keys) if vis is not None and vis.keys is not None else None,
        image_embeds=split(vis.embeds) if vis is not None else [],
        selections=[_cpu(unpack_image(sel, i)) for i in range(len(counts))] if sel is not None else None,
        inputs_embeds=[r[v] for r, v in zip(x.cpu(), valid.cpu())],
    )
