"""The lmms-eval model class shared by every model id of this package.

``CompressedLlava`` subclasses lmms-eval's llava_hf chat adapter (what ``--model llava_hf``
resolves to) and replaces its batch-size-1 ``generate_until`` with a batched one. It is the adapter
only: model arguments (``models.arguments``), requests, batching and retries; each batch runs through
the pipeline (``models.pipeline``) over the model's family (``families``), and each request gets its
efficiency record (``models.accounting``).

The model ids differ only in their default config and the compression methods they accept.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from loguru import logger as eval_logger
from tqdm import tqdm

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.models.chat.llava_hf import LlavaHf as _LlavaHfChat
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.protocol import ChatMessages

from ..compress import needs_text
from ..config import CompressionConfig, ConfigError, KeepAllConfig, config_to_dict, prunes_in_llm
from ..efficiency.clock import now
from ..efficiency.flops import Dims
from ..efficiency.records import EfficiencyRecord, record_request
from ..efficiency.task_hooks import UID_COLUMN
from ..families import family_for
from ..llava.features import text_pull_back
from ..llava.selection import image_fingerprint
from .accounting import request_record
from .arguments import (
    PARENT_ARGS, check_checkpoint, check_clip_text_tower, class_default_config, count_arg, flag_arg, from_arg_string,
    load_accepted_config, placement, split_model_args,
)  # fmt: skip
from .pipeline import BatchOutput, apply_until, generate_batch

__all__ = ["BatchOutput", "CompressedLlava", "class_default_config", "split_model_args"]


class CompressedLlava(_LlavaHfChat):
    """LLaVA (llava-hf checkpoints) with visual-token compression, batched, instrumented."""

    is_simple = False
    model_id = "llava_hf_timed"
    default_config: str | None = "keep_all"
    generic = False  # True: accepts every registered method (llava_compressed)

    @classmethod
    def accepted_methods(cls) -> tuple[str, ...]:
        """The registered methods this id runs: those whose ``MethodSpec.model_ids`` name it (all of them
        for the generic id)."""
        from ..methods.registry import all_methods

        specs = [spec for spec in all_methods() if cls.generic or cls.model_id in spec.model_ids]
        # the method the id is named after first, the uncompressed reference last
        return tuple(spec.name for spec in sorted(specs, key=lambda s: (s.name not in cls.model_id, s.stage == "stock", s.name)))

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "CompressedLlava":
        """Build from the raw ``--model_args`` string (``arguments.from_arg_string``)."""
        return from_arg_string(cls, arg_string, additional_config, PARENT_ARGS)

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", **kwargs: Any) -> None:
        parent_args, own_args, overrides = split_model_args(kwargs)
        # Everything about the config is checked before a single weight is loaded.
        self.compression: CompressionConfig = self.resolve_config(own_args.get("config"), overrides)
        self.warmup = count_arg(self.model_id, "warmup", own_args.get("warmup", 0))
        self.log_selection = flag_arg(self.model_id, "log_selection", own_args.get("log_selection", True))
        self.geometry = check_checkpoint(self.model_id, pretrained, parent_args, self.compression)
        self._clip_text_tower = check_clip_text_tower(self.model_id, self.compression, self.geometry, own_args.get("clip_text_tower"))

        parent_args = placement(parent_args)
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
        other._clip_text_tower = check_clip_text_tower(model_id, other.compression, self.geometry, clip_text_tower)
        other._requests_seen = 0
        other._set_up_config(str(config or cls.default_config))
        return other

    def _set_up_config(self, config_name: str) -> None:
        """What the model derives from its config once the weights are loaded."""
        self.family = family_for(self.model, self.geometry)
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
        config, _ = load_accepted_config(
            cls.model_id, name_or_path, cls.default_config, overrides, cls.accepted_methods(),
            "a registered method (python -m sparsezip_lmms methods lists them)",
            "llava_compressed accepts every registered method",
        )  # fmt: skip
        return config

    def _fix_data_parallel_ranks(self) -> None:
        """The upstream adapter only shards across GPUs; shard CPU processes the same way."""
        if self.accelerator.num_processes > 1 and self._world_size == 1:
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes

    # ------------------------------------------------------------------ prompts

    def _chat_text(self, messages: ChatMessages) -> str:
        hf_messages = messages.model_dump()["messages"]
        return self._image_processor.apply_chat_template(hf_messages, tokenize=False, add_generation_prompt=True)

    # ------------------------------------------------------------------ generation

    # ------------------------------------------------------------------ SparseVLM

    @property
    def _prunes_in_llm(self) -> bool:
        """The config prunes visual tokens inside the LLM prefill (SparseVLM, FastV, deferred pruning)."""
        return prunes_in_llm(self.compression)

    @property
    def _unpruned_config(self) -> CompressionConfig:
        """What prompts the in-LLM pruning cannot take (no image, or several) run with: every token."""
        return KeepAllConfig(seed=getattr(self.compression, "seed", 0))

    def _question_mask(self, input_ids, attention_mask, n_images: int):
        """[n_images, L] bool: each image's question tokens (``families.llava.LlavaFamily.question_mask``)."""
        return self.family.question_mask(input_ids, attention_mask, n_images)

    def _generate_batch(self, texts, images, gen_kwargs, prune=False, questions=None, fingerprints=None) -> BatchOutput:
        """One batch through the pipeline (``models.pipeline.generate_batch``)."""
        return generate_batch(self, texts, images, gen_kwargs, prune, questions, fingerprints)

    def explain_prompt(self, messages: ChatMessages, image, question: str, gen_kwargs: dict[str, Any], fingerprint: str):
        """(answer, visual tokens entering the LLM, selection record, visual tokens after each LLM layer or
        None) of one prompt with one image, through the batched path of an lmms-eval run (``explain``)."""
        text = self._chat_text(messages)
        out = self._generate_batch([text], [image], gen_kwargs, prune=self._prunes_in_llm, questions=[question],
                                   fingerprints=[fingerprint])  # fmt: skip
        per_layer = out.layer_stats["visual_tokens_per_layer"][0] if out.layer_stats else None
        return out.texts[0], out.visual_tokens[0], out.selections[0], per_layer

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
        cost = self.family.prompt_cost(list(images), self.compression)
        return _Prepared(key, index, text, list(images), gen_kwargs, task, split, doc_id, uid, question, fingerprints, cost)

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

        # Same generation settings in one batch; longest prompts first to pad little: the images' cost
        # (LLaVA-NeXT: their crops, thousands of tokens) before the text's length
        prepared.sort(key=batch_order)
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
            record = request_record(self, out, row)
            if self._prunes_in_llm and not prune:
                record.extra["unpruned"] = f"{out.images[row]} images in the prompt; pruning needs exactly one"
            result = GenerationResult(
                text=apply_until(text, until),
                token_counts=TokenCounts(input_tokens=out.input_tokens[row], output_tokens=out.output_tokens[row]),
            )
            self.cache_hook.add_partial("generate_until", (texts[row], gen_kwargs), result.text)
            pairs.append((result, record))
        return pairs


def batch_order(item: "_Prepared") -> tuple:
    """Sort key of the requests: same generation settings together, then the longest LLM input first
    (the images' vision-tower passes, then the text's length), then the request order."""
    return (item.key, -item.cost, -len(item.text), item.index)


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
    cost: int = 0  # vision-tower passes of its images (families.llava.LlavaFamily.prompt_cost)


