"""``python -m sparsezip_lmms eff-tasks``: wrappers of any task, refusals by name, and one task defined only in
a user's ``--include_path`` wrapped and run through the real lmms-eval CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from sparsezip_lmms.eff_tasks import (
    EXTRA_SHIPPED,
    HAND_WRITTEN,
    STANDARD_GROUP,
    STANDARD_TASKS,
    WrapError,
    load_task_yaml,
    task_manager,
    write_wrapper,
)
from sparsezip_lmms.efficiency.wrapping import EFF_METRICS
from sparsezip_lmms.paths import tasks_path

USER_UTILS = '''
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\\nAnswer yes or no."


def process_results(doc, results):
    said_yes = results[0].strip().lower().startswith("yes")
    return {"yes_no_acc": float(said_yes == (doc["answer"] == "yes")), "said_yes": float(said_yes)}


def share(values):
    return 100.0 * sum(values) / len(values)
'''


def _user_task(folder: Path, data_dir: Path, name: str = "my_yes_no", **overrides) -> Path:
    """A task of the user's own: its YAML and utils.py in ``folder``, its data on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_utils.py").write_text(USER_UTILS)
    config = textwrap.dedent(
        f"""\
        task: {name}
        dataset_path: {data_dir}
        dataset_kwargs:
          load_from_disk: true
        test_split: test
        output_type: generate_until
        doc_to_visual: !function my_utils.doc_to_visual
        doc_to_text: !function my_utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 4
        process_results: !function my_utils.process_results
        metric_list:
          - metric: yes_no_acc
            aggregation: !function my_utils.share
            higher_is_better: true
          - metric: said_yes
            aggregation: mean
            higher_is_better: false
        metadata:
          - version: 1.5
        """
    )
    for key, value in overrides.items():
        config += f"{key}: {value}\n"
    path = folder / f"{name}.yaml"
    path.write_text(config)
    return path


@pytest.fixture(scope="module")
def manager_and_dirs(tmp_path_factory):
    from sparsezip_lmms.demo.mini_datasets import build_mini_pope

    root = tmp_path_factory.mktemp("eff_tasks")
    data = build_mini_pope(root / "data", n=4)
    user = root / "user"
    _user_task(user, data)
    _user_task(user, data, name="my_choices", output_type="multiple_choice", doc_to_choice='["yes", "no"]')
    _user_task(user, data, name="my_unregistered", process_results="null")
    return task_manager(str(user)), root, data


def test_wrapper_keeps_the_task_and_adds_the_eff_metrics(manager_and_dirs):
    manager, root, _ = manager_and_dirs
    path = write_wrapper("my_yes_no", manager, root / "wrapped")
    wrapped = load_task_yaml(path)
    original = load_task_yaml(root / "user" / "my_yes_no.yaml")
    assert wrapped["task"] == "my_yes_no_eff"
    for key in ("dataset_path", "dataset_kwargs", "test_split", "generation_kwargs", "doc_to_target", "metadata"):
        assert wrapped[key] == original[key], key
    names = [m["metric"] for m in wrapped["metric_list"]]
    assert names == ["yes_no_acc", "said_yes"] + [name for name, _, _ in EFF_METRICS]
    # the user's functions are reached through the hooks module beside the wrapper (by file path)
    hooks = (root / "wrapped" / "my_yes_no_eff_hooks.py").read_text()
    assert str(root / "user" / "my_utils.py") in hooks
    assert wrapped["doc_to_visual"].dotted == "my_yes_no_eff_hooks.upstream__my_utils__doc_to_visual"


@pytest.mark.parametrize(
    "task, reason",
    [
        ("my_choices", "output_type 'multiple_choice'"),
        ("my_unregistered", "has not registered"),
        ("no_such_task_anywhere", "lmms-eval does not know it"),
        ("mmbench", "is a group, not a task"),
    ],
)
def test_unwrappable_tasks_are_refused_by_name(manager_and_dirs, task, reason):
    manager, root, _ = manager_and_dirs
    with pytest.raises(WrapError, match=reason) as err:
        write_wrapper(task, manager, root / "refused")
    assert repr(task) in str(err.value)
    assert not (root / "refused" / f"{task}_eff.yaml").exists()


def test_cli_exits_non_zero_naming_the_refused_task(manager_and_dirs, capsys):
    from sparsezip_lmms.__main__ import main

    _, root, _ = manager_and_dirs
    code = main(["eff-tasks", "my_yes_no,my_choices", "--include-path", str(root / "user"), "--out", str(root / "cli")])
    captured = capsys.readouterr()
    assert code == 2
    assert "'my_choices' has output_type 'multiple_choice'" in captured.err
    assert (root / "cli" / "my_yes_no_eff.yaml").is_file()
    group = yaml.safe_load((root / "cli" / "sparsezip_eff_tasks.yaml").read_text())
    assert group == {"group": "sparsezip_eff_tasks", "task": ["my_yes_no_eff"]}


def test_shipped_wrappers_are_the_generators_output(tmp_path, manager_and_dirs):
    """The pre-made wrappers in tasks-path are what eff-tasks writes today (no drift from upstream)."""
    manager, _, _ = manager_and_dirs
    shipped = tasks_path()
    for name in (*STANDARD_TASKS, *EXTRA_SHIPPED):
        if name in HAND_WRITTEN:
            continue
        write_wrapper(name, manager, tmp_path)
        for suffix in ("_eff.yaml", "_eff_hooks.py"):
            assert (tmp_path / f"{name}{suffix}").read_text() == (shipped / f"{name}{suffix}").read_text(), name
    group = yaml.safe_load((shipped / f"{STANDARD_GROUP}.yaml").read_text())
    assert group["task"] == [f"{name}_eff" for name in STANDARD_TASKS]


def test_hand_written_wrappers_carry_every_eff_metric():
    for name in HAND_WRITTEN:
        listed = [m["metric"] for m in load_task_yaml(tasks_path() / f"{name}_eff.yaml")["metric_list"]]
        assert [m for m in listed if m.startswith("eff_")] == [name for name, _, _ in EFF_METRICS], name


@pytest.mark.e2e
def test_user_task_wrapper_through_the_lmms_eval_cli(manager_and_dirs, tiny_checkpoint):
    """The user's task and its wrapper in one lmms-eval run: the same answers and the same own metrics,
    plus the eff_* metrics in the wrapper's results."""
    from sparsezip_lmms.demo.harness import lmms_eval_command, run_lmms_eval

    _, root, _ = manager_and_dirs
    wrapped = root / "run_tasks" / "wrapped"
    code = __import__("sparsezip_lmms.__main__", fromlist=["main"]).main(
        ["eff-tasks", "my_yes_no", "--include-path", str(root / "user"), "--out", str(wrapped)]
    )
    assert code == 0
    # lmms-eval indexes its include path recursively: the user's folder and the wrappers side by side
    user_copy = root / "run_tasks" / "user"
    user_copy.mkdir(parents=True)
    for file in ("my_yes_no.yaml", "my_utils.py"):
        (user_copy / file).write_text((root / "user" / file).read_text())
    out = root / "cli_out"
    cmd = lmms_eval_command(
        "llava_hf_timed", f"pretrained={tiny_checkpoint},dtype=float32", ["my_yes_no", "my_yes_no_eff"], out,
        include_path=root / "run_tasks", batch_size=2, extra=["--gen_kwargs", "max_new_tokens=3"],
    )  # fmt: skip
    run = run_lmms_eval(cmd, out, timeout=900)
    own, wrapper = run.results["results"]["my_yes_no"], run.results["results"]["my_yes_no_eff"]
    assert own["yes_no_acc,none"] == wrapper["yes_no_acc,none"]
    assert own["said_yes,none"] == wrapper["said_yes,none"]
    answers = {task: [row["filtered_resps"] for row in sorted(rows, key=lambda r: r["doc_id"])] for task, rows in run.samples.items()}
    assert answers["my_yes_no"] == answers["my_yes_no_eff"]
    per_doc = [row["yes_no_acc"] for row in sorted(run.samples["my_yes_no_eff"], key=lambda r: r["doc_id"])]
    assert wrapper["yes_no_acc,none"] == pytest.approx(100.0 * sum(per_doc) / len(per_doc))
    assert wrapper["eff_record,none"] == 4 and wrapper["eff_failed,none"] == 0
    assert wrapper["eff_ttft_s,none"] > 0 and wrapper["eff_visual_tokens,none"] > 0
    assert not any(key.startswith("eff_") for key in own)
    assert run.results["configs"]["my_yes_no_eff"]["metadata"] == run.results["configs"]["my_yes_no"]["metadata"]
    json.dumps(run.results)  # the results file is plain JSON
