"""The Qwen2.5-VL model ids through lmms-eval's real CLI (in the test process) on a tiny random checkpoint and
the mini POPE task: batch 1 and batch 4 agree, results files are written, compressing ids send fewer visual
tokens than the uncompressed one; keep_all is the stock greedy ``generate``; bad configs are refused before
any weight is read.
"""

from __future__ import annotations

import pytest
import torch

from sparsezip_lmms.config import ConfigError
from sparsezip_lmms.demo.harness import lmms_eval_command
from _inprocess import run_in_process

pytestmark = pytest.mark.e2e

PIXELS = "min_pixels=3136,max_pixels=50176"  # 56² .. 224²: at most 64 merged tokens per image
LIMIT = 8
DEFAULTS = {
    "qwen2_5_vl_hf_timed": "keep_all", "qwen2_5_vl_visionzip": "visionzip_qwen", "qwen2_5_vl_divprune": "divprune_official",
    "qwen2_5_vl_vispruner": "vispruner_qwen", "qwen2_5_vl_dart": "dart_qwen", "qwen2_5_vl_fastv": "fastv_default",
    "qwen2_5_vl_sparsevlm": "sparsevlm2_64", "qwen2_5_vl_sparsezip": "sparsezip_qwen_text", "qwen2_5_vl_cdpruner": "cdpruner_qwen",
}  # fmt: skip
BEFORE_LLM = ("qwen2_5_vl_visionzip", "qwen2_5_vl_divprune", "qwen2_5_vl_vispruner", "qwen2_5_vl_sparsezip", "qwen2_5_vl_cdpruner")
_RUNS: dict[tuple[str, int], object] = {}


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    """A tiny Qwen2.5-VL with 16 LLM layers (SparseVLM v2.0 prunes at layers 2, 6 and 15)."""
    from sparsezip_lmms.demo.tiny_qwen import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen") / "tiny-qwen2.5-vl", text_layers=16)


def _run(tmp_path_factory, mini_tasks, checkpoint, model, batch_size, extra_args=""):
    key = (model, batch_size)
    if key not in _RUNS:
        include, names = mini_tasks
        out = tmp_path_factory.mktemp(f"{model}_{batch_size}")
        cmd = lmms_eval_command(
            model, f"pretrained={checkpoint},dtype=float32,{PIXELS}{extra_args}", [names["pope"], names["mme"]], out,
            include_path=include, batch_size=batch_size, extra=["--gen_kwargs", "max_new_tokens=4", "--limit", str(LIMIT)],
        )  # fmt: skip
        _RUNS[key] = run_in_process(cmd, out, timeout=600)
    return _RUNS[key]


def _rows(run):
    return {(task, row["doc_id"]): row for task, rows in run.samples.items() for row in rows}


@pytest.mark.parametrize("model", list(DEFAULTS))
def test_cli_runs_each_id_and_batches_agree(model, tmp_path_factory, mini_tasks, qwen_checkpoint):
    run4 = _run(tmp_path_factory, mini_tasks, qwen_checkpoint, model, 4)
    assert "sparsezip_lmms.models.qwen" in run4.results["config"]["model_backend"]
    assert run4.results_path.is_file()
    rows4 = _rows(run4)
    assert len(rows4) == 2 * LIMIT and len(run4.samples) == 2
    assert all(row["token_counts"][0]["input_tokens"] > 0 for row in rows4.values())
    rows1 = _rows(_run(tmp_path_factory, mini_tasks, qwen_checkpoint, model, 1))
    assert {d: r["filtered_resps"] for d, r in rows1.items()} == {d: r["filtered_resps"] for d, r in rows4.items()}
    assert {d: r["eff_visual_tokens"] for d, r in rows1.items()} == {
        d: r["eff_visual_tokens"] for d, r in rows4.items()
    }
    if model != "qwen2_5_vl_hf_timed":  # fewer visual tokens (in-LLM: on average over the layers) than keep_all
        full = _rows(_run(tmp_path_factory, mini_tasks, qwen_checkpoint, "qwen2_5_vl_hf_timed", 4))
        for doc_id, row in rows4.items():
            assert 0 < row["eff_visual_tokens"] < full[doc_id]["eff_visual_tokens"], (
                doc_id,
                row["eff_visual_tokens"],
            )
            shorter, unpruned = (
                row["token_counts"][0]["input_tokens"],
                full[doc_id]["token_counts"][0]["input_tokens"],
            )
            assert shorter < unpruned if model in BEFORE_LLM else shorter == unpruned  # in-LLM: every token enters
            assert 0 < row["eff_prefill_tflops"] <= full[doc_id]["eff_prefill_tflops"] * 1.01  # analytic, the method's own work included


def _adapter(model_id, checkpoint, **kwargs):
    from lmms_eval.models import get_model

    args = {
        "device": "cpu",
        "dtype": "float32",
        "min_pixels": 3136,
        "max_pixels": 50176,
        **kwargs,
    }
    return get_model(model_id)(pretrained=str(checkpoint), **args)


def _image(w, h, seed=0):
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy())


def _prompt(text, *images):
    from lmms_eval.protocol import ChatMessages

    content = [{"type": "image", "url": image} for image in images] + [{"type": "text", "text": text}]
    return ChatMessages(messages=[{"role": "user", "content": content}])


def _prompts():
    sizes = [(224, 224), (300, 170), (120, 260)]
    return [_prompt(f"Is there a cat{'?' * (i + 1)}", _image(w, h, i)) for i, (w, h) in enumerate(sizes)]


def test_keep_all_is_stock_greedy_generate(qwen_checkpoint):
    from sparsezip_lmms.models.qwen_pipeline import qwen_batch, qwen_inputs

    lmm = _adapter("qwen2_5_vl_hf_timed", qwen_checkpoint)
    prompts = [lmm.chat_prompt(messages) for messages in _prompts()]
    ours = qwen_batch(
        lmm,
        [t for t, _ in prompts],
        [i for _, ims in prompts for i in ims],
        {"max_new_tokens": 4},
        lmm.compression,
    )
    for (text, images), answer, n in zip(prompts, ours.texts, ours.output_tokens):
        inputs = qwen_inputs(lmm, [text], images)
        stock = lmm.model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=lmm.eot_token_id,
                                   pad_token_id=lmm.tokenizer.pad_token_id)  # fmt: skip
        new = stock[0, inputs["input_ids"].shape[1] :].tolist()
        stops = {lmm.eot_token_id, lmm.tokenizer.pad_token_id}
        new = new[: next((i for i, t in enumerate(new) if t in stops), len(new))]
        assert (lmm.tokenizer.decode(new, skip_special_tokens=True), len(new)) == (
            answer,
            n,
        )


def test_resize_rule_is_qwen_vl_utils():
    from sparsezip_lmms.models.qwen_pipeline import smart_resize

    assert smart_resize(224, 224, min_pixels=3136, max_pixels=50176) == (224, 224)
    assert smart_resize(1000, 500, min_pixels=256 * 784, max_pixels=1605632) == (
        1008,
        504,
    )
    h, w = smart_resize(4000, 3000, min_pixels=256 * 784, max_pixels=1605632)
    assert h % 28 == w % 28 == 0 and h * w <= 1605632
    h, w = smart_resize(20, 30, min_pixels=256 * 784, max_pixels=1605632)
    assert h % 28 == w % 28 == 0 and h * w >= 256 * 784


def test_in_llm_prompts_without_one_image_run_unpruned(qwen_checkpoint):
    from sparsezip_lmms.models.base import _Prepared

    lmm = _adapter("qwen2_5_vl_dart", qwen_checkpoint)
    one = lmm.chat_prompt(_prompts()[0])
    none = lmm.chat_prompt(_prompt("Is there a cat?"))
    two = lmm.chat_prompt(_prompt("Which is redder?", _image(224, 224, 1), _image(168, 224, 2)))
    items = [
        _Prepared("k", i, t, ims, {"max_new_tokens": 2}, "t", "s", i, None)
        for i, (t, ims) in enumerate([one, none, two])
    ]
    pairs = lmm._run_batch(items)
    records = [record for _, record in pairs]
    assert all(record.error is None for record in records)
    assert "unpruned" not in records[0].extra and records[0].visual_tokens_per_layer is not None
    assert "unpruned" in records[1].extra and records[1].visual_tokens == 0
    assert "unpruned" in records[2].extra and records[2].extra["images"] == 2
    # the rule's own time: DART's pivots and picks in the pruned row; nothing of a method's in the others
    assert records[0].method_s > 0 and records[1].method_s == records[2].method_s == 0.0


@pytest.mark.parametrize(
    "model_id, args, fragment",
    [
        ("qwen2_5_vl_compressed", {}, "config= is required"),
        ("qwen2_5_vl_compressed", {"config": "sparsezip_64"}, "reference_tokens"),  # LLaVA's counts
        ("qwen2_5_vl_sparsezip", {"config": "sparsezip_qwen", "cross_beta": 0.3}, "text_space"),
        ("qwen2_5_vl_sparsezip", {"config": "cdpruner_qwen"}, "'cdpruner' config"),
        ("qwen2_5_vl_sparsevlm", {"config": "fastv_default"}, "'fastv' config"),
        ("qwen2_5_vl_visionzip", {"config": "visionzip_64"}, "dominant_ratio"),
        (
            "qwen2_5_vl_visionzip",
            {"config": "visionzip_qwen", "bogus_key": 3},
            "unknown key 'bogus_key'",
        ),
        (
            "qwen2_5_vl_hf_timed",
            {"config": "dart_qwen"},
            "qwen2_5_vl_hf_timed accepts none",
        ),
    ],
)
def test_bad_configs_refused_before_weights(model_id, args, fragment, tmp_path):
    from lmms_eval.models import get_model

    with pytest.raises(ConfigError) as info:  # no such folder: reaching the checkpoint would be an OSError
        get_model(model_id)(pretrained=str(tmp_path / "missing"), **args)
    assert fragment in str(info.value)


def test_in_llm_layers_checked_against_the_checkpoint(tmp_path):
    from sparsezip_lmms.demo.tiny_qwen import build_tiny_qwen2_5_vl

    shallow = build_tiny_qwen2_5_vl(tmp_path / "shallow", text_layers=3)
    (shallow / "model.safetensors").unlink()  # the refusal comes before any weight is read
    with pytest.raises(ConfigError, match="prunes at layer 6"):
        _adapter("qwen2_5_vl_sparsevlm", shallow)


@pytest.mark.parametrize(
    "config",
    [
        "keep_all",
        "visionzip_qwen",
        "divprune_official",
        "vispruner_qwen",
        "dart_qwen",
        "fastv_default",
        "sparsevlm2_64",
        "sparsevlm_64",
        "sparsezip_qwen",
        "cdpruner_qwen",
        "random_qwen",
        "pool_qwen",
    ],
)
def test_mixed_image_sizes_batch_like_single_prompts(config, qwen_checkpoint):
    """Images of three sizes (64, 50 and 40 merged tokens) in one left-padded batch: each row as alone."""
    from sparsezip_lmms.models.qwen_pipeline import qwen_batch

    lmm = _adapter("qwen2_5_vl_compressed", qwen_checkpoint, config=config, dtype="float64")
    prompts = [lmm.chat_prompt(messages) for messages in _prompts()]
    together = qwen_batch(
        lmm,
        [t for t, _ in prompts],
        [i for _, ims in prompts for i in ims],
        {"max_new_tokens": 3},
        lmm.compression,
    )
    for row, (text, images) in enumerate(prompts):
        alone = qwen_batch(lmm, [text], images, {"max_new_tokens": 3}, lmm.compression)
        assert (alone.texts[0], alone.input_tokens[0], alone.visual_tokens[0]) == (
            together.texts[row],
            together.input_tokens[row],
            together.visual_tokens[row],
        )
        assert alone.layer_avg[0] == pytest.approx(together.layer_avg[row])


def test_a_failing_request_fails_alone(qwen_checkpoint):
    """vispruner_64 keeps 64 tokens: the 224² image (64 merged tokens) runs, the smaller ones fail; the batch is
    retried one by one and each failure is an empty answer with a failed record."""
    from sparsezip_lmms.models.base import _Prepared

    lmm = _adapter("qwen2_5_vl_vispruner", qwen_checkpoint, config="vispruner_64")
    items = [
        _Prepared("k", i, *lmm.chat_prompt(m), {"max_new_tokens": 2}, "t", "s", i, None)
        for i, m in enumerate(_prompts())
    ]
    pairs = lmm._run_batch(items)
    assert pairs[0][1].error is None and pairs[0][1].visual_tokens == 64
    for result, record in pairs[1:]:
        assert result.text == "" and "vispruner keeps 64" in record.error


def test_qwen_ids_resolve_to_the_upstream_chat_class():
    from lmms_eval.models import get_model
    from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

    from sparsezip_lmms.models.manifest import DEDICATED_IDS, GENERIC_IDS, QWEN_IDS

    assert set(QWEN_IDS) == {*DEFAULTS, "qwen2_5_vl_compressed"} and "qwen2_5_vl_compressed" in GENERIC_IDS
    assert not set(QWEN_IDS) & set(DEDICATED_IDS)  # the LLaVA tests' ids stay LLaVA-only
    for model_id in QWEN_IDS:
        cls = get_model(model_id)
        assert cls.__module__ == "sparsezip_lmms.models.qwen" and cls.model_id == model_id and cls.is_simple is False
        assert issubclass(cls, Qwen2_5_VL) and cls.default_config == DEFAULTS.get(model_id)


def test_qwen_method_flops_count_each_methods_own_work():
    from sparsezip_lmms.config import load_config
    from sparsezip_lmms.efficiency.qwen_flops import QwenDims, qwen_compression_flops

    dims = QwenDims(1280, 3420, 16, 32, 4, 112, 2, 3584, 28, 3584, 18944, 28, 4, 128)
    grid, s, n, c, d = [(1, 32, 32)], 1024, 256, 1280, 3584
    capture = 2 * s * c * c + s * s * c
    flops = {name: qwen_compression_flops(load_config(name), grid, dims) for name in
             ("random_qwen", "pool_qwen", "cdpruner_qwen", "sparsezip_qwen", "sparsezip_qwen_text")}  # fmt: skip
    k = load_config("cdpruner_qwen").budget(n)
    assert flops["random_qwen"] == 0 and flops["pool_qwen"] == n * d
    assert flops["cdpruner_qwen"] == n * n * d + n * d + n * n + n * k * (k + 1) // 2
    assert flops["sparsezip_qwen"] > capture + n * n * (c // 16)  # the capture and the hybrid score's term
    assert flops["sparsezip_qwen_text"] == flops["sparsezip_qwen"] + n * d  # the question relevance


def test_qwen_flops_count_window_and_full_blocks_the_merger_and_the_llm():
    """The analytic count on a hand-checkable geometry: an 8 x 12 patch image (4 x 6 merged tokens)."""
    from types import SimpleNamespace

    from sparsezip_lmms.efficiency.qwen_flops import PATCH_VALUES, QwenDims, qwen_llm_flops, qwen_vision_flops

    vision = SimpleNamespace(hidden_size=32, intermediate_size=64, num_heads=2, depth=4, fullatt_block_indexes=[1, 3],
                             window_size=112, spatial_merge_size=2, patch_size=14, out_hidden_size=64)  # fmt: skip
    text = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, hidden_size=64, intermediate_size=128, num_hidden_layers=3)
    dims = QwenDims.from_config(SimpleNamespace(vision_config=vision, text_config=text))
    assert dims.window == 4  # 112 px / 14 / 2: windows of 4 x 4 merged tokens
    s, c, m = 96, 32, 64
    window_pairs = 16 * (4 * 4) * (4 * 4 + 2 * 2)  # rows [4] x cols [4, 2] merged, 4 patches per merged token
    blocks = 4 * (4 * s * c * c + 3 * s * c * m) + 2 * (2 * window_pairs + 2 * s * s) * c
    merger = 24 * (128 * 128 + 128 * 64)
    assert qwen_vision_flops([[1, 8, 12]], dims) == s * PATCH_VALUES * c + blocks + merger
    n = 10
    assert qwen_llm_flops([n], dims) == 2 * n * 64 * 64 + 2 * n * 64 * 32 + 2 * n * n * 64 + 3 * n * 64 * 128


def test_records_state_each_images_budget_as_count_and_ratio(tmp_path_factory, mini_tasks, qwen_checkpoint):
    """Qwen budgets are stated per image, out of its own N merged tokens: the record holds both forms."""
    from sparsezip_lmms.efficiency import get_record
    from _requests import make_requests

    lmm = _adapter("qwen2_5_vl_visionzip", qwen_checkpoint, config="visionzip_qwen")
    docs = [([_image(224, 224)], "Is there a square?"), ([_image(168, 112)], "Is there a circle?")]
    lmm.generate_until(make_requests(lmm, docs, {"max_new_tokens": 2, "temperature": 0, "do_sample": False}, task="budgets"))
    for i in range(2):
        extra = get_record("budgets", "test", i).extra
        (n,), (kept,), (ratio,) = extra["image_tokens"], extra["image_tokens_kept"], extra["image_tokens_kept_ratio"]
        assert kept == int(0.65 * n) + max(int(0.05 * n), 1) and ratio == pytest.approx(kept / n)
