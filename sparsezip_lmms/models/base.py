"""The lmms-eval model class shared by every model id of this package.

``CompressedLlava`` subclasses lmms-eval's llava_hf chat adapter (what ``--model llava_hf``
resolves to) and replaces its batch-size-1 ``generate_until`` with a batched one:

    prompts -> processor (576 placeholders per image) -> CLIP once -> compression -> projector
    -> placeholders resized to T_i per image -> inputs_embeds -> stock ``generate`` (or the SparseVLM
    pruning decoder) -> text + efficiency record

The model ids differ only in their default config and the compression methods they accept.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from loguru import logger as eval_logger
from tqdm import tqdm

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.models.chat.llava_hf import LlavaHf as _LlavaHfChat
from lmms_eval.models.simple.llava_hf import LlavaHf as _LlavaHfSimple
from lmms_eval.protocol import ChatMessages

from ..budgets import Geometry
from ..config import CompressionConfig, ConfigError, KeepAllConfig, config_to_dict, load_config, prunes_in_llm
from ..efficiency.clock import TokenClock, now
from ..efficiency.flops import Dims, compression_flops, kv_cache_bytes, llm_prefill_flops, vision_flops
from ..efficiency.records import EfficiencyRecord, peak_memory, record_request, reset_peak_memory
from ..efficiency.task_hooks import UID_COLUMN
from ..compress import image_keys, needs_text, selects_after_projector
from ..llava.features import deferred_span, image_tokens, text_pull_back, uses_stock_features
from ..llava.selection import image_fingerprint
from ..llava.tokens import placeholder_runs, resize_image_placeholders, splice_image_features

# Constructor arguments of the upstream adapter; everything else is ours or a config override.
_PARENT_ARGS = frozenset(inspect.signature(_LlavaHfSimple.__init__).parameters) - {"self", "kwargs"}
# Our own model_args (besides config overrides).
_OWN_ARGS = frozenset({"config", "warmup", "clip_text_tower", "log_selection"})


def class_default_config(model_id: str) -> str:
    """The default config of a model id, read from its class (through lmms-eval's registry)."""
    from lmms_eval.models import get_model

    return get_model(model_id).default_config


def split_model_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(upstream adapter args, our own args, config overrides) from the ``--model_args`` mapping."""
    parent = {k: v for k, v in kwargs.items() if k in _PARENT_ARGS}
    own = {k: v for k, v in kwargs.items() if k in _OWN_ARGS}
    overrides = {k: v for k, v in kwargs.items() if k not in _PARENT_ARGS and k not in _OWN_ARGS}
    return parent, own, overrides


class CompressedLlava(_LlavaHfChat):
    """LLaVA (llava-hf checkpoints) with visual-token compression, batched, instrumented."""

    is_simple = False
    model_id = "llava_hf_timed"
    default_config = "keep_all"
    accepted_methods: tuple[str, ...] = ("none",)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "CompressedLlava":
        """Build from the raw ``--model_args`` string. The upstream adapter's own arguments are read as
        lmms-eval reads them; ours and the config overrides stay strings until :mod:`..config` parses
        them, exactly as ``show-config`` does (lmms-eval would turn ``054`` into 54 but ``-3`` into -3.0)."""
        from lmms_eval.utils import handle_arg_string

        from ..config import split_args_string

        try:
            raw = split_args_string(arg_string)
        except ConfigError as err:
            raise ConfigError(f"{cls.model_id} --model_args: {err}") from None
        args = {k: (handle_arg_string(v) if k in _PARENT_ARGS else v) for k, v in raw.items()}
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, **extra)

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", **kwargs: Any) -> None:
        parent_args, own_args, overrides = split_model_args(kwargs)
        # Everything about the config is checked before a single weight is loaded.
        self.compression: CompressionConfig = self.resolve_config(own_args.get("config"), overrides)
        self.warmup = self._count_arg("warmup", own_args.get("warmup", 0))
        self.log_selection = self._flag_arg("log_selection", own_args.get("log_selection", True))
        self.geometry = self._check_checkpoint(pretrained, parent_args, self.compression)
        self._clip_text_tower = self._check_clip_text_tower(own_args.get("clip_text_tower"), parent_args)

        parent_args = self._placement(parent_args)
        super().__init__(pretrained=pretrained, **parent_args)
        self._fix_data_parallel_ranks()
        self.model.eval()
        self._requests_seen = 0
        self._set_up_config(str(own_args.get("config") or self.default_config))

    def with_config(
        self, model_id: str, config: str | None = None, overrides: dict[str, Any] | None = None, clip_text_tower: str | None = None
    ) -> "CompressedLlava":
        """Model id ``model_id`` with ``config`` (and overrides) on this instance's loaded checkpoint: a
        new instance that shares the weights, the processor and the device placement (weights are only
        read, so neither changes how the other generates). Checked like a fresh load."""
        from lmms_eval.models import get_model

        from ..budgets import check_fits

        cls = get_model(model_id)
        if not (isinstance(cls, type) and issubclass(cls, CompressedLlava)):
            raise ConfigError(f"{model_id} is not one of this package's model ids")
        other = cls.__new__(cls)
        other.__dict__.update(self.__dict__)
        other.compression = cls.resolve_config(config, dict(overrides or {}))
        try:
            check_fits(other.compression, self.geometry)
        except ConfigError as err:
            raise ConfigError(f"{model_id} config {config or cls.default_config}: {err}") from None
        other._clip_text_tower = other._check_clip_text_tower(clip_text_tower, {})
        other._requests_seen = 0
        other._set_up_config(str(config or cls.default_config))
        return other

    def _set_up_config(self, config_name: str) -> None:
        """What the model derives from its config once the weights are loaded."""
        self._effective_config = config_to_dict(self.compression)
        self._text_aware = needs_text(self.compression)
        # the projector's folded pull-back (question tokens -> CLIP space), made once per model
        self._pull_back = text_pull_back(self.model, self.compression)
        # CDPruner: the CLIP text tower and projections, once per model, on the model's device
        self._clip_text = None
        if self._clip_text_tower is not None:
            from ..llava.clip_text import ClipText

            self._clip_text = ClipText.load(self._clip_text_tower, self.device, self.geometry.vision_width)
        self._dims = Dims.from_llava_config(self.model.config)  # compressing methods stop CLIP at the feature layer
        if self._clip_text is not None:
            self._dims = dataclasses.replace(self._dims, clip_projection=self._clip_text.visual_projection.out_features)
        self._stock_vision_dims = Dims.from_llava_config(
            self.model.config, vision_layers_run=self.model.config.vision_config.num_hidden_layers
        )  # the stock feature path runs every CLIP layer
        self.config_name = config_name
        eval_logger.info(
            f"{self.model_id}: config {self.config_name} -> {json.dumps(config_to_dict(self.compression), sort_keys=True)}"
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def resolve_config(cls, name_or_path: Any, overrides: dict[str, Any]) -> CompressionConfig:
        name = cls.default_config if name_or_path in (None, "") else name_or_path
        if not isinstance(name, str):
            raise ConfigError(f"{cls.model_id}: config must be a name or a path, got {name!r}")
        try:
            config = load_config(name, overrides)
        except ConfigError as err:
            raise ConfigError(f"{cls.model_id} --model_args: {err}") from None
        if config.method not in cls.accepted_methods:
            raise ConfigError(
                f"{cls.model_id} --model_args: config {name!r} is a {config.method!r} config; "
                f"{cls.model_id} accepts {', '.join(cls.accepted_methods)}"
            )
        return config

    @classmethod
    def _count_arg(cls, key: str, value: Any) -> int:
        """A non-negative integer model argument (``warmup``), read like a config value."""
        from ..config import parse_value

        parsed = parse_value(value)
        if isinstance(parsed, bool) or not isinstance(parsed, int) or parsed < 0:
            raise ConfigError(f"{cls.model_id} --model_args: {key} must be a whole number >= 0, got {value!r}")
        return parsed

    @classmethod
    def _flag_arg(cls, key: str, value: Any) -> bool:
        """A true/false model argument (``log_selection``), read like a config value."""
        from ..config import parse_value

        parsed = parse_value(value)
        if not isinstance(parsed, bool):
            raise ConfigError(f"{cls.model_id} --model_args: {key} must be true or false, got {value!r}")
        return parsed

    @classmethod
    def _check_checkpoint(cls, pretrained: str, parent_args: dict[str, Any], compression: CompressionConfig) -> "Geometry":
        """Everything that can be known from the checkpoint's config.json, before any weight is read.

        Only LLaVA-1.5-style checkpoints (one CLIP grid per image, ``model_type`` "llava"): the token
        budget, the placeholder resizing and SparseVLM's visual span assume it. The config's budgets
        and layers are checked against the checkpoint's geometry (``budgets.check_fits``), and
        float64 with eager attention is refused for padded batches.
        """
        from transformers import AutoConfig

        from ..budgets import check_fits

        text = str(pretrained)
        looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1  # a hub id is "name" or "org/name"
        if looks_local and not os.path.isdir(os.path.expanduser(text)):
            raise ValueError(f"{cls.model_id}: pretrained={text}: no such folder (and not a hub id such as llava-hf/llava-1.5-7b-hf)")
        config = AutoConfig.from_pretrained(
            pretrained,
            revision=parent_args.get("revision", "main"),
            trust_remote_code=bool(parent_args.get("trust_remote_code", False)),
        )
        model_type = getattr(config, "model_type", None)
        if model_type not in ("llava", "llava_next"):
            raise ValueError(
                f"{cls.model_id}: {pretrained} is a {model_type!r} checkpoint; this model supports llava-hf LLaVA-1.5 "
                "(model_type 'llava', e.g. llava-hf/llava-1.5-7b-hf) and LLaVA-NeXT (model_type 'llava_next', e.g. "
                "llava-hf/llava-v1.6-vicuna-7b-hf) checkpoints; video models are not supported."
            )
        geometry = Geometry.from_llava_config(config)
        try:
            check_fits(compression, geometry)
        except ConfigError as err:
            raise ConfigError(f"{cls.model_id} --model_args: {err} ({pretrained})") from None
        attention = parent_args.get("attn_implementation") or getattr(config, "_attn_implementation", None)
        batch_size = str(parent_args.get("batch_size", 1) or 1)
        if str(parent_args.get("dtype")) == "float64" and attention == "eager" and batch_size != "1":
            raise ConfigError(
                f"{cls.model_id}: dtype=float64 with attn_implementation=eager gives NaN for left-padded rows in "
                "transformers' eager attention; use sdpa (the default) or float32, or batch size 1"
            )
        return geometry

    def _check_clip_text_tower(self, name: Any, parent_args: dict[str, Any]) -> str | None:
        """The CLIP checkpoint CDPruner reads its text tower from; its config is checked against the
        LLaVA vision tower before any weight is loaded. None for methods that do not use one."""
        from ..llava.clip_text import DEFAULT_CLIP_TEXT_TOWER

        if self.compression.method != "cdpruner":
            if name not in (None, ""):
                raise ConfigError(f"{self.model_id} --model_args: clip_text_tower is read by cdpruner configs only")
            return None
        tower = str(name or DEFAULT_CLIP_TEXT_TOWER)
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(tower, trust_remote_code=False)
        except OSError as err:
            raise ValueError(f"{self.model_id}: clip_text_tower={tower} cannot be read: {err}") from None
        if getattr(config, "model_type", None) != "clip":
            raise ValueError(f"{self.model_id}: clip_text_tower={tower} is a {config.model_type!r} checkpoint, not a CLIP one")
        width = int(config.vision_config.hidden_size)
        if width != self.geometry.vision_width:
            raise ValueError(
                f"{self.model_id}: clip_text_tower={tower}: its visual_projection takes {width}-wide features, but "
                f"the LLaVA vision tower is {self.geometry.vision_width} wide (use the CLIP checkpoint of that tower)"
            )
        return tower

    @staticmethod
    def _placement(parent_args: dict[str, Any]) -> dict[str, Any]:
        """Device placement defaults that the upstream adapter leaves to the user.

        Single process: ``device_map`` follows ``device`` (an empty device_map fails to load).
        Several processes on CPU (``accelerate launch`` without GPUs): each rank loads on CPU.
        """
        from accelerate import PartialState

        args = dict(parent_args)
        device = str(args.get("device", "cuda"))
        if not args.get("device_map"):
            if PartialState().num_processes == 1 or device == "cpu":
                args["device_map"] = device
        return args

    def _fix_data_parallel_ranks(self) -> None:
        """The upstream adapter only shards across GPUs; shard CPU processes the same way."""
        if self.accelerator.num_processes > 1 and self._world_size == 1:
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes

    # ------------------------------------------------------------------ prompts

    def _chat_text(self, messages: ChatMessages) -> str:
        hf_messages = messages.model_dump()["messages"]
        return self._image_processor.apply_chat_template(hf_messages, tokenize=False, add_generation_prompt=True)

    def _question_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_images: int) -> torch.Tensor:
        """[n_images, L] bool: for each image, the prompt tokens after its placeholder run (its question,
        up to the assistant prompt; a later image's tokens excluded)."""
        image_id = self.model.config.image_token_id
        valid = attention_mask.bool()
        is_image = (input_ids == image_id) & valid  # [B, L]
        starts = placeholder_runs(input_ids, attention_mask, image_id)  # [B, L]
        runs_so_far = torch.cumsum(starts.long(), dim=1)  # [B, L]: image runs begun at or before each position
        first_image_of_row = torch.cumsum(starts.sum(1), 0) - starts.sum(1)  # [B]
        text_after = valid & ~is_image & (runs_so_far > 0)  # [B, L]
        owner = first_image_of_row[:, None] + runs_so_far - 1  # [B, L] global index of the image a token follows
        mask = torch.zeros((n_images, input_ids.shape[1]), dtype=torch.bool, device=input_ids.device)
        rows, cols = text_after.nonzero(as_tuple=True)
        mask[owner[rows, cols], cols] = True
        return mask

    def _question_embeddings(
        self, input_ids: torch.Tensor, question_mask: torch.Tensor, row_of_image: torch.Tensor
    ) -> torch.Tensor:
        """[n_images, L, D]: token embeddings of each image's question (zeros elsewhere)."""
        embeds = self.model.get_input_embeddings()(input_ids)  # [B, L, D]
        images, cols = question_mask.nonzero(as_tuple=True)
        out = embeds.new_zeros((question_mask.shape[0], input_ids.shape[1], embeds.shape[-1]))
        out[images, cols] = embeds[row_of_image[images], cols]
        return out

    # ------------------------------------------------------------------ generation

    def _generation_args(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        do_sample = temperature > 0  # lmms-eval tasks ask for greedy decoding with temperature 0
        args = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens", 1024)),
            "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
            "do_sample": do_sample,
            "use_cache": self.use_cache,
            "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id,
            "eos_token_id": self.eot_token_id,
        }
        if do_sample:
            args["temperature"] = temperature
            if gen_kwargs.get("top_p") is not None:
                args["top_p"] = float(gen_kwargs["top_p"])
        else:
            args.update(temperature=None, top_p=None, top_k=None)
        return args

    @staticmethod
    def _apply_until(text: str, until: Any) -> str:
        if isinstance(until, str):
            until = [until]
        for stop in until or []:
            if stop:
                text = text.split(stop)[0]
        return text

    @torch.no_grad()
    def _generate_batch(
        self,
        texts: list[str],
        images: list,
        gen_kwargs: dict[str, Any],
        prune: bool = False,
        questions: list[str] | None = None,
        fingerprints: list[str] | None = None,
    ) -> "BatchOutput":
        """Generate for one batch of prompts (their images in prompt order); ``prune``: run the in-LLM
        pruning decoder (every prompt then has exactly one image); ``questions``: each prompt's user text
        (CDPruner's CLIP question); ``fingerprints``: one per image, given when the selection is logged."""
        device = self.device
        reset_peak_memory(device)
        t_start = now(device)
        pinpoints = self._grid_pinpoints()
        tiling = {"image_grid_pinpoints": pinpoints} if (pinpoints is not None and images) else {}
        inputs = self._image_processor(images=images or None, text=texts, return_tensors="pt", padding=True, **tiling).to(device)
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        n_images = len(images)
        image_id = self.model.config.image_token_id
        images_per_row = placeholder_runs(input_ids, attention_mask, image_id).sum(dim=1)  # [B]
        # images are numbered in prompt order, row by row
        row_of_image = torch.repeat_interleave(torch.arange(len(texts), device=device), images_per_row)  # [n_images]

        t_vision = now(device)
        question_mask = self._question_mask(input_ids, attention_mask, n_images)  # [n_images, L]
        image_sizes = inputs.get("image_sizes") if self.geometry.any_resolution else None  # [n_images, 2] (H, W)
        crops, grids = self._crops(image_sizes, n_images, pinpoints)  # vision-tower passes, tile grids per image
        config = self.compression if (prune or not self._prunes_in_llm) else self._unpruned_config
        if n_images:
            question = self._question_embeddings(input_ids, question_mask, row_of_image) if self._text_aware else None
            # random baseline: one key per image from the processor's float32 pixels (batch-invariant draws)
            keys = None
            if self.compression.method == "random":  # NeXT: one key per crop
                from ..llava.next import flatten_crops

                pixels = inputs["pixel_values"]
                keys = image_keys(flatten_crops(pixels, crops) if image_sizes is not None else pixels)
            pixel_values = inputs["pixel_values"].to(self.model.dtype)  # [n, 3, H, W]; NeXT: [n, crops_max, 3, H, W]
            clip_questions = None
            if self._clip_text is not None:
                from ..llava.clip_text import question_for_clip

                strip = self.compression.strip_answer_format
                per_image = [question_for_clip((questions or [""] * len(texts))[row], strip) for row in row_of_image.tolist()]
                clip_questions = self._clip_text.embed(per_image)  # ([n_images, M, P], [n_images, M])
            deferred = prune and getattr(config, "prune_layer", 0) > 0
            visual = image_tokens(
                self.model,
                pixel_values,
                config,
                question,
                question_mask,
                pull_back=self._pull_back,
                image_keys=keys,
                clip_text=self._clip_text,
                question_embeds=clip_questions,
                with_patches=deferred,
                image_sizes=image_sizes,
                grid_pinpoints=pinpoints,
            )
            selected = visual  # what the method keeps (from layer prune_layer on, when deferred)
            visual_keep = None
            if deferred:  # every patch enters the LLM; the selection takes effect at layer prune_layer
                visual, visual_keep = deferred_span(visual)
            counts = visual.counts  # [n_images]
            if not bool(torch.isfinite(visual.features).all()):
                raise ValueError(
                    f"non-finite visual tokens (NaN or inf) from config {self.config_name} "
                    f"{json.dumps(self._effective_config, sort_keys=True)}: refusing to feed them to the LLM"
                )
        else:
            visual, counts, clip_questions = None, torch.zeros(0, dtype=torch.long, device=device), None
            visual_keep, selected, deferred = None, None, False
        t_vision_end = now(device)

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        prompt = resize_image_placeholders(input_ids, attention_mask, image_id, counts, pad_id)
        limit = self.geometry.max_positions
        if limit is not None and int(prompt.lengths.max()) > limit:
            raise ValueError(
                f"prompt of {int(prompt.lengths.max())} tokens exceeds the LLM's position limit "
                f"(max_position_embeddings={limit})"
            )
        embeddings = self.model.get_input_embeddings()
        if visual is not None:
            inputs_embeds = splice_image_features(embeddings, prompt, image_id, visual.features, visual.valid)
        else:
            inputs_embeds = embeddings(prompt.input_ids)

        args = self._generation_args(gen_kwargs)
        t_generate = now(device)
        if prune:
            if not bool((images_per_row == 1).all()):
                raise ValueError(f"{self.model_id}: the pruning decoder needs exactly one image per prompt")
            tokens, step_times, layer_stats, pruned = self._generate_pruned(inputs_embeds, prompt, args, counts, visual_keep)
        else:
            clock = TokenClock() if args["num_beams"] == 1 else None
            tokens = self.model.generate(
                inputs_embeds=inputs_embeds, attention_mask=prompt.attention_mask, streamer=clock, **args
            )  # [B, new] (no prompt ids when generating from embeddings)
            step_times, layer_stats, pruned = (clock.step_times if clock else []), None, None
        t_end = now(device)
        selections = None
        if fingerprints is not None:
            selections = self._selections(
                config, selected, n_images, fingerprints, images_per_row.tolist(), pruned, deferred, crops, grids, image_sizes
            )

        out_texts, out_counts = self._decode(tokens, args)
        decode_steps = len(step_times) - 1
        timing = {
            "batch_size": len(texts),
            "preprocess_s": t_vision - t_start,
            "vision_s": t_vision_end - t_vision,
            "prefill_s": (step_times[0] - t_generate) if step_times else None,
            "ttft_s": (step_times[0] - t_vision) if step_times else None,
            "tpot_s": ((step_times[-1] - step_times[0]) / decode_steps) if decode_steps > 0 else None,
            "e2e_s": t_end - t_start,
            "peak_memory_bytes": peak_memory(device),
        }
        visual_per_row = torch.zeros(len(texts), dtype=torch.long, device=device).index_add_(0, row_of_image, counts)
        text_per_image = question_mask.sum(dim=1)
        text_per_row = torch.zeros(len(texts), dtype=torch.long, device=device).index_add_(0, row_of_image, text_per_image)
        crops_per_row = [0] * len(texts)
        # DivPrune on NeXT: the packed sequence length of each image it chose from
        lengths = selected.candidates.tolist() if selected is not None and selected.candidates is not None else None
        candidates_per_row = [[] for _ in texts] if lengths is not None else None
        for image, row in enumerate(row_of_image.tolist()):
            crops_per_row[row] += crops[image]
            if candidates_per_row is not None:
                candidates_per_row[row].append(int(lengths[image]))
        clip_segments = torch.zeros(len(texts), dtype=torch.long, device=device)
        if clip_questions is not None:  # CDPruner: CLIP text segments embedded for each prompt
            clip_segments.index_add_(0, row_of_image, clip_questions[1].sum(dim=1).to(device))
        return BatchOutput(
            texts=out_texts,
            output_tokens=out_counts,
            input_tokens=prompt.lengths.tolist(),
            visual_tokens=visual_per_row.tolist(),
            images=images_per_row.tolist(),
            crops=crops_per_row,
            question_tokens=text_per_row.tolist(),
            clip_segments=clip_segments.tolist(),
            candidates=candidates_per_row,
            layer_stats=layer_stats,
            timing=timing,
            selections=selections,
        )

    def _decode(self, tokens: torch.Tensor, args: dict[str, Any]) -> tuple[list[str], list[int]]:
        """Text and length of each generated row, cut at the first end-of-sequence or padding id."""
        stops = {args["eos_token_id"], args["pad_token_id"]}
        texts, counts = [], []
        for row in tokens.tolist():
            n = next((i for i, tok in enumerate(row) if tok in stops), len(row))
            counts.append(n)
            texts.append(self.tokenizer.decode(row[:n], skip_special_tokens=True))
        return texts, counts

    # ------------------------------------------------------------------ SparseVLM

    @property
    def _prunes_in_llm(self) -> bool:
        """The config prunes visual tokens inside the LLM prefill (SparseVLM, FastV, deferred pruning)."""
        return prunes_in_llm(self.compression)

    @property
    def _unpruned_config(self) -> CompressionConfig:
        """What prompts the in-LLM pruning cannot take (no image, or several) run with: every token."""
        return KeepAllConfig(seed=getattr(self.compression, "seed", 0))

    def _generate_pruned(self, inputs_embeds, prompt, args, counts, visual_keep):
        """Generate with the pruning decoder (one image per prompt, ``counts`` [B] its visual tokens)."""
        from ..llava.pruning_decoder import pruned_generate

        if args["num_beams"] != 1 or args["do_sample"]:
            raise ValueError(f"{self.model_id}: the pruning decoder generates greedily (num_beams=1, temperature=0)")
        image_id = self.model.config.image_token_id
        is_image = (prompt.input_ids == image_id) & prompt.attention_mask.bool()
        image_start = is_image.long().argmax(dim=1)  # [B] first image position per row
        clock = TokenClock()
        out = pruned_generate(
            self.model,
            inputs_embeds,
            prompt.attention_mask,
            image_start,
            self.compression,
            args["max_new_tokens"],
            num_visual_tokens=counts,
            visual_keep=visual_keep,
            eos_token_id=args["eos_token_id"],
            streamer=clock,
        )
        stats = {
            "visual_tokens_per_layer": out.visual_tokens_per_layer.tolist(),
            "equal_tokens": out.equal_tokens.tolist(),
            "cache_lengths": out.cache_lengths.tolist(),
        }
        return out.sequences, clock.step_times, stats, out

    def _grid_pinpoints(self) -> list | None:
        """LLaVA-NeXT tile grid the processor uses when it is not the checkpoint's (CDPruner's official
        fixed 2 x 2 grid, key ``next_grid``); None otherwise."""
        if self.geometry.any_resolution and getattr(self.compression, "next_grid", "checkpoint") == "fixed_2x2":
            from ..llava.next import fixed_2x2_pinpoints

            return fixed_2x2_pinpoints(self.model.config)
        return None

    def _crops(
        self, image_sizes: torch.Tensor | None, n_images: int, pinpoints: list | None = None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Vision-tower passes of each image, 1 (LLaVA-1.5) or NeXT's base view + tiles for its size, and
        each image's tile grid (rows, cols)."""
        if image_sizes is None:
            return [1] * n_images, [(0, 0)] * n_images
        from ..llava.next import crop_counts, tile_grids

        config = self.model.config
        return crop_counts(image_sizes, config, pinpoints), tile_grids(image_sizes, config, pinpoints)

    def _selections(
        self, config, selected, n_images, fingerprints, images_per_row, pruned, deferred, crops, grids, image_sizes=None
    ) -> list[dict]:
        """Each prompt's selection record (``llava.selection``): the vision-side choice, and for the
        in-LLM methods the patches each pruning layer kept (LLaVA-NeXT: positions in the packed
        sequence, and the same by tile in ``layer_tiles`` / ``layer_newlines``)."""
        from ..llava.selection import (
            image_selections, layer_kept_patches, next_layer_tiles, next_layout, next_selections, request_records,
        )  # fmt: skip

        n_patches = self.geometry.patches
        layers, by_tile = None, None
        if pruned is not None and not deferred:  # NeXT: positions in each image's packed sequence
            span = int(selected.features.shape[1]) if self.geometry.any_resolution else n_patches
            layers = layer_kept_patches(pruned.kept, pruned.pruning_layers, span)
            if self.geometry.any_resolution:  # one image per prompt: the decoder's rows are the images
                from ..llava.next import packed_sources
                from ..llava.selection import patch_grid

                sources = packed_sources(image_sizes.cpu(), crops, grids, patch_grid(n_patches)[0])  # [n_images, L]
                by_tile = next_layer_tiles(pruned.kept, pruned.pruning_layers, sources, n_patches)
        if selected is not None and selected.crops is not None:  # NeXT, compressed crop by crop
            images = next_selections(selected, crops, n_patches)
        else:
            images = image_selections(selected, n_images, n_patches)
        if self.geometry.any_resolution:
            images = next_layout(images, crops, grids)
        return request_records(
            config.method,
            n_patches,
            images,
            fingerprints,
            images_per_row,
            layers=layers,
            prune_layer=getattr(config, "prune_layer", None) if deferred else None,
            row_fields=by_tile,
        )

    # ------------------------------------------------------------------ accounting

    def _record(self, out: "BatchOutput", row: int) -> EfficiencyRecord:
        dims = self._dims
        n_in, n_out, n_visual = out.input_tokens[row], out.output_tokens[row], out.visual_tokens[row]
        layers = dims.llm_layers
        if out.layer_stats is not None:
            per_layer_visual = out.layer_stats["visual_tokens_per_layer"][row]
            # tokens each layer processes in the prefill: its own KV length after the prefill
            tokens_per_layer = out.layer_stats["cache_lengths"][row]
            layer_avg = float(out.layer_stats["equal_tokens"][row])
        else:
            per_layer_visual, tokens_per_layer, layer_avg = None, [n_in] * layers, float(n_visual)
        stock = uses_stock_features(self.compression)
        vision_dims = self._stock_vision_dims if stock else dims
        # CLIP on every crop (one per LLaVA-1.5 image; NeXT: base view + tiles), the projector on what it reads
        # (DivPrune and CDPruner choose among the projector outputs of every patch)
        projected = out.crops[row] * self.geometry.patches if (stock or selects_after_projector(self.compression)) else n_visual
        vision = vision_flops(out.crops[row], projected, vision_dims)
        clip_text = out.clip_segments[row] * self._clip_text.segment_flops() if self._clip_text is not None else 0
        candidates = out.candidates[row] if out.candidates is not None else None
        compression = compression_flops(
            self.compression, out.crops[row], dims, out.question_tokens[row], clip_text, candidates=candidates
        )
        llm = llm_prefill_flops(tokens_per_layer, dims)
        cache = [n + max(n_out - 1, 0) for n in tokens_per_layer]
        return EfficiencyRecord(
            model=self.model_id,
            config=self.config_name,
            **out.timing,
            input_tokens=n_in,
            output_tokens=n_out,
            visual_tokens=n_visual,
            visual_tokens_layer_avg=layer_avg,
            visual_tokens_per_layer=per_layer_visual,
            prefill_flops=vision + compression + llm,
            llm_prefill_flops=llm,
            vision_flops=vision,
            compression_flops=compression,
            kv_cache_bytes=kv_cache_bytes(cache, dims, self.model.dtype.itemsize),
            warmup=self._requests_seen <= self.warmup,
            extra={"effective_config": self._effective_config},
            selection=out.selections[row] if out.selections is not None else None,
        )

    # ------------------------------------------------------------------ lmms-eval entry point

    def _prepare(self, index: int, request: Instance) -> "_Prepared":
        """Chat text and images of one request (decoding its document's images)."""
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        try:
            doc = self.task_dict[task][split][doc_id]
            messages = ChatMessages(messages=doc_to_messages(doc))
            images, videos, _ = messages.extract_media()
        except Exception as err:  # noqa: BLE001 - say which document, keep the cause
            raise ValueError(f"doc {doc_id} of {task}/{split} cannot be read or made into a prompt: {err!r}") from err
        if videos:
            raise ValueError(f"{self.model_id} handles images only; doc {doc_id} of {task} has a video")
        if any(image is None for image in images):
            raise ValueError(f"doc {doc_id} of {task}/{split} has no image where its prompt expects one (None)")
        text = self._chat_text(messages)
        fingerprints = [image_fingerprint(image) for image in images] if self.log_selection else None
        key = json.dumps(gen_kwargs, sort_keys=True, default=str)
        uid = doc.get(UID_COLUMN) if isinstance(doc, dict) else None
        question = " ".join(
            item["text"]
            for message in messages.model_dump()["messages"]
            if message.get("role") == "user" and isinstance(message.get("content"), list)
            for item in message["content"]
            if item.get("type") == "text" and item.get("text")
        )  # the user's text alone (CDPruner's CLIP question)
        return _Prepared(key, index, text, list(images), gen_kwargs, task, split, doc_id, uid, question, fingerprints)

    def _document_key(self, task: str, split: str, doc_id: int) -> str | None:
        """The ``*_eff`` key of a document whose row cannot be read whole (its key column alone)."""
        try:
            docs = self.task_dict[task][split]
            if UID_COLUMN not in getattr(docs, "column_names", ()):
                return None
            return docs.select_columns([UID_COLUMN])[int(doc_id)][UID_COLUMN]
        except Exception:  # noqa: BLE001 - the request has failed already; the key is a courtesy
            return None

    def _failure(self, task: str, split: str, doc_id: int, err: BaseException) -> tuple[GenerationResult, EfficiencyRecord]:
        """Log a failed request; its empty answer and its record (the error, no figures)."""
        eval_logger.opt(exception=err).error(f"{self.model_id}: request {task}/{split}/{doc_id} failed: {err!r}")
        return GenerationResult(text="", token_counts=None), EfficiencyRecord.failed(self.model_id, self.config_name, repr(err))

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        prepared = []
        failures = 0
        for index, request in enumerate(requests):
            try:
                prepared.append(self._prepare(index, request))
            except Exception as err:  # noqa: BLE001 - a bad document fails its own request only
                _, _, _, doc_id, task, split = request.args
                results[index], record = self._failure(task, split, doc_id, err)
                record_request(task, split, doc_id, record, uid=self._document_key(task, split, doc_id))
                failures += 1

        # Same generation settings in one batch; longest prompts first to pad little.
        prepared.sort(key=lambda item: (item.key, -len(item.text), item.index))
        batches = [prepared[i : i + self.batch_size] for i in range(0, len(prepared), self.batch_size)]
        pbar = tqdm(total=len(requests), disable=(self.rank != 0), desc=f"{self.model_id} responding")
        pbar.update(failures)
        elapsed_s, gen_tokens, unpruned = 0.0, 0, 0
        for batch in self._regroup(batches):
            started = now(self.device)
            outcomes = self._run_batch(batch)
            elapsed_s += now(self.device) - started
            for item, (result, record) in zip(batch, outcomes):
                results[item.index] = result
                failures += record.error is not None
                unpruned += "unpruned" in record.extra
                gen_tokens += record.output_tokens or 0
                record_request(item.task, item.split, item.doc_id, record, uid=item.uid)
            pbar.update(len(batch))
        pbar.close()
        # lmms-eval's own throughput block (results["throughput"]), as its llava_hf reports it
        log_metrics(
            total_elapsed_time=elapsed_s,
            total_gen_tokens=gen_tokens,
            avg_speed=gen_tokens / elapsed_s if elapsed_s > 0 else 0.0,
            additional_metrics={"rank": self.rank, "total_requests": len(requests)},
        )
        if unpruned:
            eval_logger.warning(
                f"{self.model_id}: {unpruned} of {len(requests)} prompts have no image or several and ran unpruned "
                "(the in-LLM pruning takes one image per prompt); each is marked in its record"
            )
        if failures:
            eval_logger.error(f"{self.model_id}: {failures} of {len(requests)} requests failed (empty answers, see errors above)")
        return results  # type: ignore[return-value]

    @staticmethod
    def _regroup(batches):
        """Split batches that mix generation settings (sorting keeps equal settings adjacent)."""
        for batch in batches:
            start = 0
            for i in range(1, len(batch) + 1):
                if i == len(batch) or batch[i].key != batch[start].key:
                    yield batch[start:i]
                    start = i

    def _run_batch(self, batch: list["_Prepared"]) -> list[tuple[GenerationResult, EfficiencyRecord]]:
        """Generate for a batch. With an in-LLM pruning method, the prompts it cannot prune (no image or
        several) run as their own group, unpruned, so that no prompt changes how another one is treated."""
        if not self._prunes_in_llm:
            return self._run_group(batch, prune=False)
        outcome_of: dict[int, tuple[GenerationResult, EfficiencyRecord]] = {}
        for prune in (True, False):
            items = [item for item in batch if (len(item.images) == 1) == prune]
            if items:
                outcome_of.update({id(item): pair for item, pair in zip(items, self._run_group(items, prune=prune))})
        return [outcome_of[id(item)] for item in batch]

    def _run_group(self, batch: list["_Prepared"], prune: bool) -> list[tuple[GenerationResult, EfficiencyRecord]]:
        texts = [item.text for item in batch]
        images = [img for item in batch for img in item.images]
        fingerprints = [f for item in batch for f in item.fingerprints] if self.log_selection else None
        gen_kwargs = batch[0].gen_kwargs
        try:
            out = self._generate_batch(
                texts, images, gen_kwargs, prune=prune, questions=[item.question for item in batch], fingerprints=fingerprints
            )
        except Exception as err:  # noqa: BLE001 - one bad sample must not take the run down
            if len(batch) > 1:
                eval_logger.warning(f"{self.model_id}: batch failed ({err!r}); retrying its {len(batch)} requests one by one")
                return [pair for item in batch for pair in self._run_group([item], prune)]
            item = batch[0]
            return [self._failure(item.task, item.split, item.doc_id, err)]

        until = gen_kwargs.get("until")
        pairs = []
        for row, text in enumerate(out.texts):
            self._requests_seen += 1
            record = self._record(out, row)
            if self._prunes_in_llm and not prune:
                record.extra["unpruned"] = f"{out.images[row]} images in the prompt; pruning needs exactly one"
            result = GenerationResult(
                text=self._apply_until(text, until),
                token_counts=TokenCounts(input_tokens=out.input_tokens[row], output_tokens=out.output_tokens[row]),
            )
            self.cache_hook.add_partial("generate_until", (texts[row], gen_kwargs), result.text)
            pairs.append((result, record))
        return pairs


@dataclass
class _Prepared:
    """One request, ready to batch."""

    key: str  # generation settings (requests of a batch share them)
    index: int  # position in the lmms-eval request list
    text: str  # chat-templated prompt
    images: list
    gen_kwargs: dict[str, Any]
    task: str
    split: str
    doc_id: int
    uid: str | None  # the document's key from the *_eff tasks' process_docs
    question: str = ""  # the user's text without the chat template
    fingerprints: list[str] | None = None  # llava.selection.image_fingerprint of each image (log_selection)


@dataclass
class BatchOutput:
    """What one batch produced, per row."""

    texts: list[str]
    output_tokens: list[int]
    input_tokens: list[int]  # real LLM input lengths (padding excluded)
    visual_tokens: list[int]  # visual tokens entering the LLM
    images: list[int]
    crops: list[int]  # vision-tower passes (LLaVA-NeXT: base view + tiles of every image)
    question_tokens: list[int]
    clip_segments: list[int]  # CDPruner: 77-token CLIP text segments embedded for the prompt
    candidates: list[list[int]] | None  # DivPrune on LLaVA-NeXT: per row, each image's packed length
    layer_stats: dict[str, list] | None  # SparseVLM per-layer figures
    timing: dict[str, Any]
    selections: list[dict] | None = None  # per row: llava.selection record (log_selection)
