"""``qwen2_5_vl_hf_timed`` (keep_all) gives lmms-eval's own ``qwen2_5_vl`` answers, through the CLI on a tiny
random Qwen2.5-VL and the mini POPE and MME tasks, both at upstream's defaults (bfloat16, min/max pixels 256·28²
and 1,605,632: the mini images lie inside them, so both adapters resize them to the same size).

lmms-eval's adapter needs torchvision (Qwen's video processor, ``qwen_vl_utils``), which cannot load beside the
CPU build of torch that ``make test`` installs: ``make test-upstream`` runs this file in an environment with a
torchvision that loads (``scripts/install.sh`` with ``SPARSEZIP_TORCHVISION=1``), as do the GPU machines of
``scripts/gpu_check.sh``; elsewhere it is skipped with that reason.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sparsezip_lmms.demo.harness import lmms_eval_command
from _inprocess import run_in_process

pytestmark = pytest.mark.e2e


def _torchvision_loads() -> bool:
    if importlib.util.find_spec("torchvision") is None or importlib.util.find_spec("qwen_vl_utils") is None:
        return False
    try:
        import qwen_vl_utils  # noqa: F401  (imports torchvision)
    except Exception:  # noqa: BLE001 - a torchvision built for another torch fails here
        return False
    return True


@pytest.mark.skipif(not _torchvision_loads(), reason="lmms-eval's qwen2_5_vl needs torchvision, which does not load here (make test-upstream)")
def test_keep_all_answers_as_lmms_evals_own_qwen2_5_vl(tmp_path, mini_tasks):
    from sparsezip_lmms.demo.tiny_qwen import build_tiny_qwen2_5_vl

    checkpoint = build_tiny_qwen2_5_vl(tmp_path / "tiny-qwen2.5-vl")
    include, names = mini_tasks
    device = "cuda" if torch.cuda.is_available() else "cpu"
    answers = {}
    for model, args in (("qwen2_5_vl", f"pretrained={checkpoint},device_map={device}"),
                        ("qwen2_5_vl_hf_timed", f"pretrained={checkpoint},dtype=bfloat16")):  # fmt: skip
        out = tmp_path / model
        cmd = lmms_eval_command(
            model, args, [names["pope"], names["mme"]], out, include_path=include, batch_size=1, device=device,
            extra=["--gen_kwargs", "max_new_tokens=4", "--limit", "6"],
        )  # fmt: skip
        run = run_in_process(cmd, out, timeout=600)
        answers[model] = {(task, row["doc_id"]): str(row["filtered_resps"]) for task, rows in run.samples.items() for row in rows}
    upstream = answers["qwen2_5_vl"]
    assert len(upstream) == 12 and len(set(upstream.values())) > 1  # answers that depend on the image and question
    assert upstream == answers["qwen2_5_vl_hf_timed"]
