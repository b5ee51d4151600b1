"""Reading ``--log_samples`` runs: results files, their per-task samples files, one :class:`Run` each.

lmms-eval writes ``<stamp>_results.json`` and, per task, ``<stamp>_samples_<task>.jsonl`` in the same
folder. A run is one method (model, config) in one setting (checkpoint, dtype, batch size, ``--limit``,
as the leaderboard keys its rows, and the task's data as the results file records it: see
:mod:`.settings`) on one task, its label ``model:config`` as in the leaderboard; files of the same
run merge (the newer file wins a document logged twice). Nothing here raises on bad input:
unreadable files and malformed lines are counted and described instead.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..leaderboard import read_results, task_family
from ..results_files import results_files
from ..run_identity import DATA_KEYS  # what identifies a task's data: the keys lmms-eval records per task too
from .selection import parse_ranges


@dataclass(frozen=True)
class ImageSelection:
    """What a method kept of one image: grid positions (row-major patch indices) as sets."""

    image: str  # fingerprint of the image's pixels (same image -> same string)
    kept: frozenset[int]  # patches kept as their own token
    layers: dict[int, frozenset[int]]  # in-LLM methods: decoder layer -> patches still in the sequence
    view: str = "llava"  # what the grid positions index: "llava" (LLaVA-1.5's image), "llava_next" (NeXT's base
    # view) or "qwen2_5_vl" (the merged tokens of the image as Qwen2.5-VL resized it: records with a grid per image)


@dataclass(frozen=True)
class Sample:
    """One logged sample, reduced to what the analyses read."""

    doc_id: int
    doc_hash: str | None
    question: str | None  # doc["question"], else the first string argument of the request
    answer: str  # the model's answer text, filtered_resps[0] as logged
    category: str  # POPE / MME: doc["category"]; DocVQA: "all"
    score: float | None  # POPE / MME: the per-sample 0/1 score; DocVQA: ANLS
    pair_id: str | None  # MME: the question_id an image's two questions share
    images: tuple[ImageSelection, ...] | None  # None: no selection logged
    error: str | None = None  # the request failed (its answer is empty): the model's error


@dataclass
class Run:
    """One method on one task, merged over its samples files."""

    model: str
    config: str
    checkpoint: str
    dtype: str
    task: str
    samples: dict[int, Sample] = field(default_factory=dict)  # doc_id -> sample
    sources: list[str] = field(default_factory=list)  # the samples files read
    malformed_lines: int = 0
    malformed_selections: int = 0
    first_malformed: str | None = None  # where the first malformed line or selection is, and why
    problems: list[str] = field(default_factory=list)
    batch_size: str = "?"  # as leaderboard.Row: lmms-eval's --batch_size, "?" when not recorded
    limit: str = "all"  # as leaderboard.Row: lmms-eval's --limit
    conditions: tuple[tuple[str, str], ...] = ()  # as leaderboard.Row: attention implementation, device kind, generation settings
    data: dict[str, Any] = field(default_factory=dict)  # the task's data as the results file records it

    @property
    def label(self) -> str:
        return f"{self.model}:{self.config}"

    @property
    def key(self) -> tuple[str, ...]:
        """What makes two results files one run: the leaderboard row's key, the task and its data."""
        data = json.dumps(self.data, sort_keys=True, default=str)
        return (self.model, self.config, self.checkpoint, self.dtype, self.batch_size, self.limit, self.conditions, self.task, data)


# ----------------------------------------------------------------------------- one line


def _selection_positions(text: Any, size: int | None, what: str) -> frozenset[int]:
    try:
        return frozenset(parse_ranges(text, size))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{what}: {err}") from None


def _grid_size(grid: Any) -> int | None:
    """rows·cols of a ``[rows, cols]`` grid, None when it is not one."""
    if isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and not isinstance(g, bool) for g in grid):
        return grid[0] * grid[1]
    return None


def read_selection(selection: Any) -> tuple[ImageSelection, ...] | None:
    """An ``eff_selection`` object as :class:`ImageSelection` per image; None when none was logged.
    An image's own ``grid`` (Qwen2.5-VL records) wins over the record's. ValueError or TypeError
    describing the first problem when it is malformed."""
    if selection is None:
        return None
    if not isinstance(selection, dict) or not isinstance(selection.get("images"), list):
        raise TypeError("eff_selection is not an object with an 'images' list")
    record_size = _grid_size(selection.get("grid"))
    images = []
    for i, entry in enumerate(selection["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise TypeError(f"image {i} is not an object with an 'image' fingerprint")
        own = "grid" in entry  # Qwen2.5-VL: each image its own merged grid
        size = _grid_size(entry["grid"]) if own else record_size
        if own and size is None:
            raise ValueError(f"image {i} 'grid' is not [rows, cols]")
        kept = _selection_positions(entry.get("kept", ""), size, f"image {i} 'kept'")
        layers_in = entry.get("layers") or {}
        if not isinstance(layers_in, dict):
            raise TypeError(f"image {i} 'layers' is not an object")
        layers = {}
        packed = "tile_grid" in entry  # LLaVA-NeXT: in-LLM layers name positions of the packed sequence
        for layer, text in layers_in.items():
            if not (str(layer).isascii() and str(layer).isdigit()):
                raise ValueError(f"image {i} 'layers': {layer!r} is not a layer number")
            if packed:  # the packed sequence opens with the base view's patches: those are its grid positions
                positions = _selection_positions(text, None, f"image {i} layer {layer}")
                layers[int(layer)] = frozenset(p for p in positions if size is None or p < size)
            else:
                layers[int(layer)] = _selection_positions(text, size, f"image {i} layer {layer}")
        view = "qwen2_5_vl" if own else "llava_next" if packed else "llava"
        images.append(ImageSelection(entry["image"], kept, dict(sorted(layers.items())), view))
    return tuple(images)


def _answer(filtered_resps: Any) -> str:
    answer = filtered_resps
    while isinstance(answer, list):
        answer = answer[0] if answer else ""
    return answer if isinstance(answer, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _score_entry(row: dict[str, Any], family: str | None) -> tuple[float | None, dict[str, Any]]:
    """(the per-sample score, the metric entry it came from) for the task family."""
    if family == "docvqa":
        return _number(row.get("anls")), {}
    names = {"pope": ("pope_accuracy",), "mme": ("mme_accuracy", "mme_perception_score", "mme_cognition_score")}
    for name in names.get(family or "", ()):
        entry = row.get(name)
        if isinstance(entry, dict):
            return _number(entry.get("score")), entry
    return None, {}


def _question(doc: dict[str, Any], prompt: Any, arguments: Any) -> str | None:
    """The question: the document's, else the prompt text lmms-eval logged (``input``), else the first
    string argument."""
    if isinstance(doc.get("question"), str):
        return doc["question"]
    if isinstance(prompt, str):
        return prompt
    for argument in arguments if isinstance(arguments, list) else ():
        if isinstance(argument, str):
            return argument
    return None


def read_sample(row: Any, family: str | None) -> tuple[Sample, str | None]:
    """(one parsed samples line as a :class:`Sample`, the problem with its ``eff_selection`` or None).
    A malformed selection leaves the sample without one; TypeError when the line is not a logged
    sample (not an object, no integer ``doc_id``)."""
    if not isinstance(row, dict):
        raise TypeError(f"a {type(row).__name__}, not an object")
    doc_id = row.get("doc_id")
    if isinstance(doc_id, bool) or not isinstance(doc_id, int):
        raise TypeError("no integer 'doc_id'")
    # lmms-eval drops "doc" when it writes the file; the *_eff tasks log its text fields as "eff_doc"
    doc = next((row[key] for key in ("doc", "eff_doc") if isinstance(row.get(key), dict)), {})
    score, entry = _score_entry(row, family)
    category = doc.get("category", entry.get("category")) if family in ("pope", "mme") else "all"
    pair_id = doc.get("question_id", entry.get("question_id")) if family == "mme" else None
    doc_hash = row.get("doc_hash")
    try:
        images, problem = read_selection(row.get("eff_selection")), None
    except (ValueError, TypeError) as err:
        images, problem = None, f"malformed eff_selection ({err})"
    sample = Sample(
        doc_id=doc_id,
        doc_hash=doc_hash if isinstance(doc_hash, str) else None,
        question=_question(doc, row.get("input"), row.get("arguments")),
        answer=_answer(row.get("filtered_resps")),
        category="?" if category is None else str(category),
        score=score,
        pair_id=None if pair_id is None else str(pair_id),
        images=images,
        error=_request_error(row),
    )
    return sample, problem


def _request_error(row: dict[str, Any]) -> str | None:
    """The error of a failed request, from the *_eff tasks' per-sample bookkeeping (``eff_failed``)."""
    bookkeeping = row.get("eff_failed")
    error = bookkeeping.get("error") if isinstance(bookkeeping, dict) else None
    return str(error) if error else None


# ----------------------------------------------------------------------------- files


def read_samples_file(path: Path, run: Run) -> None:
    """Add the samples of one ``*_samples_<task>.jsonl`` to ``run`` (a sample with a malformed
    selection is kept without it); malformed lines and selections are counted in ``run``."""
    family = task_family(run.task)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        run.problems.append(f"{path}: unreadable samples file ({err})")
        return
    run.sources.append(str(path))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            sample, problem = read_sample(json.loads(line), family)
        except (ValueError, TypeError, RecursionError) as err:
            run.malformed_lines += 1
            run.first_malformed = run.first_malformed or f"{path.name} line {number}: {err}"
            continue
        if problem:
            run.malformed_selections += 1
            run.first_malformed = run.first_malformed or f"{path.name} line {number}: {problem}"
        run.samples[sample.doc_id] = sample


def samples_files(results_path: Path) -> dict[str, Path]:
    """task -> ``<stamp>_samples_<task>.jsonl`` next to a results file."""
    stamp = results_path.name.removesuffix("_results.json")
    prefix = f"{stamp}_samples_"
    return {
        Path(f).name[len(prefix) : -len(".jsonl")]: Path(f)
        for f in sorted(glob.glob(glob.escape(str(results_path.parent / prefix)) + "*.jsonl"))
    }


def _result_tasks(results_path: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(the tasks a results file has results for, {task: its data as ``configs[task]`` records it})."""
    try:
        data = json.loads(results_path.read_text(encoding="utf-8"))
        results, configs = data.get("results"), data.get("configs")
    except (OSError, ValueError, AttributeError, RecursionError):
        return [], {}
    tasks = [str(task) for task in results] if isinstance(results, dict) else []
    recorded = {
        str(task): {key: config[key] for key in DATA_KEYS if key in config}
        for task, config in (configs.items() if isinstance(configs, dict) else ())
        if isinstance(config, dict)
    }
    return tasks, recorded


def load_runs(paths: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    """(every run of a POPE / MME / DocVQA task found under ``paths``, problems not tied to a run).
    A run whose results file names the task but has no samples file for it has no samples and says so."""
    files, problems = results_files(paths)
    runs: dict[tuple[str, ...], Run] = {}
    for path in files:
        row, problem = read_results(path)
        if row is None:
            problems.append(problem or f"{path}: unreadable results file")
            continue
        found = samples_files(path)
        result_tasks, data_of = _result_tasks(path)
        tasks = [t for t in dict.fromkeys(result_tasks + list(found)) if task_family(t) is not None]
        if not tasks:
            problems.append(f"{path}: no POPE / MME / DocVQA task in this results file")
        for task in tasks:
            new = Run(row.model, row.config, row.checkpoint, row.dtype, task, batch_size=row.batch_size, limit=row.limit,
                      conditions=row.conditions, data=data_of.get(task, {}))  # fmt: skip
            run = runs.setdefault(new.key, new)
            if task in found:
                read_samples_file(found[task], run)
            else:
                run.problems.append(f"{path.name}: no samples file for {task} (run lmms-eval with --log_samples)")
    return list(runs.values()), problems
