"""Mini POPE / MME / DocVQA datasets with exactly the columns of the lmms-lab releases.

Images are generated (coloured shapes and rendered text on canvases of assorted sizes and aspect
ratios), so everything is offline and deterministic. Each builder saves a ``datasets.DatasetDict``
under the split name the upstream task reads (POPE/MME: ``test``; DocVQA: ``validation``), which a
task YAML loads with ``dataset_path: <dir>`` and ``dataset_kwargs: {load_from_disk: true}``.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from .pictures import draw_shape

_SHAPES = ("square", "circle", "triangle")
_COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40)}
_OBJECTS = ("cat", "dog", "car", "chair", "person", "bottle", "bicycle", "umbrella")
_SIZES = ((640, 480), (480, 640), (336, 336), (500, 375), (800, 300), (224, 224))


def _scene(rng: random.Random, size: tuple[int, int], n_shapes: int = 3) -> Image.Image:
    width, height = size
    background = tuple(rng.randint(90, 200) for _ in range(3))
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    for _ in range(n_shapes):
        color = rng.choice(list(_COLORS.values()))
        w = rng.randint(width // 8, width // 3)
        x, y = rng.randint(0, width - w), rng.randint(0, max(0, height - w))
        draw_shape(draw, rng.choice(_SHAPES), x, y, w, color)
    return img


def _document(rng: random.Random, lines: list[str], size: tuple[int, int] = (600, 800)) -> Image.Image:
    img = Image.new("L", size, 250)  # scanned documents are often grayscale
    draw = ImageDraw.Draw(img)
    y = 30
    for line in lines:
        draw.text((30, y), line, fill=rng.randint(0, 60))
        y += 24
    return img


def pope_rows(n: int = 12, seed: int = 0, questions_per_image: int = 1) -> list[dict]:
    """Rows of lmms-lab/POPE (split ``test``): id, question_id, question, answer, image_source, image, category.

    ``questions_per_image`` > 1: as in POPE, consecutive rows ask about the same image (one question
    per category for 3), which is what text-sensitivity analyses compare.
    """
    rng = random.Random(seed)
    rows = []
    categories = ("adversarial", "popular", "random")
    for i in range(n):
        obj = rng.choice(_OBJECTS)
        scene = _scene(rng, _SIZES[(i // questions_per_image) % len(_SIZES)])  # drawn for every row
        first = i - i % questions_per_image  # the row whose image this row shares
        rows.append(
            {
                "id": str(i),
                "question_id": str(i + 1),
                "question": f"Is there a {obj} in the image?",
                "answer": "yes" if i % 2 == 0 else "no",
                "image_source": f"COCO_val2014_{100000 + first:012d}",
                "image": scene if first == i else rows[first]["image"],
                "category": categories[i % len(categories)],
            }
        )
    return rows


_MME_CATEGORIES = (
    ("existence", "Is there a {c} shape in this image?"),
    ("color", "Is the largest shape in this image {c}?"),
    ("count", "Are there three shapes in this image?"),
    ("position", "Is the {c} shape on the left side of the image?"),
    ("OCR", "Is the word in the picture \"{c}\"?"),
    ("commonsense_reasoning", "Is it appropriate to paint with the {c} brush here?"),
    ("numerical_calculation", "Is the answer to the arithmetic question in the image {c}?"),
    ("code_reasoning", "The image shows a python code. Is the output of the code '{c}'?"),
)


def mme_rows(n_images: int = 8, seed: int = 0) -> list[dict]:
    """Rows of lmms-lab/MME (split ``test``): question_id, image, question, answer, category.

    As in MME, every image has exactly two questions (answers ``Yes`` and ``No``) sharing one
    ``question_id`` (the image file name), which MME's accuracy+ and score need.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n_images):
        category, template = _MME_CATEGORIES[i % len(_MME_CATEGORIES)]
        image = _scene(rng, _SIZES[(i + 2) % len(_SIZES)])
        yes_word, no_word = rng.sample(list(_COLORS), 2)
        for word, answer in ((yes_word, "Yes"), (no_word, "No")):
            rows.append(
                {
                    "question_id": f"{category}/{i:04d}.png",
                    "image": image,
                    "question": template.format(c=word) + " Please answer yes or no.",
                    "answer": answer,
                    "category": category,
                }
            )
    return rows


def docvqa_rows(n: int = 6, seed: int = 0) -> list[dict]:
    """Rows of lmms-lab/DocVQA (config ``DocVQA``, split ``validation``)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        date = f"{rng.randint(1, 12)}/{rng.randint(1, 28)}/{rng.randint(80, 99)}"
        total = f"{rng.randint(10, 999)}.{rng.randint(0, 99):02d}"
        lines = ["ITC LIMITED", f"Date: {date}", f"Total: {total}", "Page 3 of the report"]
        question, answers = rng.choice(
            [
                ("What is the date mentioned in this letter?", [date]),
                ("What is the total amount?", [total, f"${total}"]),
                ("What is the name of the company?", ["ITC Limited", "ITC LIMITED"]),
            ]
        )
        rows.append(
            {
                "questionId": str(50000 + i),
                "question": question,
                "question_types": ["layout"],
                "image": _document(rng, lines),
                "docId": 1000 + i,
                "ucsf_document_id": f"nkbl{i:04d}",
                "ucsf_document_page_no": str(rng.randint(1, 9)),
                "answers": answers,
                "data_split": "val",
            }
        )
    return rows


def _save(rows: list[dict], split: str, out_dir: Path, features) -> Path:
    import datasets

    ds = datasets.Dataset.from_list(rows, features=features)
    datasets.DatasetDict({split: ds}).save_to_disk(str(out_dir))
    return out_dir


def build_mini_pope(out_dir: str | Path, n: int = 12, seed: int = 0) -> Path:
    from datasets import Features, Image as ImageFeature, Value

    features = Features(
        {
            "id": Value("string"),
            "question_id": Value("string"),
            "question": Value("string"),
            "answer": Value("string"),
            "image_source": Value("string"),
            "image": ImageFeature(),
            "category": Value("string"),
        }
    )
    return _save(pope_rows(n, seed, questions_per_image=3), "test", Path(out_dir), features)


def build_mini_mme(out_dir: str | Path, n_images: int = 8, seed: int = 0) -> Path:
    from datasets import Features, Image as ImageFeature, Value

    features = Features(
        {
            "question_id": Value("string"),
            "image": ImageFeature(),
            "question": Value("string"),
            "answer": Value("string"),
            "category": Value("string"),
        }
    )
    return _save(mme_rows(n_images, seed), "test", Path(out_dir), features)


def build_mini_docvqa(out_dir: str | Path, n: int = 6, seed: int = 0) -> Path:
    from datasets import Features, Image as ImageFeature, Sequence, Value

    features = Features(
        {
            "questionId": Value("string"),
            "question": Value("string"),
            "question_types": Sequence(Value("string")),
            "image": ImageFeature(),
            "docId": Value("int32"),
            "ucsf_document_id": Value("string"),
            "ucsf_document_page_no": Value("string"),
            "answers": Sequence(Value("string")),
            "data_split": Value("string"),
        }
    )
    return _save(docvqa_rows(n, seed), "validation", Path(out_dir), features)


MINI_BUILDERS = {"pope": build_mini_pope, "mme": build_mini_mme, "docvqa_val": build_mini_docvqa}

# GQA / ScienceQA-IMG / TextVQA / OCRBench / MMBench / SEED-Bench (sparsezip_lmms/demo/mini_benchmarks.py)
from .mini_benchmarks import BENCHMARK_BUILDERS  # noqa: E402

MINI_BUILDERS.update(BENCHMARK_BUILDERS)
