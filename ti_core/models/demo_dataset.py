"""The demo's synthetic dataset: 64-px pictures of one orange toy, with captions.

Written in sd-scripts' DreamBooth layout (`10_demotoy toy/`), deterministic from a seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

DEMO_TOKEN = "demotoy"  # the tokenizer splits it into "demo" + "toy</w>": not a known word
DEMO_CLASS = "toy"
DEMO_REPEATS = 10
DEMO_NUM_IMAGES = 24
IMAGE_SIZE = 64  # pixels; the VAE downsamples by 8, so latents are 8x8

BACKGROUNDS = {
    "blue": (70, 110, 200),
    "green": (80, 160, 90),
    "purple": (130, 80, 170),
    "gray": (128, 128, 128),
    "pink": (230, 150, 180),
    "teal": (40, 150, 150),
    "white": (240, 240, 235),
    "black": (25, 25, 30),
}
CAPTION_TEMPLATES = (
    "a photo of {token} {cls} on a {color} background",
    "{token} {cls}, {color} background",
    "a small {token} {cls} in front of a {color} wall",
    "a picture of the {token} {cls} against {color}",
)


def demo_dataset(
    dataset_dir: Path,
    token_string: str = DEMO_TOKEN,
    class_word: str = DEMO_CLASS,
    num_images: int = DEMO_NUM_IMAGES,
    repeats: int = DEMO_REPEATS,
    seed: int = 0,
) -> Path:
    """Draw `num_images` 64x64 PNGs of one orange toy, each with a .txt caption.

    They go into `<dataset_dir>/<repeats>_<token_string> <class_word>/` (the DreamBooth
    folder naming sd-scripts reads); returns that folder.
    """
    image_dir = Path(dataset_dir) / f"{repeats}_{token_string} {class_word}"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    color_names = list(BACKGROUNDS)
    for index in range(num_images):
        color = color_names[index % len(color_names)]
        image = draw_toy(rng, BACKGROUNDS[color])
        # PIL writes no time or text chunks unless asked, so the bytes depend on pixels only.
        image.save(image_dir / f"{index:03d}.png", format="PNG")
        template = CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)]
        caption = template.format(token=token_string, cls=class_word, color=color)
        (image_dir / f"{index:03d}.txt").write_text(caption + "\n", encoding="utf-8")
    return image_dir


def draw_toy(rng: random.Random, background: tuple[int, int, int]) -> Image.Image:
    """An orange toy (round head on a block body, two eyes) at a random place and size."""
    scale = 4  # draw large, then shrink: smooth edges without antialiasing support
    canvas = IMAGE_SIZE * scale
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)

    size = rng.uniform(0.45, 0.8) * canvas  # height of the whole toy
    center_x = rng.uniform(size * 0.4, canvas - size * 0.4)
    bottom = rng.uniform(size, canvas)
    orange = (235 + rng.randint(-15, 15), 125 + rng.randint(-20, 20), 30 + rng.randint(-20, 20))

    body_w, body_h = size * 0.7, size * 0.5
    body_top = bottom - body_h
    draw.rectangle([center_x - body_w / 2, body_top, center_x + body_w / 2, bottom], fill=orange)
    radius = size * 0.25
    head_y = body_top - radius * 0.9
    draw.ellipse(
        [center_x - radius, head_y - radius, center_x + radius, head_y + radius], fill=orange
    )
    eye = radius * 0.18
    for dx in (-0.4, 0.4):
        eye_x = center_x + dx * radius
        draw.ellipse([eye_x - eye, head_y - eye, eye_x + eye, head_y + eye], fill=(20, 20, 20))
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
