"""Run-time side of the ``TASK_eff`` wrapper tasks that ``python -m sparsezip_lmms eff-tasks`` writes.

A wrapper task is the upstream task with two hooks replaced:

* ``process_docs``: the upstream ``process_docs`` (when the task has one), then the per-document key the
  model files its efficiency record under (:func:`task_hooks.add_request_keys`);
* ``process_results``: the upstream scores, unchanged, plus the ``eff_*`` metrics of the request. The
  upstream scores come from the task's own ``process_results`` where it has one; a task scored by
  lmms-eval's registered metrics alone (``metric_list`` without ``process_results``, e.g. GQA's
  ``exact_match`` or DocVQA's ``anls``) is scored by the harness's own rule for ``generate_until``:
  the same registered functions on the same targets, with the same keyword arguments.

Aggregations are the upstream ones: the wrapper's ``metric_list`` is upstream's plus :data:`EFF_METRICS`.
The generated hooks module of a wrapper calls :func:`wrapped_process_docs` / :func:`wrapped_process_results`
with the upstream functions it found (:func:`upstream_function`).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any, Callable

from .task_hooks import _with_efficiency, add_request_keys

_HOOKS = "sparsezip_lmms.efficiency.task_hooks"

# the eff_* metrics every wrapper adds: (metric, aggregation function in task_hooks, higher is better)
EFF_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("eff_record", "count_records", True),
    ("eff_failed", "count_failed", False),
    ("eff_first_error", "first_error", False),
    ("eff_timed", "count_timed", True),
    ("eff_unpruned", "count_unpruned", False),
    ("eff_selection", "count_selections", True),
    ("eff_doc", "count_docs", True),
    ("eff_ttft_s", "mean_or_none", False),
    ("eff_ttft_s_p50", "p50_or_none", False),
    ("eff_ttft_s_p90", "p90_or_none", False),
    ("eff_e2e_s", "mean_or_none", False),
    ("eff_e2e_s_p50", "p50_or_none", False),
    ("eff_e2e_s_p90", "p90_or_none", False),
    ("eff_tpot_s", "mean_or_none", False),
    ("eff_vision_s", "mean_or_none", False),
    ("eff_method_s", "mean_or_none", False),
    ("eff_prefill_s", "mean_or_none", False),
    ("eff_visual_tokens", "mean_or_none", False),
    ("eff_input_tokens", "mean_or_none", False),
    ("eff_prefill_tflops", "mean_or_none", False),
    ("eff_kv_cache_mb", "mean_or_none", False),
    ("eff_peak_memory_mb", "mean_or_none", False),
)


def eff_metric_list() -> list[dict[str, Any]]:
    """The ``metric_list`` entries of the ``eff_*`` metrics (aggregations named by import path)."""
    return [
        {"metric": name, "aggregation": f"{_HOOKS}.{function}", "higher_is_better": better}
        for name, function, better in EFF_METRICS
    ]


def upstream_function(module: str, name: str, loaded: dict[str, Any] | None = None) -> Callable:
    """A task's function from a fresh copy of its module, as lmms-eval loads each ``!function`` reference (so
    module-level state, such as OCRBench's running tally, starts anew with every task load, as upstream's).

    ``module``: an importable dotted name (found where Python would import it from) or the path of a ``.py``
    file (a task in an ``--include_path`` folder). ``loaded``: modules already loaded for this wrapper, by
    ``module`` (one fresh copy per hooks-module load, shared by its functions)."""
    if loaded is not None and module in loaded:
        return getattr(loaded[module], name)
    if module.endswith(".py"):
        path, spec_name = Path(module), Path(module).stem
    else:
        found = importlib.util.find_spec(module)
        if found is None or not found.origin:
            raise ImportError(f"no module {module}")
        path, spec_name = Path(found.origin), module
    spec = importlib.util.spec_from_file_location(spec_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    if loaded is not None:
        loaded[module] = fresh
    return getattr(fresh, name)


def wrapped_process_docs(upstream: Callable | None = None) -> Callable:
    """process_docs of a wrapper: upstream's (if any), then the per-document efficiency key."""

    def process_docs(dataset):
        return add_request_keys(upstream(dataset) if upstream is not None else dataset)

    return process_docs


def wrapped_process_results(
    upstream: Callable | None = None,
    *,
    registered: list[tuple[str, dict[str, Any]]] | None = None,
    target: Any = None,
) -> Callable:
    """process_results of a wrapper: upstream's scores plus the request's ``eff_*`` metrics.

    ``upstream``: the task's own ``process_results``. Without one, ``registered`` lists the task's
    ``metric_list`` entries as (metric name, keyword arguments), scored with lmms-eval's registered
    functions against ``target`` (the task's ``doc_to_target``: a field name, a template, an int, a list or
    a function), as the harness scores ``generate_until`` tasks.
    """
    if upstream is not None:

        def process_results(doc, results, **kwargs):
            return _with_efficiency(upstream(doc, results, **kwargs), doc)

        return process_results
    if not registered:
        raise ValueError("a wrapper needs the task's process_results or its registered metrics")
    from lmms_eval.api.registry import METRIC_REGISTRY

    missing = [name for name, _ in registered if name not in METRIC_REGISTRY]
    if missing:
        raise ValueError(f"metrics {missing} are not registered in lmms-eval")
    metrics = [(name, METRIC_REGISTRY[name], kwargs) for name, kwargs in registered]

    def process_results(doc, results, **kwargs):
        return _with_efficiency(registered_scores(doc, results, metrics, target), doc)

    return process_results


def document_target(doc: dict, target: Any) -> Any:
    """``doc_to_target`` of a task as the harness reads it for one document."""
    if isinstance(target, (int, list)):
        return target
    if callable(target):
        return target(doc)
    if isinstance(target, str):
        if target in doc:
            return doc[target]
        from lmms_eval import utils

        text = utils.apply_template(target, doc)
        if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
            try:
                return ast.literal_eval(text)
            except (SyntaxError, ValueError):
                return text
        return text
    raise ValueError(f"doc_to_target of type {type(target).__name__} cannot be read")


def _score(fn: Callable, metric: str, references: list, predictions: list, kwargs: dict, pair_gold: Any) -> Any:
    try:
        value = fn(references=references, predictions=predictions, **kwargs)
    except TypeError:  # lmms-eval's own metrics take one positional pair (gold, predictions)
        value = fn([pair_gold, predictions])
    return value[metric] if isinstance(value, dict) else value


def registered_scores(doc: dict, results: list, metrics: list[tuple[str, Callable, dict]], target: Any) -> dict[str, Any]:
    """Per-document scores of registered metrics, by the harness's ``generate_until`` rule: a list target
    is several acceptable answers (any one right scores 1; ``anls`` takes them all at once)."""
    gold = document_target(doc, target)
    result = [res.strip() if res is not None else "" for res in results]
    scores = {}
    for metric, fn, kwargs in metrics:
        if isinstance(gold, list) and metric != "anls":
            values = [_score(fn, metric, [option], result, kwargs, option) for option in gold]
            scores[metric] = 1.0 if any(values) else 0.0
        else:
            references = gold if isinstance(gold, list) else [gold]
            scores[metric] = _score(fn, metric, references, result, kwargs, references)
    return scores
