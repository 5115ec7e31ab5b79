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
