"""Preprocessing profiles: what happens to a decoded image before the Qwen2-VL image processor.

A model scores well only on images prepared the way its training prepared them. The profile a
model was trained with is named in its card (``preprocessing``) and recorded in the run settings
of every output file. Both profiles then hand an RGB image to the checkpoint's image processor
with the model's pixel bounds (RealQA: 200704 to 401408 pixels, 256 to 512 visual tokens).

``realqa``
    realqa's own: EXIF orientation applied; 16-bit, CMYK, palette and greyscale images
    converted to 8-bit RGB, alpha composited over white (:func:`realqa.media.realqa_rgb`).

``llamafactory``
    The pipeline of the LLaMA-Factory fork (0.9.2.dev0) every official RealQA checkpoint was
    trained and evaluated with, step for step:

    1. the file as stored: no EXIF orientation;
    2. if width x height > ``image_resolution`` (512 x 512 = 262,144), resize by
       sqrt(image_resolution / (width x height)), each side truncated with ``int()``, NEAREST;
    3. ``convert("RGB")`` unless already RGB (alpha dropped, not composited);
    4. Qwen2-VL's own step: a side under 28 pixels is stretched to 28 (NEAREST); an aspect ratio
       beyond 200 is cut to 180 (NEAREST).

    So a 1024 x 768 photo reaches the processor as 591 x 443 (336 visual tokens at RealQA's
    bounds), where ``realqa`` gives it 494.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from .media import realqa_rgb

__all__ = ["DEFAULT_PROFILE", "LLAMAFACTORY_IMAGE_RESOLUTION", "PROFILES", "UNCARDED_PROFILE", "Profile", "profile"]

LLAMAFACTORY_IMAGE_RESOLUTION = 512 * 512  # the fork's default `image_resolution`; no official config changes it


def llamafactory_rgb(img: Image.Image, image_resolution: int = LLAMAFACTORY_IMAGE_RESOLUTION) -> Image.Image:
    """The LLaMA-Factory fork's image steps (see the module docstring)."""
    if img.width * img.height > image_resolution:
        factor = math.sqrt(image_resolution / (img.width * img.height))
        img = img.resize((int(img.width * factor), int(img.height * factor)), resample=Image.NEAREST)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if min(img.width, img.height) < 28:
        img = img.resize((max(img.width, 28), max(img.height, 28)), resample=Image.NEAREST)
    if img.width / img.height > 200:
        img = img.resize((img.height * 180, img.height), resample=Image.NEAREST)
    if img.height / img.width > 200:
        img = img.resize((img.width, img.width * 180), resample=Image.NEAREST)
    return img


@dataclass(frozen=True)
class Profile:
    """A named way of turning a decoded image into the RGB image the image processor receives."""

    name: str
    description: str
    prepare: Callable[[Image.Image], Image.Image]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("realqa", "EXIF orientation applied, any mode to 8-bit RGB, alpha over white", realqa_rgb),
        Profile("llamafactory", "the official RealQA pipeline: no EXIF orientation, shrink above 512x512 pixels "
                "(NEAREST, sides truncated), convert('RGB')", llamafactory_rgb),
    )
}
DEFAULT_PROFILE = "realqa"  # what realqa trains with
UNCARDED_PROFILE = "llamafactory"  # a checkpoint without a realqa card: every official one was trained this way


def profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown preprocessing profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]
