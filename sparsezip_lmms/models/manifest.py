"""lmms-eval registration (entry-point group ``lmms_eval.models``).

Kept free of heavy imports: lmms-eval loads every entry point at start-up and only logs a warning
when one fails, which would hide the real error behind "model not found".
"""

from __future__ import annotations

MODEL_CLASSES = {
    "llava_sparsezip": "sparsezip_lmms.models.llava.LlavaSparseZip",
    "llava_visionzip": "sparsezip_lmms.models.llava.LlavaVisionZip",
    "llava_sparsevlm": "sparsezip_lmms.models.llava.LlavaSparseVLM",
    "llava_fastv": "sparsezip_lmms.models.llava.LlavaFastV",
    "llava_divprune": "sparsezip_lmms.models.llava.LlavaDivPrune",
    "llava_cdpruner": "sparsezip_lmms.models.llava.LlavaCDPruner",
    "llava_dart": "sparsezip_lmms.models.llava.LlavaDART",
    "llava_vispruner": "sparsezip_lmms.models.llava.LlavaVisPruner",
    "llava_hf_timed": "sparsezip_lmms.models.llava.LlavaHfTimed",
    "llava_compressed": "sparsezip_lmms.models.llava.LlavaCompressed",
    "qwen2_5_vl_hf_timed": "sparsezip_lmms.models.qwen.Qwen2_5_VLHfTimed",
    "qwen2_5_vl_visionzip": "sparsezip_lmms.models.qwen.Qwen2_5_VLVisionZip",
    "qwen2_5_vl_divprune": "sparsezip_lmms.models.qwen.Qwen2_5_VLDivPrune",
    "qwen2_5_vl_vispruner": "sparsezip_lmms.models.qwen.Qwen2_5_VLVisPruner",
    "qwen2_5_vl_dart": "sparsezip_lmms.models.qwen.Qwen2_5_VLDART",
    "qwen2_5_vl_fastv": "sparsezip_lmms.models.qwen.Qwen2_5_VLFastV",
    "qwen2_5_vl_sparsevlm": "sparsezip_lmms.models.qwen.Qwen2_5_VLSparseVLM",
    "qwen2_5_vl_sparsezip": "sparsezip_lmms.models.qwen.Qwen2_5_VLSparseZip",
    "qwen2_5_vl_cdpruner": "sparsezip_lmms.models.qwen.Qwen2_5_VLCDPruner",
    "qwen2_5_vl_compressed": "sparsezip_lmms.models.qwen.Qwen2_5_VLCompressed",
}


# the ids that run any registered method from config= (no default config)
GENERIC_IDS = ("llava_compressed", "qwen2_5_vl_compressed")
# the Qwen2.5-VL ids (sparsezip_lmms.models.qwen): they load Qwen2.5-VL checkpoints only
QWEN_IDS = tuple(model_id for model_id in MODEL_CLASSES if model_id.startswith("qwen2_5_vl_"))
# one LLaVA id per method family, each with its default config (demo, tests); the Qwen ids are in QWEN_IDS
DEDICATED_IDS = tuple(model_id for model_id in MODEL_CLASSES if model_id not in GENERIC_IDS and model_id not in QWEN_IDS)


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=model_id, chat_class_path=path) for model_id, path in MODEL_CLASSES.items()]
