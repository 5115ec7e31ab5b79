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

    An image so thin that step 2 would leave a side of 0 px (an aspect ratio above about 262,144)
    is refused, as the fork itself fails on it.

    So a 1024 x 768 photo reaches the processor as 591 x 443 (336 visual tokens at RealQA's
    bounds), where ``realqa`` gives it 494.

``fragments``
    For a small model that must see fine defects (the bundled demo model): after ``realqa``'s steps,
    one fixed 448 x 224 canvas (128 visual tokens) holding two views of the photo side by side,
    in the spirit of the fragment sampling of FAST-VQA (Wu et al., 2022):

    0. an aspect ratio (long side / short side) above 200 is refused, as the Qwen2-VL image
       processor refuses it (``smart_resize``), before anything is resized: step 1 keeps the aspect
       ratio, so it enlarges a thin image along its length too;
    1. the photo's *reference size*: shrunk (never enlarged) to a long side of 1024 px, the size
       the defects are judged at, as a 1024 px screen shows it; a side under 56 px is enlarged to 56
       (so a reference image is at most 56 x 11,200 px);
    2. left, a global view: the whole photo resized to 224 x 224 (bilinear, antialiased; aspect not
       kept), for exposure, colour and anything large;
    3. right, a 4 x 4 grid of 56 x 56 px fragments cut at native resolution (no resampling), one
       from the centre of each cell of a 4 x 4 grid over the photo, its corner moved down onto the
       8 px grid (where a JPEG's blocks lie), so noise grain, JPEG blocks and slight blur stay
       pixel for pixel. Fragment edges fall on the 14 px patch grid: no patch straddles two.

    Deterministic: the same image always gives the same canvas. A canvas is already on the 28 px
    grid, so the processor leaves it as it is when the pixel bounds admit 448 x 224 (the demo
    model's card says 100,352 to 100,352).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from .formats import PreprocessingRefused
from .media import realqa_rgb

__all__ = ["DEFAULT_PROFILE", "FRAGMENT_CANVAS", "LLAMAFACTORY_IMAGE_RESOLUTION", "MAX_ASPECT_RATIO", "PROFILES",
           "UNCARDED_PROFILE", "Profile", "fragments_rgb", "profile"]

LLAMAFACTORY_IMAGE_RESOLUTION = 512 * 512  # the fork's default `image_resolution`; no official config changes it
# transformers' Qwen2-VL image processor (smart_resize) raises a ValueError when long side / short side > 200.
MAX_ASPECT_RATIO = 200


def _refused(img: Image.Image, why: str) -> PreprocessingRefused:
    return PreprocessingRefused(f"image cannot be preprocessed ({img.width}x{img.height} px: {why})")


def llamafactory_rgb(img: Image.Image, image_resolution: int = LLAMAFACTORY_IMAGE_RESOLUTION) -> Image.Image:
    """The LLaMA-Factory fork's image steps (see the module docstring)."""
    if img.width * img.height > image_resolution:
        factor = math.sqrt(image_resolution / (img.width * img.height))
        size = (int(img.width * factor), int(img.height * factor))
        if min(size) == 0:  # PIL would fail with a message that reads as corrupt data
            raise _refused(img, f"the shrink to {image_resolution:,} pixels leaves a side of 0 px")
        img = img.resize(size, resample=Image.NEAREST)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if min(img.width, img.height) < 28:
        img = img.resize((max(img.width, 28), max(img.height, 28)), resample=Image.NEAREST)
    if img.width / img.height > MAX_ASPECT_RATIO:
        img = img.resize((img.height * 180, img.height), resample=Image.NEAREST)
    if img.height / img.width > MAX_ASPECT_RATIO:
        img = img.resize((img.width, img.width * 180), resample=Image.NEAREST)
    return img


FRAGMENT_REFERENCE_SIDE = 1024  # defects are judged at this long side (larger photos are shrunk to it)
FRAGMENT_SIZE = 56  # px, native resolution: 4 x 4 patches of 14 px, 7 x 7 JPEG blocks
FRAGMENT_GRID = 4  # fragments per side
GLOBAL_SIDE = FRAGMENT_SIZE * FRAGMENT_GRID  # 224 px: the global view is as tall as the fragment grid
FRAGMENT_CANVAS = (2 * GLOBAL_SIDE, GLOBAL_SIDE)  # 448 x 224: 16 x 8 tokens of 28 px


def fragment_corners(width: int, height: int) -> list[tuple[int, int]]:
    """Top-left corners of the fragments on an image of that (reference) size, row by row."""
    corners = []
    for row in range(FRAGMENT_GRID):
        for column in range(FRAGMENT_GRID):
            corner = []
            for extent, cell in ((width, column), (height, row)):
                centre = (cell + 0.5) * extent / FRAGMENT_GRID
                start = int(centre - FRAGMENT_SIZE / 2) // 8 * 8  # on the JPEG block grid
                corner.append(min(max(start, 0), extent - FRAGMENT_SIZE))
            corners.append((corner[0], corner[1]))
    return corners


def reference_size(img: Image.Image) -> Image.Image:
    """Step 1 of ``fragments``: long side at most 1024 px (shrunk with LANCZOS), sides at least 56 px.
    Bounded (at most 56 x 11,200 px) only for an aspect ratio within :data:`MAX_ASPECT_RATIO`."""
    scale = min(1.0, FRAGMENT_REFERENCE_SIDE / max(img.size))
    scale = max(scale, FRAGMENT_SIZE / min(img.size))
    if scale != 1.0:
        size = (max(FRAGMENT_SIZE, round(img.width * scale)), max(FRAGMENT_SIZE, round(img.height * scale)))
        img = img.resize(size, Image.LANCZOS)
    return img


def fragments_rgb(img: Image.Image) -> Image.Image:
    """The ``fragments`` profile (see the module docstring): a 448 x 224 canvas, global view and fragments.
    Raises :class:`~realqa.formats.PreprocessingRefused` for an aspect ratio above :data:`MAX_ASPECT_RATIO`."""
    long, short = max(img.size), min(img.size)
    if long > MAX_ASPECT_RATIO * short:  # the canvas hides it from the processor, and step 1 would enlarge it 56-fold
        ratio = f"{long / short:.1f}" if short else "infinite"
        raise _refused(img, f"aspect ratio {ratio}, above the {MAX_ASPECT_RATIO} the Qwen2-VL image processor accepts")
    img = reference_size(realqa_rgb(img))
    canvas = Image.new("RGB", FRAGMENT_CANVAS)
    canvas.paste(img.resize((GLOBAL_SIDE, GLOBAL_SIDE), Image.BILINEAR), (0, 0))
    for n, (left, top) in enumerate(fragment_corners(*img.size)):
        row, column = divmod(n, FRAGMENT_GRID)
        fragment = img.crop((left, top, left + FRAGMENT_SIZE, top + FRAGMENT_SIZE))
        canvas.paste(fragment, (GLOBAL_SIDE + column * FRAGMENT_SIZE, row * FRAGMENT_SIZE))
    return canvas


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
        Profile("fragments", "realqa's steps, then a 448x224 canvas: the photo at 224x224 beside 16 native-resolution "
                "56 px fragments of it (long side first shrunk to at most 1024 px)", fragments_rgb),
    )
}
DEFAULT_PROFILE = "realqa"  # what realqa trains with
UNCARDED_PROFILE = "llamafactory"  # a checkpoint without a realqa card: every official one was trained this way


def profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown preprocessing profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]
