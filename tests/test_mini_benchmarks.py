"""The mini benchmark datasets (sparsezip_lmms/demo/mini_benchmarks.py, and DocVQA's) through lmms-eval.

Every mini dataset is loaded twice through lmms-eval's own ``TaskManager``: by the upstream task (a local
YAML that includes lmms-eval's task YAML by absolute path and reads the mini dataset from disk) and by the
shipped ``*_eff`` wrapper (``write_local_tasks``). Both are fed the same answers (right, wrong, differently
cased or punctuated, empty) through ``process_results`` and aggregated by lmms-eval's ``TaskOutput`` (the
evaluator's own code path, ``args`` included): every upstream metric must come out identical, and the
wrapper's per-document output must carry the ``eff_*`` metrics. No network access may happen (MMBench's
aggregation asks the OpenAI API for answers it cannot read as an option).
"""

from __future__ import annotations

import ast
import random
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

# upstream task -> its YAML under lmms_eval/tasks
UPSTREAM_YAML = {
    "gqa": "gqa/gqa.yaml",
    "scienceqa_img": "scienceqa/scienceqa_img.yaml",
    "textvqa_val": "textvqa/textvqa_val.yaml",
    "ocrbench": "ocrbench/ocrbench.yaml",
    "mmbench_en_dev": "mmbench/mmbench_en_dev.yaml",
    "seedbench": "seedbench/seedbench.yaml",
    "docvqa_val": "docvqa/docvqa_val.yaml",
    "vqav2_val": "vqav2/vqav2_val.yaml",
    "chartqa": "chartqa/chartqa.yaml",
    "mmmu_val": "mmmu/mmmu_val.yaml",
}
NAMES = list(UPSTREAM_YAML)

# split, columns (in order) of each mini release
RELEASES = {
    "gqa": ("testdev", ["id", "imageId", "question", "answer", "fullAnswer", "isBalanced", "groups", "entailed",
                        "equivalent", "types", "annotations", "semantic", "semanticStr", "image"]),
    "scienceqa_img": ("test", ["image", "question", "choices", "answer", "hint", "task", "grade", "subject", "topic",
                               "category", "skill", "lecture", "solution"]),
    "textvqa_val": ("validation", ["image_id", "question_id", "question", "question_tokens", "image", "image_width",
                                   "image_height", "flickr_original_url", "flickr_300k_url", "answers", "image_classes",
                                   "set_name", "ocr_tokens"]),
    "ocrbench": ("test", ["dataset", "question", "question_type", "answer", "image"]),
    "mmbench_en_dev": ("dev", ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                               "L2-category", "comment", "split"]),
    "seedbench": ("test", ["answer", "choice_a", "choice_b", "choice_c", "choice_d", "data_id", "data_type", "question",
                           "question_id", "question_type_id", "image", "segment"]),
    "docvqa_val": ("validation", ["questionId", "question", "question_types", "image", "docId", "ucsf_document_id",
                                  "ucsf_document_page_no", "answers", "data_split"]),
    "vqav2_val": ("validation", ["question_type", "multiple_choice_answer", "answers", "image_id", "answer_type",
                                 "question_id", "question", "image"]),
    "chartqa": ("test", ["type", "question", "answer", "image"]),
    "mmmu_val": ("validation", ["id", "question", "options", "explanation", *[f"image_{k}" for k in range(1, 8)],
                                "img_type", "answer", "topic_difficulty", "question_type", "subfield"]),
}  # fmt: skip


def _write_upstream_task(task_dir: Path, name: str, data_dir: Path) -> str:
    """A local task: the upstream lmms-eval YAML by absolute path, reading ``data_dir`` from disk."""
    import lmms_eval

    upstream = Path(lmms_eval.__file__).parent / "tasks" / UPSTREAM_YAML[name]
    task = f"{name}_upstream_mini"
    # upstream GQA joins images from a second hub config in process_docs; the mini release has them
    extra = "process_docs: null\n" if name == "gqa" else ""
    (task_dir / f"{task}.yaml").write_text(
        f"include: {upstream}\ntask: {task}\ndataset_path: {data_dir.resolve()}\n"
        f"dataset_kwargs:\n  load_from_disk: true\n{extra}"
    )
    return task


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """{name: (data dir, upstream task, wrapper task), "manager": the TaskManager}: every dataset built once,
    one TaskManager index for the module."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    from sparsezip_lmms.demo.harness import write_local_tasks
    from sparsezip_lmms.demo.mini_datasets import MINI_BUILDERS

    root = tmp_path_factory.mktemp("mini_benchmarks")
    data = {name: MINI_BUILDERS[name](root / "data" / name) for name in NAMES}
    task_dir = root / "tasks"
    wrappers = dict(zip(NAMES, write_local_tasks(task_dir, data)))
    upstream = {name: _write_upstream_task(task_dir, name, data[name]) for name in NAMES}
    manager = TaskManager(include_path=str(task_dir))
    tasks = get_task_dict([*upstream.values(), *wrappers.values()], manager)
    loaded = {name: (data[name], tasks[upstream[name]], tasks[wrappers[name]]) for name in NAMES}
    loaded["manager"] = manager
    return loaded


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection or send an HTTP request, recorded and refused (and no retry waits)."""
    import time

    import requests

    attempts: list[str] = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"network access attempted ({what})")

        return refused

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(requests.Session, "send", refuse("requests"))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    return attempts


# ----------------------------------------------------------------------------- the answers fed to both tasks


def _gold(name: str, doc: dict) -> tuple[str, str]:
    """(gold answer, option text) of a document: the option text is the gold itself for free-form tasks."""
    if name == "scienceqa_img":
        return "ABCD"[doc["answer"]], doc["choices"][doc["answer"]]
    if name == "mmbench_en_dev":
        return doc["answer"], doc[doc["answer"]]
    if name == "seedbench":
        return doc["answer"], doc[f"choice_{doc['answer'].lower()}"]
    if name in ("textvqa_val", "docvqa_val"):
        return doc["answers"][0], doc["answers"][0]
    if name == "ocrbench":
        return doc["answer"][0], doc["answer"][0]
    if name == "vqav2_val":
        return doc["multiple_choice_answer"], doc["multiple_choice_answer"]
    if name == "mmmu_val" and doc["question_type"] == "multiple-choice":
        options = ast.literal_eval(doc["options"])
        return doc["answer"], options["ABCD".index(doc["answer"])]
    return doc["answer"], doc["answer"]


def answer_for(name: str, doc: dict, i: int) -> str:
    """The i-th document's answer: right, wrong, re-cased, punctuated, wrapped in a sentence or empty."""
    gold, text = _gold(name, doc)
    if name == "mmbench_en_dev":
        # only answers MMBench's evaluator reads without the OpenAI API (see test_mmbench_openai_eval_...)
        wrong = "B" if gold == "A" else "A"
        variants = [gold, wrong, f"({gold})", f"{gold}.", text.upper(), f"Answer: {gold}"]
    elif name in ("scienceqa_img", "seedbench", "mmmu_val") and len(gold) == 1 and gold in "ABCD":
        wrong = "B" if gold == "A" else "A"
        variants = [gold, wrong, gold.lower(), f"{gold}. {text}", "", f"({gold})"]
    else:
        variants = [gold, "zebra crossing", gold.upper(), f"{gold}.", "", f"The answer is {gold}"]
    return variants[i % len(variants)]


def _score(task, name: str, args) -> tuple[list[dict], dict]:
    """Per-document outputs of ``task.process_results`` and the aggregated metrics, as the evaluator makes them."""
    from lmms_eval.evaluator_utils import TaskOutput

    docs = list(task.eval_docs_no_media)
    answers = [answer_for(name, doc, i) for i, doc in enumerate(docs)]  # before scoring: textvqa edits docs
    random.seed(0)  # as simple_evaluate does (random_seed=0): MMMU picks a random option for an unreadable answer
    output = TaskOutput.from_taskdict(task.config.task, task)
    per_doc = []
    for doc, answer in zip(docs, answers):
        scores = task.process_results(doc, [answer])
        per_doc.append(scores)
        for metric, value in scores.items():
            output.sample_metrics[(metric, "none")].append(value)
    task.args = args  # the evaluator's cli_args: aggregations with an ``args`` parameter get it
    for fn in task.aggregation().values():
        if isinstance(getattr(fn, "__globals__", {}).get("OCRBench_score"), dict):
            # upstream ocrbench adds into a module-level tally on every call: start each aggregation from zero
            fn.__globals__["OCRBench_score"].update(dict.fromkeys(fn.__globals__["OCRBench_score"], 0))
    output.calculate_aggregate_metric(bootstrap_iters=0)
    return per_doc, output.agg_metrics


# ----------------------------------------------------------------------------- the datasets


@pytest.mark.parametrize("name", NAMES)
def test_mini_release_has_the_split_and_columns_upstream_reads(mini, name):
    import datasets

    data_dir, _, _ = mini[name]
    split, columns = RELEASES[name]
    dataset = datasets.load_from_disk(str(data_dir))
    assert list(dataset) == [split]
    rows = dataset[split]
    assert list(rows.features) == columns
    assert 6 <= len(rows) <= 16
    for row in rows:
        images = [row[f"image_{k}"] for k in range(1, 8) if row[f"image_{k}"]] if name == "mmmu_val" else row["image"]
        images = images if isinstance(images, list) else [images]
        limit = 800 if name == "docvqa_val" else 512  # DocVQA's pages predate this module
        assert images and all(max(image.size) <= limit for image in images)


def test_mini_releases_are_deterministic(tmp_path):
    from sparsezip_lmms.demo import mini_benchmarks

    for rows in (mini_benchmarks.gqa_rows, mini_benchmarks.mmbench_rows, mini_benchmarks.seedbench_rows, mini_benchmarks.ocrbench_rows):
        first, second = rows(seed=3), rows(seed=3)
        strip = [{k: v for k, v in row.items() if k != "image"} for row in first]
        assert strip == [{k: v for k, v in row.items() if k != "image"} for row in second]
        pictures = [row["image"] if isinstance(row["image"], list) else [row["image"]] for row in first]
        again = [row["image"] if isinstance(row["image"], list) else [row["image"]] for row in second]
        assert [[p.tobytes() for p in ps] for ps in pictures] == [[p.tobytes() for p in ps] for ps in again]


def test_mini_benchmark_feature_types(mini):
    import datasets
    from datasets import Image, Sequence, Value

    def features(name):
        split, _ = RELEASES[name]
        return datasets.load_from_disk(str(mini[name][0]))[split].features

    assert features("scienceqa_img")["answer"] == Value("int8")
    assert features("mmbench_en_dev")["index"] == Value("int64")
    assert features("textvqa_val")["question_id"] == Value("int32")
    assert isinstance(features("ocrbench")["answer"], (Sequence, datasets.List))
    assert features("gqa")["isBalanced"] == Value("bool")
    seed_image = features("seedbench")["image"]
    assert isinstance(seed_image, (Sequence, datasets.List)) and isinstance(seed_image.feature, Image)


# ----------------------------------------------------------------------------- through lmms-eval


@pytest.mark.parametrize("name", NAMES)
def test_both_tasks_load_the_mini_release_through_lmms_eval(mini, name):
    from lmms_eval.api.task import ConfigurableTask

    data_dir, upstream, wrapper = mini[name]
    for task in (upstream, wrapper):
        assert isinstance(task, ConfigurableTask)
        docs = list(task.eval_docs)
        assert len(docs) == len(list(upstream.eval_docs)) > 0
        for doc in docs:  # the upstream prompt and image functions run on every document
            assert isinstance(task.doc_to_text(doc), str) and task.doc_to_text(doc)
            visuals = task.doc_to_visual(doc)
            assert visuals and all(v.mode == "RGB" for v in visuals)
    assert [upstream.doc_to_text(d) for d in upstream.eval_docs] == [wrapper.doc_to_text(d) for d in wrapper.eval_docs]
    assert "_sz_uid" in wrapper.eval_docs.column_names and "_sz_uid" not in upstream.eval_docs.column_names


@pytest.mark.parametrize("name", NAMES)
def test_wrapper_scores_exactly_like_upstream(mini, name, tmp_path, no_network):
    from sparsezip_lmms.efficiency.wrapping import EFF_METRICS

    _, upstream, wrapper = mini[name]
    up_docs, up_agg = _score(upstream, name, SimpleNamespace(output_path=str(tmp_path / "upstream")))
    wr_docs, wr_agg = _score(wrapper, name, SimpleNamespace(output_path=str(tmp_path / "wrapper")))

    metrics = list(upstream.aggregation())
    assert set(metrics) <= set(wrapper.aggregation())
    for up, wr in zip(up_docs, wr_docs, strict=True):
        assert {m: wr[m] for m in up} == up  # the same per-document scores
        assert {m for m, _, _ in EFF_METRICS} <= set(wr)  # plus every eff_* metric
        assert wr["eff_record"] == {"missing": True} and not any(k.startswith("eff_") for k in up)
    produced = {key for key in up_agg if key.split(",")[0] in metrics}
    assert produced == {key for key in wr_agg if key.split(",")[0] in metrics}
    for key in produced:
        assert wr_agg[key] == up_agg[key], f"{name} {key}: wrapper {wr_agg[key]!r} != upstream {up_agg[key]!r}"
    scored = [key for key in produced if up_agg[key] is not None]
    assert scored, f"{name}: no upstream metric produced a value"
    # the answers mix right and wrong ones: the task's score is neither all nor nothing
    top = 100 if name == "mmbench_en_dev" else 1
    assert any(isinstance(up_agg[key], float) and 0 < up_agg[key] < top for key in scored), up_agg
    assert no_network == []


def test_mmbench_openai_eval_asks_the_api_only_for_answers_it_cannot_read(mini, tmp_path, no_network):
    """Why the MMBench answers above are options (letters, bracketed letters, an option's text): an empty
    or lower-case answer sends ``mmbench_aggregate_dev_results_eval`` (``eval_method="openai"``) to the
    OpenAI API, which an offline run cannot reach (and lmms-eval then picks an option at random)."""
    _, upstream, _ = mini["mmbench_en_dev"]
    docs = list(upstream.eval_docs_no_media)
    items = [upstream.process_results(doc, [doc["answer"]])["gpt_eval_score"] for doc in docs]
    upstream.args = SimpleNamespace(output_path=str(tmp_path))
    assert upstream.aggregation()["gpt_eval_score"](items, args=upstream.args) == 100.0
    assert no_network == []
    items[0] = upstream.process_results(docs[0], [""])["gpt_eval_score"]
    upstream.aggregation()["gpt_eval_score"](items, args=upstream.args)
    assert no_network, "an answer that names no option should have needed the API"


def test_ocrbench_wrapper_scores_like_upstream_when_loaded_again(mini, tmp_path):
    """Upstream's ``ocrbench_aggregate_accuracy`` adds into a module-level tally on every call. lmms-eval
    loads ``!function utils...`` by file path, a fresh module (a zero tally) per task load; the wrapper's
    hooks load a fresh copy of every upstream module the same way, so a second load and aggregation in the
    same process (a second evaluation in-process) scores as upstream does."""
    tasks = mini["manager"].load_task_or_group(["ocrbench_upstream_mini", "ocrbench_eff_mini"])
    scores = {}
    for label, task in (("upstream", tasks["ocrbench_upstream_mini"]), ("wrapper", tasks["ocrbench_eff_mini"])):
        docs = list(task.eval_docs_no_media)
        items = [task.process_results(doc, [answer_for("ocrbench", doc, i)])["ocrbench_accuracy"] for i, doc in enumerate(docs)]
        aggregate = task.aggregation()["ocrbench_accuracy"]
        aggregate(items, args=SimpleNamespace(output_path=str(tmp_path / label)))  # an earlier evaluation
        fresh = mini["manager"].load_task_or_group([task.config.task])[task.config.task]
        scores[label] = fresh.aggregation()["ocrbench_accuracy"](items, args=SimpleNamespace(output_path=str(tmp_path / label)))
    assert scores["wrapper"] == scores["upstream"]


def test_local_tasks_override_only_the_keys_that_reach_the_hub(tmp_path):
    from sparsezip_lmms.demo.harness import LOCAL_OVERRIDES, write_local_tasks

    dirs = {name: tmp_path / name for name in ("pope", "mme", "docvqa_val", "gqa")}
    write_local_tasks(tmp_path / "tasks", dirs, overrides={"mme": {"test_split": "test"}})
    text = {name: (tmp_path / "tasks" / f"{name}_eff_mini.yaml").read_text() for name in dirs}
    assert LOCAL_OVERRIDES["gqa"]["process_docs"] in text["gqa"]
    assert "process_docs" not in text["pope"] and "process_docs" not in text["docvqa_val"]
    assert text["mme"].endswith("load_from_disk: true\ntest_split: test\n")
    assert text["pope"].endswith("load_from_disk: true\n")
