"""The seed's executed SparseZip (W1nd55/VisionZip-exp 7a86f65) reproduced through config keys.

Golden outputs of the seed code (float64 on CPU, torch 2.13) on random CLIP-like scoring inputs, 12 cases
(``tests/data/sparsezip_seed/``: inputs, per-case outputs, and each case's seed ``model:`` section). Each
case runs :func:`sparsezip_trace` with the config :func:`seed_config.convert` makes of that section,
replaying the recorded k-means++ draws. Expected exactly: K, the dominant patches (score order and
position order), the remaining tokens, their cluster / slot; tokens ≤ 1e-12 relative, scores ≤ 1e-5,
the seed's text relevance ≤ 1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sparsezip_lmms.compress import seed_key_relevance, sparsezip, sparsezip_trace
from sparsezip_lmms.config import config_to_dict, load_config, parse_config
from sparsezip_lmms.seed_config import convert

DATA = Path(__file__).parent / "data" / "sparsezip_seed"
TENSORS = load_file(str(DATA / "cases.safetensors"))
META = json.loads((DATA / "meta.json").read_text())
CASES = sorted(META["cases"])


def _config(name):
    cfg, _ = convert(yaml.safe_dump({"model": META["cases"][name]["model_cfg"]}))
    return parse_config(cfg)


def _run(name):
    case = META["cases"][name]
    t = TENSORS
    rel = t["text_rel"][:, 1:] if case["text_aware"] else None
    return sparsezip_trace(
        t["hidden"], t["cls_attn"], t["keys"], _config(name), rel, kmeans_init=t.get(f"{name}/kmeans_init_idx")
    )


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_all_twelve_cases_present():
    assert len(CASES) == 12


@pytest.mark.parametrize("name", CASES)
def test_seed_case(name):
    t, out = TENSORS, _run(name)
    k = t[f"{name}/K"]
    assert torch.equal(out.k, k)
    kmax = int(k.max())
    keep_idx = t[f"{name}/keep_idx"]  # 0, then the dominant patches in score order
    assert torch.equal(out.top[:, :kmax], keep_idx[:, 1:])
    dominant = t[f"{name}/dominant_idx"]  # 0 + the same set ascending = the first 1 + K output tokens
    comp = out.compressed
    for b in range(3):
        n_dom = 1 + int(k[b])
        assert torch.equal(comp.index[b, :n_dom], dominant[b, :n_dom])
        remain = t[f"{name}/remain_idx"][b]
        remain = remain[remain >= 0]
        labels = out.labels[b]
        assert torch.equal((labels >= 0).nonzero().squeeze(1) + 1, remain)  # labels over patches 1..N
        assert torch.equal(labels[labels >= 0], t[f"{name}/ctx_assign"][b, : remain.numel()])
    assert (out.scores - t[f"{name}/scores"]).abs().max() <= 1e-5
    tokens = t[f"{name}/tokens"]
    assert comp.tokens.dtype == torch.float64 and comp.tokens.shape == tokens.shape
    assert _rel(comp.tokens, tokens) <= 1e-12
    assert torch.equal(comp.counts, 1 + k + META["cases"][name]["effective"]["contextual_num"])
    ctx = t[f"{name}/ctx_tokens"]
    for b in range(3):
        n_dom = 1 + int(k[b])
        assert _rel(comp.tokens[b, n_dom : n_dom + ctx.shape[1]], ctx[b]) <= 1e-12


def test_seed_text_relevance():
    t = TENSORS
    rel = seed_key_relevance(t["keys"], t["text_embeds"])  # [B, 577], every question token used
    assert rel.dtype == torch.float32 and rel.shape == t["text_rel"].shape
    assert (rel.double() - t["text_rel"]).abs().max() <= 1e-6


def test_text_path_from_embeddings_gives_the_same_case():
    t = TENSORS
    rel = seed_key_relevance(t["keys"], t["text_embeds"])[:, 1:]
    a = sparsezip(t["hidden"], t["cls_attn"], t["keys"], _config("pope"), rel, kmeans_init=t["pope/kmeans_init_idx"])
    assert _rel(a.tokens, t["pope/tokens"]) <= 1e-12


@pytest.mark.parametrize("name", ["pope", "mme", "docvqa", "readme"])
def test_shipped_seed_configs_are_the_cases(name):
    assert config_to_dict(load_config(f"sparsezip_seed_{name}")) == config_to_dict(_config(name))


def test_without_replay_the_draws_are_seeded_and_deterministic():
    t = TENSORS
    cfg = _config("pope")
    a = sparsezip(t["hidden"], t["cls_attn"], t["keys"], cfg, t["text_rel"][:, 1:])
    b = sparsezip(t["hidden"], t["cls_attn"], t["keys"], cfg, t["text_rel"][:, 1:])
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape == TENSORS["pope/tokens"].shape


def test_dropping_replay_or_a_seed_key_breaks_parity():
    """The set detects the differences: counting CLS, token order, score weighting, min-max terms."""
    t = TENSORS
    base = config_to_dict(_config("pope"))
    rel = t["text_rel"][:, 1:]
    for change in ({"k_counts_cls": True}, {"merging": {**base["merging"], "order": "position"}},
                   {"merging": {**base["merging"], "weighting": "score"}}, {"score_norm": "minmax"}):
        cfg = parse_config({**base, **change})
        out = sparsezip(t["hidden"], t["cls_attn"], t["keys"], cfg, rel, kmeans_init=t["pope/kmeans_init_idx"])
        ref = t["pope/tokens"]
        assert out.tokens.shape != ref.shape or _rel(out.tokens, ref) > 1e-6, change


def test_reseed_replay_moves_an_emptied_centre():
    """kmeans_reinit: an empty cluster is re-seeded on the recorded token (none occurs in the cases)."""
    from sparsezip_lmms.compress.cluster import lloyd

    points = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    centres = torch.tensor([[[0.05, 0.0], [5.05, 5.0], [100.0, 100.0]]], dtype=torch.float64)
    valid = torch.ones(1, 3, dtype=torch.bool)
    kept, _ = lloyd(points, mask, centres, valid, 1)
    assert torch.equal(kept[0, 2], centres[0, 2])
    moved, labels = lloyd(points, mask, centres, valid, 1, reseed=torch.tensor([[3]]))
    assert torch.equal(moved[0, 2], points[0, 3]) and labels[0, 3] == 2
