"""Task-side efficiency plumbing and the extra accuracy metrics."""

import datasets
import pytest

from lmms_eval.api.metrics import anls as upstream_anls
from sparsezip_lmms.efficiency import task_hooks as hooks
from sparsezip_lmms.efficiency.records import EfficiencyRecord, clear_records, record_request


def test_request_keys_are_row_indices_of_this_dataset():
    ds = datasets.Dataset.from_dict({"q": ["a", "b", "c"]})
    keyed = hooks.add_request_keys(ds)
    keys = keyed[hooks.UID_COLUMN]
    assert [k.split(":")[-1] for k in keys] == ["0", "1", "2"] and len(set(keys)) == 3
    other = hooks.add_request_keys(datasets.Dataset.from_dict({"q": ["x", "y", "z"]}))
    assert not set(keys) & set(other[hooks.UID_COLUMN])  # another dataset, other keys


def test_records_reach_process_results_by_key():
    clear_records()
    doc = {"question_id": "1", "answer": "yes", hooks.UID_COLUMN: "fp:7"}
    rec = EfficiencyRecord(model="m", config="c", ttft_s=0.5, e2e_s=0.9, visual_tokens=64, visual_tokens_layer_avg=64.0, prefill_flops=2 * 10**12)
    record_request("pope_eff", "test", 7, rec, uid="fp:7")
    scores = hooks.pope_process_results(doc, ["Yes"])
    assert scores["pope_accuracy"]["score"] == 1.0
    assert scores["eff_ttft_s"] == 0.5 and scores["eff_visual_tokens"] == 64.0 and scores["eff_prefill_tflops"] == 2.0
    assert scores["eff_record"]["e2e_s"] == 0.9
    missing = hooks.pope_process_results({**doc, hooks.UID_COLUMN: "fp:8"}, ["no"])
    assert missing["eff_record"] == {"missing": True} and missing["eff_ttft_s"] is None


def test_warmup_requests_leave_timings_but_keep_counts():
    clear_records()
    record_request("t", "s", 0, EfficiencyRecord(model="m", config="c", ttft_s=9.0, visual_tokens_layer_avg=64.0, warmup=True), uid="u:0")
    scores = hooks.pope_process_results({"question_id": "1", "answer": "no", hooks.UID_COLUMN: "u:0"}, ["no"])
    assert scores["eff_ttft_s"] is None and scores["eff_visual_tokens"] == 64.0


def test_aggregations():
    assert hooks.mean_or_none([1.0, None, 3.0]) == 2.0
    assert hooks.mean_or_none([None]) is None
    assert hooks.p50_or_none([3.0, 1.0, 2.0]) == 2.0
    assert hooks.p90_or_none([float(i) for i in range(11)]) == pytest.approx(9.0)
    assert hooks.count_records([{"missing": True}, {"e2e_s": 1}]) == 1


def test_mme_accuracy_and_accuracy_plus():
    results = [
        {"question_id": "a.png", "score": 1.0}, {"question_id": "a.png", "score": 1.0},
        {"question_id": "b.png", "score": 1.0}, {"question_id": "b.png", "score": 0.0},
    ]  # fmt: skip
    assert hooks.mme_aggregate_accuracy(results) == 75.0
    assert hooks.mme_aggregate_accuracy_plus(results) == 50.0


@pytest.mark.parametrize("pred, answers", [("ITC Limited", ["ITC Limited"]), ("itc ltd", ["ITC Limited"]), ("", ["x"]), ("1/8/93", ["1/8/93", "jan 8"])])
def test_docvqa_anls_is_upstreams_and_exact_match(pred, answers):
    scores = hooks.docvqa_process_results({"answers": answers, hooks.UID_COLUMN: "none"}, [pred])
    assert scores["anls"] == upstream_anls(answers, [pred])["anls"]
    assert scores["exact_match"] == float(pred.lower() in [a.lower() for a in answers])


def test_every_process_results_key_is_a_declared_metric():
    from lmms_eval.utils import load_yaml_config

    from sparsezip_lmms.paths import tasks_path

    docs = {
        "pope_eff": {"question_id": "1", "answer": "yes"},
        "mme_eff": {"question_id": "a.png", "answer": "Yes", "category": "OCR"},
        "docvqa_val_eff": {"answers": ["x"], "questionId": "1"},
    }
    for task, doc in docs.items():
        config = load_yaml_config(str(tasks_path() / f"{task}.yaml"))
        declared = {m["metric"] for m in config["metric_list"]}
        keys = set(config["process_results"](doc, ["yes"]))
        assert keys <= declared, (task, keys - declared)
        assert {f"eff_{suffix}" for suffix, _, _ in hooks.SCALAR_METRICS} | {"eff_record"} <= declared


def test_failed_timed_and_unpruned_requests_are_counted():
    clear_records()
    good = EfficiencyRecord(model="m", config="c", ttft_s=0.5, visual_tokens_layer_avg=64.0)
    warm = EfficiencyRecord(model="m", config="c", ttft_s=0.7, warmup=True)
    unpruned = EfficiencyRecord(model="m", config="c", ttft_s=0.6, extra={"unpruned": "0 images in the prompt"})
    failed = EfficiencyRecord.failed("m", "c", "ValueError('doc 3 has no image')")
    for i, rec in enumerate((good, warm, unpruned, failed)):
        record_request("pope_eff", "test", i, rec, uid=f"k:{i}")
    rows = [hooks.pope_process_results({"question_id": str(i), "answer": "no", hooks.UID_COLUMN: f"k:{i}"}, ["no"]) for i in range(4)]
    rows.append(hooks.pope_process_results({"question_id": "9", "answer": "no", hooks.UID_COLUMN: "k:missing"}, ["no"]))
    assert hooks.count_records([r["eff_record"] for r in rows]) == 3  # the failed and the missing one carry no figures
    assert hooks.count_failed([r["eff_failed"] for r in rows]) == 1
    assert hooks.first_error([r["eff_first_error"] for r in rows]) == "ValueError('doc 3 has no image')"
    assert hooks.count_timed([r["eff_timed"] for r in rows]) == 2  # not the warm-up, the failed or the missing
    assert hooks.count_unpruned([r["eff_unpruned"] for r in rows]) == 1
    assert rows[3]["eff_ttft_s"] is None
    assert hooks.first_error([r["eff_first_error"] for r in rows[:3]]) is None
