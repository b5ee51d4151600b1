"""``python -m sparsezip_lmms calibrate`` on the tiny checkpoint and the mini POPE task, offline."""

from __future__ import annotations

import pytest
import torch

from sparsezip_lmms.__main__ import main
from sparsezip_lmms.config import load_config

pytestmark = pytest.mark.e2e


def test_calibrate_fits_dynamic_k_and_writes_a_config(tiny_checkpoint, mini_tasks, tmp_path):
    include, names = mini_tasks
    out = tmp_path / "sparsezip_64_pope.yaml"
    args = ["calibrate", "--pretrained", str(tiny_checkpoint), "--task", names["pope"], "--include_path", str(include),
            "--limit", "12", "--config", "sparsezip_64", "--out", str(out), "--device", "cpu", "--dtype", "float64"]  # fmt: skip
    assert main(args) == 0
    fitted, base = load_config(str(out)), load_config("sparsezip_64")
    assert (fitted.dynk.c, fitted.dynk.scale) != (base.dynk.c, base.dynk.scale)
    assert fitted.model_copy(update={"dynk": base.dynk}) == base  # only dynk changed
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the fitted mapping sends the sample's 10 % / 90 % quantiles of the statistic to k_min / k_max,
    # and the compressor itself gives every image the K the calibration predicted
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from sparsezip_lmms.calibrate import dynamic_k_statistics, task_images
    from sparsezip_lmms.compress import sparsezip
    from sparsezip_lmms.compress.sparsezip import dynamic_k_from_statistic
    from sparsezip_lmms.llava.scoring import scoring_inputs

    model = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float64).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    images = task_images(names["pope"], 12, str(include))
    stats = dynamic_k_statistics(model, processor, images, fitted)
    low, high = torch.quantile(stats, torch.tensor([0.1, 0.9], dtype=stats.dtype)).tolist()
    assert fitted.dynk.c + fitted.dynk.scale * low == pytest.approx(fitted.k_min)
    assert fitted.dynk.c + fitted.dynk.scale * high == pytest.approx(fitted.k_max)
    ks = dynamic_k_from_statistic(stats, fitted)
    assert int(ks.min()) == fitted.k_min and int(ks.max()) == fitted.k_max  # the sample spreads over the range
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"].to(torch.float64)
    inputs = scoring_inputs(model.model.vision_tower, pixels, layer=-2)
    no_merge = fitted.model_copy(update={"merging": fitted.merging.model_copy(update={"contextual_num": 0})})
    counts = sparsezip(inputs.hidden, inputs.cls_attn, inputs.keys, no_merge).counts  # CLS + dominant per image
    assert counts.tolist() == ks.tolist()


def test_calibrate_refuses_configs_without_dynamic_k(tmp_path, capsys):
    assert main(["calibrate", "--pretrained", "x", "--task", "pope", "--config", "visionzip_64", "--out", str(tmp_path / "c.yaml")]) == 2
    assert "not a SparseZip config with dynamic K" in capsys.readouterr().err
