"""The benchmarks of the paper table: each one's columns in its canonical metric and scale, and how a
column's score is recomputed from the per-document values of a ``--log_samples`` run.

A column is one of three kinds:

* ``binary``: every document is right or wrong (``correct(value)``); the score is the share right
  (× ``scale``; OCRBench: the count right out of its 1,000 questions). Interval: exact binomial
  (Clopper–Pearson). Paired test: McNemar's exact test.
* ``mean``: the mean of a per-document number in [0, 1] (VQA accuracy, ANLS). Interval: bootstrap over
  documents. Paired test: paired bootstrap.
* ``aggregate``: a score that is not a mean over documents (POPE F1, MME's per-category acc + acc+ sums),
  recomputed by ``aggregate`` on the per-document values. Interval: bootstrap over units (documents; MME:
  the two questions of an image together). Paired test: paired bootstrap.

Every recomputed full-sample score is checked equal to the results file's number before it is used.
A task outside this list gets one ``mean`` column per numeric per-document metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

BINARY, MEAN, AGGREGATE = "binary", "mean", "aggregate"


@dataclass(frozen=True)
class Column:
    label: str  # "POPE F1"
    metric: str  # the per-document key in the samples and the results key
    kind: str  # BINARY, MEAN or AGGREGATE
    scale: float = 100.0  # shown = results value × scale
    convention: str = ""  # how the number is defined, for the notes under the table
    main: bool = False  # the column retention and "Avg." use
    correct: Callable[[Any], bool] | None = None  # BINARY: per-document correctness
    value: Callable[[Any], float] | None = None  # MEAN: per-document number (default: the value itself)
    aggregate: Callable[[list], float] | None = None  # AGGREGATE: results value from per-document values
    unit_of: Callable[[Any], Any] | None = None  # AGGREGATE: resampling unit key (default: the document)
    relabel: Callable[[Any, int], Any] | None = None  # AGGREGATE: a value made distinct in its resampled unit
    denominator: int | None = None  # BINARY: count right / denominator (default: the documents scored)
    # AGGREGATE: units -> the same score from draw counts W [R, U] -> [R] (vectorised bootstrap), or None
    weighted: Callable[[list[list[Any]]], Callable[[np.ndarray], np.ndarray]] | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str  # upstream task name
    label: str  # column heading
    columns: tuple[Column, ...]


def _score_is_one(value: Any) -> bool:
    return float(value["score"]) == 1.0


def _pope(name: str):
    from lmms_eval.tasks.pope import utils

    return getattr(utils, name)


def _pope_f1_weighted(units: list[list[dict]]):
    """POPE F1 as upstream computes it (precision, recall and F1 each 0 when undefined; an answer other than
    yes/no is neither a positive nor a negative) from per-document (tp, fp, fn) indicators."""
    rows = [(v["ground_truth"], v["prediction"]) for (v,) in units]
    counts = np.array([(gt == "yes" and p == "yes", gt == "no" and p == "yes", gt == "yes" and p == "no") for gt, p in rows], dtype=np.float64)

    def f1(w: np.ndarray) -> np.ndarray:
        tp, fp, fn = (w @ counts).T  # [R] each
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
        total = precision + recall
        return np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)

    return f1


def _mme_weighted(units: list[list[dict]]):
    """MME's sum over categories of the mean per-image acc + acc+ (each image: its two questions), from
    draw counts; a category no drawn image has adds nothing (as upstream, which only sees categories present)."""
    categories = sorted({u[0]["category"] for u in units})
    per_image = np.array([100.0 * sum(v["score"] for v in u) / len(u) + 100.0 * (sum(v["score"] for v in u) == 2) for u in units])
    member = np.array([[u[0]["category"] == c for c in categories] for u in units], dtype=np.float64)  # [U, K]

    def total(w: np.ndarray) -> np.ndarray:
        sums, counts = w @ (member * per_image[:, None]), w @ member  # [R, K]
        return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0).sum(axis=1)

    return total


def _mme_aggregate(values: list) -> float:
    from lmms_eval.tasks.mme.utils import mme_aggregate_results

    return mme_aggregate_results(values)


def _mme_relabel(value: dict, unit: int) -> dict:
    return {**value, "question_id": f"{unit}:{value['question_id']}"}


def _seed_correct(value: dict) -> bool:
    return value["pred"].lower().strip() == value["answer"].lower().strip()


def _mmmu_correct(value: dict) -> bool:
    from lmms_eval.tasks.mmmu.utils import evaluate_mmmu

    judged, _ = evaluate_mmmu([value])
    return judged[value["id"]] == "Correct"


def _flag(value: Any) -> bool:
    return float(value) == 1.0


def _exact(label: str, metric: str = "exact_match", convention: str = "exact match, %") -> Column:
    return Column(label, metric, BINARY, convention=convention, main=True, correct=_flag)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gqa", "GQA", (_exact("GQA", convention="exact match (case and punctuation ignored), %"),)),
        Benchmark("mmbench_en_dev", "MMB", (
            Column("MMB", "gpt_eval_score", AGGREGATE, scale=1.0, main=True,
                   convention="MMBench-EN dev, circular evaluation as upstream scores it (answers GPT-matched "
                   "where no option letter is found), %; no interval: the upstream scorer cannot be rerun offline"),
        )),  # fmt: skip
        Benchmark("mmbench_en_dev_static", "MMB-static", (
            Column("MMB-static", "gpt_eval_score", AGGREGATE, scale=1.0, main=True,
                   convention="MMBench-EN dev, circular evaluation with upstream's offline (regex/substring) answer "
                   "matching, %; not comparable with the GPT-matched MMB; no interval: the circular scorer is not "
                   "rerun per resample"),
        )),  # fmt: skip
        Benchmark("mme", "MME", (
            Column("MME-P", "mme_perception_score", AGGREGATE, scale=1.0, main=True,
                   convention="perception: sum over 10 categories of acc + acc+ (max 2000)",
                   aggregate=_mme_aggregate, unit_of=lambda v: v["question_id"], relabel=_mme_relabel,
                   weighted=_mme_weighted),
            Column("MME-C", "mme_cognition_score", AGGREGATE, scale=1.0,
                   convention="cognition: sum over 4 categories of acc + acc+ (max 800)",
                   aggregate=_mme_aggregate, unit_of=lambda v: v["question_id"], relabel=_mme_relabel,
                   weighted=_mme_weighted),
        )),  # fmt: skip
        Benchmark("pope", "POPE", (
            Column("POPE F1", "pope_f1_score", AGGREGATE, main=True, convention="F1 of 'yes' over the three splits, %",
                   aggregate=lambda values: _pope("pope_aggregate_f1_score")(values), weighted=_pope_f1_weighted),
            Column("POPE Acc", "pope_accuracy", BINARY, convention="accuracy, %", correct=_score_is_one),
        )),  # fmt: skip
        Benchmark("scienceqa_img", "SQA-IMG", (_exact("SQA-IMG", convention="option letter exact match, %"),)),
        Benchmark("vqav2_val", "VQAv2", (
            Column("VQAv2", "exact_match", MEAN, main=True, convention="VQA accuracy (min(#humans/3, 1)), %"),
        )),
        Benchmark("textvqa_val", "TextVQA", (
            Column("TextVQA", "exact_match", MEAN, main=True, convention="VQA accuracy (min(#humans/3, 1)), %"),
        )),
        Benchmark("mmmu_val", "MMMU", (
            Column("MMMU", "mmmu_acc", BINARY, main=True, convention="validation accuracy (upstream parsing), %",
                   correct=_mmmu_correct),
        )),  # fmt: skip
        Benchmark("seedbench", "SEED", (
            Column("SEED", "seed_all", BINARY, main=True, convention="SEED-Bench accuracy over all questions, %",
                   correct=_seed_correct),
            Column("SEED-I", "seed_image", BINARY, convention="image questions only, %", correct=_seed_correct),
        )),  # fmt: skip
        Benchmark("ocrbench", "OCRBench", (
            Column("OCRBench", "ocrbench_accuracy", BINARY, scale=1000.0, main=True, denominator=1000,
                   convention="questions right out of its 1,000 (upstream: count / 1000, shown × 1000)",
                   correct=_score_is_one),
        )),  # fmt: skip
        Benchmark("docvqa_val", "DocVQA", (Column("DocVQA", "anls", MEAN, main=True, convention="ANLS, %"),)),
        Benchmark("chartqa", "ChartQA", (
            Column("ChartQA", "relaxed_overall", BINARY, main=True, convention="relaxed accuracy (5% numeric tolerance), %",
                   correct=_flag),
        )),  # fmt: skip
    )
}


def benchmark_of(task: str) -> Benchmark | None:
    """The benchmark a task name runs: the upstream name itself or a wrapper/copy of it
    (``pope_eff``, ``gqa_eff_mini``); the longest matching name wins (``mmbench_en_dev`` over a shorter one)."""
    names = sorted(BENCHMARKS, key=len, reverse=True)
    return next((BENCHMARKS[n] for n in names if task == n or task.startswith(n + "_")), None)


def generic_benchmark(task: str, metrics: dict[str, Any]) -> Benchmark:
    """A task outside the standard set: one MEAN column per numeric, non-efficiency metric."""
    names = [
        key.split(",")[0] for key, value in metrics.items()
        if not key.split(",")[0].startswith("eff_") and "stderr" not in key and key != "alias"
        and isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ]  # fmt: skip
    columns = tuple(
        Column(f"{task} {name}", name, MEAN, scale=1.0, main=(i == 0), convention="as the task reports it")
        for i, name in enumerate(dict.fromkeys(names))
    )
    return Benchmark(task, task, columns)
