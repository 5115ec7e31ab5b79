"""What realqa takes as input, by file name, and how an input that cannot be used is named.

The extension families (images, videos, manifests) and :class:`MediaError` live here, below both
:mod:`realqa.media` (decoding) and :mod:`realqa.sources` (samples inside containers), which use them.
"""

from __future__ import annotations

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib",
        ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".pnm",
        ".tga", ".ico", ".jp2", ".j2k", ".jpx", ".pcx", ".sgi", ".qoi",
    }
)

MANIFEST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".lst", ".csv", ".jsonl"})

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
     ".wmv", ".flv", ".3gp", ".ogv", ".y4m", ".yuv"}
)


class MediaError(ValueError):
    """An input that cannot be used; ``str(err)`` is ``"<source>: <problem>"``."""

    def __init__(self, source: str, problem: str) -> None:
        # Both parts go into args so the error survives pickling (worker processes).
        super().__init__(source, problem)
        self.source = source
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"


class PreprocessingRefused(ValueError):
    """A decoded image that a preprocessing profile will not take; ``str(err)`` says why.
    :func:`realqa.media.load_image` turns it into a :class:`MediaError` naming the input."""
