"""``python -m sparsezip_lmms eff-tasks TASK[,TASK...] [--include_path DIR] --out DIR``: efficiency for any task.

For each task lmms-eval knows (upstream, or a user's own from ``--include_path``) it writes a wrapper
task ``TASK_eff``: the same dataset, prompts, splits, filters, generation settings, metrics and
aggregations, plus this package's ``eff_*`` metrics (:mod:`sparsezip_lmms.efficiency.wrapping`), and one
group of the wrappers. Each wrapper is a flat YAML (the upstream ``include`` chain merged as lmms-eval
merges it) and a small hooks module beside it naming the upstream functions it wraps. Functions of an
installed package are referenced by import path (the folder can move); a task's own ``utils.py`` in a
user folder by its file path.

A task whose score a wrapper cannot keep identical is refused by name, with the reason: another
``output_type`` than ``generate_until`` (log-likelihood scoring makes no generation to time), a task
defined by a Python class, choices (``doc_to_choice``) scored by registered metrics, or metrics that are
not registered.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .efficiency.wrapping import eff_metric_list

SUFFIX = "_eff"
# the field's standard benchmark set (upstream task names); tasks-path ships a wrapper of each
STANDARD_TASKS = (
    "gqa", "mmbench_en_dev", "mme", "pope", "scienceqa_img", "vqav2_val",
    "textvqa_val", "mmmu_val", "seedbench", "ocrbench", "docvqa_val", "chartqa",
)  # fmt: skip
# shipped wrappers written by hand before this generator (names and numbers kept; MME adds accuracy
# and acc+, DocVQA adds exact match)
HAND_WRITTEN = ("mme", "pope", "docvqa_val")
STANDARD_GROUP = "sparsezip_eff_paper"
# further shipped wrappers: MMBench scored offline (upstream's regex/substring matching, no API)
EXTRA_SHIPPED = ("mmbench_en_dev_static",)
# keys of the upstream config a wrapper does not take over (its own name, groups, tags)
_DROPPED = ("task", "tag", "group", "group_alias", "task_alias", "include")


class WrapError(ValueError):
    """A task that cannot be wrapped (or found); the message names it and says why."""


@dataclass(frozen=True)
class FunctionRef:
    """A ``!function module.name`` reference as written in a task YAML in folder ``folder``."""

    folder: str
    dotted: str

    @property
    def module(self) -> str:
        return self.dotted.rsplit(".", 1)[0]

    @property
    def name(self) -> str:
        return self.dotted.rsplit(".", 1)[1]

    def location(self) -> str:
        """An importable dotted module name where the module is one (installed packages), else its file."""
        file = os.path.normpath(os.path.join(self.folder, self.module.replace(".", os.sep) + ".py"))
        if not os.path.isfile(file):  # lmms-eval's second try: an absolute import
            return self.module
        dotted = _importable_name(file)
        return dotted if dotted is not None else file


def _importable_name(file: str) -> str | None:
    """The dotted name under which ``file`` imports from an installed location (not the working folder)."""
    cwd = os.getcwd()
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == cwd:
            continue
        root = os.path.abspath(entry)
        if not file.startswith(root + os.sep):
            continue
        dotted = os.path.relpath(file, root)[: -len(".py")].replace(os.sep, ".")
        try:
            spec = importlib.util.find_spec(dotted)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin and os.path.samefile(spec.origin, file):
            return dotted
    return None


class _RefLoader(yaml.SafeLoader):
    """YAML loader that keeps ``!function`` references as :class:`FunctionRef` (nothing is imported)."""


def load_task_yaml(path: str | Path) -> dict[str, Any]:
    """A task YAML with its ``include`` chain merged as lmms-eval merges it (the last include first, the
    file's own keys last); ``!function`` references stay :class:`FunctionRef`."""
    path = Path(path)
    folder = str(path.parent.resolve())

    class Loader(_RefLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: FunctionRef(folder, loader.construct_scalar(node)))
    config = yaml.load(path.read_text(), Loader=Loader) or {}
    includes = config.pop("include", None)
    if includes is None:
        return _anchor_data_files(config, folder)
    merged: dict[str, Any] = {}
    for include in reversed([includes] if isinstance(includes, str) else list(includes)):
        included = Path(include) if os.path.isfile(include) else path.parent / include
        merged.update(load_task_yaml(included))
    merged.update(config)
    return _anchor_data_files(merged, folder)


def _anchor_data_files(config: dict[str, Any], folder: str) -> dict[str, Any]:
    """Relative ``dataset_kwargs.data_files`` of a local builder (csv, json, ...) made absolute from the
    YAML's folder where the file exists, as lmms-eval reads them (the wrapper lives elsewhere)."""
    kwargs = config.get("dataset_kwargs")
    if not isinstance(kwargs, dict) or "data_files" not in kwargs:
        return config

    def anchor(value: Any) -> Any:
        if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value):
            candidate = os.path.join(folder, value)
            return candidate if os.path.isfile(candidate) else value
        if isinstance(value, dict):
            return {k: anchor(v) for k, v in value.items()}
        if isinstance(value, list):
            return [anchor(v) for v in value]
        return value

    return {**config, "dataset_kwargs": {**kwargs, "data_files": anchor(kwargs["data_files"])}}


def find_task(name: str, task_manager) -> Path:
    """The YAML of task ``name``; a WrapError naming it when lmms-eval does not know it or it is a group."""
    entry = task_manager.task_index.get(name)
    if entry is None:
        import difflib

        close = difflib.get_close_matches(name, list(task_manager.task_index), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise WrapError(f"task {name!r}: lmms-eval does not know it{hint}; a task of your own needs --include_path")
    if entry.get("type") in ("group", "tag"):
        members = entry.get("task")
        if not isinstance(members, list) and isinstance(entry.get("yaml_path"), str):
            members = load_task_yaml(entry["yaml_path"]).get("task")
        listed = ", ".join(str(m) for m in members) if isinstance(members, list) else ""
        raise WrapError(f"{name!r} is a {entry['type']}, not a task: wrap its tasks instead" + (f" ({listed})" if listed else ""))
    if entry.get("type") == "python_task" or not entry.get("yaml_path") or entry["yaml_path"] == -1:
        raise WrapError(f"task {name!r} is defined by a Python class: its scoring cannot be wrapped from a YAML")
    return Path(entry["yaml_path"])


def check_wrappable(name: str, config: dict[str, Any]) -> None:
    """Refuse (WrapError naming the task and the reason) what a wrapper could not score identically."""
    if "class" in config:
        raise WrapError(f"task {name!r} is defined by a Python class: its scoring cannot be wrapped from a YAML")
    output_type = config.get("output_type", "generate_until")
    if output_type != "generate_until":
        raise WrapError(
            f"task {name!r} has output_type {output_type!r}: only generate_until tasks can be wrapped "
            "(log-likelihood scoring generates nothing to time)"
        )
    metrics = config.get("metric_list") or []
    clash = [m.get("metric") for m in metrics if str(m.get("metric", "")).startswith("eff_")]
    if clash:
        raise WrapError(f"task {name!r} already has eff_* metrics {clash}: is it a wrapper already?")
    if config.get("process_results") is not None:
        return
    if not metrics:
        raise WrapError(f"task {name!r} has neither process_results nor a metric_list: nothing to score")
    if config.get("doc_to_choice") is not None:
        raise WrapError(f"task {name!r} scores choices (doc_to_choice) with registered metrics: not wrappable")
    if config.get("model_specific_target_kwargs") is not None:
        raise WrapError(f"task {name!r} passes model-specific arguments to doc_to_target: not wrappable")
    from lmms_eval.api.registry import METRIC_REGISTRY

    unknown = [m.get("metric") for m in metrics if not isinstance(m.get("metric"), str) or m["metric"] not in METRIC_REGISTRY]
    if unknown:
        raise WrapError(f"task {name!r} is scored by metrics lmms-eval has not registered ({unknown}): not wrappable")


# ----------------------------------------------------------------------------- writing


def _python_literal(value: Any) -> str:
    if isinstance(value, FunctionRef):
        return f"upstream_function({value.location()!r}, {value.name!r}, _loaded)"
    return repr(value)


def hooks_module(name: str, config: dict[str, Any]) -> str:
    """Source of the hooks module of wrapper ``name + SUFFIX``."""
    docs = config.get("process_docs")
    results = config.get("process_results")
    lines = [
        f'"""process_docs / process_results of the wrapper task {name}{SUFFIX}: upstream {name}\'s own scoring plus',
        'the eff_* metrics (written by ``python -m sparsezip_lmms eff-tasks``; see sparsezip_lmms.efficiency.wrapping)."""',
        "",
        "from sparsezip_lmms.efficiency.wrapping import upstream_function, wrapped_process_docs, wrapped_process_results",
        "",
        "_loaded: dict = {}  # one fresh copy of each upstream module per load of this file, as lmms-eval loads them",
        f"process_docs = wrapped_process_docs({_python_literal(docs) if docs is not None else ''})",
    ]
    if results is not None:
        lines.append(f"process_results = wrapped_process_results({_python_literal(results)})")
    else:
        registered = [
            (m["metric"], {k: v for k, v in m.items() if k not in ("metric", "aggregation", "higher_is_better")})
            for m in config["metric_list"]
        ]
        target = config.get("doc_to_target")
        lines.append(f"process_results = wrapped_process_results(registered={registered!r}, target={_python_literal(target)})")
    return "\n".join(lines) + "\n"


class _Dumper(yaml.SafeDumper):
    pass


def _function_tag(dumper: yaml.SafeDumper, ref: "_Tagged") -> yaml.Node:
    return dumper.represent_scalar("!function", ref.text)


@dataclass(frozen=True)
class _Tagged:
    text: str


_Dumper.add_representer(_Tagged, _function_tag)


def _for_yaml(value: Any, hooks: str) -> Any:
    """Config values with FunctionRefs as ``!function`` tags through the hooks module, which re-exports each
    from a fresh copy of its module (as lmms-eval loads every reference)."""
    if isinstance(value, FunctionRef):
        return _Tagged(f"{hooks}.{_alias(value)}")
    if isinstance(value, dict):
        return {k: _for_yaml(v, hooks) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_yaml(v, hooks) for v in value]
    return value


def _alias(ref: FunctionRef) -> str:
    return f"upstream__{ref.module.replace('.', '_')}__{ref.name}"


def _refs(value: Any) -> list[FunctionRef]:
    if isinstance(value, FunctionRef):
        return [value]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def wrapper_yaml(name: str, config: dict[str, Any], source: Path) -> str:
    """The wrapper task's YAML: upstream's merged config, renamed, with the hooks and the eff_* metrics."""
    hooks = f"{name}{SUFFIX}_hooks"
    body = {k: v for k, v in config.items() if k not in _DROPPED}
    body = {"task": f"{name}{SUFFIX}", **_for_yaml(body, hooks)}
    body["process_docs"] = _Tagged(f"{hooks}.process_docs")
    body["process_results"] = _Tagged(f"{hooks}.process_results")
    eff = [{**m, "aggregation": _Tagged(m["aggregation"])} for m in eff_metric_list()]
    body["metric_list"] = list(body.get("metric_list") or []) + eff
    header = (
        f"# {name} as lmms-eval defines it ({_display(source)}): the same data, prompts, splits and metrics,\n"
        f"# plus per-request efficiency figures (eff_*). Written by: python -m sparsezip_lmms eff-tasks {name}\n"
    )
    return header + yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def _display(source: Path) -> str:
    parts = source.resolve().parts
    return "/".join(parts[parts.index("lmms_eval"):]) if "lmms_eval" in parts else str(source.resolve())


def write_wrapper(name: str, task_manager, out: Path) -> Path:
    """Write ``out/NAME_eff.yaml`` and its hooks module; WrapError when the task cannot be wrapped."""
    source = find_task(name, task_manager)
    config = load_task_yaml(source)
    check_wrappable(name, config)
    hooks = hooks_module(name, config)
    extra = {_alias(r): r for r in _refs({k: v for k, v in config.items() if k not in ("process_docs", "process_results")})}
    if extra:
        hooks += "\n# the task's own functions the YAML references\n"
        hooks += "".join(f"{alias} = {_python_literal(ref)}\n" for alias, ref in sorted(extra.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}{SUFFIX}_hooks.py").write_text(hooks)
    path = out / f"{name}{SUFFIX}.yaml"
    path.write_text(wrapper_yaml(name, config, source))
    return path


def write_group(group: str, tasks: list[str], out: Path) -> Path:
    path = out / f"{group}.yaml"
    path.write_text(yaml.safe_dump({"group": group, "task": [f"{t}{SUFFIX}" for t in tasks]}, sort_keys=False))
    return path


def task_manager(include_path: str | None = None):
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=include_path) if include_path else TaskManager()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparsezip_lmms eff-tasks",
        description="Write a wrapper task TASK_eff of each task lmms-eval knows (upstream, or your own from "
        "--include-path): the same data, prompts, metrics and aggregations plus the eff_* efficiency metrics, and "
        "a group of the wrappers. A task whose score a wrapper could not keep identical is refused by name.",
    )
    parser.add_argument("tasks", help="comma-separated lmms-eval task names, e.g. gqa,textvqa_val")
    parser.add_argument("--out", required=True, help="folder for the wrappers (pass it to lmms-eval --include_path)")
    parser.add_argument("--include-path", help="a folder of task YAMLs of your own (as lmms-eval's --include_path)")
    parser.add_argument("--include_path", dest="include_path", help=argparse.SUPPRESS)
    parser.add_argument("--group", default="sparsezip_eff_tasks", help="name of the group of the wrappers (default: %(default)s)")
    args = parser.parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        parser.error("name at least one task")
    manager = task_manager(args.include_path)
    out = Path(args.out)
    problems, written = [], []
    for name in names:
        try:
            written.append((name, write_wrapper(name, manager, out)))
        except WrapError as err:
            problems.append(str(err))
    for name, path in written:
        print(f"{name}{SUFFIX}: {path}")
    if written:
        group = write_group(args.group, [name for name, _ in written], out)
        print(f"group {args.group} ({len(written)} tasks): {group}")
        print(f"run with: lmms-eval --include_path {out} --tasks {args.group} ...")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
