"""The LLaVA model families (llava-hf LLaVA-1.5 and LLaVA-NeXT checkpoints) behind the
``families.base.ModelFamily`` interface: the processor call, the images' layout (one CLIP pass per
LLaVA-1.5 image; NeXT's base view and tiles), the visual tokens under a method
(``llava.features.image_tokens``), the questions of the images, splicing into the LLM input, and each
prompt's selection record (``llava.selection``).

A method never reads these internals: it sees ``methods.VisionInputs`` / ``ProjectedInputs`` or, in
the LLM, the pruning decoder's scores.
"""

from __future__ import annotations

import torch

from ..budgets import Geometry, family_of
from ..compress.baselines import image_keys
from ..llava.features import ImageTokens, image_tokens
from ..llava.tokens import ExpandedPrompt, image_owner, placeholder_runs, resize_image_placeholders, splice_image_features

__all__ = ["LlavaFamily", "family_for"]


class LlavaFamily:
    """LLaVA-1.5 (``model_type`` "llava") and LLaVA-NeXT (``"llava_next"``, ``geometry.any_resolution``)."""

    def __init__(self, model, geometry: Geometry) -> None:
        self.model = model
        self.geometry = geometry

    @property
    def name(self) -> str:
        return family_of(self.geometry)

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def processor_inputs(self, processor, texts: list[str], images: list, config, device) -> tuple[dict, list | None]:
        """The processor's batch on the model's device (left-padded prompts, pixels, NeXT image sizes) and
        the tile grid it used (None: the checkpoint's)."""
        pinpoints = self.grid_pinpoints(config)
        tiling = {"image_grid_pinpoints": pinpoints} if (pinpoints is not None and images) else {}
        inputs = processor(images=images or None, text=texts, return_tensors="pt", padding=True, **tiling)
        sizes = inputs.pop("image_sizes", None)  # [n_images, 2]: read on the host only (layouts), never moved
        inputs = inputs.to(device)
        if sizes is not None:
            inputs["image_sizes"] = sizes
        return inputs, pinpoints

    def prompt_cost(self, images: list, config) -> int:
        """Vision-tower passes of a prompt's images (LLaVA-NeXT: base view + tiles of each, from its size
        and the tile grid), the bulk of its LLM input: requests are batched by it, longest first."""
        if not images or not self.geometry.any_resolution:
            return len(images)
        from ..llava.next import crop_counts

        if not all(hasattr(image, "height") for image in images):  # not PIL images: the processor will say
            return len(images)
        sizes = torch.tensor([[image.height, image.width] for image in images])  # [n, 2] (H, W)
        return sum(crop_counts(sizes, self.model.config, self.grid_pinpoints(config)))

    def images_per_row(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B] long: images (placeholder runs) in each prompt."""
        return placeholder_runs(input_ids, attention_mask, self.image_token_id).sum(dim=1)

    def image_sizes(self, inputs) -> torch.Tensor | None:
        """[n_images, 2] (height, width) of each image on LLaVA-NeXT; None on LLaVA-1.5."""
        return inputs.get("image_sizes") if self.geometry.any_resolution else None

    def pixel_keys(self, inputs, crops: list[int]) -> torch.Tensor:
        """[n_images] (NeXT: [n_crops]) long: ``compress.image_keys`` of the processor's float32 pixels."""
        pixels = inputs["pixel_values"]
        if self.geometry.any_resolution:
            from ..llava.next import flatten_crops

            pixels = flatten_crops(pixels, crops)
        return image_keys(pixels)

    def visual_tokens(self, inputs, config, text_embeds=None, text_mask=None, **method_inputs) -> ImageTokens:
        """The visual tokens each image sends into the LLM under ``config`` (``llava.features.image_tokens``;
        ``method_inputs``: its keyword arguments)."""
        pixel_values = inputs["pixel_values"].to(self.model.dtype)  # [n, 3, H, W]; NeXT: [n, crops_max, 3, H, W]
        return image_tokens(
            self.model, pixel_values, config, text_embeds, text_mask, image_sizes=self.image_sizes(inputs), **method_inputs
        )

    def resize_placeholders(self, input_ids, attention_mask, counts: torch.Tensor, pad_id: int) -> ExpandedPrompt:
        """Each image's placeholder run resized to its ``counts`` [n_images] tokens, rows left-padded again."""
        return resize_image_placeholders(input_ids, attention_mask, self.image_token_id, counts, pad_id)

    def embed(self, prompt: ExpandedPrompt, visual: ImageTokens | None) -> torch.Tensor:
        """[B, L', D] the prompt's token embeddings with the visual tokens in the placeholder positions."""
        embeddings = self.model.get_input_embeddings()
        if visual is None:
            return embeddings(prompt.input_ids)
        return splice_image_features(embeddings, prompt, self.image_token_id, visual.features, visual.valid)

    def image_starts(self, prompt: ExpandedPrompt) -> torch.Tensor:
        """[B] long: each row's first visual-token position (one image per prompt: the pruning decoder)."""
        is_image = (prompt.input_ids == self.image_token_id) & prompt.attention_mask.bool()  # [B, L']
        return is_image.long().argmax(dim=1)

    def question_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_images: int) -> torch.Tensor:
        """[n_images, L] bool: for each image, the prompt tokens after its placeholder run (its question,
        up to the assistant prompt; a later image's tokens excluded)."""
        image_id = self.model.config.image_token_id
        valid = attention_mask.bool()
        is_image = (input_ids == image_id) & valid  # [B, L]
        owner = image_owner(input_ids, attention_mask, image_id)  # [B, L] global index of the image a token follows
        text_after = valid & ~is_image & (owner >= 0)  # [B, L]
        mask = torch.zeros((n_images, input_ids.shape[1]), dtype=torch.bool, device=input_ids.device)
        rows, cols = text_after.nonzero(as_tuple=True)
        mask[owner[rows, cols], cols] = True
        return mask

    def question_embeddings(
        self, input_ids: torch.Tensor, question_mask: torch.Tensor, row_of_image: torch.Tensor
    ) -> torch.Tensor:
        """[n_images, L, D]: token embeddings of each image's question (zeros elsewhere)."""
        embeds = self.model.get_input_embeddings()(input_ids)  # [B, L, D]
        images, cols = question_mask.nonzero(as_tuple=True)
        out = embeds.new_zeros((question_mask.shape[0], input_ids.shape[1], embeds.shape[-1]))
        out[images, cols] = embeds[row_of_image[images], cols]
        return out

    def grid_pinpoints(self, config) -> list | None:
        """LLaVA-NeXT tile grid the processor uses when it is not the checkpoint's (CDPruner's official
        fixed 2 x 2 grid, key ``next_grid``); None otherwise."""
        if self.geometry.any_resolution and getattr(config, "next_grid", "checkpoint") == "fixed_2x2":
            from ..llava.next import fixed_2x2_pinpoints

            return fixed_2x2_pinpoints(self.model.config)
        return None

    def crops(
        self, image_sizes: torch.Tensor | None, n_images: int, pinpoints: list | None = None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Vision-tower passes of each image, 1 (LLaVA-1.5) or NeXT's base view + tiles for its size, and
        each image's tile grid (rows, cols)."""
        if image_sizes is None:
            return [1] * n_images, [(0, 0)] * n_images
        from ..llava.next import crop_counts, tile_grids

        config = self.model.config
        return crop_counts(image_sizes, config, pinpoints), tile_grids(image_sizes, config, pinpoints)

    def selections(
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
            spans = selected.counts.tolist() if self.geometry.any_resolution else n_patches  # each row's own span
            layers = layer_kept_patches(pruned.kept, pruned.pruning_layers, spans)
            if self.geometry.any_resolution:  # one image per prompt: the decoder's rows are the images
                from ..llava.next import packed_sources
                from ..llava.selection import patch_grid

                sources = packed_sources(image_sizes, crops, grids, patch_grid(n_patches)[0])  # [n_images, L]
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



def family_for(model, geometry: Geometry) -> LlavaFamily:
    """The family implementation of a loaded model."""
    return LlavaFamily(model, geometry)
