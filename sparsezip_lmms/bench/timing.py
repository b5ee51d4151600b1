"""One timing helper for every section: CUDA events on a GPU, ``time.perf_counter`` on the CPU.

Cases that are compared with each other are run *interleaved* (round-robin, with the order rotated
every round), so a load change on a shared machine hits all of them alike; ratios are then taken
per round (paired) and summarised by their median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["DeviceTimer", "Stat", "measure", "paired_ratio"]


class DeviceTimer:
    """Seconds one call takes on ``device``.

    CUDA: two ``torch.cuda.Event(enable_timing=True)`` recorded around the call on the current stream,
    read after the end event has completed (the GPU time between the two marks, launch gaps
    included). Other devices: ``time.perf_counter`` around the call, after synchronising the device.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0  # ms -> s
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - t0


@dataclass
class Stat:
    """Times of one case, in seconds (warm-up calls excluded)."""

    samples: list[float] = field(default_factory=list)
    last: object = field(default=None, repr=False)  # what the last timed call returned

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def to_dict(self) -> dict:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "max_s": max(self.samples),
            "n": len(self.samples),
            "samples_s": list(self.samples),
        }


def measure(
    cases: Mapping[str, Callable[[], object]],
    timer: DeviceTimer,
    repeats: int,
    warmup: int = 1,
) -> dict[str, Stat]:
    """Time every case ``repeats`` times after ``warmup`` untimed rounds, interleaved.

    Round r runs the cases in the order rotated by r, so no case is always first (or always right
    after the same other case).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(cases)
    for _ in range(max(0, warmup)):
        for name in names:
            cases[name]()
    timer._sync()
    stats = {name: Stat() for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            stats[name].samples.append(timer.time(_keep(stats[name], cases[name])))
    return stats


def _keep(stat: Stat, fn: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        stat.last = None  # release the previous result before the call
        stat.last = fn()

    return call


def paired_ratio(stats: Mapping[str, Stat], num: str, den: str) -> float:
    """Median over rounds of time(num) / time(den), the two taken in the same round."""
    a, b = stats[num].samples, stats[den].samples
    return statistics.median(x / y for x, y in zip(a, b, strict=True))
