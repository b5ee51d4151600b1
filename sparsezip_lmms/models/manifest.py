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
}


# the ids that run any registered method from config= (no default config)
GENERIC_IDS = ("llava_compressed",)
# one id per method family, each with its default config (demo, tests)
DEDICATED_IDS = tuple(model_id for model_id in MODEL_CLASSES if model_id not in GENERIC_IDS)


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=model_id, chat_class_path=path) for model_id, path in MODEL_CLASSES.items()]
