"""Every model id (LLaVA and Qwen2.5-VL) resolves through lmms-eval's entry points, and bad model_args fail early."""

import subprocess
import sys

import pytest

from sparsezip_lmms.config import ConfigError
from sparsezip_lmms.models.manifest import MODEL_CLASSES, QWEN_IDS

MODEL_IDS = sorted(MODEL_CLASSES)


def test_manifest_lists_every_method_family():
    assert {
        "llava_sparsezip", "llava_visionzip", "llava_sparsevlm", "llava_fastv", "llava_divprune", "llava_cdpruner",
        "llava_dart", "llava_vispruner", "llava_hf_timed", "llava_compressed",
        "qwen2_5_vl_hf_timed", "qwen2_5_vl_visionzip", "qwen2_5_vl_divprune", "qwen2_5_vl_vispruner", "qwen2_5_vl_dart",
        "qwen2_5_vl_fastv", "qwen2_5_vl_sparsevlm", "qwen2_5_vl_sparsezip", "qwen2_5_vl_cdpruner", "qwen2_5_vl_compressed",
    } == set(MODEL_IDS)  # fmt: skip


def test_entry_point_is_declared():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="lmms_eval.models") if ep.value.startswith("sparsezip_lmms")]
    assert eps, "sparsezip_lmms is not registered in the lmms_eval.models entry-point group"


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_ids_resolve_to_chat_classes_through_lmms_eval(model_id):
    from lmms_eval.models import get_model

    cls = get_model(model_id)
    assert cls.model_id == model_id and cls.is_simple is False
    if model_id in QWEN_IDS:  # lmms-eval's own Qwen2.5-VL chat adapter underneath
        from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

        assert cls.__module__ == "sparsezip_lmms.models.qwen" and issubclass(cls, Qwen2_5_VL)
        return
    from lmms_eval.models.chat.llava_hf import LlavaHf

    assert cls.__module__ == "sparsezip_lmms.models.llava" and issubclass(cls, LlavaHf)


def test_registration_does_not_use_the_deprecated_variable():
    code = "import os; os.environ.pop('LMMS_EVAL_PLUGINS', None); from lmms_eval.models import get_model; get_model('llava_sparsezip')"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    "model_id, args, fragment",
    [
        ("llava_sparsezip", {"config": "sparsezip_999"}, "unknown config 'sparsezip_999'"),
        ("llava_sparsezip", {"config": "sparsezip_64", "bogus_key": 3}, "unknown key 'bogus_key'"),
        ("llava_sparsezip", {"config": "sparsezip_64", "merging.contextual_num": "lots"}, "'merging.contextual_num'"),
        ("llava_visionzip", {"config": "sparsezip_64"}, "llava_visionzip accepts visionzip"),
        ("llava_hf_timed", {"config": "visionzip_64"}, "llava_hf_timed accepts none"),
        ("llava_visionzip", {"dominant": 0}, "'dominant'"),
    ],
)
def test_bad_model_args_fail_before_loading_weights(model_id, args, fragment, tmp_path):
    from lmms_eval.models import get_model

    # The checkpoint path does not exist: reaching weight loading would raise an OSError instead.
    with pytest.raises(ConfigError) as info:
        get_model(model_id)(pretrained=str(tmp_path / "no-weights-here"), device="cpu", **args)
    assert fragment in str(info.value)
    assert model_id in str(info.value)


@pytest.mark.parametrize("model_type", ["llava_onevision", "llava_next_video"])
def test_other_llava_architectures_are_refused_before_loading_weights(model_type, tmp_path):
    """Only config.json exists: the refusal must come from it, before any weight is read."""
    import json

    from lmms_eval.models import get_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ValueError, match=f"'{model_type}' checkpoint") as info:
        get_model("llava_sparsezip")(pretrained=str(tmp_path), device="cpu", config="sparsezip_64")
    assert "llava_sparsezip" in str(info.value) and "model_type 'llava'" in str(info.value)
    assert "model_type 'llava_next'" in str(info.value)  # the message names what is supported
