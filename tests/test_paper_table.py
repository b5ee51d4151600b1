"""The paper table: statistics against known values, and the table on results folders whose per-document
values come from the upstream scoring functions themselves (no model run)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from sparsezip_lmms.paper import stats
from sparsezip_lmms.paper.benchmarks import benchmark_of
from sparsezip_lmms.paper.render import csv_text, latex, main as table_main, markdown
from sparsezip_lmms.paper.table import TableError, build

# ----------------------------------------------------------------------------- statistics


def test_mcnemar_exact_on_a_two_by_two_table():
    # discordant pairs b = 1 (only A right), c = 9 (only B right): p = 2 * P(X <= 1 | n=10, 1/2) = 2 * 11 / 1024
    a = [True] * 5 + [True] + [False] * 9 + [False] * 3
    b = [True] * 5 + [False] + [True] * 9 + [False] * 3
    p, discordant_b, discordant_c = stats.mcnemar_exact(a, b)
    assert (discordant_b, discordant_c) == (1, 9)
    assert p == pytest.approx(22 / 1024, rel=1e-12)
    assert stats.mcnemar_from_counts(0, 0) == 1.0
    assert stats.mcnemar_from_counts(5, 5) == 1.0  # capped at 1


def test_clopper_pearson_known_values():
    from math import comb

    low, high = stats.clopper_pearson(7, 10)
    assert (low, high) == pytest.approx((0.3475, 0.9333), abs=5e-5)  # the tabulated interval of 7/10
    # its defining property: P(X >= 7 | low) = P(X <= 7 | high) = 2.5%
    tail = lambda p, ks: sum(comb(10, k) * p**k * (1 - p) ** (10 - k) for k in ks)  # noqa: E731
    assert tail(low, range(7, 11)) == pytest.approx(0.025, abs=1e-9)
    assert tail(high, range(0, 8)) == pytest.approx(0.025, abs=1e-9)
    # k = 0: the upper bound is 1 - 0.025^(1/n)
    assert stats.clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** 0.1), abs=1e-12)
    assert stats.clopper_pearson(10, 10) == pytest.approx((0.025 ** 0.1, 1.0), abs=1e-12)
    with pytest.raises(ValueError, match="k=11"):
        stats.clopper_pearson(11, 10)


def test_holm_adjustment():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_bootstrap_is_replayable_and_covers_the_mean():
    values = [[float(v)] for v in [0.1, 0.4, 0.35, 0.8, 0.6, 0.2, 0.9, 0.5]]
    mean = lambda units: sum(u[0] for u in units) / len(units)  # noqa: E731
    first = stats.bootstrap_interval(values, mean, resamples=500, seed=3)
    assert first == stats.bootstrap_interval(values, mean, resamples=500, seed=3)
    assert first[0] < mean(values) < first[1]
    assert stats.paired_bootstrap_p(values, values, mean, resamples=500) == 1.0
    shifted = [[u[0] + 1.0] for u in values]
    assert stats.paired_bootstrap_p(values, shifted, mean, resamples=500) == pytest.approx(2 / 501)


# ----------------------------------------------------------------------------- results folders


def _pope_docs(n: int) -> list[dict]:
    return [{"question_id": str(i), "answer": "yes" if i % 2 == 0 else "no"} for i in range(n)]


def _mme_docs(n_images: int) -> list[dict]:
    categories = ["color", "count", "OCR", "code_reasoning"]
    docs = []
    for image in range(n_images):
        for answer in ("yes", "no"):
            docs.append({"question_id": f"img{image}.png", "answer": answer, "category": categories[image % 4]})
    return docs


def _gqa_docs(n: int) -> list[dict]:
    return [{"answer": ["red", "cat", "two", "left"][i % 4]} for i in range(n)]


def _score(task: str, docs: list[dict], answers: list[str]) -> tuple[dict, list[dict]]:
    """(results metrics, samples) exactly as the upstream functions score these answers."""
    from lmms_eval.api.registry import METRIC_REGISTRY
    from lmms_eval.tasks.mme import utils as mme
    from lmms_eval.tasks.pope import utils as pope

    samples = []
    for i, (doc, answer) in enumerate(zip(docs, answers)):
        if task == "pope":
            values = pope.pope_process_results(doc, [answer])
        elif task == "mme":
            values = mme.mme_process_results(doc, [answer])
        else:
            values = {"exact_match": METRIC_REGISTRY["exact_match"](references=[doc["answer"]], predictions=[answer],
                                                                     ignore_case=True, ignore_punctuation=True)["exact_match"]}  # fmt: skip
        samples.append({"doc_id": i, "doc_hash": f"h{i}", "filtered_resps": [answer], **values})
    if task == "pope":
        column = [s["pope_f1_score"] for s in samples]
        metrics = {"pope_f1_score,none": pope.pope_aggregate_f1_score(column),
                   "pope_accuracy,none": pope.pope_aggregate_accuracy(column)}  # fmt: skip
    elif task == "mme":
        metrics = {
            f"{key},none": mme.mme_aggregate_results([s[key] for s in samples if key in s])
            for key in ("mme_perception_score", "mme_cognition_score")
        }
    else:
        metrics = {"exact_match,none": sum(s["exact_match"] for s in samples) / len(samples)}
    return metrics, samples


def _answers(task: str, docs: list[dict], accuracy: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for doc in docs:
        right = doc["answer"]
        wrong = {"yes": "no", "no": "yes"}.get(right, "blue")
        out.append(right if rng.random() < accuracy else wrong)
    return out


DOCS = {"pope": _pope_docs(60), "mme": _mme_docs(12), "gqa": _gqa_docs(40)}


def write_run(root: Path, model: str, config: str, accuracy: float, *, checkpoint: str = "ckpt", tasks=("pope", "mme", "gqa"),
              seed: int = 0, failed: int = 0, samples: bool = True, suffix: str = "_eff") -> Path:  # fmt: skip
    """A results folder as lmms-eval writes it, answers drawn at ``accuracy`` and scored upstream."""
    folder = root / f"{model}__{config}__{checkpoint}__{seed}"
    folder.mkdir(parents=True)
    results, configs = {}, {}
    for k, task in enumerate(tasks):
        name = f"{task}{suffix}"
        metrics, rows = _score(task, DOCS[task], _answers(task, DOCS[task], accuracy, seed * 10 + k))
        metrics.update({"eff_failed,none": failed, "eff_visual_tokens,none": 64.0 if config != "keep_all" else 576.0,
                        "eff_ttft_s,none": 0.1, "eff_prefill_tflops,none": 1.0})  # fmt: skip
        results[name] = metrics
        configs[name] = {"task": name, "dataset_path": f"data/{task}", "test_split": "test"}
        if samples:
            (folder / f"20260101_000000_samples_{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = {
        "config": {"model": model, "model_args": f"pretrained={checkpoint},config={config},dtype=float32", "batch_size": 1},
        "results": results, "configs": configs, "versions": {name: 0.0 for name in results},
    }  # fmt: skip
    (folder / "20260101_000000_results.json").write_text(json.dumps(run))
    return folder


def test_benchmark_names_are_matched_through_wrappers():
    assert benchmark_of("pope_eff_mini").name == "pope"
    assert benchmark_of("mmbench_en_dev_eff").name == "mmbench_en_dev"
    assert benchmark_of("docvqa_val").label == "DocVQA"
    assert benchmark_of("my_task") is None


def test_table_retention_average_tests_and_formats(tmp_path):
    write_run(tmp_path, "llava_hf_timed", "keep_all", 0.9, seed=1)
    write_run(tmp_path, "llava_visionzip", "visionzip_64", 0.85, seed=2)
    write_run(tmp_path, "llava_divprune", "divprune_64", 0.3, seed=3, tasks=("pope", "mme"))
    (section,) = build([tmp_path], resamples=300)
    base, *others = section.rows
    assert base.model == "llava_hf_timed" and base.average == pytest.approx(100.0)
    # Avg. over the benchmarks every row has (GQA is missing from DivPrune's row)
    assert section.averaged == ["POPE", "MME"]
    for row in others:
        for benchmark, column in (("POPE", "POPE F1"), ("MME", "MME-P")):
            assert row.retention[benchmark] == pytest.approx(100 * row.scores[column].value / base.scores[column].value)
        assert row.average == pytest.approx((row.retention["POPE"] + row.retention["MME"]) / 2)
        # McNemar on POPE accuracy equals the test on the same 2x2 counts
        right = lambda r: [s["pope_accuracy"]["score"] == 1.0 for s in r.tasks["pope"].samples]  # noqa: E731
        assert row.pvalues["POPE Acc"] == stats.mcnemar_exact(right(row), right(base))[0]
        assert row.tests["POPE Acc"] == "McNemar exact" and row.tests["POPE F1"] == "paired bootstrap"
        assert row.tests["MME-P"] == "paired bootstrap"
        score = row.scores["POPE Acc"]
        assert score.low <= score.value <= score.high
    divprune = next(r for r in others if r.model == "llava_divprune")
    visionzip = next(r for r in others if r.model == "llava_visionzip")
    assert divprune.adjusted["POPE Acc"] < 0.05  # 30% vs 90% on 60 questions: significant after Holm
    assert divprune.agreement["POPE"] < visionzip.agreement["POPE"]
    text = markdown([section])
    assert "Avg. %" in text and "Holm-adjusted" in text and "McNemar" in text
    assert "| Method | POPE agr. % | MME agr. % | GQA agr. % |" in text  # one agreement column per benchmark
    assert "POPE F1: F1 of 'yes'" in text.replace("**", "")
    rows = csv_text([section]).splitlines()
    assert rows[0].startswith("table,setting,model,config")
    assert len(rows) == 1 + 5 + 5 + 4  # baseline and VisionZip: 5 columns; DivPrune: POPE and MME only
    assert r"\begin{tabular}" in latex([section])


def test_not_significant_differences_are_marked(tmp_path):
    write_run(tmp_path, "llava_hf_timed", "keep_all", 0.8, seed=1, tasks=("pope",))
    write_run(tmp_path, "llava_fastv", "fastv_64", 0.8, seed=1, tasks=("pope",))  # the same answers
    (section,) = build([tmp_path], resamples=200)
    fastv = section.rows[1]
    assert fastv.pvalues["POPE Acc"] == 1.0 and fastv.agreement["POPE"] == 100.0
    assert "†" in markdown([section]).split("| fastv_64")[1].splitlines()[0]


def test_settings_are_never_mixed(tmp_path):
    write_run(tmp_path, "llava_hf_timed", "keep_all", 0.9, checkpoint="ckpt_a", tasks=("pope",))
    write_run(tmp_path, "llava_visionzip", "visionzip_64", 0.8, checkpoint="ckpt_a", tasks=("pope",))
    write_run(tmp_path, "llava_hf_timed", "keep_all", 0.7, checkpoint="ckpt_b", tasks=("pope",))
    write_run(tmp_path, "llava_visionzip", "visionzip_64", 0.6, checkpoint="ckpt_b", tasks=("pope",))
    sections = build([tmp_path], resamples=200)
    assert [s.differs for s in sections] == [["checkpoint ckpt_a"], ["checkpoint ckpt_b"]]
    assert "never averaged together" in markdown(sections)


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_baseline", "no baseline row (llava_hf_timed)"),
        ("failed", "1 failed request(s)"),
        ("no_samples", "no samples log"),
        ("wrong_samples", "recomputed from the samples"),
    ],
)
def test_numbers_that_cannot_be_computed_are_errors(tmp_path, capsys, case, message):
    if case != "no_baseline":
        write_run(tmp_path, "llava_hf_timed", "keep_all", 0.9, tasks=("pope",))
    kwargs = {"failed": 1} if case == "failed" else {"samples": False} if case == "no_samples" else {}
    folder = write_run(tmp_path, "llava_visionzip", "visionzip_64", 0.7, tasks=("pope",), seed=4, **kwargs)
    if case == "wrong_samples":  # samples of another run beside these results
        other = write_run(tmp_path / "other", "llava_visionzip", "visionzip_64", 0.2, tasks=("pope",), seed=9)
        (folder / "20260101_000000_samples_pope_eff.jsonl").write_text((other / "20260101_000000_samples_pope_eff.jsonl").read_text())
        for f in other.iterdir():
            f.unlink()
        other.rmdir()
        (tmp_path / "other").rmdir()
    with pytest.raises(TableError, match=re.escape(message)):
        build([tmp_path], resamples=200)
    out = tmp_path.parent / f"{tmp_path.name}_table"
    assert table_main([str(tmp_path), "--out", str(out), "--resamples", "200"]) == 2
    assert message.split(" (")[0] in capsys.readouterr().err
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("task, label", [("pope", "POPE F1"), ("pope", "POPE Acc"), ("mme", "MME-P"), ("mme", "MME-C"), ("gqa", "GQA")])
def test_vectorised_bootstrap_equals_the_upstream_aggregation_loop(task, label):
    """The draw-count statistics give exactly the intervals and p-values of re-running the upstream
    aggregation on every resample (the same draws)."""
    from sparsezip_lmms.paper.scores import _statistic, _units, _weighted

    column = next(c for c in benchmark_of(task).columns if c.label == label)
    samples = [_score(task, DOCS[task], _answers(task, DOCS[task], acc, seed))[1] for acc, seed in ((0.7, 1), (0.5, 2))]
    units = [_units(column, [s for s in rows if column.metric in s]) for rows in samples]
    statistic = _statistic(column)
    loop = stats.bootstrap_interval(units[0], statistic, resamples=200, seed=5)
    fast = stats.bootstrap_interval(units[0], statistic, resamples=200, seed=5, weighted=_weighted(column, units[0]))
    assert fast == pytest.approx(loop, abs=1e-9)
    if column.unit_of is None:  # documents pair one to one
        p_loop = stats.paired_bootstrap_p(units[0], units[1], statistic, resamples=200, seed=5)
        both = (_weighted(column, units[0]), _weighted(column, units[1]))
        assert stats.paired_bootstrap_p(units[0], units[1], statistic, resamples=200, seed=5, weighted=both) == p_loop
