"""The CLIP text side CDPruner needs, which llava-hf checkpoints do not contain.

CDPruner scores every patch by the (negative) cosine between its CLIP image embed and the CLIP text
embed of the question. LLaVA keeps only CLIP's vision tower, without ``visual_projection``; the text
tower, ``text_projection``, ``visual_projection`` and the tokenizer are loaded here from a CLIP
checkpoint (default ``openai/clip-vit-large-patch14-336``, the tower LLaVA-1.5 was trained with; a
local folder works too), once per model, on the model's device, in float32 or wider (the official
loader leaves the CLIP towers in float32).

The question is tokenised without truncation, cut into 77-token segments
(:func:`sparsezip_lmms.compress.cdpruner.cdpruner_text_segments`) and every segment embedded; the
pooled position follows the checkpoint's own ``text_config.eos_token_id`` (transformers' CLIP text
model implements both conventions the official code depends on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..compress.cdpruner import cdpruner_text_segments

__all__ = ["DEFAULT_CLIP_TEXT_TOWER", "ANSWER_FORMATS", "ClipText", "question_for_clip"]

DEFAULT_CLIP_TEXT_TOWER = "openai/clip-vit-large-patch14-336"

# Answer-format instructions the benchmarks append to the question and the official evaluation
# scripts strip before the question reaches the CLIP text tower.
ANSWER_FORMATS = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
)
_ANSWER_FORMAT = re.compile(r"\s*(?:" + "|".join(re.escape(text) for text in ANSWER_FORMATS) + r")\s*$")


def question_for_clip(text: str, strip_answer_format: bool = True) -> str:
    """The question as the official scripts pass it to CLIP: the user's text, without the trailing
    answer-format instruction (when ``strip_answer_format``)."""
    text = text.strip()
    return _ANSWER_FORMAT.sub("", text).strip() if strip_answer_format else text


@dataclass
class ClipText:
    """CLIP text tower + projections; :meth:`embed` turns questions into CDPruner's text embeds."""

    text_model: nn.Module
    text_projection: nn.Module
    visual_projection: nn.Module
    tokenizer: object
    context_length: int

    @classmethod
    def load(cls, name_or_path: str, device: torch.device | str, vision_width: int) -> "ClipText":
        """Load from a CLIP checkpoint; its ``visual_projection`` must take ``vision_width`` features."""
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(name_or_path, dtype=torch.float32)
        width = model.visual_projection.in_features
        if width != vision_width:
            raise ValueError(
                f"CLIP checkpoint {name_or_path}: its visual_projection takes {width}-wide features, but the "
                f"LLaVA vision tower is {vision_width} wide (use the CLIP checkpoint the LLaVA vision tower comes from)"
            )
        if model.text_projection.out_features != model.visual_projection.out_features:
            raise ValueError(f"CLIP checkpoint {name_or_path}: text and visual projections differ in width")
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        context = int(model.config.text_config.max_position_embeddings)
        parts = cls(model.text_model, model.text_projection, model.visual_projection, tokenizer, context)
        del model.vision_model  # LLaVA's own vision tower is used; only the projection is kept
        for module in (parts.text_model, parts.text_projection, parts.visual_projection):
            module.to(device).eval()
        return parts

    def segment_flops(self) -> int:
        """Multiply-adds of one 77-token segment through the text tower and its projection."""
        from ..efficiency.flops import clip_layer_flops

        config = self.text_model.config
        layers = config.num_hidden_layers * clip_layer_flops(self.context_length, config.hidden_size, config.intermediate_size)
        return layers + config.hidden_size * self.text_projection.out_features

    @torch.no_grad()
    def embed(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(text_embeds [n, M_max, P], text_mask [n, M_max] bool) for n questions; question i has
        M_i = (L_i - 1) // 77 + 1 segments, the rest of its row is masked."""
        device = self.text_projection.weight.device
        segments, masks, counts = [], [], []
        for question in questions:
            ids = torch.tensor(self.tokenizer(question, truncation=False, padding=False, verbose=False)["input_ids"], dtype=torch.long)
            seg_ids, seg_mask = cdpruner_text_segments(ids, context_length=self.context_length)  # [M, 77] x 2
            segments.append(seg_ids)
            masks.append(seg_mask)
            counts.append(seg_ids.shape[0])
        ids = torch.cat(segments).to(device)  # [ΣM, 77]
        pooled = self.text_model(input_ids=ids, attention_mask=torch.cat(masks).to(device)).pooler_output  # [ΣM, W]
        embeds = self.text_projection(pooled)  # [ΣM, P]
        width = max(counts)
        out = embeds.new_zeros(len(questions), width, embeds.shape[-1])  # [n, M_max, P]
        mask = torch.zeros(len(questions), width, dtype=torch.bool, device=device)  # [n, M_max]
        start = 0
        for i, m in enumerate(counts):
            out[i, :m] = embeds[start : start + m]
            mask[i, :m] = True
            start += m
        return out, mask
