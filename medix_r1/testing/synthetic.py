"""A small synthetic image-QA set in the MediX-R1 record format (for CPU tests and smoke runs).

Images are PIL-drawn shapes (circle / square / triangle) in a few colours on a plain
background, in varied sizes and PIL modes (RGB, greyscale "L", RGBA with transparency,
palette "P") so that image normalisation is exercised. Each image record asks what shape (or
colour) is shown; the solution uses the MediX layout ``"<TAG> answer"`` with the ``<OTHER>``
tag. Text-only arithmetic records are mixed in. Written as ``records.jsonl`` with images under
``images/`` (paths in records are relative to the JSONL's folder).
"""

from __future__ import annotations

import json
import os
import random

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SHAPE_QUESTION = "What shape is shown in the image?"
COLOUR_QUESTION = "What colour is the shape in the image?"
MODES = ("RGB", "L", "RGBA", "P")


def draw_shape(shape: str, colour: str, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """One image of ``shape`` filled with ``colour`` on a light background, in PIL ``mode``."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {sorted(COLOURS)}, got {colour!r}")
    w, h = size
    img = Image.new("RGBA", (w, h), (245, 245, 245, 0 if mode == "RGBA" else 255))
    draw = ImageDraw.Draw(img)
    side = int(min(w, h) * 0.7)
    x0, y0 = (w - side) // 2, (h - side) // 2
    box = (x0, y0, x0 + side, y0 + side)
    fill = COLOURS[colour] + (255,)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0 + side // 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=fill)
    if mode == "RGBA":
        return img
    rgb = img.convert("RGB")
    if mode == "P":
        return rgb.quantize(colors=16)
    return rgb.convert(mode)


def corpus_lines():
    """Text the tiny tokenizer is trained on: questions, answers and MediX-formatted responses."""
    for shape in SHAPES:
        for colour in COLOURS:
            yield f"{SHAPE_QUESTION} {COLOUR_QUESTION} The image shows a {colour} {shape}."
            yield f"<OTHER> <thinking> I see a {colour} {shape}. </thinking> <answer> {shape} </answer>"
    for a in range(6):
        for b in range(5):
            yield f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}? Answer with a word."
            yield f"<OTHER> <thinking> {a} + {b} = {a + b} </thinking> <answer> {NUMBER_WORDS[a + b]} </answer>"
    yield ("You are a medical assistant. First name the image modality tag, then think inside "
           "<thinking> </thinking> and give the final answer inside <answer> </answer>.")
    yield "system user assistant"


def generate_synthetic_set(out_dir, n_image: int = 12, n_text: int = 4, seed: int = 0,
                           two_image_every: int = 5) -> str:
    """Write ``records.jsonl`` + ``images/`` into out_dir; returns the JSONL path.

    Every ``two_image_every``-th image record carries two images of the same shape (multi-image
    prompts); image sizes vary between 40 and 300 pixels a side.
    """
    if n_image < 0 or n_text < 0 or n_image + n_text == 0:
        raise ValueError(f"n_image and n_text must be >= 0 with at least one record, got {n_image}, {n_text}")
    rng = random.Random(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    records = []
    for i in range(n_image):
        shape, colour, mode = rng.choice(SHAPES), rng.choice(sorted(COLOURS)), MODES[i % len(MODES)]
        n_images = 2 if two_image_every and i % two_image_every == two_image_every - 1 else 1
        paths = []
        for k in range(n_images):
            size = (rng.randint(40, 300), rng.randint(40, 300))
            rel = f"images/img{i:04d}_{k}.png"
            draw_shape(shape, colour, size, mode).save(os.path.join(out_dir, rel))
            paths.append(rel)
        ask_colour = mode != "L" and rng.random() < 0.3  # a greyscale image cannot show the colour
        records.append({"id": f"shape-{i}", "images": paths, "source": "synthetic-shapes",
                        "problem": COLOUR_QUESTION if ask_colour else SHAPE_QUESTION,
                        "solution": f"<OTHER> {colour if ask_colour else shape}"})
    for j in range(n_text):
        a, b = rng.randint(0, 5), rng.randint(0, 4)
        records.append({"id": f"sum-{j}", "images": [], "source": "synthetic-arithmetic",
                        "problem": f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}? Answer with a word.",
                        "solution": f"<OTHER> {NUMBER_WORDS[a + b]}"})
    rng.shuffle(records)
    path = os.path.join(out_dir, "records.jsonl")
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return path
