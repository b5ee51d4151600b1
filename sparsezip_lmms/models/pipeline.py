"""One batch through a LLaVA model: processor, vision tower once, the method, splicing, generation.

    prompts -> processor -> CLIP once -> the method (``llava.features.image_tokens``) -> projector
    -> placeholders resized to T_i per image -> inputs_embeds -> stock ``generate`` (or the pruning
    decoder for in-LLM methods) -> text, token counts, timings (``BatchOutput``)

``lmm`` is the lmms-eval adapter (``models.base.CompressedLlava``): the loaded model, its processor and
tokenizer, its config, and its model family (``lmm.family``: layout, crops, question masks, records).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.stopping_criteria import StoppingCriteriaList

from ..budgets import family_of
from ..efficiency.clock import MethodTimer, TokenClock, method_step, now
from ..efficiency.records import peak_memory, reset_peak_memory
from ..llava.features import deferred_span
from ..methods.registry import method_of

__all__ = ["BatchOutput", "apply_until", "decode", "generate_batch", "generate_pruned", "generation_args"]


def generation_args(lmm, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
    temperature = float(gen_kwargs.get("temperature", 0) or 0)
    do_sample = temperature > 0  # lmms-eval tasks ask for greedy decoding with temperature 0
    args = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens", 1024)),
        "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
        "do_sample": do_sample,
        "use_cache": lmm.use_cache,
        "pad_token_id": lmm.tokenizer.pad_token_id if lmm.tokenizer.pad_token_id is not None else lmm.eot_token_id,
        "eos_token_id": lmm.eot_token_id,
    }
    if do_sample:
        args["temperature"] = temperature
        if gen_kwargs.get("top_p") is not None:
            args["top_p"] = float(gen_kwargs["top_p"])
    else:
        args.update(temperature=None, top_p=None, top_k=None)
    return args


def apply_until(text: str, until: Any) -> str:
    if isinstance(until, str):
        until = [until]
    for stop in until or []:
        if stop:
            text = text.split(stop)[0]
    return text


@torch.no_grad()
def generate_batch(
    lmm,
    texts: list[str],
    images: list,
    gen_kwargs: dict[str, Any],
    prune: bool = False,
    questions: list[str] | None = None,
    fingerprints: list[str] | None = None,
) -> BatchOutput:
    """Generate for one batch of prompts (their images in prompt order); ``prune``: run the in-LLM
    pruning decoder (every prompt then has exactly one image); ``questions``: each prompt's user text
    (CDPruner's CLIP question); ``fingerprints``: one per image, given when the selection is logged."""
    device = lmm.device
    reset_peak_memory(device)
    t_start = now(device)
    family = lmm.family
    inputs, pinpoints = family.processor_inputs(lmm._image_processor, texts, images, lmm.compression, device)
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    n_images = len(images)
    images_per_row = family.images_per_row(input_ids, attention_mask)  # [B]
    # images are numbered in prompt order, row by row
    row_of_image = torch.repeat_interleave(torch.arange(len(texts), device=device), images_per_row)  # [n_images]

    t_vision = now(device)
    timer = MethodTimer(device)  # the method's own steps, wherever they run (vision side or in the LLM)
    question_mask = family.question_mask(input_ids, attention_mask, n_images)  # [n_images, L]
    image_sizes = family.image_sizes(inputs)  # [n_images, 2] (H, W) on LLaVA-NeXT, else None
    crops, grids = family.crops(image_sizes, n_images, pinpoints)  # vision-tower passes, tile grids per image
    config = lmm.compression if (prune or not lmm._prunes_in_llm) else lmm._unpruned_config
    if n_images:
        question = None
        if lmm._text_aware:
            with method_step(timer):  # a text-aware method's question embeddings are its own step
                question = family.question_embeddings(input_ids, question_mask, row_of_image)
        # random baseline: one key per image (NeXT: per crop) from the processor's float32 pixels
        keys = family.pixel_keys(inputs, crops) if method_of(lmm.compression).needs("image_keys", lmm.compression) else None
        clip_questions = None
        if lmm._clip_text is not None:
            from ..llava.clip_text import question_for_clip

            strip = getattr(lmm.compression, "strip_answer_format", True)
            per_image = [question_for_clip((questions or [""] * len(texts))[row], strip) for row in row_of_image.tolist()]
            with method_step(timer):  # CDPruner's text tower is part of the method
                clip_questions = lmm._clip_text.embed(per_image)  # ([n_images, M, P], [n_images, M])
        deferred = prune and getattr(config, "prune_layer", 0) > 0
        visual = family.visual_tokens(
            inputs,
            config,
            question,
            question_mask,
            pull_back=lmm._pull_back,
            image_keys=keys,
            clip_text=lmm._clip_text,
            question_embeds=clip_questions,
            with_patches=deferred,
            grid_pinpoints=pinpoints,
            timer=timer,
        )
        selected = visual  # what the method keeps (from layer prune_layer on, when deferred)
        visual_keep = None
        if deferred:  # every patch enters the LLM; the selection takes effect at layer prune_layer
            visual, visual_keep = deferred_span(visual)
        counts = visual.counts  # [n_images]
        if not bool(torch.isfinite(visual.features).all()):
            raise ValueError(
                f"non-finite visual tokens (NaN or inf) from config {lmm.config_name} "
                f"{json.dumps(lmm._effective_config, sort_keys=True)}: refusing to feed them to the LLM"
            )
    else:
        visual, counts, clip_questions = None, torch.zeros(0, dtype=torch.long, device=device), None
        visual_keep, selected, deferred = None, None, False
    t_vision_end = now(device)

    pad_id = lmm.tokenizer.pad_token_id if lmm.tokenizer.pad_token_id is not None else 0
    prompt = family.resize_placeholders(input_ids, attention_mask, counts, pad_id)
    limit = lmm.geometry.max_positions
    if limit is not None and int(prompt.lengths.max()) > limit:
        raise ValueError(
            f"prompt of {int(prompt.lengths.max())} tokens exceeds the LLM's position limit "
            f"(max_position_embeddings={limit})"
        )
    inputs_embeds = family.embed(prompt, visual)  # [B, L', D] image tokens spliced into the prompt

    args = generation_args(lmm, gen_kwargs)
    clock = TokenClock(device)  # one token clock for both decoders (efficiency.clock)
    t_generate = clock.start()
    if prune:
        if not bool((images_per_row == 1).all()):
            raise ValueError(f"{lmm.model_id}: the pruning decoder needs exactly one image per prompt")
        tokens, layer_stats, pruned = generate_pruned(lmm, inputs_embeds, prompt, args, counts, visual_keep, clock, timer)
    else:
        tokens = lmm.model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=prompt.attention_mask,
            stopping_criteria=StoppingCriteriaList([clock.stopping_criterion()]),
            **args,
        )  # [B, new] (no prompt ids when generating from embeddings)
        layer_stats, pruned = None, None
    step_times = clock.step_times
    t_end = now(device)
    selections = None
    if fingerprints is not None:
        selections = family.selections(
            config, selected, n_images, fingerprints, images_per_row.tolist(), pruned, deferred, crops, grids, image_sizes
        )

    out_texts, out_counts = decode(lmm, tokens, args)
    decode_steps = len(step_times) - 1
    timing = {
        "batch_size": len(texts),
        "preprocess_s": t_vision - t_start,
        "vision_s": t_vision_end - t_vision,
        "method_s": timer.seconds,  # inside vision_s (before-LLM methods) or prefill_s (in-LLM rules); 0 without a method
        "prefill_s": (step_times[0] - t_generate) if step_times else None,
        "ttft_s": (step_times[0] - t_vision) if step_times else None,
        "tpot_s": ((step_times[-1] - step_times[0]) / decode_steps) if decode_steps > 0 else None,
        "e2e_s": t_end - t_start,
        "peak_memory_bytes": peak_memory(device),
    }
    visual_per_row = torch.zeros(len(texts), dtype=torch.long, device=device).index_add_(0, row_of_image, counts)
    text_per_image = question_mask.sum(dim=1)
    text_per_row = torch.zeros(len(texts), dtype=torch.long, device=device).index_add_(0, row_of_image, text_per_image)
    crops_per_row = [0] * len(texts)
    # DivPrune on NeXT: the packed sequence length of each image it chose from
    lengths = selected.candidates.tolist() if selected is not None and selected.candidates is not None else None
    candidates_per_row = [[] for _ in texts] if lengths is not None else None
    for image, row in enumerate(row_of_image.tolist()):
        crops_per_row[row] += crops[image]
        if candidates_per_row is not None:
            candidates_per_row[row].append(int(lengths[image]))
    clip_segments = torch.zeros(len(texts), dtype=torch.long, device=device)
    if clip_questions is not None:  # CDPruner: CLIP text segments embedded for each prompt
        clip_segments.index_add_(0, row_of_image, clip_questions[1].sum(dim=1).to(device))
    return BatchOutput(
        texts=out_texts,
        output_tokens=out_counts,
        input_tokens=prompt.lengths.tolist(),
        visual_tokens=visual_per_row.tolist(),
        images=images_per_row.tolist(),
        crops=crops_per_row,
        question_tokens=text_per_row.tolist(),
        clip_segments=clip_segments.tolist(),
        candidates=candidates_per_row,
        layer_stats=layer_stats,
        timing=timing,
        selections=selections,
    )


def decode(lmm, tokens: torch.Tensor, args: dict[str, Any]) -> tuple[list[str], list[int]]:
    """Text and length of each generated row, cut at the first end-of-sequence or padding id."""
    stops = {args["eos_token_id"], args["pad_token_id"]}
    texts, counts = [], []
    for row in tokens.tolist():
        n = next((i for i, tok in enumerate(row) if tok in stops), len(row))
        counts.append(n)
        texts.append(lmm.tokenizer.decode(row[:n], skip_special_tokens=True))
    return texts, counts


def generate_pruned(lmm, inputs_embeds, prompt, args, counts, visual_keep, clock: TokenClock, timer: MethodTimer | None = None):
    """Generate with the pruning decoder (one image per prompt, ``counts`` [B] its visual tokens); ``clock``
    ticks once per generated token; ``timer`` times the rule's own steps."""
    from ..pruning import pruned_generate

    if args["num_beams"] != 1 or args["do_sample"]:
        raise ValueError(f"{lmm.model_id}: the pruning decoder generates greedily (num_beams=1, temperature=0)")
    image_start = lmm.family.image_starts(prompt)  # [B] first image position per row
    out = pruned_generate(
        lmm.model,
        inputs_embeds,
        prompt.attention_mask,
        image_start,
        lmm.compression,
        args["max_new_tokens"],
        num_visual_tokens=counts,
        visual_keep=visual_keep,
        eos_token_id=args["eos_token_id"],
        clock=clock,
        family=family_of(lmm.geometry),
        method_timer=timer,
    )
    stats = {
        "visual_tokens_per_layer": out.visual_tokens_per_layer.tolist(),
        "equal_tokens": out.equal_tokens.tolist(),
        "cache_lengths": out.cache_lengths.tolist(),
    }
    return out.sequences, stats, out


@dataclass
class BatchOutput:
    """What one batch produced, per row."""

    texts: list[str]
    output_tokens: list[int]
    input_tokens: list[int]  # real LLM input lengths (padding excluded)
    visual_tokens: list[int]  # visual tokens entering the LLM
    images: list[int]
    crops: list[int]  # vision-tower passes (LLaVA-NeXT: base view + tiles of every image)
    question_tokens: list[int]
    clip_segments: list[int]  # CDPruner: 77-token CLIP text segments embedded for the prompt
    candidates: list[list[int]] | None  # DivPrune on LLaVA-NeXT: per row, each image's packed length
    layer_stats: dict[str, list] | None  # SparseVLM per-layer figures
    timing: dict[str, Any]
    selections: list[dict] | None = None  # per row: llava.selection record (log_selection)
