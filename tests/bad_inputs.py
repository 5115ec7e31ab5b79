"""Writers for the bad and unusual image files of the "bad input" requirements."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """Files that must each become an error row; name -> the problem the message must state."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image\n")
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.new("RGB", (2, 600), "gray").save(folder / "sliver.png")  # aspect ratio 300: processor refuses
    return {
        "empty.jpg": "empty",
        "notes.jpg": "not a recognised image format",
        "truncated.jpg": "truncated",
        "sliver.png": "cannot be preprocessed",
    }


def write_unusual_inputs(folder: Path) -> list[str]:
    """Valid images in awkward encodings that must be converted and scored."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(folder / "sixteen_bit.png")
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    photo.convert("L").save(folder / "gray.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    photo.save(folder / "rotated.jpg", exif=exif)
    return ["cmyk.jpg", "sixteen_bit.png", "palette.png", "alpha.png", "gray.png", "rotated.jpg"]


# Camera-like photographs (width, height, JPEG options, EXIF orientation): landscape and portrait, up to 1024
# pixels a side, baseline and progressive, 4:2:0 and 4:4:4 chroma, one grey, one stored rotated.
PHOTOS = {
    "landscape.jpg": ((640, 480), {}, None),
    "portrait.jpg": ((480, 640), {"progressive": True}, None),
    "wide.jpg": ((1024, 576), {"subsampling": 0}, None),
    "square_grey.jpg": ((800, 800), {}, None),
    "stored_sideways.jpg": ((683, 1024), {}, 6),  # displays as 1024 x 683
    "small.jpg": ((375, 500), {"quality": 70}, None),
}


def write_photos(folder: Path) -> dict[str, tuple[int, int]]:
    """JPEG photographs made here (smooth scenes, texture, sensor-like noise); name -> displayed (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    shown = {}
    for n, (name, ((width, height), options, orientation)) in enumerate(PHOTOS.items()):
        y, x = np.mgrid[0:height, 0:width] / max(width, height)
        scene = np.stack(
            [128 + 100 * np.sin(6 * x + n), 128 + 100 * np.cos(5 * y - n), 128 + 80 * np.sin(9 * x * y)], -1
        )
        scene += 30 * (np.sin(80 * x) * np.sin(60 * y))[..., None] + rng.normal(0, 10, scene.shape)
        picture = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8), "RGB")
        if "grey" in name:
            picture = picture.convert("L")
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
        picture.save(folder / name, "JPEG", quality=options.pop("quality", 90), exif=exif, **options)
        shown[name] = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return shown
