"""The compression FLOP count follows what runs (efficiency/flops.py)."""

import math

from sparsezip_lmms.config import load_config
from sparsezip_lmms.efficiency.flops import Dims, compression_flops

DIMS = Dims(llm_layers=32, llm_width=4096, llm_mlp=11008, kv_heads=32, head_dim=128, vision_layers_run=23,
            vision_width=1024, vision_mlp=4096, vision_tokens=577, vision_heads=16)  # fmt: skip
N, C, CK = 576, 1024, 64


def test_capture_counts_the_recomputed_key_projection():
    capture = 2 * (N + 1) * C * C + (N + 1) * C  # queries (CLS kept) and keys of all tokens, the CLS row
    visionzip = load_config("visionzip_64")
    assert compression_flops(visionzip, 1, DIMS) == capture + (N - 53) * 10 * CK
    assert capture > 0.6e9  # the key projection alone is ~0.6 G multiply-adds per image


def test_mutual_information_is_counted_whenever_the_hybrid_score_runs():
    base = load_config("sparsezip_64", {"merging.contextual_num": 0})
    attention_only_dynamic = load_config("sparsezip_64", {"merging.contextual_num": 0, "skip_hybrid_attn": True})
    attention_only_fixed = load_config(
        "sparsezip_64", {"merging.contextual_num": 0, "skip_hybrid_attn": True, "skip_dynamic_k": True}
    )
    assert compression_flops(base, 1, DIMS) == compression_flops(attention_only_dynamic, 1, DIMS)  # dynamic K reads it
    assert compression_flops(base, 1, DIMS) - compression_flops(attention_only_fixed, 1, DIMS) == N * N * CK


def test_kmeans_seed_count_follows_the_clustering():
    plain = load_config("sparsezip_64", {"skip_hybrid_attn": True, "skip_dynamic_k": True})
    agglomerative = load_config("sparsezip_64", {"skip_hybrid_attn": True, "skip_dynamic_k": True, "merging.agglomerative": True})
    no_merge = load_config("sparsezip_64", {"skip_hybrid_attn": True, "skip_dynamic_k": True, "merge": "none"})
    k, m = plain.merging.contextual_num, plain.merging
    assert compression_flops(plain, 1, DIMS) - compression_flops(no_merge, 1, DIMS) == (m.kmeans_iters + 1) * N * k * CK
    seeds = math.ceil(m.kmeans_init_factor * k)
    assert compression_flops(agglomerative, 1, DIMS) - compression_flops(no_merge, 1, DIMS) == (m.kmeans_iters + 1) * N * seeds * CK


def test_vispruner_counts_every_round_of_duplicate_removal():
    from sparsezip_lmms.compress.vispruner import vispruner_schedule

    capture = 2 * (N + 1) * C * C + (N + 1) * C
    config = load_config("vispruner_64")
    rounds = vispruner_schedule(64, 0.5, N)  # R from 544 down, 8 dropped per round, until 32 remain
    assert rounds[0] == (544, 8) and rounds[-1][0] - rounds[-1][1] == 32
    expected = capture + N * C + sum(((r + 1) // 2) * (r // 2) * C for r, _ in rounds)
    assert compression_flops(config, 1, DIMS) == expected
    assert compression_flops(config, 5, DIMS) == 5 * expected  # LLaVA-NeXT: every crop
