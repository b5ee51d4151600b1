"""``python -m sparsezip_lmms calibrate``: fit SparseZip's dynamic K to a task's real images.

Dynamic K maps the spread of each image's hybrid score, ``log(Var(scores) + eps)``, linearly to the
number of dominant tokens. The mapping (``dynk.c``, ``dynk.scale``) only means something for the
images and the CLIP tower it was fitted on. This command runs the checkpoint's own CLIP tower on a
sample of an lmms-eval task's images (LLaVA-NeXT: on every crop, or per image pooled over its crops,
as the config's ``next_budget`` reads it), collects that statistic exactly as the compressor computes it,
fits ``dynk`` with :func:`sparsezip_lmms.compress.fit_dynamic_k` so that two quantiles of the sample
map to ``k_min`` and ``k_max``, and writes a config (``base:`` the given one, plus the fitted ``dynk``)
and a histogram of the K it gives::

    python -m sparsezip_lmms calibrate --pretrained llava-hf/llava-1.5-7b-hf --task pope --limit 256 \\
        --config sparsezip_64 --out sparsezip_64_pope.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .config import ConfigError, SparseZipConfig, config_to_dict, load_config

__all__ = ["calibrate", "main", "task_images"]


def task_images(task: str, limit: int, include_path: str | None = None) -> list:
    """The first ``limit`` images of an lmms-eval task's evaluation split (as its ``doc_to_visual`` gives them)."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    tasks = get_task_dict([task], manager, task_type="chat")
    if task not in tasks:
        raise ValueError(f"task {task!r} did not resolve (got {sorted(tasks)}); is it a group? name one task")
    obj = tasks[task]
    docs = obj.test_docs() if obj.has_test_docs() else obj.validation_docs()
    images = []
    for doc in docs:
        for visual in obj.doc_to_visual(doc) or []:
            if hasattr(visual, "convert"):
                images.append(visual.convert("RGB"))
        if len(images) >= limit:
            break
    if not images:
        raise ValueError(f"task {task!r} gave no images")
    return images[:limit]


@torch.no_grad()
def dynamic_k_statistics(model, processor, images: list, config: SparseZipConfig, batch_size: int = 8) -> torch.Tensor:
    """``log(Var(hybrid scores) + dynk.eps)`` per image [n], from the model's CLIP tower (what dynamic K reads).

    LLaVA-NeXT: what the config's ``next_budget`` reads, one value per crop (base view and tiles,
    ``per_crop``) or per image pooled over its crops (``per_image``)."""
    from .compress.sparsezip import dynamic_k_statistic
    from .llava.next import crop_counts, crop_owners, first_crops, flatten_crops
    from .llava.scoring import scoring_inputs

    inner = getattr(model, "model", model)
    layer = model.config.vision_feature_layer
    device, dtype = next(inner.vision_tower.parameters()).device, inner.vision_tower.dtype
    out = []
    for start in range(0, len(images), batch_size):
        processed = processor.image_processor(images=images[start : start + batch_size], return_tensors="pt")
        pixels, groups, first = processed["pixel_values"], None, None
        if pixels.dim() == 5:  # LLaVA-NeXT: [b, crops_max, 3, H, W]
            counts = crop_counts(processed["image_sizes"], model.config)
            pixels = flatten_crops(pixels, counts)  # [C, 3, H, W]
            if config.next_budget == "per_image":
                groups, first = crop_owners(counts, device), first_crops(counts)  # [C], [b]
        inputs = scoring_inputs(inner.vision_tower, pixels.to(device, dtype), layer=layer)
        statistic = dynamic_k_statistic(inputs.cls_attn, inputs.keys, config, groups).cpu()  # [b] or [C]
        out.append(statistic if first is None else statistic[first])
    return torch.cat(out)


def calibrate(config: SparseZipConfig, statistics: torch.Tensor, quantiles: tuple[float, float]) -> tuple[SparseZipConfig, torch.Tensor]:
    """(the config with the fitted ``dynk``, the K [n] it gives each image of the sample)."""
    from .compress.sparsezip import dynamic_k_from_statistic, fit_dynamic_k

    c, scale = fit_dynamic_k(statistics, config.k_min, config.k_max, quantiles)
    fitted = config.model_copy(update={"dynk": config.dynk.model_copy(update={"c": float(c), "scale": float(scale)})})
    return fitted, dynamic_k_from_statistic(statistics, fitted)


def _histogram(ks: torch.Tensor, config: SparseZipConfig, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    values = ks.tolist()
    ax.hist(values, bins=range(config.k_min, config.k_max + 2), color="tab:blue", edgecolor="white", align="left")
    ax.set_xlabel("dominant tokens K (dynamic)")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    description = __doc__.replace("``", "").replace(":func:", "").replace("`", "").replace("::\n", ":\n")
    parser = argparse.ArgumentParser(
        prog="python -m sparsezip_lmms calibrate", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrained", required=True, help="llava-hf checkpoint: a hub id or a local folder (required)")
    parser.add_argument("--task", required=True, help="an lmms-eval task whose images are sampled, e.g. pope (required)")
    parser.add_argument("--include-path", default=None, help="extra lmms-eval task folder, as lmms-eval's --include_path (default: none)")
    parser.add_argument("--include_path", dest="include_path", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # lmms-eval's spelling
    parser.add_argument("--limit", type=int, default=256, help="images sampled (default: %(default)s)")
    parser.add_argument("--config", default="sparsezip_64", help="the SparseZip config to calibrate, its k_min/k_max/eps (default: %(default)s)")
    parser.add_argument("--quantiles", default="0.1,0.9", help="the two statistic quantiles mapped to k_min,k_max (default: %(default)s)")
    parser.add_argument("--out", required=True, help="the config YAML to write (required)")
    parser.add_argument("--plot", default=None, help="histogram PNG of K (default: --out with .png)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="auto", help="float16, bfloat16, float32, float64 or auto, the checkpoint's (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per CLIP forward (default: %(default)s)")
    parser.add_argument("--batch_size", dest="batch_size", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # lmms-eval's spelling
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    try:
        config = load_config(args.config)
        if not isinstance(config, SparseZipConfig) or config.skip_dynamic_k:
            raise ConfigError(f"{args.config} is not a SparseZip config with dynamic K (skip_dynamic_k: false)")
        low, high = (float(q) for q in args.quantiles.split(","))
        if not 0 <= low < high <= 1:
            raise ConfigError(f"--quantiles must be two increasing numbers in [0, 1], got {args.quantiles!r}")
        if args.limit < 2:
            raise ConfigError("--limit must be at least 2 (a spread needs two images)")
    except (ConfigError, ValueError) as err:
        print(f"error: calibrate: {err}", file=sys.stderr)
        return 2

    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    model_type = AutoConfig.from_pretrained(args.pretrained).model_type
    if model_type not in ("llava", "llava_next"):
        print(f"error: calibrate: {args.pretrained} is a {model_type!r} checkpoint, not llava-hf LLaVA-1.5 or LLaVA-NeXT", file=sys.stderr)
        return 2
    images = task_images(args.task, args.limit, args.include_path)
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(args.pretrained, dtype=dtype).to(args.device).eval()
    processor = AutoProcessor.from_pretrained(args.pretrained)
    statistics = dynamic_k_statistics(model, processor, images, config, args.batch_size)
    fitted, ks = calibrate(config, statistics, (low, high))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dynk = config_to_dict(fitted)["dynk"]
    header = (
        f"# dynamic K of {args.config} fitted on {len(images)} images of {args.task} with {args.pretrained}:\n"
        f"# quantiles {low:g}/{high:g} of log(Var(scores) + eps) -> k_min {config.k_min} / k_max {config.k_max};\n"
        f"# K on the sample: min {int(ks.min())}, median {int(ks.median())}, max {int(ks.max())}\n"
    )
    base = args.config if not Path(args.config).suffix else str(Path(args.config).resolve())
    out.write_text(header + f"base: {base}\ndynk:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in dynk.items()))
    load_config(str(out))  # the written file is a valid config
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    _histogram(ks, config, plot, f"{args.config} on {args.task} ({len(images)} images): dynk.c={dynk['c']:.3g}, scale={dynk['scale']:.3g}")
    print(f"wrote {out} (dynk.c={dynk['c']:.6g}, dynk.scale={dynk['scale']:.6g}) and {plot}")
    unit = "crops" if model_type == "llava_next" and config.next_budget == "per_crop" else "images"
    print(f"K on the sample ({len(ks)} {unit}): min {int(ks.min())}, median {int(ks.median())}, max {int(ks.max())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
