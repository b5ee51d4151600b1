"""The in-LLM methods through the lmms-eval model classes (in-process, tiny checkpoint, float64): FastV,
SparseVLM v2.0 and deferred pruning of the vision-side methods."""

from __future__ import annotations

import pytest

from sparsezip_lmms.efficiency import get_record
from _requests import make_requests
from test_model_inprocess import GEN, _docs, _model


def _run(model_id, checkpoint, config, batch_size, task, **extra):
    lmm = _model(model_id, checkpoint, batch_size=batch_size, config=config, **extra)
    docs = _docs()
    texts = [r.text for r in lmm.generate_until(make_requests(lmm, docs, GEN, task=task))]
    records = [get_record(task, "test", i) for i in range(len(docs))]
    assert all(r.error is None for r in records), [r.error for r in records]
    return texts, records


@pytest.mark.parametrize(
    "model_id, config, extra",
    [
        ("llava_sparsezip", "sparsezip_64", {}),
        ("llava_visionzip", "visionzip_64", {}),
        ("llava_divprune", "divprune_64", {}),
    ],
)
def test_prune_layer_0_is_the_undeferred_method(model_id, config, extra, tiny_checkpoint):
    base, base_records = _run(model_id, tiny_checkpoint, config, 2, f"u0_{model_id}_a")
    same, same_records = _run(model_id, tiny_checkpoint, config, 2, f"u0_{model_id}_b", prune_layer="0")
    assert same == base
    assert [r.visual_tokens for r in same_records] == [r.visual_tokens for r in base_records]
    assert all(r.visual_tokens_per_layer is None for r in same_records)


@pytest.mark.parametrize(
    "model_id, config",
    [("llava_sparsezip", "sparsezip_64"), ("llava_visionzip", "visionzip_64"), ("llava_divprune", "divprune_64")],
)
def test_deferred_pruning_keeps_the_methods_own_tokens_from_layer_l(model_id, config, tiny_checkpoint):
    """All patches (+ CLS and merged tokens) enter the LLM; from layer L on exactly as many tokens remain
    as the undeferred method sends; batch 1 and 4 agree."""
    _, before = _run(model_id, tiny_checkpoint, config, 1, f"d_{model_id}_before")
    answers1, deferred = _run(model_id, tiny_checkpoint, config, 1, f"d_{model_id}_1", prune_layer="4")
    answers4, deferred4 = _run(model_id, tiny_checkpoint, config, 4, f"d_{model_id}_4", prune_layer="4")
    assert answers1 == answers4
    for b, d, d4 in zip(before, deferred, deferred4):
        per_layer = d.visual_tokens_per_layer
        assert per_layer[:3] == [d.visual_tokens] * 3 and per_layer[3:] == [b.visual_tokens] * 13
        assert d.visual_tokens >= 576 and d.visual_tokens - 576 <= b.visual_tokens
        assert d4.visual_tokens_per_layer == per_layer and d4.input_tokens == d.input_tokens


def test_confound_configs_differ_only_where_they_say(tiny_checkpoint):
    from sparsezip_lmms.config import config_to_dict, load_config

    cells = {name: config_to_dict(load_config(f"confound/{name}")) for name in ("agnostic_before", "agnostic_inside", "aware_before", "aware_inside")}
    assert cells["aware_before"] == config_to_dict(load_config("sparsezip_64"))
    for text in ("agnostic", "aware"):
        before, inside = cells[f"{text}_before"], cells[f"{text}_inside"]
        assert {k for k in before if before[k] != inside[k]} == {"prune_layer"}
    for where in ("before", "inside"):
        agnostic, aware = cells[f"agnostic_{where}"], cells[f"aware_{where}"]
        assert {k for k in agnostic if agnostic[k] != aware[k]} == {"cross_beta"}


@pytest.mark.parametrize("model_id, config", [("llava_fastv", "fastv_64"), ("llava_sparsevlm", "sparsevlm2_64")])
def test_fastv_and_sparsevlm2_records(model_id, config, tiny_checkpoint):
    answers1, records = _run(model_id, tiny_checkpoint, config, 1, f"m_{model_id}_1")
    answers4, records4 = _run(model_id, tiny_checkpoint, config, 4, f"m_{model_id}_4")
    assert answers1 == answers4
    for r, r4 in zip(records, records4):
        assert r.visual_tokens == 576 and r.visual_tokens_per_layer == r4.visual_tokens_per_layer
        if model_id == "llava_fastv":  # int(576 * 0.0816) = 47 from layer K - 1's output on
            assert r.visual_tokens_per_layer == [576] + [47] * 15
        else:
            assert r.visual_tokens_per_layer == [576] * 2 + [66] * 4 + [34] * 9 + [20]
        assert r.visual_tokens_layer_avg == sum(r.visual_tokens_per_layer) / 16


def test_in_llm_configs_are_refused_by_the_wrong_model_and_beyond_the_llm(tiny_checkpoint):
    from sparsezip_lmms.config import ConfigError

    with pytest.raises(ConfigError, match="fastv"):
        _model("llava_sparsezip", tiny_checkpoint, config="fastv_64")
    with pytest.raises(ConfigError, match="key 'layer'"):
        _model("llava_fastv", tiny_checkpoint, config="fastv_64", layer="16")
    with pytest.raises(ConfigError, match="key 'prune_layer'"):
        _model("llava_visionzip", tiny_checkpoint, config="visionzip_64", prune_layer="16")
