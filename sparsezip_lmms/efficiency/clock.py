"""Device-aware timing: host clocks read only after the device has finished the timed work."""

from __future__ import annotations

import time

import torch
from transformers.generation.streamers import BaseStreamer


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


class TokenClock(BaseStreamer):
    """A generation streamer that timestamps every decoding step.

    ``generate`` hands each step's tokens to ``put`` as a host tensor (``tokens.cpu()``), which
    already waits for the device, so the timestamps taken here are device-accurate. The first call
    carries the prompt (an empty tensor when generating from ``inputs_embeds``) and is ignored.
    """

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        self.step_times.append(time.perf_counter())

    def end(self) -> None:
        pass
