"""One pruning decoder for every method that prunes visual tokens inside a LLaMA-family LLM.

SparseVLM v1.5 and v2.0, FastV, and any vision-side selection applied at layer L (deferred pruning) run
here; what differs between them is a small rule object (``compress.in_llm``): which rows score the
visual span, how many tokens stay, what is recycled, how positions continue.

The decoder layers are called one by one (no patching of transformers classes):

* prefill, stage by stage: stage ``s`` runs the layers after the previous pruning layer up to and
  including pruning layer ``s``; the batch is re-padded on the left at the start of every stage because
  every sample keeps its own number of tokens. After the pruning layer, every sample's visual span is
  scored from the attention of a few query rows (post-RoPE queries of those rows against the layer's
  cached keys: SparseVLM's raters, FastV's last prompt token) or takes its given selection (deferred),
  the kept visual tokens stay in order, and the rule's recycled tokens (SparseVLM v1.5) are inserted
  right after them. Positions are renumbered 0..n-1 (v1.5) or stay the original ids (v2.0, FastV).
* decoding: greedy, no pruning; the layers of one stage share one cache length, and each sample places
  its new token at its own cache length of that stage (renumbered positions) or at its unpruned prompt
  length plus the step (original positions).

Every layer keeps its configured attention implementation (sdpa by default): scores are computed from
a handful of rows, never from an L x L attention matrix. A LLaMA pruning layer is run in two halves:
keys and values of every row (its cache), the scores from them, and only then queries, attention output
and MLP for the rows the pruning keeps (system, kept and to-be-recycled visual, text); the dropped rows'
outputs, which the official codes compute and discard, are never computed. Row-wise operations make
this exact (same values as the whole layer, up to float rounding). A single ``DynamicCache`` holds
every layer; layers of different stages simply hold different lengths, and masks are built per stage
with ``create_causal_mask(..., layer_idx=first layer of the stage)``.

Batch semantics: every sample is processed as if it were alone (its own queries, kept and recycled
tokens, positions and per-layer cache lengths); padding only adds masked rows. Random density tie-break
draws come from one ``torch.Generator`` per sample seeded with ``config.seed`` (so a sample draws the
same numbers alone or in a batch), or are replayed from ``recycle_noise``.

Modules: ``batch`` (per-sample sequences, padding, input checks), ``attention`` (LLaMA attention on
row subsets and the span scores read from it), ``stages`` (the prefill stages and the pruning),
``decode`` (greedy decoding), ``generate`` (:func:`pruned_generate` and its output).

See docs/ALGORITHMS.md for each method's rules and their official conventions.
"""

from .batch import RECYCLED_ID_BASE, recycled_id_base
from .generate import PrunedOutput, pruned_generate

__all__ = ["RECYCLED_ID_BASE", "PrunedOutput", "pruned_generate", "recycled_id_base"]
