"""Device-aware timing: host clocks read only after the device has finished the timed work."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from transformers.generation.stopping_criteria import StoppingCriteria


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu" and hasattr(torch, "xpu"):
        torch.xpu.synchronize(device)
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def now(device: torch.device | str) -> float:
    """A host timestamp (seconds) taken after all queued work on ``device`` has completed."""
    synchronize(device)
    return time.perf_counter()


class TokenClock:
    """When each generated token was ready, for every method alike, without a host wait per step.

    ``tick()`` marks one generated token. On CUDA (and XPU) it records an event in the device's stream,
    which costs no synchronisation; the events are read once, at the end (:attr:`step_times`), against a
    reference event recorded at :meth:`start` together with a host timestamp taken after a device
    synchronisation. On the CPU (synchronous) and other devices it reads the host clock after
    ``synchronize``. Stock ``generate`` ticks through :meth:`stopping_criterion` (called once per
    generated token inside its loop, unlike a streamer, which transformers may call a step late);
    the pruning decoder calls :meth:`tick` itself. ``step_times[0]`` is the first token (end of the
    prefill), ``step_times[-1]`` the last.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._events = self.device.type in ("cuda", "xpu")
        self._marks: list = []
        self._reference = None
        self._reference_time = 0.0

    def start(self) -> float:
        """Synchronise once and take the reference; returns that host time (the start of generation)."""
        self._marks = []
        self._reference_time = now(self.device)
        if self._events:
            self._reference = self._event()
        return self._reference_time

    def _event(self):
        module = torch.cuda if self.device.type == "cuda" else torch.xpu
        event = module.Event(enable_timing=True)
        event.record()
        return event

    def tick(self) -> None:
        """One generated token is ready (enqueued, on an asynchronous device)."""
        if self._events:
            self._marks.append(self._event())
        else:
            synchronize(self.device)  # no-op on the CPU
            self._marks.append(time.perf_counter())

    def keep(self, n: int) -> None:
        """Forget the ticks after the first ``n`` (tokens computed past the stop, then cut)."""
        del self._marks[n:]

    @property
    def ticks(self) -> int:
        return len(self._marks)

    @property
    def step_times(self) -> list[float]:
        """Host times (``time.perf_counter`` scale) at which each token was ready."""
        if not self._events:
            return list(self._marks)
        synchronize(self.device)
        return [self._reference_time + self._reference.elapsed_time(event) / 1000.0 for event in self._marks]

    def stopping_criterion(self) -> "StoppingCriteria":
        """A ``generate`` stopping criterion that never stops and ticks once per generated token."""
        return _ClockCriterion(self)


class _ClockCriterion(StoppingCriteria):
    def __init__(self, clock: TokenClock) -> None:
        self.clock = clock

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.clock.tick()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # [B] never done


class MethodTimer:
    """Seconds a compression method spends in its own steps (scoring, selection, merging; an in-LLM
    rule's decisions), summed over the timed steps of one batch.

    Each :meth:`step` reads the host clock after synchronising the device, before and after the step,
    so the figure is the step's own time. A caller without a timer passes ``None``: :func:`method_step`
    then times nothing."""

    def __init__(self, device: torch.device | str):
        self.device = device
        self.seconds = 0.0

    @contextmanager
    def step(self) -> Iterator[None]:
        start = now(self.device)
        try:
            yield
        finally:
            self.seconds += now(self.device) - start


def method_step(timer: MethodTimer | None):
    """``timer.step()``, or a context that times nothing when there is no timer."""
    return nullcontext() if timer is None else timer.step()
