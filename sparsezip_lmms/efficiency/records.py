"""Per-request efficiency records, kept by (task, split, doc_id) for the task's process_results.

lmms-eval hands ``process_results(doc, results)`` only the document and the generated text, so the
model files each request's figures under a key both sides can compute. Records stay in the
process that generated them; under data parallelism every rank scores its own documents, so the
figures follow their documents to the rank that reports them.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

_RECORDS: dict[tuple[str, str, int], "EfficiencyRecord"] = {}
_BY_UID: dict[str, "EfficiencyRecord"] = {}


@dataclass
class EfficiencyRecord:
    """Figures for one request. Times in seconds; ``None`` where a figure is not measurable here.

    Under batching the timing fields are those of the request's batch (every request of a batch
    waits for the whole batch); ``batch_size`` says how many requests shared it.
    """

    model: str
    config: str
    batch_size: int = 1
    preprocess_s: float | None = None  # processor: image resize/normalise + tokenisation
    vision_s: float | None = None  # CLIP + scoring + compression + projector
    method_s: float | None = None  # the method's own steps (scoring, selection, merging), inside vision_s or prefill_s
    prefill_s: float | None = None  # LLM prefill up to the first generated token
    ttft_s: float | None = None  # time to first token: vision + prefill
    tpot_s: float | None = None  # time per output token after the first
    e2e_s: float | None = None  # whole request, preprocessing included
    peak_memory_bytes: int | None = None  # CUDA: max allocated during the batch; CPU: None
    input_tokens: int | None = None  # real LLM input length (compressed), padding excluded
    output_tokens: int | None = None
    visual_tokens: int | None = None  # visual tokens entering the LLM
    visual_tokens_layer_avg: float | None = None  # mean over LLM layers (differs for SparseVLM)
    visual_tokens_per_layer: list[int] | None = None  # SparseVLM: visual tokens each layer keeps
    prefill_flops: int | None = None  # analytic: vision + compression + LLM prefill (see flops.py)
    llm_prefill_flops: int | None = None
    vision_flops: int | None = None  # CLIP layers run + projector
    compression_flops: int | None = None
    kv_cache_bytes: int | None = None  # keys + values held after generation
    warmup: bool = False  # excluded from timing aggregates
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None  # what the model kept (llava.selection), logged as eff_selection

    @classmethod
    def failed(cls, model: str, config: str, error: str) -> "EfficiencyRecord":
        return cls(model=model, config=config, error=error)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The record in reporting units (TFLOPs, MiB) for results files and log rows."""
        out = self.to_dict()
        out.pop("extra")
        out.pop("selection")
        out["prefill_tflops"] = None if self.prefill_flops is None else self.prefill_flops / 1e12
        out["kv_cache_mb"] = None if self.kv_cache_bytes is None else self.kv_cache_bytes / 2**20
        out["peak_memory_mb"] = None if self.peak_memory_bytes is None else self.peak_memory_bytes / 2**20
        out.update(self.extra)
        return out


def record_request(task: str, split: str, doc_id: int, record: EfficiencyRecord, uid: str | None = None) -> None:
    """File ``record`` under the request's (task, split, doc_id) and, when the document has one, its key."""
    _RECORDS[(task, split, int(doc_id))] = record
    if uid is not None:
        _BY_UID[uid] = record


def get_record(task: str, split: str, doc_id: int) -> EfficiencyRecord | None:
    return _RECORDS.get((task, split, int(doc_id)))


def get_record_by_uid(uid: str | None) -> EfficiencyRecord | None:
    return None if uid is None else _BY_UID.get(uid)


def clear_records() -> None:
    _RECORDS.clear()
    _BY_UID.clear()


def reset_peak_memory(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> int | None:
    """Peak device memory allocated since the last reset (CUDA); ``None`` on devices without a counter."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def process_peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started (a lifetime figure, not per request)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
