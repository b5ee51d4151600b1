"""Qwen2.5-VL: training-free visual-token compression at the tensor level (VisionZip, DivPrune, VisPruner,
random, pool, SparseZip, CDPruner, the in-LLM methods, or none).

    >>> from sparsezip_lmms.qwen import compressed_generate
    >>> out = compressed_generate(model, input_ids, attention_mask, pixel_values, image_grid_thw, config, 16)
    >>> out.sequences, out.logits, out.kept, out.position_ids

``model`` is a transformers ``Qwen2_5_VLForConditionalGeneration``; ``config`` comes from
``load_config("visionzip_qwen", {...})`` (method ``visionzip`` with ``dominant_ratio``/``contextual_ratio``),
a DivPrune, VisPruner, random, pool or CDPruner config (``keep`` / ``keep_ratio`` of each image's post-merger
tokens; ``random_qwen``, ``pool_qwen``, ``cdpruner_qwen``), ``sparsezip_qwen`` / ``sparsezip_qwen_text``, an in-LLM config
(``dart_qwen``, ``fastv_64``, ``sparsevlm2_64``: :mod:`.in_llm`) or ``load_config("keep_all")``. VisionZip
follows the official Qwen2.5-VL code (rules 1–8 of ``tests/data/visionzip_qwen/README.md``), per image and
batched:

* :mod:`.vision`     one vision forward; last-block attention scores and keys (chunked, never [H, S, S]);
* :mod:`sparsezip_lmms.compress.visionzip_qwen`  the selection and merge (pure tensors);
* :mod:`.select`, :mod:`.sparsezip`  the other per-image rules on the post-merger tokens;
* :mod:`.positions`  the unpruned prompt's M-RoPE positions sliced by the kept tokens; left re-padding;
* :mod:`.inputs`     the batch checks (ValueError naming the problem);
* :mod:`.generate`   splicing, prefill and greedy decoding with one ``DynamicCache``.
"""

from .generate import QwenDebug, QwenGeneration, compressed_generate

__all__ = ["QwenDebug", "QwenGeneration", "compressed_generate"]
