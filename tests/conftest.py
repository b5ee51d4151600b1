"""Offline fixtures: a tiny random LLaVA-1.5 checkpoint and mini POPE/MME/DocVQA datasets.

Built once per test session under a temporary folder with the same builders the demo uses, then
loaded back through ``from_pretrained`` / ``load_from_disk`` like real hub artefacts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one torch thread each (and in the processes a
    # test starts), so the workers do not oversubscribe the cores (docs/TESTING.md)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from sparsezip_lmms.demo.tiny_checkpoint import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_next_checkpoint(tmp_path_factory) -> Path:
    """A tiny random LLaVA-NeXT checkpoint (any-resolution tiles, image newline, the NeXT processor).

    Its CLIP has 3 layers (features from layer -2, as every LLaVA's): the NeXT paths differ from
    LLaVA-1.5's in the tiles, not the depth, and an image runs CLIP on up to 5 crops."""
    from sparsezip_lmms.demo.tiny_checkpoint import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_next") / "tiny-llava-next", next_grid=True, vision_layers=3)


@pytest.fixture(scope="session")
def shallow_checkpoints(tmp_path_factory) -> dict[int, Path]:
    """{LLM layers: checkpoint}: tiny_checkpoint's geometry (576 patches + CLS, 336 px, features from
    layer -2) on a 3-layer CLIP, with a 16-layer LLM (SparseVLM prunes at layers 2, 6 and 15) or a
    4-layer one (every other method decides before layer 2). For the dtype x attention x batch matrix,
    where half precision on the CPU makes every layer costly and the depth changes nothing it checks."""
    from sparsezip_lmms.demo.tiny_checkpoint import build_tiny_llava

    root = tmp_path_factory.mktemp("shallow")
    return {layers: build_tiny_llava(root / f"llm{layers}", vision_layers=3, text_layers=layers) for layers in (4, 16)}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIP checkpoint with tokenizer (CDPruner's text tower), matching tiny_checkpoint's vision width."""
    from sparsezip_lmms.demo.tiny_checkpoint import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def mini_tasks(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(include_path folder, {upstream name: local task name}) for mini POPE, MME and DocVQA."""
    from sparsezip_lmms.demo.harness import write_local_tasks
    from sparsezip_lmms.demo.mini_datasets import MINI_BUILDERS

    root = tmp_path_factory.mktemp("mini")
    data_dirs = {name: builder(root / "data" / name) for name, builder in MINI_BUILDERS.items()}
    names = write_local_tasks(root / "tasks", data_dirs)
    return root / "tasks", dict(zip(data_dirs, names))


@pytest.fixture(scope="session")
def llava_pair(tiny_checkpoint):
    """The tiny checkpoint loaded in float64 with its processor (for exactness tests)."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float64).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    processor.tokenizer.padding_side = "left"
    return model, processor


# ----------------------------------------------------------------------------- the suite's own time

# the budget is 15 min on a quiet 2-core machine; CI machines are noisy, so past 20 min a warning, never a failure
SUITE_WARN_MINUTES = float(os.environ.get("SPARSEZIP_SUITE_WARN_MINUTES", "20"))
_started: list[float] = []


def pytest_sessionstart(session) -> None:
    import time

    _started.append(time.monotonic())


@pytest.hookimpl(tryfirst=True)  # before the --durations report (addopts), so the line sits above it
def pytest_terminal_summary(terminalreporter) -> None:
    import time

    if not _started:
        return
    minutes = (time.monotonic() - _started[0]) / 60
    if minutes > SUITE_WARN_MINUTES:
        terminalreporter.write_line(
            f"warning: the test suite took {minutes:.1f} min, over its {SUITE_WARN_MINUTES:g} min warning line "
            "(budget: 15 min on a quiet 2-core machine; see docs/TESTING.md and the slowest tests below)",
            yellow=True,
        )
