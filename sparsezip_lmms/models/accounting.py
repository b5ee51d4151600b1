"""The efficiency record of one request from its batch's output: tokens, FLOPs, KV cache, timings."""

from __future__ import annotations

from ..efficiency.flops import compression_flops, kv_cache_bytes, llm_prefill_flops, vision_flops
from ..efficiency.records import EfficiencyRecord
from ..compress import selects_after_projector
from ..llava.features import uses_stock_features
from .pipeline import BatchOutput

__all__ = ["request_record"]


def request_record(lmm, out: BatchOutput, row: int) -> EfficiencyRecord:
    """The record of row ``row`` of a batch ``lmm`` (the adapter) generated."""
    dims = lmm._dims
    n_in, n_out, n_visual = out.input_tokens[row], out.output_tokens[row], out.visual_tokens[row]
    layers = dims.llm_layers
    if out.layer_stats is not None:
        per_layer_visual = out.layer_stats["visual_tokens_per_layer"][row]
        # tokens each layer processes in the prefill: its own KV length after the prefill
        tokens_per_layer = out.layer_stats["cache_lengths"][row]
        layer_avg = float(out.layer_stats["equal_tokens"][row])
    else:
        per_layer_visual, tokens_per_layer, layer_avg = None, [n_in] * layers, float(n_visual)
    stock = uses_stock_features(lmm.compression)  # LLaVA's own feature path
    vision_dims = lmm._stock_vision_dims if stock else dims
    # CLIP on every crop (one per LLaVA-1.5 image; NeXT: base view + tiles), the projector on what it reads
    # (DivPrune and CDPruner choose among the projector outputs of every patch)
    projected = out.crops[row] * lmm.geometry.patches if (stock or selects_after_projector(lmm.compression)) else n_visual
    vision = vision_flops(out.crops[row], projected, vision_dims)
    clip_text = out.clip_segments[row] * lmm._clip_text.segment_flops() if lmm._clip_text is not None else 0
    candidates = out.candidates[row] if out.candidates is not None else None
    compression = compression_flops(
        lmm.compression, out.crops[row], dims, out.question_tokens[row], clip_text, candidates=candidates
    )
    llm = llm_prefill_flops(tokens_per_layer, dims)
    cache = [n + max(n_out - 1, 0) for n in tokens_per_layer]
    return EfficiencyRecord(
        model=lmm.model_id,
        config=lmm.config_name,
        **out.timing,
        input_tokens=n_in,
        output_tokens=n_out,
        visual_tokens=n_visual,
        visual_tokens_layer_avg=layer_avg,
        visual_tokens_per_layer=per_layer_visual,
        prefill_flops=vision + compression + llm,
        llm_prefill_flops=llm,
        vision_flops=vision,
        compression_flops=compression,
        kv_cache_bytes=kv_cache_bytes(cache, dims, lmm.model.dtype.itemsize),
        warmup=lmm._requests_seen <= lmm.warmup,
        extra={"effective_config": lmm._effective_config},
        selection=out.selections[row] if out.selections is not None else None,
    )

