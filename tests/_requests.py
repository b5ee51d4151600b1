"""Build lmms-eval generate_until requests by hand, to drive a model class in-process."""

from __future__ import annotations

from lmms_eval.api.instance import Instance


def user_turn(images, text):
    return [{"role": "user", "content": [*({"type": "image", "url": im} for im in images), {"type": "text", "text": text}]}]


def make_requests(model, docs, gen_kwargs, task="unit", split="test"):
    """docs: list of (images, question). Registers them in ``model.task_dict`` and returns Instances."""
    model.task_dict = {task: {split: [{"images": im, "text": q} for im, q in docs]}}

    def doc_to_messages(doc):
        return user_turn(doc["images"], doc["text"])

    return [
        Instance(
            request_type="generate_until",
            arguments=(q, doc_to_messages, dict(gen_kwargs), i, task, split),
            idx=0,
            metadata={"task": task, "doc_id": i, "repeats": 1},
        )
        for i, (_, q) in enumerate(docs)
    ]
