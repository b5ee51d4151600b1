"""Mini GQA / ScienceQA-IMG / TextVQA / OCRBench / MMBench / SEED-Bench / VQAv2 / ChartQA / MMMU datasets, offline.

Each builder saves a ``datasets.DatasetDict`` under the split the upstream lmms-eval task reads, with the
columns and feature types of the hub release that task loads, so a task YAML with ``dataset_path: <dir>``
and ``dataset_kwargs: {load_from_disk: true}`` runs the upstream functions on it unchanged. Images are
generated (shapes, rendered text, a bar chart; at most 512 px), deterministically, so every answer is known.
Schemas come from the upstream ``utils.py`` of lmms-eval 0.7.3 (the columns it reads) and the dataset cards'
``dataset_info`` (the other columns, and every feature type):

* ``gqa`` (lmms-lab GQA ``testdev_balanced_instructions``, split ``testdev``): id, imageId, question,
  answer, fullAnswer (string), isBalanced (bool), groups {global, local}, entailed, equivalent (string),
  types {detailed, semantic, structural}, annotations {answer, fullAnswer, question: list of {objectId,
  value}}, semantic (list of {argument, dependencies: int32 list, operation}), semanticStr. The card lists
  these names; the nesting of ``annotations`` follows a card of the same data with the nesting spelt out.
  Upstream reads ``question``, ``answer`` and, through ``gqa_process_docs``, ``imageId`` to join images
  from a second hub config; the mini release instead carries the ``image`` column the processed documents
  have, and its local task replaces ``process_docs`` (see ``harness.LOCAL_OVERRIDES``).
* ``scienceqa_img`` (lmms-lab ScienceQA ``ScienceQA-IMG``, split ``test``): image, question, choices
  (string list), answer (int8 index into choices), hint, task, grade, subject, topic, category, skill,
  lecture, solution (strings; card). Upstream reads hint, question, choices, answer, image.
* ``textvqa_val`` (lmms-lab textvqa, split ``validation``): image_id, question_id (int32), question,
  question_tokens (string list), image, image_width, image_height (int32), flickr_original_url,
  flickr_300k_url, answers (10 strings), image_classes (string list), set_name, ocr_tokens (string list;
  card). Upstream reads question, answers, question_id, image (and ocr_tokens with ``ocr: true``).
* ``ocrbench`` (echo840/OCRBench, split ``test``): dataset, question, question_type (strings), answer
  (string list), image (card). Upstream reads all five; rows cover all ten question types of its score,
  including HME100k's whitespace-free comparison.
* ``mmbench_en_dev`` (lmms-lab MMBench ``en``, split ``dev``): index (int64), question, hint, A, B, C, D,
  answer, category, image, source, L2-category, comment, split (cards of lmms-lab's MMBench releases; no
  ``E`` column in the English dev set, which upstream reads with ``doc.get("E", "nan")``). Two-option rows
  have C and D null, rows without a hint have it null, and circular copies carry ``index + 1_000_000``
  with rotated options, as the dev split does; upstream's evaluator groups rows by ``index % 1e6``.
* ``seedbench`` (lmms-lab SEED-Bench, split ``test``): answer, choice_a..choice_d, data_id, data_type,
  question, question_id (strings), question_type_id (int16), image (list of images), segment (int64 list,
  null for images). Upstream reads question, choice_a..d, answer, data_type, question_id and image (a list
  it converts frame by frame). Other names and types follow lmms-lab's SEED-Bench-2 card (its own card's
  features could not be read); ``segment`` is assumed and not read upstream. Rows 1 and 3 are ``video``
  questions (several frames) so ``seed_video`` is scored too.
* ``vqav2_val`` (lmms-lab VQAv2, split ``validation``; card): question_type, multiple_choice_answer, answers
  (list of {answer, answer_confidence, answer_id: int64}), image_id, answer_type, question_id (int64), question, image.
* ``chartqa`` (lmms-lab ChartQA, split ``test``): type (``human_test`` / ``augmented_test``), question, answer
  (strings), image: the columns upstream reads.
* ``mmmu_val`` (lmms-lab MMMU, split ``validation``; card): id (``validation_<subject>_<n>``), question (with
  ``<image k>`` tags), options (a list literal, ``[]`` for open questions), explanation, image_1..image_7 (null
  past the last), img_type, answer, topic_difficulty, question_type (``multiple-choice`` / ``open``), subfield.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .pictures import draw_shape

_SIZES = ((320, 240), (240, 320), (336, 336), (448, 224), (224, 224), (512, 384))
_RGB = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 205, 35), "purple": (130, 40, 160)}
_SHAPES = ("square", "circle", "triangle")
LETTERS = "ABCD"


def _font(size: int):
    return ImageFont.load_default(size=size)  # a scalable font since Pillow 10.1


def shape_picture(color: str, shape: str, size: tuple[int, int], background=(235, 235, 235)) -> Image.Image:
    """One ``shape`` in ``color``, centred on a plain canvas."""
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    w, h = size
    s = min(w, h) // 2
    x, y = (w - s) // 2, (h - s) // 2
    draw_shape(draw, shape, x, y, s, _RGB[color])
    return img


def text_picture(lines: list[str], size: tuple[int, int], font_size: int = 28) -> Image.Image:
    """``lines`` of dark text on a light canvas."""
    img = Image.new("RGB", size, (250, 250, 245))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((16, 16 + int(font_size * 1.4) * i), line, fill=(20, 20, 20), font=_font(font_size))
    return img


def _feature(spec):
    """A ``datasets`` feature from a compact spec: a dtype name, ``"image"``, ``[spec]`` (a list) or a dict (a struct)."""
    from datasets import Image as ImageFeature, Sequence, Value

    if spec == "image":
        return ImageFeature()
    if isinstance(spec, str):
        return Value(spec)
    if isinstance(spec, list):  # lists of scalars as ``Sequence``, lists of structs as a list (as the cards spell them)
        return [_feature(spec[0])] if isinstance(spec[0], dict) else Sequence(_feature(spec[0]))
    return {key: _feature(value) for key, value in spec.items()}


def _save(rows: list[dict], split: str, out_dir: str | Path, spec: dict) -> Path:
    import datasets

    out, features = Path(out_dir), datasets.Features({key: _feature(value) for key, value in spec.items()})
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows, features=features)}).save_to_disk(str(out))
    return out


# ----------------------------------------------------------------------------- GQA


def gqa_rows(n: int = 12, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color, shape = rng.choice(list(_RGB)), rng.choice(_SHAPES)
        kind = i % 3
        if kind == 0:
            question, answer, full = f"What color is the {shape}?", color, f"The {shape} is {color}."
            types = {"detailed": "objColor", "semantic": "attr", "structural": "query"}
        elif kind == 1:
            asked = shape if i % 2 else rng.choice([s for s in _SHAPES if s != shape])
            question = f"Is there a {asked} in the picture?"
            answer = "yes" if asked == shape else "no"
            full = f"{answer.capitalize()}, there is {'a' if asked == shape else 'no'} {asked}."
            types = {"detailed": "existC", "semantic": "obj", "structural": "verify"}
        else:
            question, answer, full = "Which shape is this?", shape, f"This is a {shape}."
            types = {"detailed": "objShape", "semantic": "attr", "structural": "query"}
        qid, obj = f"2019{i:05d}", str(3_000_000 + i)
        rows.append(
            {
                "id": qid, "imageId": f"n{161000 + i // 2}", "question": question, "answer": answer, "fullAnswer": full,
                "isBalanced": True, "groups": {"global": answer if kind != 1 else None, "local": f"{i % 14:02d}-{types['detailed']}"},
                "entailed": str([f"2019{(i + 1) % n:05d}"]), "equivalent": str([qid]), "types": types,
                "annotations": {"answer": [], "fullAnswer": [{"objectId": obj, "value": "1"}], "question": [{"objectId": obj, "value": "3"}]},
                "semantic": [
                    {"argument": f"{shape} ({obj})", "dependencies": [], "operation": "select"},
                    {"argument": types["detailed"], "dependencies": [0], "operation": types["structural"]},
                ],
                "semanticStr": f"select: {shape} ({obj})->{types['structural']}: {types['detailed']} [0]",
                # the column gqa_process_docs adds by joining testdev_balanced_images on imageId
                "image": shape_picture(color, shape, _SIZES[i % len(_SIZES)]),
            }
        )
    return rows


def build_mini_gqa(out_dir: str | Path, n: int = 12, seed: int = 0) -> Path:
    ref, s = [{"objectId": "string", "value": "string"}], "string"
    spec = {
        "id": s, "imageId": s, "question": s, "answer": s, "fullAnswer": s, "isBalanced": "bool",
        "groups": {"global": s, "local": s}, "entailed": s, "equivalent": s,
        "types": {"detailed": s, "semantic": s, "structural": s}, "annotations": {"answer": ref, "fullAnswer": ref, "question": ref},
        "semantic": [{"argument": s, "dependencies": ["int32"], "operation": s}], "semanticStr": s, "image": "image",
    }  # fmt: skip
    return _save(gqa_rows(n, seed), "testdev", out_dir, spec)


# ----------------------------------------------------------------------------- ScienceQA-IMG


def scienceqa_rows(n: int = 12, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color, shape = rng.choice(list(_RGB)), rng.choice(_SHAPES)
        n_choices = 2 + i % 3
        if i % 2 == 0:
            question, right, pool, topic = "Which color is the shape in the picture?", color, list(_RGB), "colors"
        else:
            question, right, pool, topic = "Which shape is in the picture?", shape, list(_SHAPES) + ["star"], "shapes"
        choices = rng.sample([c for c in pool if c != right], n_choices - 1) + [right]
        rng.shuffle(choices)
        rows.append(
            {
                "image": shape_picture(color, shape, _SIZES[(i + 1) % len(_SIZES)]),
                "question": question,
                "choices": choices,
                "answer": choices.index(right),
                "hint": "" if i % 3 else f"The picture shows one {color} object.",
                "task": "closed choice",
                "grade": f"grade{1 + i % 4}",
                "subject": "natural science",
                "topic": topic,
                "category": f"Identify {topic}",
                "skill": f"Identify {topic} in pictures",
                "lecture": "Objects have a color and a shape.",
                "solution": f"The answer is {right}.",
            }
        )
    return rows


def build_mini_scienceqa(out_dir: str | Path, n: int = 12, seed: int = 0) -> Path:
    text = ("hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")
    spec = {"image": "image", "question": "string", "choices": ["string"], "answer": "int8", **dict.fromkeys(text, "string")}
    return _save(scienceqa_rows(n, seed), "test", out_dir, spec)


# ----------------------------------------------------------------------------- TextVQA

_WORDS = ("STOP", "Coffee", "exit", "42", "Main St.", "OPEN", "sale", "Nike", "hotel", "7-Eleven", "taxi", "bus 12")


def textvqa_rows(n: int = 10, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word = _WORDS[i % len(_WORDS)]
        size = _SIZES[i % len(_SIZES)]
        # ten annotators: mostly the word as written, some lower-cased or varied, one off
        variants = [word] * (4 + i % 4) + [word.lower()] * 2 + [f"{word}!", "unanswerable", "sign"]
        question = "what is written on the sign?" if i % 2 == 0 else "what does the text say?"
        rows.append(
            {
                "image_id": f"{rng.getrandbits(64):016x}",
                "question_id": 34602 + i,
                "question": question,
                "question_tokens": question.rstrip("?").split() + ["?"],
                "image": text_picture([word], size, font_size=36),
                "image_width": size[0],
                "image_height": size[1],
                "flickr_original_url": f"https://farm1.staticflickr.com/{i}/{1000 + i}_o.jpg",
                "flickr_300k_url": f"https://c1.staticflickr.com/{i}/{1000 + i}_z.jpg",
                "answers": variants[:10],
                "image_classes": ["Street sign", "Signage"],
                "set_name": "val",
                "ocr_tokens": word.split(),
            }
        )
    return rows


def build_mini_textvqa(out_dir: str | Path, n: int = 10, seed: int = 0) -> Path:
    s, strings = "string", ["string"]
    spec = {
        "image_id": s, "question_id": "int32", "question": s, "question_tokens": strings, "image": "image",
        "image_width": "int32", "image_height": "int32", "flickr_original_url": s, "flickr_300k_url": s,
        "answers": strings, "image_classes": strings, "set_name": s, "ocr_tokens": strings,
    }  # fmt: skip
    return _save(textvqa_rows(n, seed), "validation", out_dir, spec)


# ----------------------------------------------------------------------------- OCRBench

# (question type, source dataset, question, answers, picture lines)
_OCR_ITEMS = (
    ("Regular Text Recognition", "IIIT5K", "what is written in the image?", ["HOUSE"], ["HOUSE"]),
    ("Irregular Text Recognition", "SVTP", "what is written in the image?", ["central"], ["central"]),
    ("Artistic Text Recognition", "WordArt", "what is written in the image?", ["Dream"], ["Dream"]),
    ("Handwriting Recognition", "IAM", "what is written in the image?", ["letter"], ["letter"]),
    ("Digit String Recognition", "ORAND", "what is the number in the image?", ["90817"], ["90817"]),
    ("Non-Semantic Text Recognition", "NonSemanticText", "what is written in the image?", ["xqzt"], ["xqzt"]),
    ("Scene Text-centric VQA", "textVQA", "what brand is shown?", ["Pepsi", "pepsi cola"], ["Pepsi"]),
    ("Doc-oriented VQA", "docVQA", "What is the total?", ["$ 12.50"], ["Invoice", "Total: $ 12.50"]),
    ("Key Information Extraction", "FUNSD", "What is the date?", ["03/14/98"], ["DATE: 03/14/98", "TO: R. Smith"]),
    ("Handwritten Mathematical Expression Recognition", "HME100k", "Please write out the expression of the formula in the image using LaTeX format.", ["x ^ { 2 } + 1"], ["x^2 + 1"]),
    ("Scene Text-centric VQA", "STVQA", "what is the street name?", ["ELM"], ["ELM ST"]),
    ("Handwritten Mathematical Expression Recognition", "HME100k", "Please write out the expression of the formula in the image using LaTeX format.", ["\\frac { a } { b }"], ["a / b"]),
)


def ocrbench_rows(n: int = 12, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        qtype, source, question, answers, lines = _OCR_ITEMS[i % len(_OCR_ITEMS)]
        size = _SIZES[rng.randrange(len(_SIZES))]
        rows.append({"dataset": source, "question": question, "question_type": qtype, "answer": list(answers), "image": text_picture(lines, size)})
    return rows


def build_mini_ocrbench(out_dir: str | Path, n: int = 12, seed: int = 0) -> Path:
    spec = {"dataset": "string", "question": "string", "question_type": "string", "answer": ["string"], "image": "image"}
    return _save(ocrbench_rows(n, seed), "test", out_dir, spec)


# ----------------------------------------------------------------------------- MMBench (en, dev)

_MMB_CATEGORIES = (
    ("attribute_recognition", "finegrained_perception (instance-level)"),
    ("image_scene", "coarse_perception"),
    ("spatial_relationship", "relation_reasoning"),
)


def mmbench_rows(n: int = 12, seed: int = 0, circular: int = 2) -> list[dict]:
    """``n`` rows: ``n - circular`` questions and ``circular`` rotated copies of the first ones."""
    rng = random.Random(seed)
    rows = []
    for i in range(n - circular):
        color, shape = rng.choice(list(_RGB)), rng.choice(_SHAPES)
        if i % 4 == 3:  # a two-option question: C and D are null
            options, right = ["yes", "no"] if i % 2 else ["no", "yes"], "yes"
            question = f"Is the shape in the image a {shape}?"
        else:
            options = rng.sample([c for c in _RGB if c != color], 3) + [color]
            rng.shuffle(options)
            right, question = color, "What is the color of the shape in the image?"
        category, l2 = _MMB_CATEGORIES[i % len(_MMB_CATEGORIES)]
        row = {
            "index": i,
            "question": question,
            "hint": None if i % 3 else "The image shows a single object.",
            **{letter: (options[k] if k < len(options) else None) for k, letter in enumerate(LETTERS)},
            "answer": LETTERS[options.index(right)],
            "category": category,
            "image": shape_picture(color, shape, _SIZES[i % len(_SIZES)]),
            "source": "mini",
            "L2-category": l2,
            "comment": None,
            "split": "dev",
        }
        rows.append(row)
    for k in range(circular):
        base = rows[k]
        options = [base[letter] for letter in LETTERS if base[letter] is not None]
        right = base[base["answer"]]
        options = options[1:] + options[:1]
        copy = dict(base, index=1_000_000 + base["index"], answer=LETTERS[options.index(right)])
        copy.update({letter: (options[j] if j < len(options) else None) for j, letter in enumerate(LETTERS)})
        rows.append(copy)
    return rows


def build_mini_mmbench(out_dir: str | Path, n: int = 12, seed: int = 0) -> Path:
    text = ("question", "hint", "A", "B", "C", "D", "answer", "category")
    spec = {"index": "int64", **dict.fromkeys(text, "string"), "image": "image", **dict.fromkeys(("source", "L2-category", "comment", "split"), "string")}
    return _save(mmbench_rows(n, seed), "dev", out_dir, spec)


# ----------------------------------------------------------------------------- SEED-Bench


def seedbench_rows(n: int = 12, seed: int = 0, videos: int = 2) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color, shape = rng.choice(list(_RGB)), rng.choice(_SHAPES)
        video = i % 2 == 1 and i < 2 * videos  # rows 1, 3, ...: questions on frames
        if video:  # frames of a shape changing colour; the question asks for the last one
            colors = rng.sample(list(_RGB), 4)
            frames = [shape_picture(c, shape, (224, 224)) for c in colors]
            right, question, type_id = colors[-1], "What color does the object turn at the end of the video?", 11
        else:
            frames = [shape_picture(color, shape, _SIZES[i % len(_SIZES)])]
            right, question, type_id = color, "What is the color of the object in the image?", 3
        options = rng.sample([c for c in _RGB if c != right], 3) + [right]
        rng.shuffle(options)
        rows.append(
            {
                "answer": LETTERS[options.index(right)],
                **{f"choice_{letter.lower()}": options[k] for k, letter in enumerate(LETTERS)},
                "data_id": f"v_{i:04d}.mp4" if video else f"{1_450_000 + i}_{rng.getrandbits(32)}",
                "data_type": "video" if video else "image",
                "question": question,
                "question_id": str(100 + i),
                "question_type_id": type_id,
                "image": frames,
                "segment": [0, 4 * (i + 1)] if video else None,
            }
        )
    return rows


def build_mini_seedbench(out_dir: str | Path, n: int = 12, seed: int = 0, videos: int = 2) -> Path:
    """``videos``: how many rows are video questions (4 frames each; 0: image questions only)."""
    text = ("answer", "choice_a", "choice_b", "choice_c", "choice_d", "data_id", "data_type", "question", "question_id")
    spec = {**dict.fromkeys(text, "string"), "question_type_id": "int16", "image": ["image"], "segment": ["int64"]}
    return _save(seedbench_rows(n, seed, videos), "test", out_dir, spec)


# ----------------------------------------------------------------------------- VQAv2, ChartQA, MMMU


def vqav2_rows(n: int = 10, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color, shape = rng.choice(list(_RGB)), rng.choice(_SHAPES)
        kind = ("other", "yes/no", "number")[i % 3]
        question, answer = {
            "other": (f"What color is the {shape}?", color),
            "yes/no": (f"Is this a {shape}?", "yes"),
            "number": ("How many shapes are there?", "1"),
        }[kind]
        votes = [answer] * (5 + i % 5) + ["one" if kind == "number" else "no" if kind == "yes/no" else "orange"] * 2
        votes = (votes + [answer.capitalize()] * 10)[:10]
        rows.append(
            {
                "question_type": " ".join(question.lower().split()[:3]),
                "multiple_choice_answer": answer,
                "answers": [{"answer": a, "answer_confidence": "yes" if k % 4 else "maybe", "answer_id": k + 1} for k, a in enumerate(votes)],
                "image_id": 262000 + i,
                "answer_type": kind,
                "question_id": (262000 + i) * 1000 + 1,
                "question": question,
                "image": shape_picture(color, shape, _SIZES[i % len(_SIZES)]),
            }
        )
    return rows


def build_mini_vqav2(out_dir: str | Path, n: int = 10, seed: int = 0) -> Path:
    s, ids = "string", "int64"
    spec = {
        "question_type": s, "multiple_choice_answer": s, "answers": [{"answer": s, "answer_confidence": s, "answer_id": ids}],
        "image_id": ids, "answer_type": s, "question_id": ids, "question": s, "image": "image",
    }  # fmt: skip
    return _save(vqav2_rows(n, seed), "validation", out_dir, spec)


def bar_chart(values: dict[str, int], size: tuple[int, int] = (400, 300)) -> Image.Image:
    """A labelled bar chart of ``values``."""
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    width = (size[0] - 40) // len(values)
    for k, (label, value) in enumerate(values.items()):
        x, top = 30 + k * width, size[1] - 40 - 2 * value
        draw.rectangle([x, top, x + width - 10, size[1] - 40], fill=list(_RGB.values())[k % len(_RGB)])
        draw.text((x, top - 16), str(value), fill=(0, 0, 0), font=_font(14))
        draw.text((x, size[1] - 30), label, fill=(0, 0, 0), font=_font(14))
    return img


def chartqa_rows(n: int = 10, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        values = {year: rng.randint(5, 110) for year in ("2019", "2020", "2021", "2022")}
        top = max(values, key=values.get)
        question, answer = [
            (f"What is the value in {top}?", str(values[top])),
            ("Which year has the highest value?", top),
            ("What share of the total is the first year?", f"{100 * values['2019'] / sum(values.values()):.1f}%"),
        ][i % 3]
        rows.append({"type": "human_test" if i % 2 == 0 else "augmented_test", "question": question, "answer": answer, "image": bar_chart(values)})
    return rows


def build_mini_chartqa(out_dir: str | Path, n: int = 10, seed: int = 0) -> Path:
    spec = {"type": "string", "question": "string", "answer": "string", "image": "image"}
    return _save(chartqa_rows(n, seed), "test", out_dir, spec)


_MMMU_SUBJECTS = ("Art", "Math", "Physics", "Computer_Science", "Economics")


def mmmu_rows(n: int = 10, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color, shape = rng.choice(list(_RGB)), rng.choice(_SHAPES)
        images = [shape_picture(color, shape, _SIZES[i % len(_SIZES)])]
        if i % 3 == 2:  # open question on two pictures
            images.append(shape_picture(color, shape, (224, 224)))
            question, options, answer = "How many pictures show the same shape, <image 1> and <image 2>?", [], "2"
        else:
            options = rng.sample([c for c in _RGB if c != color], 3) + [color]
            rng.shuffle(options)
            question, answer = "<image 1> What is the color of the shape?", LETTERS[options.index(color)]
        rows.append(
            {
                "id": f"validation_{_MMMU_SUBJECTS[i % len(_MMMU_SUBJECTS)]}_{i + 1}",
                "question": question,
                "options": str(options),
                "explanation": "",
                **{f"image_{k}": images[k - 1] if k <= len(images) else None for k in range(1, 8)},
                "img_type": "['Diagrams']",
                "answer": answer,
                "topic_difficulty": ("Easy", "Medium", "Hard")[i % 3],
                "question_type": "open" if i % 3 == 2 else "multiple-choice",
                "subfield": "Shapes",
            }
        )
    return rows


def build_mini_mmmu(out_dir: str | Path, n: int = 10, seed: int = 0) -> Path:
    text = ("img_type", "answer", "topic_difficulty", "question_type", "subfield")
    spec = {**dict.fromkeys(("id", "question", "options", "explanation"), "string"),
            **{f"image_{k}": "image" for k in range(1, 8)}, **dict.fromkeys(text, "string")}  # fmt: skip
    return _save(mmmu_rows(n, seed), "validation", out_dir, spec)


BENCHMARK_BUILDERS = {
    "gqa": build_mini_gqa,
    "scienceqa_img": build_mini_scienceqa,
    "textvqa_val": build_mini_textvqa,
    "ocrbench": build_mini_ocrbench,
    "mmbench_en_dev": build_mini_mmbench,
    "seedbench": build_mini_seedbench,
    "vqav2_val": build_mini_vqav2,
    "chartqa": build_mini_chartqa,
    "mmmu_val": build_mini_mmmu,
}
