"""Which runs of one task ``analyze`` and ``report`` put side by side: runs of the same setting only.

A run's *setting* is everything about it but the method (model id and config): what the leaderboard
compares a row and its baseline on (``leaderboard.Row.setting``: checkpoint, dtype, batch size,
``--limit``, as :func:`~sparsezip_lmms.leaderboard.read_results` reads them from the results file)
and the task's data as lmms-eval recorded it in that file (``configs[<task>]``: the dataset path,
name, kwargs and splits, the keys :mod:`sparsezip_lmms.run_identity` reads from a task YAML). Two
runs of different settings answered different documents, or the same documents under other
conditions (batch padding, precision), so their overlap, agreement or scores side by side would
measure the setting as much as the method: they are grouped apart (setting A, B, ...), each group
labelled with what tells it from the others, and a note names what differs.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .samples import Run

__all__ = ["Setting", "SettingGroup", "apart_notes", "differences", "group_runs", "run_labels", "setting_of"]

_NOT_RECORDED = "(not recorded)"


@dataclass(frozen=True)
class Setting:
    """What two runs must share to be compared (hashable: runs are grouped on it)."""

    checkpoint: str
    dtype: str
    batch_size: str  # as leaderboard.Row: "?" when the results file does not say
    limit: str  # as leaderboard.Row: "all" without --limit
    data: tuple[tuple[str, str], ...] = ()  # (key, value as text) of the task's recorded data, sorted by key
    conditions: tuple[tuple[str, str], ...] = ()  # as leaderboard.Row: attention implementation, device kind, generation settings

    def items(self) -> list[tuple[str, str]]:
        """(name, value) of every part, named as the notes and labels name them."""
        parts = [("checkpoint", self.checkpoint), ("dtype", self.dtype), ("batch size", self.batch_size), ("limit", self.limit)]
        return parts + list(self.conditions) + [(f"task data {key}", value) for key, value in self.data]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def setting_of(run: Run) -> Setting:
    """The setting of a run read by :func:`~.samples.load_runs` (the same fields as ``Row.setting``)."""
    data = tuple(sorted((str(key), _text(value)) for key, value in run.data.items()))
    return Setting(run.checkpoint, run.dtype, run.batch_size, run.limit, data, tuple(run.conditions))


def differences(a: Setting, b: Setting) -> list[str]:
    """What differs between two settings, in words: ``["batch size 1 vs 2", "limit all vs 4"]``."""
    left, right = dict(a.items()), dict(b.items())
    names = dict.fromkeys([*left, *right])  # a's order, then b's extra data keys
    return [
        f"{name} {left.get(name, _NOT_RECORDED)} vs {right.get(name, _NOT_RECORDED)}"
        for name in names
        if left.get(name) != right.get(name)
    ]


def _varying(settings: Sequence[Setting]) -> list[str]:
    """The names of the parts that are not the same in every one of ``settings``, in item order."""
    values = [dict(s.items()) for s in settings]
    names = dict.fromkeys(name for s in settings for name, _ in s.items())
    return [name for name in names if len({v.get(name, _NOT_RECORDED) for v in values}) > 1]


def run_labels(runs: list[Run]) -> list[str]:
    """``model:config`` per run; where runs share one, what tells them apart in brackets: checkpoint
    and dtype (``[org/llava-7b float16]``), then any other part of the setting that differs
    (``[batch size 2]``, ``[limit 4]``)."""
    settings = [setting_of(run) for run in runs]
    out = []
    for index, (run, setting) in enumerate(zip(runs, settings)):
        same = [s for r, s in zip(runs, settings) if r.label == run.label]
        if len(same) == 1:
            out.append(run.label)
            continue
        varying, mine = _varying(same), dict(setting.items())
        parts = [f"{run.checkpoint} {run.dtype}"] if {"checkpoint", "dtype"} & set(varying) else []
        parts += [f"{name} {mine.get(name, _NOT_RECORDED)}" for name in varying if name not in ("checkpoint", "dtype")]
        out.append(f"{run.label} [{', '.join(parts) or f'run {index + 1}'}]")
    return out


@dataclass(frozen=True)
class SettingGroup:
    """The runs of one setting: compared with each other, never with another group's."""

    name: str  # "A", "B", ... in the order of the runs
    setting: Setting
    runs: list[str]  # run labels
    label: str  # "setting A (batch size 1)": the name and the parts that tell it from the other groups


def _name(index: int) -> str:
    return string.ascii_uppercase[index] if index < 26 else str(index + 1)


def group_runs(labels: list[str], runs: list[Run]) -> list[SettingGroup]:
    """The runs (``labels[i]`` names ``runs[i]``) grouped by setting, groups in the order of their first run."""
    members: dict[Setting, list[str]] = {}
    for label, run in zip(labels, runs):
        members.setdefault(setting_of(run), []).append(label)
    varying = set(_varying(list(members)))
    groups = []
    for index, (setting, labels_of) in enumerate(members.items()):
        shown = ", ".join(f"{name} {value}" for name, value in setting.items() if name in varying)
        label = f"setting {_name(index)}" + (f" ({shown})" if shown else "")
        groups.append(SettingGroup(_name(index), setting, labels_of, label))
    return groups


def apart_notes(groups: list[SettingGroup]) -> list[str]:
    """One note per two groups: that their runs are not compared, and what differs."""
    return [
        f"not compared: setting {a.name} vs setting {b.name}: {', '.join(differences(a.setting, b.setting))} "
        f"(setting {a.name}: {', '.join(a.runs)}; setting {b.name}: {', '.join(b.runs)}); no overlap, agreement "
        "or side-by-side scores between runs of different settings"
        for a, b in combinations(groups, 2)
    ]
