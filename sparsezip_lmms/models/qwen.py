"""The lmms-eval model ids of Qwen2.5-VL with visual-token compression.

``CompressedQwen`` subclasses lmms-eval's chat ``Qwen2_5_VL`` adapter (what ``--model qwen2_5_vl``
resolves to) without running its constructor (which needs ``qwen_vl_utils`` and torchvision): it loads the
model and an image-only processor itself, checks the config before any weight is read, and generates in
batches through :func:`sparsezip_lmms.qwen.compressed_generate` (``models.qwen_pipeline``). Requests,
batching, retries and the unpruned handling of prompts with 0 or several images under an in-LLM method are
those of the LLaVA adapter (``models.base.CompressedLlava``), shared by reference.

Prompts: the chat template of the checkpoint (``processor.apply_chat_template`` on the task's messages), the
images resized with ``qwen_vl_utils``' ``smart_resize`` rule (multiples of 28; ``min_pixels`` /
``max_pixels`` from the model arguments, upstream's defaults 256·28² / 1,605,632), left padding.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from loguru import logger as eval_logger

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages


from ..config import (
    CompressionConfig,
    ConfigError,
    KeepAllConfig,
    config_to_dict,
    prunes_in_llm,
)
from ..efficiency.qwen_flops import QwenDims
from ..efficiency.records import EfficiencyRecord
from ..efficiency.task_hooks import UID_COLUMN
from ..llava.selection import image_fingerprint
from .arguments import count_arg, flag_arg, from_arg_string, load_accepted_config, placement
from .base import CompressedLlava, _Prepared
from .pipeline import apply_until
from .qwen_pipeline import qwen_batch, qwen_record, resize_image

__all__ = ["CompressedQwen", "QWEN_FAMILY"]


def _upstream_adapter() -> type:
    """lmms-eval's chat ``Qwen2_5_VL``, imported without its warning about ``qwen_vl_utils`` (not used here:
    the images are resized by :func:`.qwen_pipeline.smart_resize`); the warning would reach every command that
    lists the model ids (``doctor`` prints JSON on stdout)."""
    quiet = ("lmms_eval.models.simple.qwen2_5_vl", "lmms_eval.models.chat.qwen2_5_vl")
    for name in quiet:
        eval_logger.disable(name)
    try:
        from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL
    finally:
        for name in quiet:
            eval_logger.enable(name)
    return Qwen2_5_VL


_Qwen2_5_VLChat = _upstream_adapter()


QWEN_FAMILY = "qwen2_5_vl"
# the upstream adapter's constructor arguments we honour (the rest of its signature is video-only)
PARENT_ARGS = frozenset({
    "device", "device_map", "batch_size", "use_cache", "attn_implementation", "min_pixels", "max_pixels", "dtype",
    "revision", "trust_remote_code", "system_prompt", "max_num_frames", "fps", "interleave_visuals", "reasoning_prompt",
})  # fmt: skip
OWN_ARGS = frozenset({"config", "warmup", "log_selection"})


class CompressedQwen(_Qwen2_5_VLChat):
    """Qwen2.5-VL (Qwen/Qwen2.5-VL-*-Instruct) with visual-token compression, batched, instrumented."""

    is_simple = False
    model_id = "qwen2_5_vl_hf_timed"
    default_config: str | None = "keep_all"
    generic = False  # True: every method the Qwen path runs (qwen2_5_vl_compressed)

    @classmethod
    def accepted_methods(cls) -> tuple[str, ...]:
        """The registered methods this id runs: those declaring the family ``qwen2_5_vl`` whose
        ``MethodSpec.model_ids`` name the id (all of them for the generic id)."""
        from ..methods.registry import all_methods

        specs = [s for s in all_methods() if QWEN_FAMILY in s.families and (cls.generic or cls.model_id in s.model_ids)]
        return tuple(
            s.name
            for s in sorted(
                specs,
                key=lambda s: (s.name not in cls.model_id, s.stage == "stock", s.name),
            )
        )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "CompressedQwen":
        """Build from the raw ``--model_args`` string (ours and the overrides stay strings for the config)."""
        return from_arg_string(cls, arg_string, additional_config, PARENT_ARGS)

    @classmethod
    def resolve_config(
        cls, name_or_path: Any, overrides: dict[str, Any], llm_layers: int | None = None
    ) -> CompressionConfig:
        """The config, checked: a method this id accepts, one the Qwen path runs (``qwen.inputs.check_method``),
        in-LLM layers within the checkpoint's ``llm_layers``. ConfigError naming the problem."""
        from ..qwen.inputs import check_method

        accepted = cls.accepted_methods()
        config, name = load_accepted_config(
            cls.model_id, name_or_path, cls.default_config, overrides, accepted,
            f"one the Qwen2.5-VL path runs ({', '.join(accepted)})",
            "qwen2_5_vl_compressed accepts every method the Qwen2.5-VL path runs",
        )  # fmt: skip
        try:
            check_method(config)
        except ValueError as err:
            raise ConfigError(f"{cls.model_id} --model_args: config {name!r}: {err}") from None
        if llm_layers is not None and prunes_in_llm(config):
            layers = list(getattr(config, "pruning_layers", None) or [getattr(config, "layer", 0)])
            beyond = [layer for layer in layers if layer > llm_layers - 1]
            if beyond:
                raise ConfigError(
                    f"{cls.model_id} --model_args: config {name!r} prunes at layer {beyond[0]}, but this checkpoint's "
                    f"LLM has {llm_layers} layers (0..{llm_layers - 1})"
                )
        return config

    def __init__(self, pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct", **kwargs: Any) -> None:
        from transformers import AutoConfig

        parent = {k: v for k, v in kwargs.items() if k in PARENT_ARGS}
        own = {k: v for k, v in kwargs.items() if k in OWN_ARGS}
        overrides = {k: v for k, v in kwargs.items() if k not in PARENT_ARGS and k not in OWN_ARGS}
        # everything about the config is checked before a single weight is loaded (the config alone first,
        # then against the checkpoint's config.json)
        self.resolve_config(own.get("config"), overrides)
        checkpoint = AutoConfig.from_pretrained(pretrained, revision=parent.get("revision", "main"))
        if getattr(checkpoint, "model_type", None) != "qwen2_5_vl":
            raise ValueError(
                f"{self.model_id}: {pretrained} is a {getattr(checkpoint, 'model_type', None)!r} checkpoint; this model "
                "runs Qwen2.5-VL checkpoints (model_type 'qwen2_5_vl', e.g. Qwen/Qwen2.5-VL-7B-Instruct)"
            )
        layers = int(checkpoint.text_config.num_hidden_layers)
        self.compression: CompressionConfig = self.resolve_config(own.get("config"), overrides, layers)
        self.warmup = count_arg(self.model_id, "warmup", own.get("warmup", 0))
        self.log_selection = flag_arg(self.model_id, "log_selection", own.get("log_selection", True))
        lmms.__init__(self)  # not Qwen2_5_VL.__init__: it builds the video processor (torchvision)
        self._load(pretrained, placement(parent))
        self._requests_seen = 0
        self.config_name = str(own.get("config") or self.default_config)
        self._effective_config = config_to_dict(self.compression)
        eval_logger.info(
            f"{self.model_id}: config {self.config_name} -> {json.dumps(self._effective_config, sort_keys=True)}"
        )

    def _load(self, pretrained: str, args: dict[str, Any]) -> None:
        from accelerate import Accelerator
        from transformers import Qwen2_5_VLForConditionalGeneration

        from ..demo.tiny_qwen import load_qwen_processor

        self.accelerator = Accelerator()
        device = str(args.get("device") or "cuda")
        if self.accelerator.num_processes > 1 and device.startswith("cuda"):  # one GPU per rank, as upstream
            device = args["device_map"] = f"cuda:{self.accelerator.local_process_index}"
        self._device = torch.device(device)
        self.device_map = args.get("device_map") or str(self._device)
        dtype = args.get("dtype") or "bfloat16"
        load = {
            "dtype": getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype,
            "device_map": self.device_map,
        }
        if args.get("attn_implementation"):
            load["attn_implementation"] = args["attn_implementation"]
        self._model = Qwen2_5_VLForConditionalGeneration.from_pretrained(pretrained, **load).eval()
        self.min_pixels = int(args.get("min_pixels", 256 * 28 * 28))
        self.max_pixels = int(args.get("max_pixels", 1605632))
        self.max_num_frames, self.fps = 32, None
        self.system_prompt = args.get("system_prompt", "You are a helpful assistant.")
        self.interleave_visuals, self.reasoning_prompt = False, None
        self.processor = load_qwen_processor(pretrained, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        self._tokenizer = self.processor.tokenizer
        self._config = self._model.config
        self._dims = QwenDims.from_config(self._config)  # the FLOP count's sizes, once per model
        self._max_length = 2048
        self.batch_size_per_gpu = int(args.get("batch_size", 1) or 1)
        self.use_cache = bool(args.get("use_cache", True))
        if self.accelerator.num_processes > 1:  # data parallel: each rank its own shard (CPU or GPU)
            self._rank, self._world_size = (
                self.accelerator.process_index,
                self.accelerator.num_processes,
            )
        else:
            self._rank, self._world_size = 0, 1

    def with_config(
        self, model_id: str, config: str | None = None, overrides: dict[str, Any] | None = None, clip_text_tower: str | None = None
    ) -> "CompressedQwen":
        """Model id ``model_id`` with ``config`` (and overrides) on this instance's loaded checkpoint: a new
        instance that shares the weights, the processor and the device placement (weights are only read, so
        neither changes how the other generates). Checked like a fresh load."""
        from lmms_eval.models import get_model

        cls = get_model(model_id)
        if not (isinstance(cls, type) and issubclass(cls, CompressedQwen)):
            raise ConfigError(f"{model_id} does not run Qwen2.5-VL checkpoints: use a qwen2_5_vl_<method> model id")
        if clip_text_tower is not None:
            raise ConfigError(f"{model_id}: clip_text_tower is not read on Qwen2.5-VL (CDPruner's relevance comes from the LLM's embeddings)")
        other = cls.__new__(cls)
        other.__dict__.update(self.__dict__)
        other.compression = cls.resolve_config(config, dict(overrides or {}), int(self._config.text_config.num_hidden_layers))
        other.config_name = str(config or cls.default_config)
        other._effective_config = config_to_dict(other.compression)
        other._requests_seen = 0
        return other

    def explain_prompt(self, messages: ChatMessages, image, question: str, gen_kwargs: dict[str, Any], fingerprint: str):
        """(answer, visual tokens entering the LLM, selection record, visual tokens after each LLM layer or
        None) of one prompt with one image, through the batched path of an lmms-eval run (``explain``)."""
        text, images = self.chat_prompt(messages)
        out = qwen_batch(self, [text], images, gen_kwargs, self.compression, [fingerprint])
        return out.texts[0], out.visual_tokens[0], out.selections[0], out.per_layer[0] if out.per_layer else None

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    # --------------------------------------------------------- shared with the LLaVA adapter (same code)

    _prunes_in_llm = CompressedLlava._prunes_in_llm
    _regroup = staticmethod(CompressedLlava._regroup)
    _failure = CompressedLlava._failure
    _document_key = CompressedLlava._document_key
    _run_batch = CompressedLlava._run_batch
    generate_until = CompressedLlava.generate_until

    @property
    def _unpruned_config(self) -> CompressionConfig:
        return KeepAllConfig(seed=getattr(self.compression, "seed", 0))

    # ------------------------------------------------------------------ prompts

    def chat_prompt(self, messages: ChatMessages) -> tuple[str, list]:
        """(chat text, resized images) of one prompt: the adapter's own input builder."""
        images, videos, _ = messages.extract_media()
        if videos:
            raise ValueError(f"{self.model_id} handles images only; the prompt has a video")
        if any(image is None for image in images):
            raise ValueError("the prompt expects an image where the document has none (None)")
        hf_messages = messages.to_hf_messages()
        text = self.processor.apply_chat_template(hf_messages, tokenize=False, add_generation_prompt=True)
        return text, [resize_image(image, self.min_pixels, self.max_pixels) for image in images]

    def _prepare(self, index: int, request: Instance) -> _Prepared:
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        try:
            doc = self.task_dict[task][split][doc_id]
            messages = ChatMessages(messages=doc_to_messages(doc))
            text, images = self.chat_prompt(messages)
        except Exception as err:  # noqa: BLE001 - say which document, keep the cause
            raise ValueError(f"doc {doc_id} of {task}/{split} cannot be read or made into a prompt: {err!r}") from err
        key = json.dumps(gen_kwargs, sort_keys=True, default=str)
        uid = doc.get(UID_COLUMN) if isinstance(doc, dict) else None
        cost = sum(image.width * image.height // (28 * 28) for image in images)  # merged tokens of its images
        # the pictures as the document holds them (before the resize), as the LLaVA adapter fingerprints them
        fingerprints = [image_fingerprint(image) for image in messages.extract_media()[0]] if self.log_selection else None
        return _Prepared(key, index, text, images, gen_kwargs, task, split, doc_id, uid, fingerprints=fingerprints, cost=cost)

    # ------------------------------------------------------------------ generation

    def _run_group(self, batch: list[_Prepared], prune: bool) -> list[tuple[GenerationResult, EfficiencyRecord]]:
        texts = [item.text for item in batch]
        images = [image for item in batch for image in item.images]
        logged = self.log_selection and all(item.fingerprints is not None for item in batch)
        fingerprints = [f for item in batch for f in item.fingerprints] if logged else None
        gen_kwargs = batch[0].gen_kwargs
        config = self.compression if (prune or not self._prunes_in_llm) else self._unpruned_config
        try:
            out = qwen_batch(self, texts, images, gen_kwargs, config, fingerprints)
        except Exception as err:  # noqa: BLE001 - one bad sample must not take the run down
            if len(batch) > 1:
                eval_logger.warning(
                    f"{self.model_id}: batch failed ({err!r}); retrying its {len(batch)} requests one by one"
                )
                return [pair for item in batch for pair in self._run_group([item], prune)]
            item = batch[0]
            return [self._failure(item.task, item.split, item.doc_id, err)]
        until = gen_kwargs.get("until")
        pairs = []
        for row, text in enumerate(out.texts):
            self._requests_seen += 1
            record = qwen_record(self, out, row, config)
            if self._prunes_in_llm and not prune:
                record.extra["unpruned"] = f"{out.images[row]} images in the prompt; pruning needs exactly one"
            result = GenerationResult(
                text=apply_until(text, until),
                token_counts=TokenCounts(
                    input_tokens=out.input_tokens[row],
                    output_tokens=out.output_tokens[row],
                ),
            )
            self.cache_hook.add_partial("generate_until", (texts[row], gen_kwargs), result.text)
            pairs.append((result, record))
        return pairs


class Qwen2_5_VLHfTimed(CompressedQwen):
    """Uncompressed Qwen2.5-VL with exactly the instrumentation of the compressed ids."""

    model_id = "qwen2_5_vl_hf_timed"
    default_config = "keep_all"


class Qwen2_5_VLVisionZip(CompressedQwen):
    """VisionZip as its official Qwen2.5-VL code applies it: per-image dominant / contextual ratios."""

    model_id = "qwen2_5_vl_visionzip"
    default_config = "visionzip_qwen"


class Qwen2_5_VLDivPrune(CompressedQwen):
    """DivPrune on each image's post-merger tokens (``keep`` or ``keep_ratio``)."""

    model_id = "qwen2_5_vl_divprune"
    default_config = "divprune_official"


class Qwen2_5_VLVisPruner(CompressedQwen):
    """VisPruner on each image's post-merger tokens (global attention in place of CLS attention)."""

    model_id = "qwen2_5_vl_vispruner"
    default_config = "vispruner_qwen"


class Qwen2_5_VLDART(CompressedQwen):
    """DART in the LLM prefill, with the unpruned prompt's M-RoPE positions."""

    model_id = "qwen2_5_vl_dart"
    default_config = "dart_qwen"


class Qwen2_5_VLFastV(CompressedQwen):
    """FastV in the LLM prefill, with the unpruned prompt's M-RoPE positions."""

    model_id = "qwen2_5_vl_fastv"
    default_config = "fastv_default"


class Qwen2_5_VLSparseVLM(CompressedQwen):
    """SparseVLM v2.0 (``sparsevlm2_*``) or v1.5 (``sparsevlm_*``, with original M-RoPE positions) in the LLM
    prefill."""

    model_id = "qwen2_5_vl_sparsevlm"
    default_config = "sparsevlm2_64"


class Qwen2_5_VLSparseZip(CompressedQwen):
    """SparseZip on each image's post-merger tokens, its counts scaled to each image's N, text-aware by default
    (``sparsezip_qwen_text``; ``sparsezip_qwen`` is the text-agnostic setting); the random and pool baselines
    run under this id too (``config=random_qwen`` / ``pool_qwen``), as on LLaVA."""

    model_id = "qwen2_5_vl_sparsezip"
    default_config = "sparsezip_qwen_text"


class Qwen2_5_VLCDPruner(CompressedQwen):
    """CDPruner on each image's post-merger tokens, the relevance from the LLM's own embeddings of the prompt."""

    model_id = "qwen2_5_vl_cdpruner"
    default_config = "cdpruner_qwen"


class Qwen2_5_VLCompressed(CompressedQwen):
    """Any method the Qwen2.5-VL path runs, chosen by ``config=`` (required)."""

    model_id = "qwen2_5_vl_compressed"
    default_config = None
    generic = True


__all__ += [cls.__name__ for cls in (Qwen2_5_VLHfTimed, Qwen2_5_VLVisionZip, Qwen2_5_VLDivPrune, Qwen2_5_VLVisPruner,
                                     Qwen2_5_VLDART, Qwen2_5_VLFastV, Qwen2_5_VLSparseVLM, Qwen2_5_VLSparseZip,
                                     Qwen2_5_VLCDPruner, Qwen2_5_VLCompressed)]  # fmt: skip
