"""The LLaVA family seam: image sizes stay on the host, and LLaVA-NeXT requests are ordered by their
images' tiles (the bulk of their LLM input), not by their text alone."""

from __future__ import annotations

from types import SimpleNamespace

from PIL import Image
from transformers import AutoConfig, AutoProcessor

from sparsezip_lmms.budgets import Geometry
from sparsezip_lmms.config import load_config
from sparsezip_lmms.families import family_for


def _family(checkpoint):
    config = AutoConfig.from_pretrained(checkpoint)
    return family_for(SimpleNamespace(config=config), Geometry.from_llava_config(config))


def test_next_prompt_cost_counts_tiles_and_sizes_stay_on_the_host(tiny_next_checkpoint, tiny_checkpoint):
    family = _family(tiny_next_checkpoint)
    wide, square = Image.new("RGB", (1000, 200)), Image.new("RGB", (336, 336))
    config = load_config("keep_all")
    cost_wide, cost_square = family.prompt_cost([wide], config), family.prompt_cost([square], config)
    processor = AutoProcessor.from_pretrained(tiny_next_checkpoint)
    inputs, _ = family.processor_inputs(processor, ["<image>\nhi", "<image>\nhi"], [wide, square], config, "meta")
    assert inputs["pixel_values"].device.type == "meta" and inputs["image_sizes"].device.type == "cpu"
    crops, _ = family.crops(inputs["image_sizes"], 2, None)
    assert [cost_wide, cost_square] == crops  # the processor's own crop counts
    assert family.prompt_cost([wide, square], config) == sum(crops) and family.prompt_cost([], config) == 0
    assert _family(tiny_checkpoint).prompt_cost([wide, square], config) == 2  # LLaVA-1.5: one pass per image


def test_requests_sort_by_image_cost_before_text_length():
    from sparsezip_lmms.models.base import _Prepared, batch_order

    def item(index, text, cost):
        return _Prepared("k", index, text, [], {}, "t", "s", index, None, cost=cost)

    items = [item(0, "a long question about the picture", 5), item(1, "short", 13), item(2, "mid question", 13)]
    items.sort(key=batch_order)
    assert [x.index for x in items] == [2, 1, 0]
