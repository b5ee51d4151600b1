"""One batch through a Qwen2.5-VL model: images resized as ``qwen_vl_utils`` resizes them, the processor
(left padding), :func:`sparsezip_lmms.qwen.compressed_generate`, decoding, timings and token counts.

    prompts + PIL images -> smart_resize (multiples of 28, min/max pixels) -> processor -> compressed_generate
    (vision tower once, the method, M-RoPE positions of the unpruned prompt, greedy decoding) -> text

``lmm`` is the lmms-eval adapter (``models.qwen.CompressedQwen``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..efficiency.clock import MethodTimer, TokenClock, now
from ..efficiency.qwen_flops import qwen_compression_flops, qwen_kv_cache_bytes, qwen_llm_flops, qwen_vision_flops
from ..efficiency.records import EfficiencyRecord, peak_memory, reset_peak_memory
from ..qwen import compressed_generate
from ..qwen.selection import qwen_selections
from .pipeline import decode

__all__ = [
    "QwenBatch",
    "qwen_batch",
    "qwen_inputs",
    "qwen_record",
    "resize_image",
    "smart_resize",
]

IMAGE_FACTOR = 28  # patch 14 x spatial merge 2 (qwen_vl_utils.vision_process.IMAGE_FACTOR)
MAX_RATIO = 200  # qwen_vl_utils' largest aspect ratio


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = 256 * 28 * 28,
                 max_pixels: int = 1605632) -> tuple[int, int]:  # fmt: skip
    """(height, width) rounded to multiples of ``factor`` with ``min_pixels <= h*w <= max_pixels`` and the
    aspect ratio kept as far as possible: ``qwen_vl_utils.smart_resize``'s rule."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_image(image, min_pixels: int, max_pixels: int):
    """An RGB copy of a PIL image at its ``smart_resize`` size (bicubic, as ``qwen_vl_utils.fetch_image``)."""
    from PIL import Image

    image = image.convert("RGB")
    height, width = smart_resize(image.height, image.width, min_pixels=min_pixels, max_pixels=max_pixels)
    return image.resize((width, height), resample=Image.BICUBIC)


def qwen_inputs(lmm, texts: list[str], images: list) -> dict:
    """The processor's batch (left padding) of chat texts and their already-resized images, on the device."""
    inputs = lmm.processor(
        text=texts,
        images=images or None,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    return {k: v.to(lmm.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


@dataclass
class QwenBatch:
    """What one batch produced, per row."""

    texts: list[str]
    output_tokens: list[int]
    input_tokens: list[int]  # LLM input length of each row, padding excluded (L' before the LLM; in-LLM: L)
    visual_tokens: list[int]  # visual tokens entering the LLM
    layer_avg: list[float]  # mean over LLM layers (in-LLM methods), else visual_tokens
    per_layer: list[list[int]] | None  # in-LLM methods: visual tokens each layer keeps
    images: list[int]
    timing: dict[str, Any]
    grids: list[list[list[int]]]  # per row: [t, h, w] of each of its images
    image_budgets: list[list[list[int]]]  # per row: [merged tokens N, kept] of each of its images
    tokens_per_layer: list[list[int]]  # per row: the tokens each LLM layer processes in the prefill
    selections: list[dict] | None = None  # per row: qwen.selection record (log_selection)


@torch.no_grad()
def qwen_batch(
    lmm, texts: list[str], images: list, gen_kwargs: dict[str, Any], config, fingerprints: list[str] | None = None
) -> QwenBatch:
    """Generate for one batch (``images``: every row's images, resized, in prompt order) under ``config``;
    ``fingerprints`` (one per image, given when the selection is logged): each row's selection record too."""
    device = lmm.device
    reset_peak_memory(device)
    t_start = now(device)
    inputs = qwen_inputs(lmm, texts, images)
    if float(gen_kwargs.get("temperature", 0) or 0) > 0 or int(gen_kwargs.get("num_beams", 1) or 1) != 1:
        raise ValueError(f"{lmm.model_id}: generation is greedy (temperature 0, num_beams 1); got {gen_kwargs}")
    max_new = int(gen_kwargs.get("max_new_tokens", 128))
    clock = TokenClock(device)
    hook = lmm.model.lm_head.register_forward_hook(lambda *_: clock.tick())  # one call per generated token
    try:
        timer = MethodTimer(device)  # the method's own steps (selection, merging; an in-LLM rule's decisions)
        t_generate = clock.start()
        out = compressed_generate(
            lmm.model, inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values"),
            inputs.get("image_grid_thw"), config, max_new, eos_token_id=lmm.eot_token_id, method_timer=timer,
        )  # fmt: skip
    finally:
        hook.remove()
    step_times = clock.step_times
    t_end = now(device)
    merge = lmm.model.config.vision_config.spatial_merge_size
    selections = None
    if fingerprints is not None:  # after the timed span: one host pass over what was kept
        grids_thw = inputs["image_grid_thw"].tolist() if out.image_rows else []
        selections = qwen_selections(config.method, grids_thw, merge, out.image_rows, out.kept, fingerprints,
                                     len(texts), out.pruned)  # fmt: skip
    pad = lmm.tokenizer.pad_token_id if lmm.tokenizer.pad_token_id is not None else lmm.eot_token_id
    out_texts, out_counts = decode(lmm, out.sequences, {"eos_token_id": lmm.eot_token_id, "pad_token_id": pad})
    batch = len(texts)
    n_images = [0] * batch
    kept = [0] * batch
    for image, row in enumerate(out.image_rows):
        n_images[row] += 1
        if out.pruned is None:
            kept[row] += int(out.kept[image].numel())
    if out.pruned is not None:  # in-LLM: every merged token enters the LLM; layers keep fewer
        kept = [int(n) for n in (inputs["input_ids"] == lmm.model.config.image_token_id).sum(dim=1).tolist()]
        per_layer = out.pruned.visual_tokens_per_layer.tolist()
        layer_avg = [float(x) for x in out.pruned.equal_tokens.tolist()]
        # every prompt token enters the LLM (as the LLaVA adapter counts in-LLM methods); the layers keep fewer
        input_tokens = [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
    else:
        per_layer, layer_avg = None, [float(k) for k in kept]
        input_tokens = [int(p.shape[1]) for p in out.position_ids]  # L': the kept prompt tokens
    grids: list[list[list[int]]] = [[] for _ in range(batch)]
    budgets: list[list[list[int]]] = [[] for _ in range(batch)]
    if out.image_rows:
        for image, (grid, row) in enumerate(zip(inputs["image_grid_thw"].tolist(), out.image_rows)):
            grids[row].append(grid)
            n = grid[0] * grid[1] * grid[2] // (merge * merge)
            if out.pruned is None:
                budgets[row].append([n, int(out.kept[image].numel())])
            else:  # in-LLM: what the last pruning layer kept of the image (one image per row)
                last = out.pruned.kept[-1][row] if out.pruned.kept else None
                budgets[row].append([n, n if last is None else int((last >= 0).sum())])
    layers = lmm.model.config.text_config.num_hidden_layers
    if out.pruned is not None:  # each layer's own KV length after the prefill
        tokens_per_layer = [[int(n) for n in row] for row in out.pruned.cache_lengths.tolist()]
    else:
        tokens_per_layer = [[n] * layers for n in input_tokens]
    decode_steps = len(step_times) - 1
    timing = {
        "batch_size": batch,
        "preprocess_s": t_generate - t_start,
        "vision_s": None,  # the vision tower runs inside compressed_generate: counted in ttft_s
        "method_s": timer.seconds,  # inside ttft_s; 0 without a method
        "prefill_s": None,
        "ttft_s": (step_times[0] - t_generate) if step_times else None,  # vision + method + prefill
        "tpot_s": ((step_times[-1] - step_times[0]) / decode_steps) if decode_steps > 0 else None,
        "e2e_s": t_end - t_start,
        "peak_memory_bytes": peak_memory(device),
    }
    return QwenBatch(
        texts=out_texts,
        output_tokens=out_counts,
        input_tokens=input_tokens,
        visual_tokens=kept,
        layer_avg=layer_avg,
        per_layer=per_layer,
        images=n_images,
        timing=timing,
        grids=grids,
        image_budgets=budgets,
        tokens_per_layer=tokens_per_layer,
        selections=selections,
    )


def qwen_record(lmm, out: QwenBatch, row: int, config=None) -> EfficiencyRecord:
    """The efficiency record of row ``row``: tokens, timing, and the analytic FLOPs (vision tower, method,
    LLM prefill) and KV-cache bytes of ``efficiency.qwen_flops``. ``config``: what the row ran (default the
    model's)."""
    dims = lmm._dims
    config = lmm.compression if config is None else config
    vision = qwen_vision_flops(out.grids[row], dims)
    compression = qwen_compression_flops(config, out.grids[row], dims)
    llm = qwen_llm_flops(out.tokens_per_layer[row], dims)
    cache = [n + max(out.output_tokens[row] - 1, 0) for n in out.tokens_per_layer[row]]
    return EfficiencyRecord(
        model=lmm.model_id,
        config=lmm.config_name,
        **out.timing,
        input_tokens=out.input_tokens[row],
        output_tokens=out.output_tokens[row],
        visual_tokens=out.visual_tokens[row],
        visual_tokens_layer_avg=out.layer_avg[row],
        visual_tokens_per_layer=out.per_layer[row] if out.per_layer is not None else None,
        prefill_flops=vision + compression + llm,
        llm_prefill_flops=llm,
        vision_flops=vision,
        compression_flops=compression,
        kv_cache_bytes=qwen_kv_cache_bytes(cache, dims, lmm.model.dtype.itemsize),
        warmup=lmm._requests_seen <= lmm.warmup,
        selection=out.selections[row] if out.selections is not None else None,
        extra={
            "effective_config": lmm._effective_config,
            "images": out.images[row],
            "family": "qwen2_5_vl",
            # the budget as papers state it for Qwen: tokens kept out of each image's N, and as a ratio
            "image_tokens": [n for n, _ in out.image_budgets[row]],
            "image_tokens_kept": [k for _, k in out.image_budgets[row]],
            "image_tokens_kept_ratio": [round(k / n, 6) for n, k in out.image_budgets[row] if n],
        },
    )
