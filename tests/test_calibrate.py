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


@pytest.mark.parametrize("budget", ["per_crop", "per_image"])
def test_calibrate_on_next_reads_what_the_compressor_reads(budget, tiny_next_checkpoint, mini_tasks, tmp_path):
    """On a LLaVA-NeXT checkpoint the statistic is taken per crop or per image (``next_budget``), and
    the K it predicts is the budget the NeXT compressor gives: per crop, or crops x K per image."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from sparsezip_lmms.calibrate import dynamic_k_statistics, task_images
    from sparsezip_lmms.compress.sparsezip import dynamic_k_from_statistic
    from sparsezip_lmms.llava.features import image_tokens
    from sparsezip_lmms.llava.next import crop_counts

    include, names = mini_tasks
    name = "sparsezip_next_320" if budget == "per_crop" else "ablations/next_budget_per_image"
    out = tmp_path / "fitted.yaml"
    args = ["calibrate", "--pretrained", str(tiny_next_checkpoint), "--task", names["pope"], "--include_path", str(include),
            "--limit", "6", "--config", name, "--out", str(out), "--device", "cpu", "--dtype", "float64"]  # fmt: skip
    assert main(args) == 0
    fitted = load_config(str(out))
    assert fitted.next_budget == budget

    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_checkpoint, dtype=torch.float64).eval()
    processor = AutoProcessor.from_pretrained(tiny_next_checkpoint)
    images = task_images(names["pope"], 6, str(include))
    ks = dynamic_k_from_statistic(dynamic_k_statistics(model, processor, images, fitted), fitted)
    processed = processor.image_processor(images=images, return_tensors="pt")
    counts = crop_counts(processed["image_sizes"], model.config)
    assert len(ks) == (sum(counts) if budget == "per_crop" else len(images))
    no_merge = fitted.model_copy(update={"merging": fitted.merging.model_copy(update={"contextual_num": 0})})
    selected = image_tokens(model, processed["pixel_values"].to(torch.float64), no_merge, image_sizes=processed["image_sizes"])
    if budget == "per_crop":
        assert selected.crops.counts.tolist() == ks.tolist()  # CLS + dominant of every crop
    else:
        assert selected.counts.tolist() == [c * int(k) for c, k in zip(counts, ks)]
    assert len(set(ks.tolist())) > 1  # the sample spreads
