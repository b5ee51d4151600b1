"""The lmms-eval model class shared by every model id of this package.

``CompressedLlava`` subclasses lmms-eval's llava_hf chat adapter (what ``--model llava_hf``
resolves to) and replaces its batch-size-1 ``generate_until`` with a batched one:

    prompts -> processor (576 placeholders per image) -> CLIP once -> compression -> projector
    -> placeholders resized to T_i per image -> inputs_embeds -> stock ``generate`` (or the SparseVLM
    pruning decoder) -> text + efficiency record

The model ids differ only in their default config and the compression methods they accept.
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any

import torch
from loguru import logger as eval_logger
from tqdm import tqdm

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.models.chat.llava_hf import LlavaHf as _LlavaHfChat
from lmms_eval.models.simple.llava_hf import LlavaHf as _LlavaHfSimple
from lmms_eval.protocol import ChatMessages

from ..config import CompressionConfig, ConfigError, config_to_dict, load_config
from ..efficiency.clock import TokenClock, now
from ..efficiency.records import EfficiencyRecord, peak_memory, record_request, reset_peak_memory
from ..llava.features import image_tokens
from ..llava.tokens import resize_image_placeholders, splice_image_features

# Constructor arguments of the upstream adapter; everything else is ours or a config override.
_PARENT_ARGS = frozenset(inspect.signature(_LlavaHfSimple.__init__).parameters) - {"self", "kwargs"}
# Our own model_args (besides config overrides).
_OWN_ARGS = frozenset({"config", "warmup", "max_batch_image_tokens"})


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

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", **kwargs: Any) -> None:
        parent_args, own_args, overrides = split_model_args(kwargs)
        # Everything about the config is checked before a single weight is loaded.
        self.compression: CompressionConfig = self.resolve_config(own_args.get("config"), overrides)
        self.warmup = int(own_args.get("warmup", 0))
        if self.warmup < 0:
            raise ValueError(f"{self.model_id}: warmup must be >= 0, got {self.warmup}")

        parent_args = self._placement(parent_args)
        super().__init__(pretrained=pretrained, **parent_args)
        self._fix_data_parallel_ranks()
        self.model.eval()
        self._requests_seen = 0
        self.config_name = str(own_args.get("config") or self.default_config)
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

    def _question_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_images: int):
        """Per image: the embeddings of the prompt tokens that follow its placeholder run (the question).

        Returns ([n_images, L_q, D], [n_images, L_q] bool) or (None, None) when there are no images.
        """
        if n_images == 0:
            return None, None
        image_id = self.model.config.image_token_id
        valid = attention_mask.bool()
        is_image = (input_ids == image_id) & valid  # [B, L]
        # For every position, how many image runs end at or before it within the row.
        run_end = is_image & ~torch.nn.functional.pad(is_image[:, 1:], (0, 1), value=False)  # [B, L]
        image_of_row = torch.cumsum(run_end.long(), dim=1)  # [B, L]: index of the last finished run in the row
        first_image_of_row = torch.cumsum(run_end.sum(1), 0) - run_end.sum(1)  # [B]
        text_after = valid & ~is_image & (image_of_row > 0)  # [B, L]
        owner = first_image_of_row[:, None] + image_of_row - 1  # [B, L] global image index per position
        embeds = self.model.get_input_embeddings()(input_ids)  # [B, L, D]
        length = input_ids.shape[1]
        out = embeds.new_zeros((n_images, length, embeds.shape[-1]))
        mask = torch.zeros((n_images, length), dtype=torch.bool, device=input_ids.device)
        rows, cols = text_after.nonzero(as_tuple=True)
        out[owner[rows, cols], cols] = embeds[rows, cols]
        mask[owner[rows, cols], cols] = True
        return out, mask

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
    def _generate_batch(self, texts: list[str], images: list, gen_kwargs: dict[str, Any]):
        """Generate for one batch. Returns (texts, output token counts, input lengths, efficiency dict)."""
        device = self.device
        reset_peak_memory(device)
        t_start = now(device)
        inputs = self._image_processor(
            images=images or None, text=texts, return_tensors="pt", padding=True
        ).to(device)
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        n_images = len(images)
        model_dtype = self.model.dtype

        t_vision = now(device)
        if n_images:
            question, question_mask = self._question_embeddings(input_ids, attention_mask, n_images)
            visual = image_tokens(
                self.model, inputs["pixel_values"].to(model_dtype), self.compression, question, question_mask
            )
            counts = visual.counts
        else:
            visual, counts = None, torch.zeros(0, dtype=torch.long, device=device)
        t_vision_end = now(device)

        image_id = self.model.config.image_token_id
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        prompt = resize_image_placeholders(input_ids, attention_mask, image_id, counts, pad_id)
        embeddings = self.model.get_input_embeddings()
        if visual is not None:
            inputs_embeds = splice_image_features(embeddings, prompt, image_id, visual.features, visual.valid)
        else:
            inputs_embeds = embeddings(prompt.input_ids)

        args = self._generation_args(gen_kwargs)
        clock = TokenClock() if args["num_beams"] == 1 else None
        t_generate = now(device)
        output = self.model.generate(
            inputs_embeds=inputs_embeds, attention_mask=prompt.attention_mask, streamer=clock, **args
        )  # [B, new] (no prompt ids when generating from embeddings)
        t_end = now(device)

        out_texts, out_counts = [], []
        for row in output:
            ids = row.tolist()
            n = len(ids)
            for i, tok in enumerate(ids):
                if tok == args["eos_token_id"] or tok == args["pad_token_id"]:
                    n = i
                    break
            out_counts.append(n)
            out_texts.append(self.tokenizer.decode(ids[:n], skip_special_tokens=True))

        steps = clock.step_times if clock is not None else []
        first_token_s = (steps[0] - t_vision) if steps else None
        decode_steps = len(steps) - 1
        timing = {
            "batch_size": len(texts),
            "preprocess_s": t_vision - t_start,
            "vision_s": t_vision_end - t_vision,
            "prefill_s": (steps[0] - t_generate) if steps else None,
            "ttft_s": first_token_s,
            "tpot_s": ((steps[-1] - steps[0]) / decode_steps) if decode_steps > 0 else None,
            "e2e_s": t_end - t_start,
            "peak_memory_bytes": peak_memory(device),
        }
        visual_tokens = self._visual_tokens_per_row(input_ids, attention_mask, counts)
        return out_texts, out_counts, prompt.lengths.tolist(), visual_tokens, timing

    def _visual_tokens_per_row(self, input_ids, attention_mask, counts) -> list[int]:
        """Number of visual tokens entering the LLM for each prompt row."""
        image_id = self.model.config.image_token_id
        is_image = (input_ids == image_id) & attention_mask.bool()
        starts = is_image & ~torch.nn.functional.pad(is_image[:, :-1], (1, 0), value=False)
        per_row = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        if counts.numel():
            row_of_image = starts.nonzero(as_tuple=True)[0]
            per_row.index_add_(0, row_of_image, counts.to(per_row.device))
        return per_row.tolist()

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        prepared = []
        for index, request in enumerate(requests):
            ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            messages = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id]))
            images, videos, _ = messages.extract_media()
            if videos:
                raise ValueError(f"{self.model_id} handles images only; doc {doc_id} of {task} has a video")
            text = self._chat_text(messages)
            key = json.dumps(gen_kwargs, sort_keys=True, default=str)
            prepared.append((key, -len(text), index, text, list(images), gen_kwargs, task, split, doc_id))

        # Same generation settings in one batch; longest prompts first to pad little.
        prepared.sort(key=lambda item: (item[0], item[1], item[2]))
        batches = [prepared[i : i + self.batch_size] for i in range(0, len(prepared), self.batch_size)]
        batches = list(self._regroup(batches))
        pbar = tqdm(total=len(requests), disable=(self.rank != 0), desc=f"{self.model_id} responding")
        failures = 0
        for batch in batches:
            outcome = self._run_batch(batch)
            for item, (text, result_record) in zip(batch, outcome):
                _, _, index, _, _, _, task, split, doc_id = item
                results[index] = text
                failures += result_record.error is not None
                record_request(task, split, doc_id, result_record)
            pbar.update(len(batch))
        pbar.close()
        if failures:
            eval_logger.error(f"{self.model_id}: {failures} of {len(requests)} requests failed (empty answers, see errors above)")
        return results  # type: ignore[return-value]

    @staticmethod
    def _regroup(batches):
        """Split batches that mix generation settings (sorting keeps equal settings adjacent)."""
        for batch in batches:
            start = 0
            for i in range(1, len(batch) + 1):
                if i == len(batch) or batch[i][0] != batch[start][0]:
                    yield batch[start:i]
                    start = i

    def _run_batch(self, batch) -> list[tuple[GenerationResult, EfficiencyRecord]]:
        texts = [item[3] for item in batch]
        images = [img for item in batch for img in item[4]]
        gen_kwargs = batch[0][5]
        try:
            out_texts, out_counts, input_lengths, visual_tokens, timing = self._generate_batch(texts, images, gen_kwargs)
        except Exception as err:  # noqa: BLE001 - one bad sample must not take the run down
            if len(batch) > 1:
                eval_logger.warning(f"{self.model_id}: batch failed ({err!r}); retrying its {len(batch)} requests one by one")
                return [pair for item in batch for pair in self._run_batch([item])]
            _, _, _, _, _, _, task, split, doc_id = batch[0]
            eval_logger.exception(f"{self.model_id}: request {task}/{split}/{doc_id} failed: {err!r}")
            record = EfficiencyRecord.failed(self.model_id, self.config_name, repr(err))
            return [(GenerationResult(text="", token_counts=None), record)]

        until = gen_kwargs.get("until")
        pairs = []
        for text, n_out, n_in, n_visual in zip(out_texts, out_counts, input_lengths, visual_tokens):
            self._requests_seen += 1
            record = EfficiencyRecord.from_batch(
                model=self.model_id,
                config=self.config_name,
                timing=timing,
                input_tokens=n_in,
                output_tokens=n_out,
                visual_tokens=n_visual,
                warmup=self._requests_seen <= self.warmup,
            )
            result = GenerationResult(
                text=self._apply_until(text, until),
                token_counts=TokenCounts(input_tokens=n_in, output_tokens=n_out),
            )
            self.cache_hook.add_partial("generate_until", (text, gen_kwargs), result.text)
            pairs.append((result, record))
        return pairs
