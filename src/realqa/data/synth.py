"""Synthetic distortions of clean photos: a quality benchmark whose labels the distortions determine.

Every clean photo is taken as perfect (quality 5, well exposed, normally saturated, level, clear).
Each distortion type has a parameter that grows linearly with a severity ``s`` in (0, 1]
(``s = level / levels``) and a maximum penalty. The pseudo opinion score of an image is

    quality = clip(5 - sum over the applied distortions of max_penalty[type] * s, 1, 5)

so a clean image scores exactly 5.00 and the score falls strictly with every level of every type
(until the clip at 1). The maximum penalties rank the types by how much they spoil a photo:
blur, noise, compression, exposure and downscaling at their strongest leave a 1.00; at their
strongest, excess saturation leaves a 2.00, tilt and saturation loss 2.50 (a grey or crooked but
sharp photo is still legible).

Spatial parameters (blur sigma, motion length) are in pixels of a 1024 px long side and scale with
the image, so a distortion looks the same on any image size.

``max_pixels`` sets a working size: each view is first shrunk (never enlarged) to at most that many
pixels, its sides multiples of 28 (the Qwen2-VL grid: 14 px patches merged 2 x 2), and distorted at
that size. A model whose processor has the same pixel budget then sees every image pixel for pixel,
so noise grain, JPEG blocks and slight blur are as visible to it as the labels claim; distortions
made at full size and shrunk by the processor would lose much of that (a 3x shrink divides noise by
about 3 and hides a 3x downscale entirely). The attribute labels are those the
applied distortions set, on top of the clean photo's ``clear / normal / normal / level``.

The train split holds ``views`` random crops (25-100% of the area, mirrored at random) of each
train photo, each crop clean plus every type at every level, or ``variants`` random draws from that
grid (more crops with fewer variants each give more content for the same number of images), plus
optional random pairs of types. The test split holds the whole test photos with the whole grid.
Photos are split by a seeded shuffle of their names (:func:`realqa.data.splits.random_split`), so
no photo's content is in both splits.

Visibility labels (``preprocessing``, e.g. ``fragments``, the demo recipe of issue 17): every view is
distorted at its own resolution (spatial parameters scaled by the source photo's long side, up to
1024 px, not the crop's), as photos arrive, and then taken through the named preprocessing profile
(:mod:`realqa.preprocessing`), exactly as ``realqa score`` will take it; the stored image is that
profile output (PNG, lossless), so training sees what scoring sees. The quality label is then the
visibility of the damage to the model: the structural similarity (SSIM, scikit-image, on luma, the
Gaussian 11-tap window of Wang et al. 2004) between the clean and the distorted view, both through
the profile, mapped by the monotone rule ``VISIBILITY_RULE`` (below)

    quality = 5 - 4 * clip(ln(d / 0.003) / ln(0.6 / 0.003), 0, 1),  d = 1 - SSIM

(5.00 up to d = 0.003, invisible; 1.00 from d = 0.6 on; log-linear between, since SSIM crowds near 1
for moderate damage), so a distortion the model's input does not show costs nothing, and one it shows
costs in proportion.
Tilt and saturation shifts are attribute labels only (``level_shot``, ``saturation``): they are applied
to the reference too, so they cost no quality. A photo meant to be dark stays a 5.00 when clean.

Photos with too little colour to lose or exaggerate (colourfulness below 15, "not colourful" on
Hasler and Suesstrunk's scale, e.g. black-and-white photos) get no saturation distortions: their
labels would claim a change the pixels do not show.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage, signal

from ..preprocessing import profile
from .attributes import infer_schema
from .manifest import write_manifests
from .records import TEST, TRAIN, Dataset, Sample, ScoreMapping, SplitInfo
from .splits import random_split

BEST, WORST = 5.0, 1.0
REFERENCE_SIDE = 1024  # spatial parameters are given for this long side
GRID = 28  # working sizes are multiples of the Qwen2-VL grid (14 px patches merged 2 x 2)
SLIGHT = 0.4  # severities up to this are "slight" in the attribute labels
MIN_COLOURFULNESS = 15.0  # below it a photo gets no saturation distortions
FORMULA = "quality = clip(5 - sum over the applied distortions of max_penalty[type] * level / levels, 1, 5)"
CLEAN_ATTRIBUTES = {"clarity": "clear", "exposure": "normal", "saturation": "normal", "level_shot": "level"}
SAVE_OPTIONS = {"quality": 95, "subsampling": 0}  # how every synthetic image is stored (as the source photos)
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Distortion:
    """One distortion type: ``function(pixels, parameter, rng)`` on float RGB in [0, 1].

    ``parameter`` = ``low + (high - low) * s``; ``spatial`` parameters are scaled by the image's
    long side / 1024. ``labels`` gives the attribute values this distortion sets at a severity.
    """

    name: str
    function: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    low: float
    high: float
    unit: str
    max_penalty: float
    spatial: bool = False
    labels: Callable[[float], dict] = lambda severity: {}
    needs_colour: bool = False
    quality: bool = True  # False: an attribute only (visibility labels apply it to the reference too)

    @property
    def description(self) -> str:
        return " ".join((self.function.__doc__ or "").split())

    def parameter(self, severity: float, long_side: int = REFERENCE_SIDE) -> float:
        value = self.low + (self.high - self.low) * severity
        return value * long_side / REFERENCE_SIDE if self.spatial else value

    def penalty(self, severity: float) -> float:
        return self.max_penalty * severity

    def apply(self, pixels: np.ndarray, severity: float, rng: np.random.Generator,
              long_side: int | None = None) -> np.ndarray:
        """``long_side``: the size spatial parameters scale with (default: this image's long side)."""
        parameter = self.parameter(severity, long_side or max(pixels.shape[:2]))
        return np.clip(self.function(pixels, parameter, rng), 0.0, 1.0).astype(np.float32)


DISTORTIONS: dict[str, Distortion] = {}  # in the order they are applied when combined


def _register(name: str, low: float, high: float, unit: str, max_penalty: float, *, spatial: bool = False,
              labels: Callable[[float], dict] | None = None, needs_colour: bool = False, quality: bool = True):
    def register(function):
        DISTORTIONS[name] = Distortion(name, function, low, high, unit, max_penalty, spatial,
                                       labels or (lambda severity: {}), needs_colour, quality)
        return function
    return register


def _graded(attribute: str, slight: str, strong: str) -> Callable[[float], dict]:
    return lambda severity: {attribute: slight if severity <= SLIGHT else strong}


def _fixed(attribute: str, value: str) -> Callable[[float], dict]:
    return lambda severity: {attribute: value}


def colourfulness(image: Image.Image) -> float:
    """Hasler and Suesstrunk's colourfulness (0 for grey; 15 "not colourful"; above 100 "extremely")."""
    small = image.convert("RGB")
    small.thumbnail((256, 256))
    pixels = np.asarray(small, dtype=np.float64)
    rg = pixels[..., 0] - pixels[..., 1]
    yb = (pixels[..., 0] + pixels[..., 1]) / 2 - pixels[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _luma(pixels: np.ndarray) -> np.ndarray:
    return (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]


# ---------------------------------------------------------------- the distortions (applied in this order)


@_register("tilt", 0.0, 12.0, "degrees", 2.5, labels=_fixed("level_shot", "tilted"), quality=False)
def tilt(pixels, degrees, rng):
    """Rotation by the angle (direction random), cropped to the largest centred rectangle of the
    same aspect ratio without empty corners, resized back: a non-level shot."""
    height, width = pixels.shape[:2]
    angle = float(np.radians(degrees))
    # The rotated frame must contain a centred w' x h' box with w'/h' = width/height.
    scale = 1.0 / (np.cos(angle) + np.sin(angle) * max(width / height, height / width))
    image = _to_image(pixels).rotate(degrees * rng.choice([-1, 1]), resample=Image.BICUBIC)
    box_w, box_h = width * scale, height * scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    cropped = image.resize((width, height), Image.BICUBIC, box=(left, top, left + box_w, top + box_h))
    return _to_pixels(cropped)


@_register("overexposure", 0.0, 2.5, "EV", 4.0, labels=_fixed("exposure", "overexposed"))
def overexposure(pixels, ev, rng):
    """Linear light multiplied by 2**EV (gamma 2.2), highlights clipped."""
    return (pixels**2.2 * 2.0**ev) ** (1 / 2.2)


@_register("underexposure", 0.0, 3.0, "EV", 4.0, labels=_fixed("exposure", "underexposed"))
def underexposure(pixels, ev, rng):
    """Linear light divided by 2**EV (gamma 2.2)."""
    return (pixels**2.2 / 2.0**ev) ** (1 / 2.2)


@_register("saturation_loss", 0.0, 1.0, "fraction of chroma removed", 2.5, labels=_fixed("saturation", "low"),
           needs_colour=True, quality=False)
def saturation_loss(pixels, amount, rng):
    """Colours pulled towards their grey (luma) by the fraction: 1 is black and white."""
    grey = _luma(pixels)
    return grey + (1.0 - amount) * (pixels - grey)


@_register("saturation_excess", 0.0, 2.5, "extra chroma gain", 3.0, labels=_fixed("saturation", "high"),
           needs_colour=True, quality=False)
def saturation_excess(pixels, gain, rng):
    """Colours pushed away from their grey (luma) by 1 + gain, clipped."""
    grey = _luma(pixels)
    return grey + (1.0 + gain) * (pixels - grey)


@_register("gaussian_blur", 0.0, 12.0, "sigma px", 4.0, spatial=True,
           labels=_graded("clarity", "slightly blurry", "blurry"))
def gaussian_blur(pixels, sigma, rng):
    """Gaussian blur (out of focus)."""
    return ndimage.gaussian_filter(pixels, sigma=(sigma, sigma, 0), mode="reflect")


@_register("motion_blur", 0.0, 48.0, "length px", 4.0, spatial=True,
           labels=_graded("clarity", "slightly blurry", "blurry"))
def motion_blur(pixels, length, rng):
    """Average along a straight line of the length, in a random direction (camera shake)."""
    kernel = _line_kernel(length, rng.uniform(0, np.pi))
    reach = kernel.shape[0] // 2
    padded = np.pad(pixels, ((reach, reach), (reach, reach), (0, 0)), mode="edge")
    return signal.fftconvolve(padded, kernel[..., None], mode="valid", axes=(0, 1))


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line of the length through the kernel's centre, drawn with bilinear weights."""
    reach = int(np.ceil(length / 2)) + 1
    kernel = np.zeros((2 * reach + 2, 2 * reach + 2), np.float32)
    for t in np.linspace(-length / 2, length / 2, max(2, int(np.ceil(4 * length)))):
        y, x = reach + t * np.sin(angle), reach + t * np.cos(angle)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        fy, fx = y - y0, x - x0
        kernel[y0 : y0 + 2, x0 : x0 + 2] += np.outer([1 - fy, fy], [1 - fx, fx])
    return kernel[:-1, :-1] / kernel.sum()


@_register("downscale", 1.0, 13.0, "factor", 4.0, labels=_graded("clarity", "slightly blurry", "blurry"))
def downscale(pixels, factor, rng):
    """Shrunk by the factor without antialiasing (nearest), enlarged back bilinearly: aliasing and lost detail."""
    height, width = pixels.shape[:2]
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    image = _to_image(pixels).resize(small, Image.NEAREST).resize((width, height), Image.BILINEAR)
    return _to_pixels(image)


@_register("noise", 0.0, 40.0, "sigma (8-bit levels)", 4.0)
def noise(pixels, sigma, rng):
    """Additive Gaussian noise per channel with a grain of about 2 px at 1024 px (white noise smoothed
    by a Gaussian of sigma 1 px, rescaled to the stated sigma), like a phone camera's processed noise."""
    grain = max(pixels.shape[:2]) / REFERENCE_SIDE
    field = ndimage.gaussian_filter(rng.standard_normal(pixels.shape, dtype=np.float32), (grain, grain, 0))
    return pixels + field * (sigma / 255.0 / field.std())


@_register("jpeg", 24.0, 2.0, "JPEG quality", 4.0)
def jpeg(pixels, quality, rng):
    """JPEG compression at the quality (4:2:0 chroma subsampling)."""
    buffer = io.BytesIO()
    _to_image(pixels).save(buffer, format="JPEG", quality=int(round(quality)))
    return _to_pixels(Image.open(buffer))


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")


def _to_pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


# ---------------------------------------------------------------- labels


@dataclass(frozen=True)
class Applied:
    """One distortion applied to an image: its type, level (1..levels) and severity level/levels."""

    type: str
    level: int
    levels: int

    @property
    def severity(self) -> float:
        return self.level / self.levels

    @property
    def distortion(self) -> Distortion:
        return DISTORTIONS[self.type]


def pseudo_score(applied: Sequence[Applied]) -> float:
    """clip(5 - sum of max_penalty[type] * severity, 1, 5); 5.0 for a clean image."""
    penalty = sum(a.distortion.penalty(a.severity) for a in applied)
    return round(min(BEST, max(WORST, BEST - penalty)), 6)


def attribute_labels(applied: Sequence[Applied]) -> dict:
    """clarity, exposure, saturation, level_shot as the applied distortions leave them.

    Of two distortions setting clarity, the stronger wins; other attributes are set by at most one
    distortion of an image (pairs are drawn so).
    """
    labels = dict(CLEAN_ATTRIBUTES)
    for a in sorted(applied, key=lambda a: a.severity):
        labels.update(a.distortion.labels(a.severity))
    return labels


def _attribute_of(name: str) -> str | None:
    keys = DISTORTIONS[name].labels(1.0)
    return next(iter(keys), None)


def compatible(first: str, second: str) -> bool:
    """Two types may be combined unless they set the same attribute (over- with underexposure, ...)."""
    a, b = _attribute_of(first), _attribute_of(second)
    return first != second and (a is None or a != b or a == "clarity")


# ---------------------------------------------------------------- the data set


@dataclass(frozen=True)
class Job:
    """One image to write: a view of a source photo with distortions applied."""

    id: str
    photo: str
    source: str
    view: int
    split: str
    applied: tuple[Applied, ...]
    seed: int
    max_pixels: int | None = None
    preprocessing: str | None = None  # visibility labels through this profile (see the module docstring)


def find_photos(folder: str | os.PathLike) -> list[Path]:
    photos = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file())
    if not photos:
        raise ValueError(f"{folder}: no photos ({', '.join(PHOTO_EXTENSIONS)})")
    return photos


def source_of(name: str) -> str:
    """The source a photo came from: the part of its name before ``__`` (frames ``clip__f1``, ``clip__f2``
    of one video share a source, so they land in the same split), else the whole name."""
    return name.split("__")[0]


def split_photos(names: Sequence[str], test_fraction: float, seed: int,
                 test_sources: Sequence[str] | None = None) -> dict[str, str]:
    """Photo name -> train/test, by the project's seeded group split (grouped by :func:`source_of`).

    ``test_sources``: exactly these sources form the test split instead (a set held out by name stays
    held out when photos are added, and can be kept away from a model a run starts from)."""
    if test_sources is not None:
        missing = sorted(set(test_sources) - {source_of(n) for n in names})
        if missing:
            raise ValueError(f"test sources not among the photos: {', '.join(missing)}")
        return {n: TEST if source_of(n) in set(test_sources) else TRAIN for n in names}
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    splits = random_split([source_of(n) for n in names], (1 - test_fraction, test_fraction), seed)
    return dict(zip(names, splits))


def plan(photos: Sequence[Path], *, seed: int = 0, test_fraction: float = 0.25, types: Sequence[str] | None = None,
         levels: int = 5, views: int = 4, variants: int = 0, pairs: int = 0, max_pixels: int | None = None,
         preprocessing: str | None = None, splits: Sequence[str] = (TRAIN, TEST),
         test_sources: Sequence[str] | None = None) -> list[Job]:
    """Every image of the set: per view, the clean image, each type at each level (or, for training
    views with ``variants`` > 0, that many (type, level) draws from that grid), then ``pairs`` random
    pairs of compatible types at random levels. Test photos have one view: the whole photo, with the
    whole grid. ``splits`` limits the plan to some splits (the images planned do not depend on it)."""
    types = list(types or DISTORTIONS)
    unknown = sorted(set(types) - set(DISTORTIONS))
    if unknown:
        raise ValueError(f"unknown distortion type(s) {', '.join(unknown)}; known: {', '.join(DISTORTIONS)}")
    if levels < 1 or views < 1 or pairs < 0 or variants < 0:
        raise ValueError("levels and views must be >= 1, variants and pairs >= 0")
    if max_pixels is not None and max_pixels < GRID * GRID:
        raise ValueError(f"max_pixels must be at least {GRID * GRID} (one {GRID} x {GRID} cell), got {max_pixels}")
    if max_pixels is not None and preprocessing is not None:
        raise ValueError("max_pixels (a working size) and preprocessing (distortions at the photo's own size, "
                         "then the profile) exclude each other")
    if preprocessing is not None:
        profile(preprocessing)  # an unknown name fails here, naming the known ones
    split_of = split_photos([p.stem for p in photos], test_fraction, seed, test_sources)
    jobs = []
    for photo in photos:
        split = split_of[photo.stem]
        if split not in splits:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(photo.stem.encode())])
        with Image.open(photo) as opened:
            colourful = colourfulness(opened) >= MIN_COLOURFULNESS
        usable = [t for t in types if colourful or not DISTORTIONS[t].needs_colour]
        for view in range(views if split == TRAIN else 1):
            grid = [(Applied(t, level, levels),) for t in usable for level in range(1, levels + 1)]
            if split == TRAIN and 0 < variants < len(grid):
                grid = [grid[i] for i in sorted(rng.choice(len(grid), variants, replace=False))]
            combos: list[tuple[Applied, ...]] = [(), *grid]
            candidates = [(a, b) for i, a in enumerate(usable) for b in usable[i + 1 :] if compatible(a, b)]
            for _ in range(pairs if candidates else 0):
                a, b = candidates[rng.integers(len(candidates))]
                combos.append((Applied(a, int(rng.integers(1, levels + 1)), levels),
                               Applied(b, int(rng.integers(1, levels + 1)), levels)))
            for number, applied in enumerate(combos):
                tag = "+".join(f"{a.type}{a.level}" for a in applied) or "clean"
                if len(applied) > 1:
                    tag = f"pair{number}_{tag}"
                job_id = f"{photo.stem}_v{view}_{tag}"
                jobs.append(Job(job_id, photo.stem, str(photo), view, split, applied,
                                zlib.crc32(f"{seed}/{job_id}".encode()), max_pixels, preprocessing))
    return jobs


def view_of(photo: Image.Image, view: int, rng: np.random.Generator) -> Image.Image:
    """View 0 is the whole photo; others are a random crop of 25-100% of its area, its aspect ratio
    changed by up to a third (not resampled), and a coin-flip mirror."""
    if view == 0:
        return photo
    width, height = photo.size
    area, stretch = rng.uniform(0.25, 1.0), np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
    box_w = min(width, round(width * np.sqrt(area * stretch)))
    box_h = min(height, round(height * np.sqrt(area / stretch)))
    left, top = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
    image = photo.crop((left, top, left + box_w, top + box_h))
    return ImageOps.mirror(image) if rng.random() < 0.5 else image


def working_size(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """The size a view is distorted at: shrunk to at most ``max_pixels`` (never enlarged), sides
    rounded down to multiples of 28 (at least 28); unchanged without ``max_pixels``."""
    if max_pixels is None:
        return width, height
    scale = min(1.0, float(np.sqrt(max_pixels / (width * height))))
    return (max(GRID, int(width * scale) // GRID * GRID), max(GRID, int(height * scale) // GRID * GRID))


def render(job: Job) -> Image.Image:
    """The image of a job: the view at its working size, then the distortions in table order (with
    ``preprocessing``: the profile's output of the distorted view, see :func:`render_visible`)."""
    if job.preprocessing is not None:
        return render_visible(job)[0]
    rng = np.random.default_rng(job.seed)
    with Image.open(job.source) as opened:
        photo = ImageOps.exif_transpose(opened).convert("RGB")
    image = view_of(photo, job.view, rng)
    size = working_size(*image.size, job.max_pixels)
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    if not job.applied:
        return image
    pixels = _to_pixels(image)
    for applied in sorted(job.applied, key=lambda a: list(DISTORTIONS).index(a.type)):
        pixels = applied.distortion.apply(pixels, applied.severity, rng)
    return _to_image(pixels)


# The visibility rule's ends, in dissimilarity d = 1 - SSIM: below INVISIBLE nothing shows (a clean
# image, a JPEG at quality 95); at WORST_VISIBLE and beyond the image is ruined. Between them the label
# falls with log d: SSIM crowds near 1 for moderate damage, and equal ratios of d read as equal steps.
INVISIBLE, WORST_VISIBLE = 0.003, 0.6
VISIBILITY_RULE = (f"quality = 5 - 4 * clip(ln(d / {INVISIBLE}) / ln({WORST_VISIBLE} / {INVISIBLE}), 0, 1), "
                   "d = 1 - SSIM")


def visibility_score(similarity: float) -> float:
    """The monotone rule from SSIM (clean vs distorted, both as the model sees them) to a 1-5 quality label."""
    d = 1.0 - similarity
    if d <= INVISIBLE:
        return BEST
    fraction = min(1.0, np.log(d / INVISIBLE) / np.log(WORST_VISIBLE / INVISIBLE))
    return round(BEST - (BEST - WORST) * float(fraction), 6)


def luma_ssim(reference: Image.Image, distorted: Image.Image) -> float:
    """SSIM (Wang et al. 2004: Gaussian window sigma 1.5, population statistics) of the two images' luma."""
    from ..compat import require

    structural_similarity = require("skimage.metrics", "synth", "visibility labels (SSIM)").structural_similarity
    first, second = (np.asarray(image.convert("L"), dtype=np.float64) / 255.0 for image in (reference, distorted))
    return float(structural_similarity(first, second, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def render_visible(job: Job) -> tuple[Image.Image, float]:
    """A job for visibility labels: (the profile's output of the distorted view, SSIM against the clean one).

    The view is cut at the photo's own resolution; attribute-only distortions (tilt, saturation) are
    applied first and make the reference; the quality distortions follow; both go through the profile.
    """
    rng = np.random.default_rng(job.seed)
    prepare = profile(job.preprocessing).prepare
    with Image.open(job.source) as opened:
        photo = ImageOps.exif_transpose(opened).convert("RGB")
    long_side = min(max(photo.size), REFERENCE_SIDE)  # the profiles judge photos at most 1024 px long
    pixels = _to_pixels(view_of(photo, job.view, rng))
    ordered = sorted(job.applied, key=lambda a: list(DISTORTIONS).index(a.type))
    for applied in [a for a in ordered if not a.distortion.quality]:
        pixels = applied.distortion.apply(pixels, applied.severity, rng, long_side)
    reference = prepare(_to_image(pixels))
    quality = [a for a in ordered if a.distortion.quality]
    if not quality:
        return reference, 1.0
    for applied in quality:
        pixels = applied.distortion.apply(pixels, applied.severity, rng, long_side)
    distorted = prepare(_to_image(pixels))
    return distorted, luma_ssim(reference, distorted)


def _write(job: Job, out: Path) -> tuple[str, tuple[int, int], float | None]:
    if job.preprocessing is not None:  # the profile's output, stored losslessly
        relative = f"images/{job.split}/{job.photo}/{job.id}.png"
        image, similarity = render_visible(job)
    else:
        relative, image, similarity = f"images/{job.split}/{job.photo}/{job.id}.jpg", render(job), None
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, **({"format": "PNG", "compress_level": 1} if similarity is not None
                          else {"format": "JPEG", **SAVE_OPTIONS}))
    return relative, image.size, similarity


def _sample(job: Job, relative: str, size: tuple[int, int], similarity: float | None = None) -> Sample:
    score = pseudo_score(job.applied) if similarity is None else visibility_score(similarity)
    long_side = max(size)  # spatial parameters were scaled with the stored image, or with the photo (visibility)
    if similarity is not None:
        with Image.open(job.source) as source:
            long_side = min(max(source.size), REFERENCE_SIDE)
    distortions = [{"type": a.type, "level": a.level, "severity": round(a.severity, 6),
                    "parameter": round(a.distortion.parameter(a.severity, long_side), 4), "unit": a.distortion.unit}
                   for a in job.applied]
    return Sample(id=job.id, image=relative, scores={"quality": score}, native={"quality": score}, split=job.split,
                  dataset="synth", attributes=attribute_labels(job.applied),
                  info={"photo": job.photo, "view": job.view, "distortions": distortions,
                        **({"ssim": round(similarity, 6)} if similarity is not None else {})})


def _empty_folder(out: Path, overwrite: bool) -> None:
    """``out`` as an empty folder, or an error naming it and what it holds."""
    if out.is_symlink() and overwrite:
        raise FileExistsError(f"{out}: a link to {out.resolve()}; to write a set over that folder, name it itself")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: a file, not a folder for a synthetic set")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        raise FileExistsError(f"{out}: not empty ({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}); a "
                              "synthetic set is written into a new or empty folder (--overwrite replaces what is there)")
    if held:  # overwrite, and not through a link: rmtree removes links inside without following them
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def synthesize(photos_dir: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0, test_fraction: float = 0.25,
               types: Sequence[str] | None = None, levels: int = 5, views: int = 4, variants: int = 0,
               pairs: int = 0, max_pixels: int | None = None, preprocessing: str | None = None,
               splits: Sequence[str] = (TRAIN, TEST), test_sources: Sequence[str] | None = None, workers: int = 1,
               progress: Callable[[int, int], None] | None = None,
               overwrite: bool = False) -> tuple[Dataset, dict[str, Path]]:
    """Write the distorted images, ``train.jsonl``/``test.jsonl`` manifests, ``synth.json`` and a README
    into ``out``, a new or empty folder; ``overwrite`` empties it first (a symbolic link is refused then:
    name the folder itself). Writing over a set in place would leave the old set's other images and
    manifests beside the new ones, under labels that no longer match them.

    Returns the dataset and {split: manifest path}.
    """
    out = Path(out)
    photos = find_photos(photos_dir)
    jobs = plan(photos, seed=seed, test_fraction=test_fraction, types=types, levels=levels, views=views,
                variants=variants, pairs=pairs, max_pixels=max_pixels, preprocessing=preprocessing, splits=splits,
                test_sources=test_sources)
    _empty_folder(out, overwrite)
    samples: list[Sample] = []
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for done, (job, (relative, size, similarity)) in enumerate(
            zip(jobs, pool.map(_write, jobs, [out] * len(jobs), chunksize=8)), 1
        ):
            samples.append(_sample(job, relative, size, similarity))
            if progress:
                progress(done, len(jobs))
    settings = {"seed": seed, "test_fraction": test_fraction, "types": list(types or DISTORTIONS), "levels": levels,
                "views": views, "variants": variants, "pairs": pairs, "max_pixels": max_pixels,
                "preprocessing": preprocessing, "splits": list(splits),
                "test_sources": sorted(test_sources) if test_sources is not None else None}
    dataset = Dataset(
        name="synth",
        mappings={"quality": ScoreMapping.onto_task("quality", (WORST, BEST), quantity="pseudo opinion score")},
        samples=samples,
        split=(SplitInfo("files", f"held out by name: {', '.join(sorted(test_sources))}", group_by="photo")
               if test_sources is not None else
               SplitInfo("random", f"seeded shuffle of the source photos, {test_fraction:g} of them held out for test",
                         seed=seed, ratios=(1 - test_fraction, test_fraction), group_by="photo")),
        root=str(out.resolve()),
        image_folder="images",
        label_files=[],
        attribute_schema=infer_schema(s.attributes for s in samples),
        notes=[f"synthetic distortions of the photos in {Path(photos_dir).resolve()}; settings {json.dumps(settings)}",
               f"quality: {FORMULA if preprocessing is None else VISIBILITY_RULE}; see synth.json"],
    )
    paths = write_manifests(dataset, out)
    split_of = split_photos([p.stem for p in photos], test_fraction, seed, test_sources)
    meta = {"settings": settings, "photos": {split: sorted(n for n, s in split_of.items() if s == split)
                                             for split in (TRAIN, TEST)},
            "counts": dataset.split_counts(),
            "formula": FORMULA if preprocessing is None else f"{VISIBILITY_RULE}, SSIM of the luma of the clean and the "
            f"distorted view through the '{preprocessing}' preprocessing profile (tilt and saturation: attributes only)",
            "distortions": describe(levels)}
    (out / "synth.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme(meta), encoding="utf-8")
    return dataset, paths


class _Serial:
    """A stand-in for a process pool when one worker is asked for."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(function, *iterables, chunksize=1):
        return map(function, *iterables)


def describe(levels: int = 5) -> list[dict]:
    """The table of distortion types: parameter per level (at 1024 px), penalty, attribute set."""
    rows = []
    for d in DISTORTIONS.values():
        steps = [k / levels for k in range(1, levels + 1)]
        rows.append({"type": d.name, "what": d.description, "unit": d.unit + (" at 1024 px" if d.spatial else ""),
                     "parameter_at_severity_0_and_1": [d.low, d.high], "max_penalty": d.max_penalty,
                     "parameters": [round(d.parameter(s), 3) for s in steps],
                     "scores": [pseudo_score([Applied(d.name, k, levels)]) for k in range(1, levels + 1)],
                     "attributes": sorted({f"{k}={v}" for s in steps for k, v in d.labels(s).items()})})
    return rows


def readme(meta: dict) -> str:
    settings = meta["settings"]
    lines = [
        "# Synthetic distortion set (`realqa data synth`)", "",
        f"Settings: {json.dumps(settings)}. Images: {json.dumps(meta['counts'])}.", "",
        f"Train photos: {', '.join(meta['photos'][TRAIN])}.", f"Test photos: {', '.join(meta['photos'][TEST])}.",
        "Split by source photo (seeded shuffle), so no photo's content is in both splits; train images are "
        "random crops (25-100% of the area, aspect ratio changed by up to a third, mirrored at random) of the train "
        "photos; test images the whole test photos."
        + (f" Every view was shrunk to at most {settings['max_pixels']} pixels (sides multiples of {GRID}) before "
           "it was distorted." if settings.get("max_pixels") else ""),
        "", "## Pseudo opinion score", "", f"`{meta['formula']}`: a clean image scores 5.00"
        + ("; the score falls strictly with every level of every type (until the clip at 1)." if not settings.get("preprocessing")
           else f"; each image is stored as the '{settings['preprocessing']}' profile's output (PNG), and the 'scores' "
           "column below is the old additive rule, not these labels."), "",
        f"Photos with colourfulness below {MIN_COLOURFULNESS:g} (Hasler and Suesstrunk) get no saturation "
        "distortions.", "",
        f"## Types (parameters and scores at {settings['levels']} levels)", "",
        "| type | what | parameter | per level | score per level | attributes set |", "|---|---|---|---|---|---|",
    ]
    for row in describe(settings["levels"]):
        if row["type"] not in settings["types"]:
            continue
        lines.append(
            f"| {row['type']} | {row['what']} | {row['unit']} | {', '.join(f'{p:g}' for p in row['parameters'])} | "
            f"{', '.join(f'{s:.2f}' for s in row['scores'])} | {', '.join(row['attributes'] or ['-'])} |"
        )
    lines += ["", f"Attributes of a clean image: {json.dumps(CLEAN_ATTRIBUTES)}; severities up to {SLIGHT} blur "
              "give `slightly blurry`. Every image is stored as JPEG quality 95, 4:4:4 (as the source photos).", ""]
    return "\n".join(lines)
