"""Preprocessing profiles: the image handed to the image processor, pixel for pixel.

The ``llamafactory`` profile must reproduce the official RealQA pipeline exactly. The reference
below is written from its specification (the LLaMA-Factory 0.9.2 fork's image steps), and the
images the realqa pipeline hands to the Qwen2-VL image processor are compared with it over sizes
below, at and above the 512 x 512 limit, odd sizes, thin and extreme shapes, several modes and
EXIF-rotated files.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from realqa.batching import ExampleBuilder
from realqa.formats import PreprocessingRefused
from realqa.media import MediaError
from realqa.model import MAX_PIXELS, MIN_PIXELS
from realqa.preprocessing import FRAGMENT_CANVAS, fragment_corners, profile

LIMIT = 512 * 512


def reference_llamafactory(path) -> Image.Image:
    """The specification: open, shrink above 512x512 by sqrt(limit / area) with int() sizes and
    NEAREST, convert('RGB') when not RGB, no EXIF transpose; then the Qwen2-VL plugin's fixes
    (sides under 28 stretched to 28, aspect ratios beyond 200 cut to 180), NEAREST as well."""
    image = Image.open(path)
    width, height = image.size
    if width * height > LIMIT:
        ratio = math.sqrt(LIMIT / (width * height))
        image = image.resize((int(width * ratio), int(height * ratio)), resample=Image.Resampling.NEAREST)
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width < 28 or height < 28:
        image = image.resize((max(width, 28), max(height, 28)), resample=Image.Resampling.NEAREST)
    width, height = image.size
    if width > 200 * height:
        image = image.resize((180 * height, height), resample=Image.Resampling.NEAREST)
    elif height > 200 * width:
        image = image.resize((width, 180 * width), resample=Image.Resampling.NEAREST)
    return image


class SpyProcessor:
    """Records the images the pipeline hands to the real image processor."""

    def __init__(self, processor):
        self.processor, self.seen = processor, []

    def __call__(self, images, **kwargs):
        self.seen.extend(images)
        return self.processor(images=images, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


def _noise(size, mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


def _save(tmp_path, name, image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def _cases(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    palette = _noise((700, 500), seed=5).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return [
        _save(tmp_path, "below.png", _noise((300, 200), seed=1)),
        _save(tmp_path, "at-limit.png", _noise((512, 512), seed=2)),
        _save(tmp_path, "above.jpg", _noise((1024, 768), seed=3), quality=90),
        _save(tmp_path, "odd.png", _noise((1023, 767), seed=4)),
        _save(tmp_path, "one-over.png", _noise((513, 511), seed=6)),  # 262,143 pixels: not shrunk
        _save(tmp_path, "just-over.png", _noise((529, 496), seed=7)),  # 262,384 pixels: shrunk
        _save(tmp_path, "portrait-exif.jpg", _noise((600, 400), seed=8), quality=90, exif=exif),
        _save(tmp_path, "rgba.png", _noise((640, 480), "RGBA", seed=9)),
        _save(tmp_path, "grey.png", _noise((1200, 900), "L", seed=10)),
        _save(tmp_path, "palette.png", palette),
        _save(tmp_path, "thin.png", _noise((600, 20), seed=11)),
        _save(tmp_path, "needle.png", _noise((6000, 20), seed=12)),
    ]


def test_llamafactory_profile_hands_the_processor_exactly_the_reference_image(tmp_path):
    spy = SpyProcessor(load_image_processor_for_test())
    builder = ExampleBuilder(spy, image_token_id=7, preprocessing="llamafactory")
    for path in _cases(tmp_path):
        try:
            example = builder.build(str(path), path.name, [1, 7, 2])
        except MediaError as err:  # only an aspect ratio the processor itself refuses may fail
            assert path.name == "needle.png" and "cannot be preprocessed" in str(err), err
            continue
        expected = reference_llamafactory(path)
        seen = spy.seen[-1]
        assert seen.mode == "RGB" and seen.size == expected.size, path.name
        assert np.array_equal(np.asarray(seen), np.asarray(expected)), path.name
        reference_features = spy.processor(images=[expected], size=builder.size, return_tensors="pt")
        assert np.array_equal(example.pixel_values.numpy(), reference_features["pixel_values"].numpy()), path.name


def load_image_processor_for_test():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def test_the_two_profiles_differ_where_the_specification_says(tmp_path):
    cases = {p.name: p for p in _cases(tmp_path)}
    ours, theirs = profile("realqa").prepare, profile("llamafactory").prepare
    with Image.open(cases["portrait-exif.jpg"]) as stored:
        assert ours(stored).size == (400, 600)  # turned upright
        assert theirs(stored).size == (600, 400)  # as stored
    with Image.open(cases["rgba.png"]) as rgba:
        transparent = rgba.copy()
    transparent.putpixel((0, 0), (10, 20, 30, 0))
    assert ours(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited over white
    assert theirs(transparent).getpixel((0, 0)) == (10, 20, 30)  # alpha dropped
    with Image.open(cases["below.png"]) as small:
        assert np.array_equal(np.asarray(ours(small)), np.asarray(theirs(small)))  # nothing else to do


def test_a_koniq_sized_photo_reaches_the_official_model_as_336_visual_tokens(tmp_path):
    """The issue's example: 1024 x 768 gives 336 visual tokens through the official pipeline, 494 through realqa's."""
    path = _save(tmp_path, "koniq.jpg", _noise((1024, 768)), quality=90)
    processor = load_image_processor_for_test()
    tokens = {}
    for name in ("llamafactory", "realqa"):
        example = ExampleBuilder(processor, image_token_id=7, preprocessing=name).build(str(path), "koniq", [7])
        tokens[name] = len(example.input_ids)
    assert tokens == {"llamafactory": 336, "realqa": 494}


def test_unknown_profile_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="known: realqa, llamafactory, fragments"):
        profile("bicubic-please")


# ---------------------------------------------------------------- fragments (the demo model's profile)


def test_fragments_give_one_canvas_size_for_every_photo_and_the_same_canvas_twice(tmp_path):
    prepare = profile("fragments").prepare
    for path in _cases(tmp_path):
        with Image.open(path) as image:
            if path.name == "needle.png":  # aspect ratio 300: refused (see the thin-image tests below)
                with pytest.raises(PreprocessingRefused, match="aspect ratio 300.0"):
                    prepare(image)
                continue
            first, second = prepare(image), prepare(image)
        assert first.mode == "RGB" and first.size == FRAGMENT_CANVAS == (448, 224), path.name
        assert np.array_equal(np.asarray(first), np.asarray(second)), path.name


def test_fragments_are_native_pixels_on_the_jpeg_grid_beside_a_global_view():
    image = _noise((1000, 600), seed=3)
    canvas = np.asarray(profile("fragments").prepare(image))
    pixels = np.asarray(image)
    corners = fragment_corners(1000, 600)
    assert len(corners) == 16 and len(set(corners)) == 16
    for n, (left, top) in enumerate(corners):
        assert left % 8 == 0 and top % 8 == 0 and left + 56 <= 1000 and top + 56 <= 600
        row, column = divmod(n, 4)
        placed = canvas[row * 56 : (row + 1) * 56, 224 + column * 56 : 224 + (column + 1) * 56]
        assert np.array_equal(placed, pixels[top : top + 56, left : left + 56])  # not resampled
    expected_global = np.asarray(image.resize((224, 224), Image.BILINEAR))
    assert np.array_equal(canvas[:, :224], expected_global)
    # The fragments spread over the photo: from its top-left to its bottom-right quarter.
    assert corners[0][0] < 250 and corners[0][1] < 150 and corners[-1][0] > 750 and corners[-1][1] > 450


def test_fragments_judge_a_large_photo_at_1024_px_and_keep_noise_grain_that_a_shrink_averages_away():
    rng = np.random.default_rng(0)
    flat = np.full((1536, 2048, 3), 128.0)
    noisy = Image.fromarray(np.clip(flat + rng.normal(0, 20, flat.shape), 0, 255).astype(np.uint8), "RGB")
    canvas = np.asarray(profile("fragments").prepare(noisy), dtype=np.float64)
    shrunk = np.asarray(noisy.resize((448, 224), Image.BILINEAR), dtype=np.float64)
    fragments_noise, shrunk_noise = canvas[:, 224:].std(), shrunk.std()
    # 2048 -> 1024 (LANCZOS) halves white noise; a shrink to 448 px divides it by more than 4.
    assert 6 < fragments_noise < 14 and shrunk_noise < 5, (fragments_noise, shrunk_noise)


def test_the_processor_takes_the_canvas_as_it_is_at_the_card_bounds(tmp_path):
    path = _save(tmp_path, "photo.jpg", _noise((1024, 640)), quality=90)
    spy = SpyProcessor(load_image_processor_for_test())
    pixels = FRAGMENT_CANVAS[0] * FRAGMENT_CANVAS[1]
    builder = ExampleBuilder(spy, image_token_id=7, preprocessing="fragments", min_pixels=pixels, max_pixels=pixels)
    example = builder.build(str(path), "photo", [1, 7, 2])
    assert spy.seen[-1].size == FRAGMENT_CANVAS
    assert example.image_grid_thw.tolist() == [[1, 16, 32]] and len(example.input_ids) == 2 + 128


# ---------------------------------------------------------------- thin images: refused, never blown up


@pytest.fixture
def resizes(monkeypatch):
    """Every size PIL is asked to resize to. A resize above 4 megapixels fails at once, so a test of a thin
    image never allocates the gigabytes an unbounded enlargement would."""
    sizes = []
    resize = Image.Image.resize

    def bounded(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        if size[0] * size[1] > 4_000_000:
            raise AssertionError(f"{self.size} resized to {tuple(size)}")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded)
    return sizes


def test_fragments_refuse_an_aspect_ratio_the_processor_refuses_before_resizing_anything(resizes):
    """The canvas would hide a 1 x 100,000 image's shape from the processor, and the reference size would
    enlarge it 56-fold along its length (gigabytes): it is refused first, naming its size and the limit."""
    builder = ExampleBuilder(load_image_processor_for_test(), image_token_id=7, preprocessing="fragments")
    for width, height in [(1, 100_000), (100_000, 1), (201, 1), (3, 1000)]:
        with pytest.raises(MediaError) as caught:
            builder.build(Image.new("RGB", (width, height)), "t.png", [1, 7, 2])
        ratio = max(width, height) / min(width, height)
        assert str(caught.value) == (f"t.png: image cannot be preprocessed ({width}x{height} px: aspect ratio "
                                     f"{ratio:.1f}, above the 200 the Qwen2-VL image processor accepts)")
    assert resizes == []


def test_fragments_take_a_narrow_photo_within_the_limit_through_a_bounded_reference_size(resizes):
    pixels = FRAGMENT_CANVAS[0] * FRAGMENT_CANVAS[1]
    builder = ExampleBuilder(load_image_processor_for_test(), image_token_id=7, preprocessing="fragments",
                             min_pixels=pixels, max_pixels=pixels)
    for size in [(60, 3000), (40, 8000), (1, 200), (200, 1)]:  # aspect ratios 50, 200 and the limit itself
        example = builder.build(_noise(size), "narrow.png", [1, 7, 2])
        assert example.image_grid_thw.tolist() == [[1, 16, 32]], size
    assert max(width * height for width, height in resizes) <= 56 * 56 * 200  # at most 56 x 11,200 px


def test_llamafactory_refuses_an_image_its_shrink_would_leave_0_px_wide(resizes):
    """The fork's shrink truncates 1 x 300,000 to 0 x 512; PIL's failure then would read as corrupt data."""
    builder = ExampleBuilder(load_image_processor_for_test(), image_token_id=7, preprocessing="llamafactory")
    with pytest.raises(MediaError) as caught:
        builder.build(Image.new("RGB", (1, 300_000)), "t.png", [1, 7, 2])
    assert str(caught.value) == ("t.png: image cannot be preprocessed (1x300000 px: the shrink to 262,144 pixels "
                                 "leaves a side of 0 px)")
    # Within the fork's reach a thin image is cut as it cuts it, never enlarged beyond 28 x its length.
    example = builder.build(Image.new("RGB", (1, 100_000)), "thin.png", [1, 7, 2])
    assert example.image_grid_thw.tolist()[0][0] == 1 and max(w * h for w, h in resizes) <= 28 * 100_000
