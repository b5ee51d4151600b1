"""Task-side functions of the ``*_eff`` tasks: upstream scoring plus per-request efficiency.

``process_docs`` gives every document a key (``_sz_uid``: the dataset's fingerprint and the row
index). The model reads that key from the document it generates for and files its efficiency
record under it; ``process_results`` reads the record back by the same key. Both run in the process
that handled the document, also under data-parallel ``accelerate launch`` where every rank scores
its own documents. Task YAMLs reference these functions by import path (``!function
sparsezip_lmms.efficiency.task_hooks.pope_process_results``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from lmms_eval.api.metrics import anls as upstream_anls
from lmms_eval.tasks.mme import utils as mme_utils
from lmms_eval.tasks.pope import utils as pope_utils

from .records import get_record_by_uid

UID_COLUMN = "_sz_uid"

# Scalar metrics added to every *_eff task: (metric suffix, record field, statistic).
# Timing statistics leave out warm-up and failed requests.
SCALAR_METRICS = (
    ("ttft_s", "ttft_s", "mean"),
    ("ttft_s_p50", "ttft_s", "p50"),
    ("ttft_s_p90", "ttft_s", "p90"),
    ("e2e_s", "e2e_s", "mean"),
    ("e2e_s_p50", "e2e_s", "p50"),
    ("e2e_s_p90", "e2e_s", "p90"),
    ("tpot_s", "tpot_s", "mean"),
    ("vision_s", "vision_s", "mean"),
    ("method_s", "method_s", "mean"),
    ("prefill_s", "prefill_s", "mean"),
    ("visual_tokens", "visual_tokens_layer_avg", "mean"),
    ("input_tokens", "input_tokens", "mean"),
    ("prefill_tflops", "prefill_tflops", "mean"),
    ("kv_cache_mb", "kv_cache_mb", "mean"),
    ("peak_memory_mb", "peak_memory_mb", "mean"),
)
TIMING_FIELDS = {"ttft_s", "e2e_s", "vision_s", "method_s", "prefill_s", "tpot_s", "peak_memory_mb"}


def add_request_keys(dataset):
    """process_docs: add the per-document key the model and process_results share."""
    fingerprint = getattr(dataset, "_fingerprint", None) or "docs"
    keys = [f"{fingerprint}:{i}" for i in range(len(dataset))]
    if UID_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(UID_COLUMN)
    return dataset.add_column(UID_COLUMN, keys)


def efficiency_of(doc: dict) -> dict[str, Any]:
    """The efficiency figures recorded for ``doc`` (``{"missing": True}`` when there are none, e.g.
    when the model is not one of this package's)."""
    record = get_record_by_uid(doc.get(UID_COLUMN))
    if record is None:
        return {"missing": True}
    return record.summary()


def _usable(figures: dict[str, Any], field: str) -> bool:
    if figures.get("missing") or figures.get("error"):
        return False
    return not (field in TIMING_FIELDS and figures.get("warmup"))


# the record fields the bookkeeping metrics read (each logged sample carries the whole record once)
_BOOKKEEPING_FIELDS = ("missing", "error", "warmup", "ttft_s", "unpruned")


def doc_fields(doc: dict) -> dict[str, Any]:
    """The document's text and number fields (its question, category, ids; not its image), logged as
    ``eff_doc``: lmms-eval leaves the document out of the samples file it writes."""
    out = {}
    for key, value in doc.items():
        if key == UID_COLUMN:
            continue
        if isinstance(value, (str, int, float, bool)) or (
            isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)
        ):
            out[key] = value
    return out


def selection_of(doc: dict) -> dict[str, Any] | None:
    """What the model kept for ``doc`` (``EfficiencyRecord.selection``); None when not logged."""
    record = get_record_by_uid(doc.get(UID_COLUMN))
    return None if record is None else record.selection


def _with_efficiency(scores: dict[str, Any], doc: dict) -> dict[str, Any]:
    """Upstream scores + the request's whole record (``eff_record``) + what it kept (``eff_selection``)
    + the document's fields (``eff_doc``) + one scalar per summary metric (None where the figure is
    unusable: warm-up, failed request, not measured on this device) + the failure bookkeeping
    (``eff_failed``, ``eff_first_error``, ``eff_timed``, ``eff_unpruned``: the few fields they count)."""
    figures = efficiency_of(doc)
    bookkeeping = {key: figures[key] for key in _BOOKKEEPING_FIELDS if key in figures}
    scores = dict(scores)
    scores["eff_record"] = figures
    scores["eff_selection"] = selection_of(doc)
    scores["eff_doc"] = doc_fields(doc)
    scores["eff_failed"] = bookkeeping
    scores["eff_first_error"] = bookkeeping
    scores["eff_timed"] = bookkeeping
    scores["eff_unpruned"] = bookkeeping
    for suffix, field, _ in SCALAR_METRICS:
        value = figures.get(field) if _usable(figures, field) else None
        scores[f"eff_{suffix}"] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return scores


# ----------------------------------------------------------------------------- aggregation


def _present(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mean_or_none(values: list[Any]) -> float | None:
    present = _present(values)
    return sum(present) / len(present) if present else None


def p50_or_none(values: list[Any]) -> float | None:
    present = _present(values)
    return _percentile(present, 0.5) if present else None


def p90_or_none(values: list[Any]) -> float | None:
    present = _present(values)
    return _percentile(present, 0.9) if present else None


def count_records(records: list[dict]) -> int:
    """eff_record aggregates to the number of requests that carry efficiency figures (failed ones do not)."""
    return sum(1 for r in records if not r.get("missing") and not r.get("error"))


def count_failed(records: list[dict]) -> int:
    """eff_failed: requests the model answered with an error (empty answer) instead of a generation."""
    return sum(1 for r in records if r.get("error"))


def first_error(records: list[dict]) -> str | None:
    """eff_first_error: the first failed request's error (None when every request succeeded)."""
    return next((str(r["error"]) for r in records if r.get("error")), None)


def count_timed(records: list[dict]) -> int:
    """eff_timed: requests behind the timing figures (neither warm-up nor failed)."""
    return sum(1 for r in records if _usable(r, "ttft_s") and r.get("ttft_s") is not None)


def count_selections(selections: list[dict | None]) -> int:
    """eff_selection: requests whose log carries what the model kept (model argument ``log_selection``)."""
    return sum(1 for s in selections if s)


def count_docs(docs: list[dict]) -> int:
    """eff_doc: documents scored (each sample's log carries its document's fields)."""
    return len(docs)


def count_unpruned(records: list[dict]) -> int:
    """eff_unpruned: prompts an in-LLM pruning method could not prune (no image or several), run unpruned."""
    return sum(1 for r in records if r.get("unpruned"))


# ----------------------------------------------------------------------------- POPE


def pope_process_results(doc, results):
    return _with_efficiency(pope_utils.pope_process_results(doc, results), doc)


# ----------------------------------------------------------------------------- MME


def mme_process_results(doc, results):
    scores = mme_utils.mme_process_results(doc, results)
    (entry,) = scores.values()
    scores["mme_accuracy"] = entry
    scores["mme_accuracy_plus"] = entry
    return _with_efficiency(scores, doc)


def mme_aggregate_accuracy(results):
    """Per-question accuracy over all MME questions, in percent."""
    return 100.0 * sum(r["score"] for r in results) / len(results)


def mme_aggregate_accuracy_plus(results):
    """Share of images whose two questions are both right (MME's acc+), in percent."""
    pairs: dict[str, list[float]] = {}
    for r in results:
        pairs.setdefault(r["question_id"], []).append(r["score"])
    return 100.0 * sum(1 for scores in pairs.values() if all(s == 1.0 for s in scores)) / len(pairs)


# ----------------------------------------------------------------------------- DocVQA


def _normalise_answer(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"[^\w\s]", "", text)
    return " ".join(text.split())


def docvqa_process_results(doc, results):
    prediction = results[0] if results else ""
    answers = list(doc["answers"])
    exact = float(any(_normalise_answer(prediction) == _normalise_answer(a) for a in answers))
    anls = upstream_anls(answers, [prediction])["anls"]  # exactly the upstream registered metric
    return _with_efficiency({"anls": anls, "exact_match": exact}, doc)
