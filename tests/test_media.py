"""Tests for realqa.media; every unusual input is generated in tmp_path."""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_inputs import write_photos
from realqa.media import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    MediaError,
    collect_inputs,
    load_image,
)

SHARED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos"


def _near(actual, expected, tol=6):
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def _write_png(
    path: Path, size: tuple[int, int], bit_depth: int, colour_type: int, data: bytes
) -> Path:
    """Write a PNG by hand, so headers can claim anything (sizes, 16-bit RGB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", *size, bit_depth, colour_type, 0, 0, 0)
    chunks = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def _noise_jpeg(path: Path) -> Path:
    Image.effect_noise((256, 256), 60).convert("RGB").save(path, "JPEG", quality=90)
    return path


def _assert_media_error(path, problem: str, **kwargs) -> MediaError:
    with pytest.raises(MediaError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert problem in message, message
    assert info.value.source == str(path)
    return info.value


# --- constants and the error type -------------------------------------------


def test_constants():
    assert DEFAULT_MAX_IMAGE_PIXELS == 64_000_000
    expected = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jfif"}
    assert expected <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


def test_media_error_is_value_error_and_pickles():
    err = MediaError("photos/a.jpg", "file is empty (0 bytes)")
    assert isinstance(err, ValueError)
    assert str(err) == "photos/a.jpg: file is empty (0 bytes)"
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.source, clone.problem, str(clone)) == (err.source, err.problem, str(err))


# --- bad files ----------------------------------------------------------------


def test_missing_file(tmp_path):
    _assert_media_error(str(tmp_path / "nope.jpg"), "file not found")


def test_missing_file_as_pathlike(tmp_path):
    _assert_media_error(tmp_path / "nope.jpg", "file not found")


def test_directory(tmp_path):
    _assert_media_error(str(tmp_path), "is a directory")


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    _assert_media_error(str(path), "file is empty (0 bytes)")


def test_text_renamed_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    _assert_media_error(str(path), "not a recognised image format")


def test_truncated_jpeg(tmp_path):
    path = _noise_jpeg(tmp_path / "cut.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _assert_media_error(str(path), "image data is truncated or corrupt (")
    assert "truncated" in err.problem


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.effect_noise((256, 256), 60).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_media_error(str(path), "image data is truncated or corrupt (")


def test_label_replaces_path_in_errors(tmp_path):
    with pytest.raises(MediaError, match=r"^row 7: file not found$") as info:
        load_image(tmp_path / "nope.jpg", label="row 7")
    assert info.value.source == "row 7"


def test_wrong_argument_type_is_a_type_error():
    with pytest.raises(TypeError):
        load_image(42)  # type: ignore[arg-type]


# --- decompression bombs ----------------------------------------------------


def test_large_image_rejected_by_max_pixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (3000, 3000), (10, 20, 30)).save(path)
    err = _assert_media_error(str(path), "image is too large (3000x3000", max_pixels=1_000_000)
    assert "limit 1,000,000" in str(err)
    assert load_image(path).size == (3000, 3000)  # under the default limit


def test_size_checked_from_header_before_decoding(tmp_path):
    # The header claims 5000x5000 but there is almost no pixel data: a check
    # made after decoding would report truncation instead.
    path = _write_png(tmp_path / "claims.png", (5000, 5000), 8, 0, b"\x00" * 10)
    _assert_media_error(str(path), "5000x5000", max_pixels=1_000_000)


def test_pil_default_bomb_guard_becomes_media_error(tmp_path):
    # 10000x10000 exceeds PIL's own MAX_IMAGE_PIXELS (~89.5M), so PIL warns at open.
    path = _write_png(tmp_path / "bomb.png", (10_000, 10_000), 8, 0, b"\x00" * 10)
    filters_before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape either
        _assert_media_error(str(path), "image is too large", max_pixels=10**9)
        _assert_media_error(str(path), "image is too large")
    assert warnings.filters == filters_before
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the global was left alone


def test_pil_hard_bomb_limit_becomes_media_error(tmp_path):
    path = _write_png(tmp_path / "huge.png", (20_000, 20_000), 8, 0, b"\x00" * 10)
    _assert_media_error(str(path), "image is too large", max_pixels=10**9)


# --- modes --------------------------------------------------------------------


def _load_file(tmp_path, img: Image.Image, name: str, **save) -> Image.Image:
    path = tmp_path / name
    img.save(path, **save)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.size == img.size
    return out


def test_rgb_jpeg_roundtrip(tmp_path):
    out = _load_file(tmp_path, Image.new("RGB", (16, 8), (200, 100, 50)), "plain.jpg")
    assert _near(out.getpixel((3, 3)), (200, 100, 50))


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    img.paste((0, 255, 255, 0), (0, 0, 8, 16))  # left half red
    path = tmp_path / "cmyk.jpg"
    img.save(path, quality=100)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
        assert "adobe" in stored.info  # Adobe CMYK JPEGs store inverted values
    out = load_image(path)
    assert out.mode == "RGB"
    assert _near(out.getpixel((2, 8)), (255, 0, 0), tol=10)
    assert _near(out.getpixel((13, 8)), (255, 255, 255), tol=10)


def test_16bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    array = np.array([[0, 65535, 32768, 257 * 10]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")
    out = load_image(path)
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 255, 128, 10]
    assert out.getpixel((2, 0)) == (128, 128, 128)


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_16bit_byte_orders(mode):
    img = Image.new(mode, (2, 1))
    img.putpixel((0, 0), 65535)
    img.putpixel((1, 0), 32768)
    out = load_image(img)
    assert [out.getpixel((x, 0)) for x in range(2)] == [(255,) * 3, (128,) * 3]


def test_16bit_rgb_png(tmp_path):
    row = b"\x00" + struct.pack(">6H", 65535, 0, 32768, 0, 65535, 257 * 20)
    path = _write_png(tmp_path / "rgb48.png", (2, 1), 16, 2, row)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 128)
    assert out.getpixel((1, 0)) == (0, 255, 20)


def test_32bit_int_tiff_16bit_range(tmp_path):
    array = np.array([[0, 65535, 32768]], dtype=np.int32)
    out = _load_file(tmp_path, Image.fromarray(array), "int.tif")
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (255,) * 3, (128,) * 3]


def test_32bit_int_tiff_full_range(tmp_path):
    array = np.array([[-5, 2**31 - 1, 2**30]], dtype=np.int32)
    path = tmp_path / "int32.tif"
    Image.fromarray(array).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "I"
    out = load_image(path)
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (255,) * 3, (128,) * 3]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 1.0, 0.5], [0, 255, 128]),
        ([0.0, 255.0, 100.0], [0, 255, 100]),
        ([np.nan, 300.0, -1.0], [0, 255, 0]),
    ],
)
def test_float_images(values, expected):
    out = load_image(Image.fromarray(np.array([values], dtype=np.float32)))
    assert [out.getpixel((x, 0))[0] for x in range(3)] == expected


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0])
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 1
    for name in ("pal.png", "pal.gif"):
        out = _load_file(tmp_path, img, name)
        assert out.getpixel((0, 0)) == (255, 0, 0)
        assert out.getpixel((1, 0)) == (255, 255, 255)


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255])
    img.putpixel((1, 0), 1)
    out = _load_file(tmp_path, img, "pal.bmp")
    assert [out.getpixel((x, 0)) for x in range(2)] == [(255, 0, 0), (0, 0, 255)]


def test_la_png(tmp_path):
    img = Image.new("LA", (2, 1), (50, 255))
    img.putpixel((1, 0), (50, 0))
    out = _load_file(tmp_path, img, "la.png")
    assert out.getpixel((0, 0)) == (50, 50, 50)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_rgba_png_transparent_pixel_is_white(tmp_path):
    img = Image.new("RGBA", (3, 1), (0, 0, 255, 255))
    img.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    out = _load_file(tmp_path, img, "rgba.png")
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    assert _near(out.getpixel((2, 0)), (127, 127, 127), tol=1)


def test_greyscale_with_transparency_key(tmp_path):
    img = Image.new("L", (2, 1), 40)
    img.putpixel((1, 0), 7)
    img.info["transparency"] = 7
    out = _load_file(tmp_path, img, "key.png")
    assert [out.getpixel((x, 0)) for x in range(2)] == [(40,) * 3, (255,) * 3]


def test_greyscale(tmp_path):
    out = _load_file(tmp_path, Image.new("L", (4, 3), 77), "grey.png")
    assert out.getpixel((2, 1)) == (77, 77, 77)


def test_bilevel(tmp_path):
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    out = _load_file(tmp_path, img, "bits.png")
    assert [out.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "CMYK", "RGBX", "RGBa", "P", "PA"])
def test_other_modes_convert_back_to_rgb(mode):
    colour = (204, 51, 102)  # in PIL's web palette, so 'P' holds it exactly
    out = load_image(Image.new("RGB", (4, 4), colour).convert(mode))
    assert out.mode == "RGB"
    assert _near(out.getpixel((1, 1)), colour)


def test_premultiplied_la():
    img = Image.merge("La", (Image.new("L", (2, 1), 60), Image.new("L", (2, 1), 255)))
    img.putpixel((1, 0), (0, 0))
    out = load_image(img)
    assert [out.getpixel((x, 0)) for x in range(2)] == [(60,) * 3, (255,) * 3]


# --- orientation and frames ---------------------------------------------------


def _rotated_jpeg(path: Path) -> Path:
    """A 40x20 blue JPEG with a red top-left block and EXIF orientation 6."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    img.save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_applied(tmp_path):
    out = load_image(_rotated_jpeg(tmp_path / "rot.jpg"))
    assert out.mode == "RGB"
    assert out.size == (20, 40)
    # Turning clockwise moves the stored top-left corner to the top-right.
    assert _near(out.getpixel((16, 3)), (255, 0, 0), tol=20)
    assert _near(out.getpixel((3, 3)), (0, 0, 255), tol=20)


def test_gif_uses_first_frame(tmp_path):
    colours = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    frames = [Image.new("RGB", (8, 8), colour) for colour in colours]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as stored:
        assert stored.n_frames == 3
    out = load_image(path)
    assert (out.mode, out.size, out.getpixel((4, 4))) == ("RGB", (8, 8), (255, 0, 0))


def test_multipage_tiff_uses_first_page(tmp_path):
    pages = [Image.new("L", (6, 6), 30), Image.new("L", (6, 6), 220)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    out = load_image(path)
    assert out.getpixel((2, 2)) == (30, 30, 30)


# --- PIL images as input ----------------------------------------------------


def test_pil_image_not_mutated():
    img = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    before = (img.mode, img.size, img.tobytes(), dict(img.info))
    out = load_image(img)
    assert out is not img
    assert (out.mode, out.getpixel((0, 0))) == ("RGB", (255, 255, 255))
    assert (img.mode, img.size, img.tobytes(), dict(img.info)) == before


def test_pil_rgb_image_returns_a_copy():
    img = Image.new("RGB", (3, 2), (1, 2, 3))
    out = load_image(img)
    out.putpixel((0, 0), (9, 9, 9))
    assert img.getpixel((0, 0)) == (1, 2, 3)


def test_pil_image_exif_applied_and_not_mutated(tmp_path):
    with Image.open(_rotated_jpeg(tmp_path / "rot.jpg")) as img:
        img.load()
        before = (img.mode, img.size, img.tobytes())
        out = load_image(img)
        assert out.size == (20, 40)
        assert (img.mode, img.size, img.tobytes()) == before
        assert img.getexif()[0x0112] == 6


def test_pil_image_errors_use_label(tmp_path):
    path = _noise_jpeg(tmp_path / "cut.jpg")
    data = path.read_bytes()
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(MediaError, match=r"^<image>: image data is truncated or corrupt"):
        load_image(lazy)
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(MediaError, match=r"^<PIL image #3>: image data is truncated") as info:
        load_image(lazy, label="<PIL image #3>")
    assert info.value.source == "<PIL image #3>"


def test_pil_image_max_pixels():
    with pytest.raises(MediaError, match=r"^<image>: image is too large \(100x100"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=9_999)


# --- real photographs ---------------------------------------------------------


def test_photos_load_as_rgb(tmp_path):
    """Photographs made here (sizes, JPEG flavours, grey, EXIF-rotated), and the shared real ones when present."""
    shown = write_photos(tmp_path)
    photos = collect_inputs([tmp_path])
    assert sorted(Path(p).name for p in photos) == sorted(shown)
    for photo in photos:
        img = load_image(photo)
        assert img.mode == "RGB" and img.size == shown[Path(photo).name], photo
    for photo in collect_inputs([SHARED_PHOTOS]) if SHARED_PHOTOS.is_dir() else []:
        img = load_image(photo)
        assert img.mode == "RGB", photo
        assert 0 < max(img.size) <= 1024, photo


# --- collect_inputs -----------------------------------------------------------


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "photos"
    _touch(root, "b.jpg", "a.PNG", "z.JPEG", "notes.txt", "readme.md")
    _touch(root, "sub/c.webp", "sub/deeper/d.Tiff", "sub-x.gif")
    (root / "emptydir").mkdir()
    return root


def test_directory_gives_every_file_sorted_recursive(tree):
    """Every file found is an input (what is no image becomes an error row naming it): none is dropped."""
    expected = ["a.PNG", "b.jpg", "notes.txt", "readme.md", "sub/c.webp", "sub/deeper/d.Tiff", "sub-x.gif", "z.JPEG"]
    assert collect_inputs([tree]) == [str(tree / name) for name in expected]


def test_directory_not_recursive(tree):
    assert collect_inputs([str(tree)], recursive=False) == [
        str(tree / name) for name in ["a.PNG", "b.jpg", "notes.txt", "readme.md", "sub-x.gif", "z.JPEG"]
    ]


def test_hidden_files_are_left_out_and_counted(tree):
    _touch(tree, ".DS_Store", ".git/config", "sub/.thumb.jpg")
    with pytest.warns(UserWarning, match=r"3 hidden file\(s\) or folder\(s\)"):
        found = collect_inputs([tree])
    assert not any("/." in path for path in found) and len(found) == 8


def test_unsupported_formats_in_a_folder_are_error_rows_saying_how(tmp_path):
    """AVIF and video are scored (PyAV, Pillow's AVIF); HEIC and SVG are error rows naming the format."""
    for name, data in {"c.HEIC": b"\x00\x00\x00\x18ftypheic" + bytes(64), "d.svg": b"<svg xmlns='x'></svg>"}.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(MediaError, match="HEIC/HEIF needs a Pillow plugin: pip install pillow-heif"):
        load_image(tmp_path / "c.HEIC")
    with pytest.raises(MediaError, match="SVG is a vector format"):
        load_image(tmp_path / "d.svg")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "b.avif")
    assert load_image(tmp_path / "b.avif").size == (40, 30)
    assert collect_inputs([tmp_path]) == [str(tmp_path / n) for n in ("b.avif", "c.HEIC", "d.svg")]


def test_arguments_kept_in_order_and_as_given(tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["photos/z.JPEG", "photos/sub", "missing.jpg", "photos/readme.md", Path("photos/b.jpg")]
    assert collect_inputs(args) == [
        "photos/z.JPEG",
        "photos/sub/c.webp",
        "photos/sub/deeper/d.Tiff",
        "missing.jpg",
        "photos/readme.md",
        "photos/b.jpg",
    ]


def test_directory_without_images_warns(tree):
    with pytest.warns(UserWarning, match="emptydir: directory contains no files to score"):
        assert collect_inputs([tree / "emptydir", tree / "b.jpg"]) == [str(tree / "b.jpg")]


@pytest.fixture
def linked(tmp_path):
    """A folder holding a linked folder (with a loop inside), a second link to it, a link back to itself,
    a linked file, a broken link and a link that resolves to itself."""
    few = tmp_path / "few"
    _touch(few, "1.jpg", "2.jpg", "sub/3.jpg")
    (few / "again").symlink_to(few, target_is_directory=True)  # a loop inside the linked folder
    root = tmp_path / "sl"
    _touch(root, "a.jpg")
    (root / "linked_dir").symlink_to(few, target_is_directory=True)
    (root / "twice").symlink_to(few, target_is_directory=True)  # the same folder under a second name
    (root / "loop").symlink_to(root, target_is_directory=True)  # back to the folder holding it
    (root / "linked_file.jpg").symlink_to(few / "1.jpg")
    (root / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    (root / "self").symlink_to(root / "self")
    return root


def test_a_linked_folder_is_scanned_once_and_every_link_it_does_not_follow_is_a_row_saying_why(linked):
    names = ["a.jpg", "broken.jpg", "linked_dir/1.jpg", "linked_dir/2.jpg", "linked_dir/again", "linked_dir/sub/3.jpg",
             "linked_file.jpg", "loop", "self", "twice"]
    found = collect_inputs([linked])
    assert found == [str(linked / name) for name in names]
    problems = {
        "linked_dir/again": f"leads back to {linked / 'linked_dir'}, a folder holding it (a loop): not followed",
        "loop": f"leads back to {linked}, a folder holding it (a loop): not followed",
        "twice": f"the same folder as {linked / 'linked_dir'}, scanned there: its files are not scored twice",
        "broken.jpg": "file not found",
        "self": "cannot read file",
    }
    for name, problem in problems.items():
        error = _assert_media_error(found[names.index(name)], problem)
        assert pickle.loads(pickle.dumps(found[names.index(name)])) == found[names.index(name)]
        assert str(pickle.loads(pickle.dumps(error))) == str(error)  # the row a worker process sends back
    unscanned = pickle.loads(pickle.dumps(found[names.index("loop")]))  # as it reaches a worker process
    _assert_media_error(unscanned, "(a loop): not followed")
    for name in ("a.jpg", "linked_dir/1.jpg", "linked_dir/sub/3.jpg", "linked_file.jpg"):
        assert (linked / name).read_bytes() == b"x"
    # Not recursive: the linked folders are not entered either.
    assert collect_inputs([linked], recursive=False) == [str(linked / n) for n in
                                                         ("a.jpg", "broken.jpg", "linked_file.jpg", "self")]


def test_the_folder_in_place_is_scanned_before_a_link_to_it_whatever_their_names(tmp_path):
    _touch(tmp_path, "z_real/1.jpg")
    (tmp_path / "a_link").symlink_to(tmp_path / "z_real", target_is_directory=True)
    found = collect_inputs([tmp_path])
    assert found == [str(tmp_path / "a_link"), str(tmp_path / "z_real" / "1.jpg")]
    _assert_media_error(found[0], f"the same folder as {tmp_path / 'z_real'}, scanned there")


def test_a_folder_that_cannot_be_read_is_a_row_naming_it(tree, monkeypatch):
    """os.walk would skip it without a word; the scan reports it (injected: as root, chmod does not bar reading)."""
    scandir = os.scandir

    def barred(path):
        if os.fspath(path) == str(tree / "sub" / "deeper"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", barred)
    found = collect_inputs([tree])
    assert str(tree / "sub" / "deeper") in found and str(tree / "sub" / "c.webp") in found
    _assert_media_error(found[found.index(str(tree / "sub" / "deeper"))], "folder cannot be read (Permission denied)")


@pytest.mark.parametrize("ext", [".txt", ".lst"])
def test_line_manifest(tmp_path, monkeypatch, ext):
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = str(tmp_path / "elsewhere" / "abs.jpg")
    (lists / f"set{ext}").write_text(
        f"# my set\nimg/one.jpg\n\n  ../two.png  \n{absolute}\ngone.jpg\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    assert collect_inputs([f"lists/set{ext}"]) == [
        "lists/img/one.jpg",
        "lists/../two.png",
        absolute,
        "lists/gone.jpg",
    ]


def test_manifest_in_current_folder(tmp_path, monkeypatch):
    (tmp_path / "set.txt").write_text("a.jpg\n")
    monkeypatch.chdir(tmp_path)
    assert collect_inputs(["set.txt"]) == ["a.jpg"]


def test_csv_manifest_image_column(tmp_path):
    manifest = tmp_path / "labels.csv"
    manifest.write_text('image,MOS\nimg/1.jpg,3.5\n"img/with, comma.jpg",4\n\n2.png,1\n')
    assert collect_inputs([manifest]) == [
        str(tmp_path / "img/1.jpg"),
        str(tmp_path / "img/with, comma.jpg"),
        str(tmp_path / "2.png"),
    ]


def test_csv_manifest_prefers_path_column(tmp_path):
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\ufeffimage,Path\nname1,a/1.jpg\n", encoding="utf-8")
    assert collect_inputs([manifest]) == [str(tmp_path / "a/1.jpg")]


def test_csv_manifest_without_path_column(tmp_path):
    manifest = tmp_path / "scores.csv"
    manifest.write_text("img_name,mos\n1.jpg,3\n")
    with pytest.raises(MediaError) as info:
        collect_inputs([manifest])
    message = str(info.value)
    assert message.startswith(f"{manifest}: ")
    assert "'img_name'" in message and "'mos'" in message


def test_csv_manifest_empty_path_value(tmp_path):
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,mos\na.jpg,1\n,2\n")
    with pytest.raises(MediaError, match="line 3: empty 'path' value"):
        collect_inputs([manifest])


def test_jsonl_manifest(tmp_path):
    manifest = tmp_path / "sub" / "items.jsonl"
    manifest.parent.mkdir()
    lines = ['{"path": "a.jpg", "mos": 1}', "", '{"image": "/abs/b.png"}', '{"path": "missing.bmp"}']
    manifest.write_text("\n".join(lines) + "\n")
    assert collect_inputs([str(manifest)]) == [
        str(tmp_path / "sub" / "a.jpg"),
        "/abs/b.png",
        str(tmp_path / "sub" / "missing.bmp"),
    ]


@pytest.mark.parametrize("line", ['{"file": "a.jpg"}', "not json", '["a.jpg"]', '{"path": 3}'])
def test_jsonl_manifest_bad_line(tmp_path, line):
    manifest = tmp_path / "items.jsonl"
    manifest.write_text('{"path": "ok.jpg"}\n' + line + "\n")
    with pytest.raises(MediaError, match=r"items\.jsonl: line 2: "):
        collect_inputs([manifest])


def test_missing_manifest_is_kept(tmp_path):
    missing = str(tmp_path / "nowhere.csv")
    assert collect_inputs([missing]) == [missing]
