"""The model-family seam: what the batch pipeline (``models.pipeline``) asks of a kind of checkpoint.

A family knows its processor, its image layout and its LLM input; it never knows a method (it calls the
method through ``llava.features.image_tokens`` / the registry). Adding a family means implementing
this interface and declaring the family name in the methods that support it (``MethodSpec.families``);
no method changes.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = ["ModelFamily"]


class ModelFamily(Protocol):
    name: str  # one of methods.FAMILIES

    def processor_inputs(self, processor, texts: list[str], images: list, config, device) -> tuple[Any, Any]:
        """The processor's batch on the model's device, and the tiling it used (or None)."""

    def prompt_cost(self, images: list, config) -> int:
        """A prompt's images in vision-tower passes (what its LLM input length mostly depends on)."""

    def images_per_row(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B] long: images in each prompt."""

    def image_sizes(self, inputs) -> torch.Tensor | None:
        """[n_images, 2] per-image sizes where the layout depends on them, else None."""

    def crops(self, image_sizes, n_images: int, tiling) -> tuple[list[int], list[tuple[int, int]]]:
        """Vision-tower passes of each image and its tile grid."""

    def question_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_images: int) -> torch.Tensor:
        """[n_images, L] bool: the prompt tokens that ask about each image."""

    def question_embeddings(self, input_ids: torch.Tensor, question_mask: torch.Tensor, row_of_image: torch.Tensor) -> torch.Tensor:
        """[n_images, L, D] the LLM token embeddings of each image's question (zeros elsewhere)."""

    def pixel_keys(self, inputs, crops: list[int]) -> torch.Tensor:
        """[n] long: one key per vision-tower pass, from the pixels (batch-invariant random draws)."""

    def visual_tokens(self, inputs, config, text_embeds=None, text_mask=None, **method_inputs):
        """``llava.image_tokens.ImageTokens``: the visual tokens each image sends into the LLM under ``config``."""

    def resize_placeholders(self, input_ids, attention_mask, counts: torch.Tensor, pad_id: int):
        """The prompts with each image's placeholders resized to its token count (``llava.tokens.ExpandedPrompt``)."""

    def embed(self, prompt, visual) -> torch.Tensor:
        """[B, L', D] the LLM input embeddings with the visual tokens spliced in."""

    def image_starts(self, prompt) -> torch.Tensor:
        """[B] long: each row's first visual-token position."""

    def selections(self, config, selected, n_images, fingerprints, images_per_row, pruned, deferred, crops, grids, image_sizes=None) -> list[dict]:
        """Each prompt's selection record."""
