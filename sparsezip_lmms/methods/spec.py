"""What a compression method declares about itself: :class:`MethodSpec`, and the inputs it is given.

A method is one ``MethodSpec``: its name, its config schema, the stage it runs at and its function.
The pipeline reads everything else from the spec; no other part of the package names a method.

Stages (``docs/ADDING_A_METHOD.md`` has one worked example of each):

* ``"vision"``: on the vision tower's feature-layer outputs, before the projector.
  ``select(inputs: VisionInputs, config) -> compress.Compressed`` (tokens ``[B, T, C]`` in CLIP width,
  ``valid`` ``[B, T]``, ``index`` ``[B, T]``: the CLIP position each token was copied from, or -1 for a
  merged token). The projector then maps the tokens into the LLM.
* ``"projected"``: on the post-projector patch tokens. ``select(inputs: ProjectedInputs, config) ->
  LongTensor [B, k]``: indices into ``inputs.projected`` (``[B, N, D]``); -1 marks unused slots where the
  rows keep different numbers. The pipeline gathers them in ascending order.
* ``"llm"``: inside the LLM prefill. ``rule(config) -> compress.in_llm.PruningRule``: at the rule's
  pruning layers the one pruning decoder asks it which visual tokens stay.
* ``"stock"``: no selection before the LLM (the uncompressed reference): LLaVA's own feature path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from torch import Tensor

__all__ = ["FAMILIES", "INPUTS", "STAGES", "MethodSpec", "ProjectedInputs", "VisionInputs"]

STAGES = ("stock", "vision", "projected", "llm")
# model families a method can declare (families/): LLaVA-1.5 and LLaVA-NeXT checkpoints of llava-hf, and
# Qwen2.5-VL (sparsezip_lmms.qwen; its adapter runs what qwen.inputs.check_method accepts)
FAMILIES = ("llava", "llava_next", "qwen2_5_vl")
# What the pipeline computes only for the methods that declare it:
#   "scoring"   VisionInputs.cls_attn / .keys: the feature layer's CLS attention and head-mean keys
#   "question"  VisionInputs.text_relevance: the question's relevance to each patch (projector space)
#   "clip_text" ProjectedInputs.clip_patches / .clip_question: CLIP image embeds of the patches and CLIP
#               text embeds of the question (the CLIP text tower is loaded for it)
#   "image_keys" VisionInputs.image_keys: one integer per image from its pixels (batch-invariant draws)
INPUTS = ("scoring", "question", "clip_text", "image_keys")


@dataclass(frozen=True)
class VisionInputs:
    """What a ``"vision"`` method reads, for B images (LLaVA-NeXT: B crops)."""

    hidden: Tensor  # [B, 1+N, C] CLIP feature-layer hidden states, CLS at position 0
    cls_attn: Tensor | None = None  # [B, H, 1+N] that layer's CLS-row attention ("scoring")
    keys: Tensor | None = None  # [B, 1+N, Ck] that layer's keys averaged over heads ("scoring")
    text_relevance: Tensor | None = None  # [B, N] question relevance of each patch ("question")
    image_keys: Tensor | None = None  # [B] long, one key per image from its pixels ("image_keys")
    groups: Tensor | None = None  # [B] long: rows sharing one id share one budget (NeXT: an image's crops)


@dataclass(frozen=True)
class ProjectedInputs:
    """What a ``"projected"`` method reads, for B images (LLaVA-NeXT: B crops, or B packed images)."""

    projected: Tensor  # [B, N, D] post-projector tokens in patch order (NeXT "packed": each image's sequence)
    valid: Tensor  # [B, N] bool: False past a row's tokens (all True except NeXT "packed")
    grid: tuple[int, int]  # patch grid (rows, cols) of one image or crop
    hidden: Tensor | None = None  # [B, 1+N, C] CLIP feature-layer states behind the tokens (None: "packed")
    clip_patches: Tensor | None = None  # [B, N, P] CLIP image embeds of the patches ("clip_text")
    clip_question: tuple[Tensor, Tensor] | None = None  # ([B, M, P] CLIP text embeds, [B, M] bool) ("clip_text")
    groups: Tensor | None = None  # [B] long: the image each row belongs to (NeXT crops)


@dataclass(frozen=True)
class MethodSpec:
    """One compression method, declared once.

    ``name`` is what configs write as ``method:``; ``config`` its pydantic schema (a subclass of
    :class:`sparsezip_lmms.methods.MethodConfig` with ``method: Literal[name]``). Optional hooks:

    * ``max_tokens(config, patches) -> int``: the most visual tokens one image (or crop) of ``patches``
      patches can send into the LLM; checked at load against the checkpoint (default: no check);
    * ``check(config, geometry)``: more load-time refusals (raise ``ConfigError`` naming the key);
    * ``flops(config, work) -> int``: the method's own work (``efficiency.flops.MethodWork``); methods
      without it count 0;
    * ``next_candidates``: LLaVA-NeXT, what a ``"projected"`` method chooses from: each crop's patches
      (``"crops"``, the default) or each image's whole packed sequence (``"packed"``);
    * ``budget_note(config) -> str``: why the method's token count differs from the budget its config's
      name states, shown next to the leaderboard's over-budget flag (DART's official count);
    * ``model_ids``: the dedicated lmms-eval ids that accept it (every method runs under the generic
      ``llava_compressed``).
    """

    name: str
    config: type
    stage: Literal["stock", "vision", "projected", "llm"]
    select: Callable[..., Any] | None = None
    rule: Callable[[Any], Any] | None = None
    inputs: frozenset[str] | Callable[[Any], frozenset[str]] = frozenset()
    families: tuple[str, ...] = FAMILIES
    model_ids: tuple[str, ...] = ()
    max_tokens: Callable[[Any, int], int] | None = None
    check: Callable[[Any, Any], None] | None = None
    flops: Callable[[Any, Any], int] | None = None
    next_candidates: Literal["crops", "packed"] = "crops"
    description: str = ""
    budget_note: Callable[[Any], str] | None = None

    def needs(self, what: str, config: Any) -> bool:
        """True when the pipeline must compute input ``what`` (one of ``INPUTS``) for ``config``
        (``inputs`` is a set, or a function of the config when a key switches an input on)."""
        inputs = self.inputs(config) if callable(self.inputs) else self.inputs
        return what in inputs
