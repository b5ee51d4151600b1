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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from sparsezip_lmms.demo.tiny_checkpoint import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_next_checkpoint(tmp_path_factory) -> Path:
    """A tiny random LLaVA-NeXT checkpoint (any-resolution tiles, image newline, the NeXT processor)."""
    from sparsezip_lmms.demo.tiny_checkpoint import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_next") / "tiny-llava-next", next_grid=True)


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
