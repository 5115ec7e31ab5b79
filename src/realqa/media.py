"""Turning user inputs into decoded RGB images and sampled video frames.

``load_image`` opens one image defensively (missing, empty, corrupt, oversized
and exotic-mode files all end in a ``MediaError`` that names the input), and
``collect_inputs`` expands command-line arguments (files, folders, manifests,
and containers: tar shards, Parquet tables, Hugging Face datasets) into the
ordered list of inputs to score. A sample inside a container is listed and read
by :mod:`realqa.sources`, which these two call for such inputs.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import json
import math
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .compat import require
from .formats import IMAGE_EXTENSIONS, MANIFEST_EXTENSIONS, VIDEO_EXTENSIONS, MediaError, PreprocessingRefused
from .sources import Unlisted, collect, container_kind, parse  # samples inside tar shards, tables, datasets

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FrameSampling",
    "MediaError",
    "SampledFrame",
    "collect_inputs",
    "is_video",
    "sample_frames",
    "load_image",
    "realqa_rgb",
    "to_rgb",
]

DEFAULT_MAX_IMAGE_PIXELS: int = 64_000_000  # decompression-bomb guard (about 8000x8000)

_MANIFEST_KEYS = ("path", "image")  # in order of preference

_WHITE = (255, 255, 255, 255)
_INT32_MAX = 2**31 - 1


def load_image(
    source: str | os.PathLike | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    label: str | None = None,
    prepare: Callable[[Image.Image], Image.Image] | None = None,
) -> Image.Image:
    """Return ``source`` as a fully decoded 8-bit RGB image, or raise ``MediaError``.

    The first frame of multi-frame files is used, EXIF orientation is applied
    and alpha is composited over white (:func:`realqa_rgb`). ``prepare`` replaces
    that last step: a model trained with another pipeline gets its own
    (:mod:`realqa.preprocessing`); it runs while the file is still open. Images with more than ``max_pixels``
    pixels are rejected from their header, before decoding; PIL's own
    process-wide ``Image.MAX_IMAGE_PIXELS`` guard also stays in force. A PIL
    image is not mutated (its current frame is used). Errors are named by
    ``label``, else by the path as given, else ``"<image>"``.
    """
    prepare = prepare or realqa_rgb
    if isinstance(source, Image.Image):
        return _prepare(source, label or "<image>", max_pixels, prepare)
    name = label or os.fsdecode(source)
    source = _sample_data(source)
    if isinstance(source, bytes):  # a sample inside a container (realqa.sources)
        with _pil_errors(name):
            img = Image.open(io.BytesIO(source))
        return _prepare(img, name, max_pixels, prepare)
    _check_file(source, name)
    try:
        fp = open(source, "rb")
    except OSError as err:
        raise MediaError(name, f"cannot read file ({err.strerror or err})") from err
    with fp:
        with _pil_errors(name):
            img = Image.open(fp)
        return _prepare(img, name, max_pixels, prepare)


def _sample_data(source: str | os.PathLike) -> bytes | str | os.PathLike:
    """A sample inside a container (``shard.tar#key``, ``table.parquet#12``, ...: :mod:`realqa.sources`)
    -> its bytes or its image file's path; any other source as it is. A file that exists under such a
    name is that file."""
    if isinstance(source, Unlisted):
        raise MediaError(source, "a whole tar shard or Parquet table, left unlisted for Ray Data's readers: only "
                                 "--backend ray scores it as it is; list its samples with collect_inputs()")
    if not isinstance(source, str) or "#" not in source or os.path.lexists(source):
        return source
    ref = parse(source)
    return ref.read() if ref is not None else source


def _check_file(path: str | os.PathLike, name: str) -> None:
    if isinstance(path, Unscanned):
        raise MediaError(name, path.problem)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise MediaError(name, "file not found") from None
    except OSError as err:
        raise MediaError(name, f"cannot read file ({err.strerror or err})") from err
    if stat.S_ISDIR(st.st_mode):
        raise MediaError(name, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(name, "is not a regular file")
    if st.st_size == 0:
        raise MediaError(name, "file is empty (0 bytes)")


@contextlib.contextmanager
def _pil_errors(name: str) -> Iterator[None]:
    """Turn whatever PIL raises on bad data into a ``MediaError`` for ``name``."""
    # Locally only: PIL merely warns between MAX_IMAGE_PIXELS and twice that.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except MemoryError:  # the machine's limit, not a fault of the input
            raise
        except UnidentifiedImageError:
            raise MediaError(name, "not a recognised image format" + _format_hint(name)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise MediaError(name, f"image is too large ({err})") from None
        except PreprocessingRefused as err:  # the profile's own reason, not a fault of the data
            raise MediaError(name, str(err)) from None
        # PIL plugins signal malformed data with many exception types
        # (OSError, SyntaxError, struct.error, IndexError, ...).
        except Exception as err:
            raise MediaError(name, f"image data is truncated or corrupt ({err})") from err


# Formats Pillow cannot read without help, by extension: what to do about them.
_HEIF_HINT = "HEIC/HEIF needs a Pillow plugin: pip install pillow-heif, then pillow_heif.register_heif_opener()"
_RAW_HINT = "camera RAW is not supported: develop it first (e.g. rawpy or dcraw)"
_FORMAT_HINTS = {
    ".heic": _HEIF_HINT,
    ".heif": _HEIF_HINT,
    ".avif": "this Pillow has no AVIF decoder: pip install -U pillow (11.3+ reads AVIF)",
    ".svg": "SVG is a vector format, not supported: rasterise it first (e.g. cairosvg or rsvg-convert)",
    ".pdf": "PDF is not an image format: render its pages first (e.g. pdftoppm)",
    ".raw": _RAW_HINT, ".cr2": _RAW_HINT, ".nef": _RAW_HINT, ".arw": _RAW_HINT, ".dng": _RAW_HINT,
}


def _format_hint(name: str) -> str:
    hint = _FORMAT_HINTS.get(_extension(name))
    return f" ({hint})" if hint else ""


def _prepare(
    img: Image.Image, name: str, max_pixels: int, prepare: Callable[[Image.Image], Image.Image]
) -> Image.Image:
    width, height = img.size  # known from the header, nothing decoded yet
    if width * height > max_pixels:
        raise MediaError(
            name,
            f"image is too large ({width}x{height} = {width * height:,} pixels, "
            f"limit {max_pixels:,}); possible decompression bomb",
        )
    with _pil_errors(name):
        img.load()  # decode everything now so truncation is reported here
        return prepare(img)


def realqa_rgb(img: Image.Image) -> Image.Image:
    """realqa's own preprocessing: EXIF orientation applied, then :func:`to_rgb`."""
    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (``img`` is never modified)."""
    if img.mode.startswith("I") or img.mode == "F":
        return _high_depth_to_l(img).convert("RGB")
    if img.mode == "La":  # premultiplied; PIL can only un-premultiply RGBa
        lum, alpha = img.split()
        img = Image.merge("RGBa", (lum, lum, lum, alpha))
    if _has_alpha(img):
        # Composite over white: transparent areas then look as viewers show
        # them, and scorers never see the undefined colours behind alpha 0.
        background = Image.new("RGBA", img.size, _WHITE)
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    # Same test as Image.has_transparency_data, which needs Pillow >= 10.1.
    return (
        img.mode in ("RGBA", "RGBa", "LA", "La", "PA")
        or "transparency" in img.info
        or (img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA")
    )


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float greyscale to 8 bits by the value range.

    PIL's own conversion clips instead, which turns most 16-bit images white.
    'I;16*' uses 0..65535. 'I' is usually 16-bit data widened by PIL, so it is
    read as 16-bit unless a value lies outside 0..65535, in which case the
    full 0..2**31-1 range is used. 'F' is read as 0..1 when all values lie in
    it, else as 0..255 (PIL's convention); NaN becomes 0.
    """
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        values = np.nan_to_num(values, nan=0.0)
        top = 1.0 if values.size and values.min() >= 0 and values.max() <= 1 else 255.0
    elif img.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        top = float(_INT32_MAX)
    else:
        top = 65535.0
    scaled = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def collect_inputs(paths: Iterable[str | os.PathLike], *, recursive: bool = True, image_column: str | None = None,
                   split: str | None = None, unlisted: bool = False) -> list[str]:
    """Expand CLI arguments into the ordered list of inputs to score.

    An argument that names no existing path and holds a brace pattern (``shard-{000..127}.tar``)
    stands for its expansions, in order. For each argument, in order:

    - a WebDataset tar shard, a Parquet file or a folder of only Parquet files, a folder written by
      a Hugging Face dataset's ``save_to_disk``, or a hub dataset ``hf://datasets/owner/name``
      gives one input per sample, in container order, each named by a stable identity such as
      ``shard.tar#key`` or ``table.parquet#12`` (see :mod:`realqa.sources`; ``image_column`` names the
      column, or a tar sample's member extension, where detection is ambiguous; ``split`` a dataset's
      split); where the container holds image paths instead of bytes, those paths are the inputs;
      with ``unlisted``, a tar shard or a Parquet file of image bytes stays one input
      (:class:`realqa.sources.Unlisted`), for Ray Data's readers to list on the cluster;

    - a directory gives every file under it (recursively unless
      ``recursive=False``), whatever its extension, sorted by relative path:
      what cannot be scored becomes an error row saying why (hidden names are
      left out, with a ``UserWarning`` counting them); linked folders are
      followed, each real folder scanned once, and a folder not scanned (a
      loop, a second name, unreadable) is an :class:`Unscanned` input, an error
      row naming it; a directory with no file gives nothing and a
      ``UserWarning`` naming it;
    - an existing ``.txt``/``.lst`` manifest gives one path per line (blank
      lines and ``#`` comments skipped), a ``.csv`` the ``path`` or ``image``
      column, a ``.jsonl`` the ``path`` or ``image`` key of each line; relative
      entries are resolved against the manifest's folder and taken as they
      are (not expanded further); a malformed manifest raises ``MediaError``;
    - anything else (an image, a missing path, an unknown extension) is kept
      as given, so the scorer reports it as one error row instead of the
      input vanishing silently.
    """
    inputs: list[str] = []
    for arg in paths:
        for path in _expand_braces(os.fsdecode(arg)):
            if container_kind(path) is not None:
                inputs.extend(collect(path, column=image_column, split=split, unlisted=unlisted))
            elif os.path.isdir(path):
                inputs.extend(_scan_directory(path, recursive))
            elif os.path.isfile(path) and _extension(path) in MANIFEST_EXTENSIONS:
                inputs.extend(_read_manifest(path))
            else:
                inputs.append(path)
    return inputs


def _expand_braces(path: str) -> list[str]:
    """``shard-{000..127}.tar`` -> its expansions in order (the ``braceexpand`` package, as WebDataset
    itself uses); an existing path or one without braces as it is."""
    if "{" not in path or os.path.lexists(path):
        return [path]
    braceexpand = require("braceexpand", what=f"{path}: a brace pattern")
    try:
        return list(braceexpand.braceexpand(path))
    except braceexpand.UnbalancedBracesError:  # not a pattern: a (missing) file named with a brace, kept as given
        return [path]


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _scan_directory(directory: str, recursive: bool) -> list[str]:
    """Every file under ``directory``, whatever its extension: images and videos are scored, anything
    else becomes an error row naming the format, so nothing found is dropped without a row. Hidden
    names (starting with ".": .DS_Store, .git) are left out, and a warning counts them.

    Folders reached through symbolic links are scanned as if they were there, each real folder once:
    the folders in place first, then the linked ones in path order (so which name a folder is scanned
    under does not depend on the order the file system lists it). A folder not scanned is one error row
    naming it (:class:`Unscanned`): a link back to a folder holding it (a loop), a second name of a
    folder scanned already, a folder that cannot be read."""
    found: dict[tuple[str, ...], str | None] = {}  # relative path as components -> why not scanned (None: a file)
    scanned: dict[str, tuple[str, ...]] = {}  # the real path of each folder scanned -> the name it was scanned under
    pending: list[tuple[bool, tuple[str, ...]]] = [(False, ())]  # a heap of (reached through a link, folder)
    hidden = 0
    while pending:
        through_link, parts = heapq.heappop(pending)
        path = os.path.join(directory, *parts)
        real = os.path.realpath(path)
        if real in scanned:
            first = scanned[real]
            name = os.path.join(directory, *first)
            found[parts] = (f"leads back to {name}, a folder holding it (a loop): not followed"
                            if parts[: len(first)] == first else
                            f"the same folder as {name}, scanned there: its files are not scored twice")
            continue
        scanned[real] = parts
        try:
            with os.scandir(path) as listing:
                entries = list(listing)
        except OSError as err:  # os.walk would skip it without a word
            found[parts] = f"folder cannot be read ({err.strerror or err})"
            continue
        for entry in entries:
            if entry.name.startswith("."):
                hidden += 1
            elif not _is_folder(entry):
                found[parts + (entry.name,)] = None
            elif recursive:
                heapq.heappush(pending, (through_link or entry.is_symlink(), parts + (entry.name,)))
    if hidden:
        warnings.warn(f"{directory}: {hidden} hidden file(s) or folder(s) (names starting with '.') not scored",
                      stacklevel=3)
    if not found:
        warnings.warn(f"{directory}: directory contains no files to score", stacklevel=3)
    # Component-wise sorting gives the same order on every platform.
    return [os.path.join(directory, *rel) if problem is None else Unscanned(os.path.join(directory, *rel), problem)
            for rel, problem in sorted(found.items())]


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # through a link too
    except OSError:  # a link that resolves to itself: a file row, which says so when it is read
        return False


class Unscanned(str):
    """A folder met in a folder scan whose files are not listed (see :func:`_scan_directory`). The string
    is its path; reading it raises a :class:`MediaError` with ``problem``, so it is one error row."""

    problem: str

    def __new__(cls, path: str, problem: str):
        self = super().__new__(cls, path)
        self.problem = problem
        return self

    def __reduce__(self):  # keeps the problem across worker processes
        return (Unscanned, (str(self), self.problem))


def _read_manifest(manifest: str) -> list[str]:
    try:
        with open(manifest, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise MediaError(manifest, f"cannot read manifest ({err})") from err
    readers = {".csv": _csv_entries, ".jsonl": _jsonl_entries}
    reader = readers.get(_extension(manifest), _line_entries)
    folder = os.path.dirname(manifest)
    return [os.path.join(folder, entry) for entry in reader(manifest, text)]


def _line_entries(manifest: str, text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _csv_entries(manifest: str, text: str) -> list[str]:
    rows = csv.reader(io.StringIO(text))
    header = [name.strip() for name in next(rows, [])]
    lowered = [name.lower() for name in header]
    column = next((lowered.index(key) for key in _MANIFEST_KEYS if key in lowered), None)
    if column is None:
        raise MediaError(
            manifest,
            f"CSV manifest needs a 'path' or 'image' column; it has {header}",
        )
    entries = []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        value = row[column].strip() if column < len(row) else ""
        if not value:
            raise MediaError(manifest, f"line {rows.line_num}: empty '{header[column]}' value")
        entries.append(value)
    return entries


def _jsonl_entries(manifest: str, text: str) -> list[str]:
    entries = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MediaError(manifest, f"line {line_no}: invalid JSON ({err})") from None
        value = None
        if isinstance(record, dict):
            value = next((record[key] for key in _MANIFEST_KEYS if key in record), None)
        if not isinstance(value, str) or not value:
            raise MediaError(
                manifest, f"line {line_no}: needs a non-empty 'path' or 'image' string"
            )
        entries.append(value)
    return entries


# ---------------------------------------------------------------- video frames
#
# Frames are decoded one at a time and only the sampled ones are kept, so memory holds at most the
# sampled frames whatever the clip's length; far-apart samples are reached by seeking, not decoding.

SEEK_GAP_SECONDS = 4.0  # beyond this distance to the next sample, seeking beats decoding every frame


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a video file (by its extension; the file is not opened)."""
    return os.path.splitext(os.fsdecode(path))[1].lower() in VIDEO_EXTENSIONS


# ---------------------------------------------------------------- frame sampling


@dataclass(frozen=True)
class FrameSampling:
    """Which frames to take: ``frames`` spread uniformly over the clip, or about ``fps`` frames per
    second when ``fps`` is set, never more than ``frames``. Each sample is the first frame shown at
    or after the middle of its equal share of the clip."""

    frames: int = 8
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number, got {self.fps}")

    def count(self, duration: float) -> int:
        if self.fps is None:
            return self.frames
        return max(1, min(self.frames, round(duration * self.fps)))

    def times(self, start: float, duration: float) -> list[float]:
        """Sample times in seconds, on the stream's clock."""
        n = self.count(duration)
        return [start + (i + 0.5) * duration / n for i in range(n)]


@dataclass(frozen=True)
class SampledFrame:
    index: int  # position among the samples
    time: float  # presentation time in seconds
    image: Image.Image = field(repr=False)


def sample_frames(
    path: str | os.PathLike,
    sampling: FrameSampling = FrameSampling(),
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[list[SampledFrame], float]:
    """Decode the sampled frames of a video file: (frames as RGB images, clip duration in seconds).

    Raises :class:`MediaError` naming ``path`` for missing, empty, corrupt or truncated files, files
    without a video stream or decodable frame, and frames larger than ``max_pixels``. A clip shorter
    than its header claims gives the frames it has (later samples repeat the last frame shown).
    """
    av = require("av", "video", "decoding video")

    name = os.fsdecode(path)
    _check_file(path, name)
    try:
        with av.open(name, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise MediaError(name, "has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                raise MediaError(name, f"video frames are too large ({width}x{height}, limit {max_pixels:,} pixels)")
            start, duration = _time_span(container, stream)
            frames = list(_decode_at(container, stream, sampling.times(start, duration)))
    except av.FFmpegError as err:  # PyAV's base error: unreadable container, corrupt or truncated data
        raise MediaError(name, f"not a readable video, or its data is truncated or corrupt ({err})") from None
    if not frames:
        raise MediaError(name, "no video frame could be decoded")
    return [SampledFrame(i, time, image) for i, (time, image) in enumerate(frames)], duration


def _time_span(container, stream) -> tuple[float, float]:
    """(start, duration) of the video stream in seconds, from the headers or, failing that, the packets."""
    base = stream.time_base
    start = float(stream.start_time * base) if stream.start_time is not None and base else 0.0
    if stream.duration and base:
        return start, float(stream.duration * base)
    if container.duration:
        return start, container.duration / 1_000_000  # AV_TIME_BASE
    # No duration in the headers (e.g. raw streams): read the packets' timestamps, without decoding.
    first, end = None, None
    for packet in container.demux(stream):
        if packet.pts is not None:
            first = packet.pts if first is None else min(first, packet.pts)
            end = max(end or packet.pts, packet.pts + (packet.duration or 0))
    container.seek(0)
    if first is None or not base:
        raise MediaError(container.name, "video has no timestamps to sample by")
    return float(first * base), float((end - first) * base)


def _decode_at(container, stream, times: Sequence[float]) -> Iterator[tuple[float, Image.Image]]:
    """For each time, the first frame shown at or after it (the last frame once the stream ends).

    Only the chosen frames are converted to images; the others are dropped as they are decoded.
    """
    decoded = container.decode(stream)
    last = None  # (time, frame) of the latest decoded frame
    for target in times:
        if last is None or target - last[0] > SEEK_GAP_SECONDS:
            if last is not None or target > SEEK_GAP_SECONDS:
                container.seek(int(target / stream.time_base), stream=stream, backward=True)
                decoded = container.decode(stream)
        while last is None or last[0] < target:
            frame = next(decoded, None)
            if frame is None:
                break  # the stream ended early: repeat the last frame shown
            last = (float(frame.time) if frame.time is not None else target, frame)
        if last is None:
            return
        yield last[0], last[1].to_image()
