"""Which patches each method keeps for one image and one question, drawn on the image (one PNG).

The checkpoint (LLaVA-1.5, LLaVA-NeXT or Qwen2.5-VL) is loaded once; every entry of --configs runs on
those weights through the same batched code path as an lmms-eval run and becomes one panel (in-LLM
methods: one panel per pruning layer) titled with the method, the tokens it kept and the answer it
generated.

--configs: comma-separated entries (commas inside brackets do not split), each one of
    MODEL:CONFIG   a model id and a config name or YAML path      llava_sparsevlm:sparsevlm_64
    CONFIG         a config; its method (and the checkpoint's     visionzip_64
                   family) picks the model id
    MODEL          a model id with its default config             llava_fastv
  optionally followed by ;key=value pairs that apply to that entry only:
    config overrides        sparsezip_64;cross_beta=0
    model arguments         cdpruner_64;clip_text_tower=/models/clip-vit-large-patch14-336
                            visionzip_64;dtype=float16 (other load arguments: the checkpoint is loaded
                            once per distinct set of them)
--model-args: model arguments for every entry (k=v,...); each goes only to the entries that read it
  (clip_text_tower: the CDPruner entries), so entries may come in any order; an entry's own ;key=value
  wins. Config overrides belong on the entry.

CDPruner reads a CLIP text tower, by default openai/clip-vit-large-patch14-336 from the Hugging Face
hub; without network (HF_HUB_OFFLINE=1) pass clip_text_tower=FOLDER, a local copy. An entry that
fails prints its error on one line and the others are still drawn (exit code 1).

example (quote --configs: the shell reads ; as the end of a command):
  python -m sparsezip_lmms explain --pretrained llava-hf/llava-1.5-7b-hf --image photo.jpg \\
      --question "Is there a dog in the image?" --out explain.png \\
      --configs "visionzip_64,llava_sparsevlm:sparsevlm_64,llava_fastv,cdpruner_64;clip_text_tower=/models/clip"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .overlay import TILE_CROP, Panel, model_view, overlay_figure, panels_of

# model arguments explain sets itself: what to pass instead
_NOT_HERE = {
    "pretrained": "use --pretrained",
    "config": "the entry names its config (MODEL:CONFIG)",
    "log_selection": "explain always logs the selection",
    "warmup": "explain runs one request, nothing to warm up",
}
# model arguments read by some entries only (with_config takes them per entry); the rest load the checkpoint
_PER_ENTRY = frozenset({"clip_text_tower"})
_TOWER_HINT = (
    "pass clip_text_tower=FOLDER, a local copy of the CLIP checkpoint of the LLaVA vision tower (LLaVA-1.5: "
    "openai/clip-vit-large-patch14-336), in --model-args or on the entry (cdpruner_64;clip_text_tower=FOLDER)"
)


def model_for_method(method: str, family: str = "llava") -> str:
    """The model id that runs configs of `method` on the checkpoint `family` ("llava": LLaVA-1.5 and NeXT,
    "qwen2_5_vl"): the first of its `MethodSpec.model_ids` of that family (the id made for it, e.g. `none`
    -> `llava_hf_timed`, `pool` -> `llava_sparsezip`), else the family's generic id."""
    from ..methods.registry import get_method

    qwen = family == "qwen2_5_vl"
    ids = [i for i in get_method(method).model_ids if i.startswith("qwen2_5_vl_") == qwen]
    return ids[0] if ids else ("qwen2_5_vl_compressed" if qwen else "llava_compressed")


def _model_arg_keys() -> frozenset[str]:
    """Keys that are model arguments (the upstream adapters' and ours, LLaVA and Qwen2.5-VL), not config
    overrides."""
    from ..models.arguments import OWN_ARGS, PARENT_ARGS
    from ..models.qwen import OWN_ARGS as QWEN_OWN_ARGS, PARENT_ARGS as QWEN_PARENT_ARGS

    return frozenset(OWN_ARGS | PARENT_ARGS | QWEN_OWN_ARGS | QWEN_PARENT_ARGS)


def _short(value: str) -> str:
    """A path or hub id shortened for a label: its last component."""
    return value.rstrip("/").rsplit("/", 1)[-1] if "/" in value else value


@dataclass(frozen=True)
class Choice:
    """One entry of `--configs`: a model id, its config (None: the id's default), config overrides and
    the entry's own model arguments."""

    model_id: str
    config: str | None
    overrides: dict[str, str]
    model_args: dict[str, str] = field(default_factory=dict)
    method: str | None = None  # set when the model id was picked from the config's method (a CONFIG entry)

    def for_family(self, family: str) -> "Choice":
        """A CONFIG entry's model id for a checkpoint of `family` (MODEL entries stay as given)."""
        if self.method is None:
            return self
        return dataclasses.replace(self, model_id=model_for_method(self.method, family))

    @property
    def label(self) -> str:
        extra = "".join(f",{k}={v}" for k, v in self.overrides.items())
        extra += "".join(f",{k}={_short(v)}" for k, v in self.model_args.items())
        return f"{self.model_id}:{self.config or 'default'}{extra}"


def _check_model_args(args: dict[str, str], where: str) -> None:
    for key in args:
        if key in _NOT_HERE:
            raise ValueError(f"{where}: {key} is not taken here: {_NOT_HERE[key]}")


def parse_choice(text: str) -> Choice:
    """`MODEL:CONFIG`, `CONFIG` or `MODEL`, then optionally `;key=value;key=value` (config overrides
    and model arguments, told apart by the model arguments' names)."""
    from ..config import ConfigError, load_config
    from ..models.manifest import MODEL_CLASSES

    head, *pairs = [part.strip() for part in text.split(";")]
    overrides, model_args, model_keys = {}, {}, _model_arg_keys()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{text!r}: {pair!r} is not key=value")
        (model_args if key.strip() in model_keys else overrides)[key.strip()] = value.strip()
    _check_model_args(model_args, repr(text))
    if ":" in head:
        model_id, config = head.split(":", 1)
        if model_id not in MODEL_CLASSES:
            raise ValueError(f"{text!r}: unknown model id {model_id!r} (known: {', '.join(sorted(MODEL_CLASSES))})")
        return Choice(model_id, config or None, overrides, model_args)
    if head in MODEL_CLASSES:
        return Choice(head, None, overrides, model_args)
    try:
        method = load_config(head, overrides).method
    except ConfigError as err:
        raise ValueError(f"{text!r}: {err}") from None
    return Choice(model_for_method(method), head, overrides, model_args, method)


def split_choices(text: str) -> list[Choice]:
    """`--configs`: comma-separated entries (commas inside brackets do not split)."""
    from ..config import split_top_level

    return [parse_choice(item) for item in split_top_level(text, strict=True) if item]


@dataclass(frozen=True)
class Entry:
    """What one entry runs with: its choice, the arguments the checkpoint is loaded with, and the CLIP
    text tower it reads (`reads_clip_text`; `clip_text_tower` None: CDPruner's default)."""

    choice: Choice
    load_args: dict[str, str]
    reads_clip_text: bool = False
    clip_text_tower: str | None = None


def plan_entries(choices: list[Choice], model_args: dict[str, str] | None = None, family: str = "llava") -> list[Entry]:
    """Each entry's model arguments: `model_args` (`--model-args`, for every entry) with the entry's own
    on top. A per-entry argument (`clip_text_tower`) from `model_args` goes to the entries that read it
    only; given on an entry that does not read it, it is an error. Every entry's config is checked
    against its model id here (a ConfigError), before any weight is loaded."""
    from lmms_eval.models import get_model

    from ..methods.registry import method_of

    shared = dict(model_args or {})
    _check_model_args(shared, "--model-args")
    keys = _model_arg_keys()
    overrides = sorted(key for key in shared if key not in keys)
    if overrides:
        verb = "is not a model argument" if len(overrides) == 1 else "are not model arguments"
        raise ValueError(f"--model-args: {', '.join(overrides)} {verb}; config overrides go on the entry, e.g. sparsezip_64;{overrides[0]}=VALUE")
    entries = []
    for choice in choices:
        config = get_model(choice.model_id).resolve_config(choice.config, dict(choice.overrides))
        reads = family != "qwen2_5_vl" and method_of(config).needs("clip_text", config)  # Qwen: the LLM's embeddings
        own = dict(choice.model_args)
        if "clip_text_tower" in own and not reads:
            raise ValueError(f"{choice.label}: clip_text_tower is read by CDPruner configs only (this is a {config.method} config)")
        args = {**{k: v for k, v in shared.items() if k not in _PER_ENTRY or reads}, **own}
        load = {k: v for k, v in args.items() if k not in _PER_ENTRY}
        entries.append(Entry(choice, load, reads, args.get("clip_text_tower") if reads else None))
    return entries


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: nothing may be read from the hub."""
    return any(os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid hub id
        return False


def resolve_checkpoint(argument: str, value: str, hint: str, given: bool = True) -> str:
    """`value` (a folder or a hub id) checked without the network: a path that looks local must be a
    folder, and with HF_HUB_OFFLINE set a hub id must be in the local cache. A ValueError of one line
    naming `argument` and what to pass instead, at once (no hub retries); `given` False: `value` is the
    argument's default."""
    text = str(value)
    if os.path.isdir(os.path.expanduser(text)):
        return text
    given_as = f"{argument} {text}" if argument.startswith("-") else f"{argument}={text}"
    name = given_as if given else f"{argument} not given, its default {text}"
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or (os.sep != "/" and os.sep in text)
    if looks_local:
        raise ValueError(f"{name}: no such folder; {hint}")
    if hub_offline() and not _in_hub_cache(text):
        raise ValueError(f"{name}: HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache; {hint}")
    return text


def resolve_clip_text_tower(value: str | None) -> str:
    """CDPruner's CLIP text tower: `value`, else the default hub id, checked by `resolve_checkpoint`.
    Without a value and online, a note says the hub is about to be asked."""
    from ..llava.clip_text import DEFAULT_CLIP_TEXT_TOWER

    if value:
        return resolve_checkpoint("clip_text_tower", value, _TOWER_HINT)
    tower = resolve_checkpoint("clip_text_tower", DEFAULT_CLIP_TEXT_TOWER, _TOWER_HINT, given=False)
    if not _in_hub_cache(tower):
        print(f"note: explain: clip_text_tower not given: reading {tower} from the Hugging Face hub "
              "(pass clip_text_tower=FOLDER, or set HF_HUB_OFFLINE=1 to fail at once when offline)", file=sys.stderr)  # fmt: skip
    return tower


@dataclass
class Explained:
    """What one method did with the image and question (`error`: why the entry failed instead)."""

    choice: Choice
    answer: str
    visual_tokens: int  # visual tokens entering the LLM
    selection: dict[str, Any]
    visual_tokens_per_layer: list[int] | None = None  # in-LLM pruning: visual tokens after each layer
    error: str | None = None

    @property
    def kept(self) -> str:
        return tokens_kept(self.visual_tokens, self.visual_tokens_per_layer, layer_patches(self.selection))


def layer_patches(selection: dict[str, Any]) -> dict[int, int]:
    """{pruning layer: patches it kept} of a selection record's first image (in-LLM methods; else {})."""
    from .selection import parse_ranges

    images = selection.get("images") or [{}]
    return {int(layer): len(parse_ranges(ranges)) for layer, ranges in (images[0].get("layers") or {}).items()}


def tokens_kept(visual_tokens: int, per_layer: list[int] | None = None, patches: dict[int, int] | None = None) -> str:
    """What a method keeps, in words: `64 visual tokens kept` (vision side); for pruning inside the LLM the
    tokens that enter it and what each pruning leaves, as the panels say it (layers numbered from 0):
    `576 visual tokens in, kept 288 after layer 1`. `per_layer[i]`: the visual tokens of layer i's output
    (`PrunedOutput.visual_tokens_per_layer`); `patches`: {layer: patches kept} from the selection record,
    shown where the tokens also hold recycled ones (SparseVLM)."""
    steps, previous = [], visual_tokens
    for layer, count in enumerate(per_layer or []):
        if count != previous:
            own = (patches or {}).get(layer)
            extra = f" ({own} patches + {count - own} recycled)" if own is not None and own < count else ""
            steps.append(f"{count} after layer {layer}{extra}")
            previous = count
    if not steps:
        return f"{visual_tokens} visual tokens kept" + (" (none pruned in the LLM)" if per_layer else "")
    return f"{visual_tokens} visual tokens in, kept " + ", ".join(steps)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def checkpoint_family(pretrained: str) -> str:
    """"qwen2_5_vl" for a Qwen2.5-VL checkpoint, else "llava" (the LLaVA adapter checks the rest), from its
    config.json alone."""
    from transformers import AutoConfig

    try:
        model_type = getattr(AutoConfig.from_pretrained(pretrained), "model_type", None)
    except (OSError, ValueError) as err:
        raise ValueError(f"--pretrained {pretrained}: {_one_line(err)}") from None
    return "qwen2_5_vl" if model_type == "qwen2_5_vl" else "llava"


def _load(pretrained: str, load_args: dict[str, Any], family: str = "llava"):
    """The checkpoint with the stock config (every entry then gets its own with `with_config`); string
    values read as lmms-eval reads the upstream adapter's `--model_args`."""
    from lmms_eval.models import get_model
    from lmms_eval.utils import handle_arg_string

    args = {k: handle_arg_string(v) if isinstance(v, str) else v for k, v in load_args.items()}
    model_id = "qwen2_5_vl_hf_timed" if family == "qwen2_5_vl" else "llava_hf_timed"
    return get_model(model_id)(pretrained=pretrained, config="keep_all", **args, log_selection=True)


def explain(
    pretrained: str,
    image,
    question: str,
    choices: list[Choice],
    *,
    model_args: dict[str, Any] | None = None,
    max_new_tokens: int = 16,
) -> tuple[list[Explained], Any]:
    """Run every choice on `image` + `question`, the checkpoint loaded once per distinct set of load
    arguments. Returns one result per choice (a failed entry holds its `error`, the others still run)
    and the first loaded model (its processor tells how the vision tower crops; None if none loaded).
    Usage errors (unknown keys, a config its model id does not run, a missing --pretrained folder)
    raise before anything is loaded."""
    from lmms_eval.protocol import ChatMessages

    from ..config import ConfigError
    from ..llava.selection import image_fingerprint

    if not choices:
        raise ValueError("explain needs at least one config")
    resolve_checkpoint("--pretrained", pretrained, "pass --pretrained FOLDER, a local LLaVA or Qwen2.5-VL checkpoint")
    family = checkpoint_family(pretrained)
    entries = plan_entries([choice.for_family(family) for choice in choices], model_args, family)
    messages = [{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": question}]}]
    fingerprint = image_fingerprint(image)
    gen = {"max_new_tokens": max_new_tokens, "temperature": 0, "do_sample": False, "num_beams": 1}
    bases: dict[str, Any] = {}  # load arguments -> loaded model, or the error loading it gave
    results, first = [], None
    for entry in entries:
        choice = entry.choice
        load = {"device": "cpu", "batch_size": 1, **entry.load_args}
        key = json.dumps(load, sort_keys=True)
        try:
            if key not in bases:
                try:
                    bases[key] = _load(pretrained, load, family)
                except (ValueError, ConfigError, OSError, RuntimeError) as err:
                    bases[key] = ValueError(f"loading {pretrained}: {_one_line(err)}")
            base = bases[key]
            if isinstance(base, Exception):
                raise base
            first = base if first is None else first
            tower = resolve_clip_text_tower(entry.clip_text_tower) if entry.reads_clip_text else None
            lmm = base.with_config(choice.model_id, choice.config, choice.overrides, tower)
            answer, tokens, selection, per_layer = lmm.explain_prompt(ChatMessages(messages=messages), image, question, gen, fingerprint)
        except (ValueError, ConfigError, OSError, RuntimeError) as err:
            results.append(Explained(choice, "", 0, {}, error=_one_line(err)))
            continue
        results.append(Explained(choice, answer, tokens, selection, per_layer))
    return results, first


def crop_of(lmm) -> tuple[int, tuple[int, int]]:
    """(shortest-edge size, (crop height, crop width)) of the model's image processor."""
    processor = lmm._image_processor.image_processor
    size = processor.size.get("shortest_edge") or min(processor.size.get("height", 336), processor.size.get("width", 336))
    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else {"height": size, "width": size}
    return int(size), (int(crop["height"]), int(crop["width"]))


def tile_crop_of(lmm) -> int:
    """Side of one LLaVA-NeXT tile: the processor's crop height, else its size (as its patching does)."""
    processor = lmm._image_processor.image_processor
    crop = getattr(processor, "crop_size", None) or {}
    size = processor.size
    return int(crop.get("height") or size.get("height") or size.get("shortest_edge") or TILE_CROP)


def explained_panels(results: list[Explained]) -> list[Panel]:
    panels = []
    for result in results:
        if result.error is not None:
            continue
        grid = tuple(result.selection.get("grid") or (0, 0))  # Qwen2.5-VL images carry their own grid
        label = result.choice.label
        for entry in result.selection["images"]:
            panels += panels_of(entry, grid, label, result.answer)
    return panels


def explain_figure(image, results: list[Explained], lmm, path: str | Path, title: str | None = None, columns: int = 4, dpi: int = 110) -> Path:
    """The overlay PNG of ``results`` on ``image`` as ``lmm``'s processor feeds it to the vision tower:
    LLaVA-1.5 the centre crop; LLaVA-NeXT the base view, and for records with tiles the base view next
    to the tile mosaic of each record's own tile grid; Qwen2.5-VL records the image as Qwen resized it.
    Returns its path."""
    panels = explained_panels(results)
    if not hasattr(lmm, "geometry"):  # Qwen2.5-VL: every panel draws on the image as Qwen resized it
        return overlay_figure(image, panels, path, title=title, columns=columns, dpi=dpi, image=image)
    resize, crop = crop_of(lmm)
    next_model = lmm.geometry.any_resolution
    view = model_view(image, resize, crop, squash=next_model)
    return overlay_figure(
        view, panels, path, title=title, columns=columns, dpi=dpi,
        image=image if next_model else None, tile_crop=tile_crop_of(lmm) if next_model else TILE_CROP,
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparsezip_lmms explain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrained", required=True, help="llava-hf LLaVA-1.5 / NeXT or Qwen2.5-VL checkpoint: a hub id or a local folder (required)")
    parser.add_argument("--image", required=True, help="the image file (required)")
    parser.add_argument("--question", required=True, help="the question asked about the image (required)")
    parser.add_argument(
        "--configs", required=True, metavar="ENTRY[,ENTRY...]",
        help="comma-separated entries MODEL:CONFIG, CONFIG or MODEL, each optionally followed by ;key=value "
        "config overrides and model arguments for that entry only (see above) (required)",
    )  # fmt: skip
    parser.add_argument(
        "--model-args", default="", metavar="KEY=VALUE,...",
        help="model arguments for every entry, e.g. dtype=float16 or clip_text_tower=FOLDER; each goes only to "
        "the entries that read it (default: none)",
    )  # fmt: skip
    parser.add_argument("--model_args", dest="model_args", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # lmms-eval's spelling
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per answer (default: %(default)s)")
    parser.add_argument("--columns", type=int, default=4, help="panels per row of the PNG (default: %(default)s)")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the PNG (default: %(default)s)")
    parser.add_argument("--out", default="explain.png", help="the PNG to write (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write every entry's answer, kept tokens, selection record and error here (default: no JSON)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    from PIL import Image

    from ..config import ConfigError, split_args_string

    try:
        choices = split_choices(args.configs)
        extra = split_args_string(args.model_args) if args.model_args else {}
    except (ValueError, ConfigError) as err:
        print(f"error: explain: {err}", file=sys.stderr)
        return 2
    image_path = Path(args.image)
    if not image_path.is_file():
        print(f"error: explain: no such image: {image_path}", file=sys.stderr)
        return 2
    image = Image.open(image_path).convert("RGB")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        results, base = explain(
            args.pretrained, image, args.question, choices,
            model_args={"device": device, **extra} if args.device is None else {**extra, "device": device}, max_new_tokens=args.max_new_tokens,
        )  # fmt: skip
    except (ValueError, ConfigError, OSError) as err:
        print(f"error: explain: {_one_line(err)}", file=sys.stderr)
        return 2
    for result in results:
        if result.error is None:
            print(f"{result.choice.label}: {result.kept} -> {result.answer!r}")
        else:
            print(f"error: explain: {result.choice.label}: {result.error}", file=sys.stderr)
    if args.json:
        rows = [
            {"label": r.choice.label, "answer": r.answer, "visual_tokens": r.visual_tokens, "kept": None if r.error else r.kept,
             "visual_tokens_per_layer": r.visual_tokens_per_layer, "selection": r.selection, "error": r.error}
            for r in results
        ]  # fmt: skip
        Path(args.json).write_text(json.dumps(rows, indent=1))
    drawn = [r for r in results if r.error is None]
    if not drawn:
        print("error: explain: every entry failed: no figure written", file=sys.stderr)
        return 1
    path = explain_figure(image, drawn, base, args.out, title=f"Q: {args.question}", columns=args.columns, dpi=args.dpi)
    print(f"written: {path}")
    return 1 if len(drawn) < len(results) else 0
