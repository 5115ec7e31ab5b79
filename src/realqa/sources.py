"""Images stored inside containers: WebDataset tar shards, Parquet tables, Hugging Face datasets.

Two halves, so that decoding stays lazy and in the preparation workers:

- :func:`collect` (where the inputs are listed) turns one container into its ordered inputs: a
  :class:`SampleRef` per sample whose image lives inside the container, or plain file paths where
  the container holds image paths (a Parquet or dataset path column, read like a manifest).
  Nothing is decoded; a tar shard's headers, a Parquet file's footer and path column, a dataset's
  arrow files (memory-mapped) are all that is read.
- :meth:`SampleRef.read` (where the image is decoded) returns one sample's bytes (or its path).
  Per process, a shard's member index, a Parquet file's latest row groups and an opened dataset are
  cached, so the neighbouring samples of a batch read their container once, not once each.

A sample's identity, the ``path`` of its result row, is a stable unique string: ``shard.tar#key``
(the WebDataset key: the member name up to the first dot of its basename), ``table.parquet#12``
(the row index), ``folder[train]#12`` (a saved ``DatasetDict``'s split and row) or ``folder#12``
(a saved ``Dataset``), ``hf://datasets/owner/name[train]#12`` (a hub dataset). Resume, the
``torchrun`` split and the report match rows by it. :func:`parse` turns such a string back into
its :class:`SampleRef`, so an identity that travelled as a plain string (a manifest, a Ray
column) can still be read.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
import tarfile
from typing import Any

from .compat import require
from .formats import IMAGE_EXTENSIONS, MediaError

__all__ = ["HUB_PREFIX", "SampleRef", "Unlisted", "collect", "container_kind", "parse"]

TAR, PARQUET, DATASET = "tar", "parquet", "dataset"
HUB_PREFIX = "hf://datasets/"  # a hub dataset, named as the Hugging Face file system names it
TAR_EXTENSIONS = (".tar",)
COMPRESSED_TAR_EXTENSIONS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")  # recognised, to be refused clearly
PARQUET_EXTENSION = ".parquet"
# Column names that hold image paths when the column is text (compared in lower case).
PATH_COLUMN_NAMES = frozenset({"path", "image", "img", "file", "filename", "file_name", "filepath", "file_path",
                               "image_path", "img_path", "image_file", "image_filename"})
_IMAGE_SUFFIXES = frozenset(ext.lstrip(".") for ext in IMAGE_EXTENSIONS) | {"avif", "heic", "heif"}
_WDS_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset: key = name up to the basename's first dot


class SampleRef(str):
    """One sample inside a container; the string itself is the sample's identity (its row's path).

    ``key`` is the WebDataset key (tar) or the row index (Parquet, dataset); ``column`` the image
    column (tar: the member's extension) when the user named one; ``split`` a dataset's split.
    ``held``, when given, is what the container holds for this sample, already read by someone else
    (Ray Data's readers): a tar sample's ``{extension: bytes}``, a table row's image value.
    """

    kind: str
    container: str
    key: str
    column: str | None
    split: str | None
    held: tuple | None  # (value,) when the value was read elsewhere (None is a value: a null cell)

    def __new__(cls, kind: str, container: str, key: str | int, *, column: str | None = None, split: str | None = None,
                held: tuple | None = None):
        key = str(key)
        self = super().__new__(cls, f"{container}[{split}]#{key}" if split is not None else f"{container}#{key}")
        self.kind, self.container, self.key, self.column, self.split, self.held = kind, container, key, column, split, held
        return self

    def __reduce__(self):  # pickled with its parts (worker processes, Ray), not as a plain string
        return (_make_ref, (self.kind, self.container, self.key, self.column, self.split, self.held))

    def read(self) -> bytes | str:
        """The sample's encoded image bytes, or the path of its image file; :class:`MediaError` naming it."""
        if self.held is not None:
            value = self.held[0]
            if self.kind == TAR:
                return _member_bytes(self, value[_choose_member(self, value)])
            return _image_value(self, value, self.column or "image", os.path.dirname(self.container))
        readers = {TAR: _read_tar, PARQUET: _read_parquet, DATASET: _read_dataset}
        return readers[self.kind](self)


def _make_ref(kind, container, key, column, split, held) -> SampleRef:
    return SampleRef(kind, container, key, column=column, split=split, held=held)


class Unlisted(str):
    """A tar shard, or a Parquet file of image bytes, left whole: Ray Data's readers read it on the cluster
    (``realqa.ray_backend``), so its samples are never listed where the inputs are collected. The string is
    the file; ``column`` the image column (tar: member extension) named or detected; ``rows`` a table's rows."""

    kind: str
    column: str | None
    rows: int | None

    def __new__(cls, kind: str, path: str, column: str | None = None, rows: int | None = None):
        self = super().__new__(cls, path)
        self.kind, self.column, self.rows = kind, column, rows
        return self

    def __reduce__(self):
        return (Unlisted, (self.kind, str(self), self.column, self.rows))


# ---------------------------------------------------------------- what an argument names


def container_kind(path: str) -> str | None:
    """Which container ``path`` names (``tar``, ``parquet`` or ``dataset``), or None for anything else."""
    if path.startswith(HUB_PREFIX):
        return DATASET
    if os.path.isfile(path):
        lowered = path.lower()
        if lowered.endswith(TAR_EXTENSIONS + COMPRESSED_TAR_EXTENSIONS):
            return TAR
        if lowered.endswith(PARQUET_EXTENSION):
            return PARQUET
        return None
    if os.path.isdir(path):
        if _is_saved_dataset(path):
            return DATASET
        if _parquet_files(path):
            return PARQUET
    return None


def _is_saved_dataset(folder: str) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (state.json) or ``DatasetDict.save_to_disk`` (dataset_dict.json)."""
    return os.path.isfile(os.path.join(folder, "dataset_dict.json")) or os.path.isfile(os.path.join(folder, "state.json"))


def _parquet_files(folder: str) -> list[str]:
    """The Parquet files under ``folder`` (sorted), when they are all it holds; else []. Names starting with
    '.' or '_' (``_SUCCESS``, ``_metadata``) are skipped, as Parquet readers skip them."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in names:
            if name.startswith((".", "_")):
                continue
            if not name.lower().endswith(PARQUET_EXTENSION):
                return []  # a folder of images (or anything else) is scanned as a folder, not read as a table
            files.append(os.path.relpath(os.path.join(root, name), folder))
    return [os.path.join(folder, f) for f in sorted(files, key=lambda f: f.split(os.sep))]


def parse(text: str, column: str | None = None) -> SampleRef | None:
    """The :class:`SampleRef` an identity string names (its container must exist), or None.

    The image column is not part of an identity: a sample read back this way uses ``column``, else
    the container's detected column (for a tar, its only image member).
    """
    if isinstance(text, SampleRef):
        return text
    at = text.find("#")
    while at > 0:
        head, key = text[:at], text[at + 1:]
        split = None
        bracket = re.fullmatch(r"(.*)\[([^\[\]]+)\]", head)
        if bracket and container_kind(bracket.group(1)) == DATASET:
            head, split = bracket.groups()
        kind = container_kind(head)
        if kind is not None:
            return SampleRef(kind, head, key, column=column, split=split)
        at = text.find("#", at + 1)
    return None


# ---------------------------------------------------------------- listing


def collect(path: str, *, column: str | None = None, split: str | None = None, unlisted: bool = False) -> list[str]:
    """The inputs inside container ``path``, in container order (see the module's docstring).

    ``unlisted``: tar shards and Parquet files of image bytes stay whole, one :class:`Unlisted` input
    each (for Ray Data's readers); only a table's footer is read, for its row count and columns.
    A container that cannot be listed at all (not a tar, a damaged Parquet footer, no image
    column, an unknown split) raises :class:`MediaError` naming it and the problem.
    """
    kind = container_kind(path)
    if kind == TAR and path.lower().endswith(COMPRESSED_TAR_EXTENSIONS):
        # Samples are read in place, by offset: a compressed shard would be decompressed from its start for each.
        raise MediaError(path, "compressed tar shards are not supported: decompress them to plain .tar")
    if kind == TAR:
        return [Unlisted(TAR, path, column)] if unlisted else _collect_tar(path, column)
    if kind == PARQUET:
        files = [path] if os.path.isfile(path) else _parquet_files(path)
        return [entry for file in files for entry in _collect_parquet(file, column, unlisted)]
    if kind == DATASET:
        return _collect_dataset(path, column, split)
    raise MediaError(path, "not a tar shard, Parquet file or folder, or saved Hugging Face dataset")


def _stamp(path: str) -> tuple[int, int]:
    """What tells a rewritten file from the one cached: its size and modification time."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise MediaError(path, f"cannot read file ({err.strerror or err})") from None
    return st.st_size, st.st_mtime_ns


# ---------------------------------------------------------------- WebDataset tar shards


class _TarIndex:
    """A shard's samples in order: key -> {extension: (data offset, size)}; ``problem`` when the shard
    ends early or is damaged (the samples before it are kept)."""

    def __init__(self, samples: dict[str, dict[str, tuple[int, int]]], problem: str | None):
        self.samples, self.problem = samples, problem


@functools.lru_cache(maxsize=64)
def _tar_index(path: str, stamp: tuple[int, int]) -> _TarIndex:
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    problem = None
    try:
        tar = tarfile.open(path, "r:")  # uncompressed: members are read in place, by offset
    except tarfile.ReadError as err:  # e.g. a gzip-compressed shard named .tar
        raise MediaError(path, f"not a readable tar shard ({err})") from None
    except OSError as err:
        raise MediaError(path, f"cannot read file ({err.strerror or err})") from None
    with tar:
        try:
            for member in tar:
                if not member.isfile():
                    continue
                match = _WDS_NAME.match(member.name)
                if match is None:  # no "key.extension" name (e.g. "._x", "README"): in no sample, as WebDataset reads it
                    continue
                key, extension = match.groups()
                # Members of a sample are consecutive in a well-formed shard; a key seen again joins its sample.
                samples.setdefault(key, {})[extension.lower()] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError, EOFError) as err:
            problem = f"tar shard is truncated or damaged after {len(samples)} sample(s) ({err})"
        else:
            # tarfile takes a shard cut at (or inside) a member's header for a shorter shard; a whole one
            # ends with two zero blocks, the end-of-archive marker.
            tar.fileobj.seek(tar.offset)
            if tar.fileobj.read(2 * tarfile.BLOCKSIZE).strip(b"\0") or tar.fileobj.tell() < tar.offset + 2 * tarfile.BLOCKSIZE:
                problem = (f"tar shard is truncated after {len(samples)} sample(s) (no end-of-archive marker at byte "
                           f"{tar.offset}); its last sample may lack members")
    return _TarIndex(samples, problem)


def tar_ends_whole(path: str) -> bool:
    """Whether the file ends as a whole tar does, with the end-of-archive marker (two zero blocks) on the
    block grid, read from its tail alone. False for a shard cut at or inside a member's header, which a tar
    reader takes for a shorter shard; a cut shard passes only if its last member's data ends in 1 KiB of
    zeros right at the cut."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            if size < 2 * tarfile.BLOCKSIZE or size % tarfile.BLOCKSIZE:
                return False
            file.seek(size - 2 * tarfile.BLOCKSIZE)
            return not file.read().strip(b"\0")
    except OSError:
        return False


def _collect_tar(path: str, column: str | None) -> list[str]:
    index = _tar_index(path, _stamp(path))
    refs: list[str] = [SampleRef(TAR, path, key, column=column) for key in index.samples]
    if index.problem:
        refs.append(SampleRef(TAR, path, ""))  # the damage gets a row of its own, after the samples read
    return refs


def _read_tar(ref: SampleRef) -> bytes:
    index = _tar_index(ref.container, _stamp(ref.container))
    members = index.samples.get(ref.key)
    if members is None:
        raise MediaError(ref, index.problem or f"the shard has no sample with key {ref.key!r}")
    extension = _choose_member(ref, members)
    offset, size = members[extension]
    with open(ref.container, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) < size:
        raise MediaError(ref, f"'.{extension}' member is truncated ({len(data)} of {size} bytes in the shard)")
    return _member_bytes(ref, data)


def _choose_member(ref: SampleRef, extensions) -> str:
    """The extension of a sample's image member: the one named (``ref.column``), else its only image member."""
    extensions = list(extensions)
    if ref.column is not None:
        extension = ref.column.lower().lstrip(".")
        if extension not in extensions:
            raise MediaError(ref, f"sample has no '.{extension}' member (it has: {_extension_list(extensions)})")
        return extension
    images = [ext for ext in extensions if ext.rsplit(".", 1)[-1] in _IMAGE_SUFFIXES]
    if not images:
        raise MediaError(ref, f"sample has no image member (it has: {_extension_list(extensions)})")
    if len(images) > 1:
        raise MediaError(ref, f"sample has several image members ({_extension_list(images)}); choose one with the "
                              "image column option (e.g. --image-column jpg)")
    return images[0]


def _member_bytes(ref: SampleRef, data: bytes) -> bytes:
    if not data:
        raise MediaError(ref, "the image member is empty (0 bytes)")
    return data


def _extension_list(extensions) -> str:
    return ", ".join(f".{ext}" if ext else "(no extension)" for ext in extensions)


# ---------------------------------------------------------------- Parquet


class _ParquetFile:
    """A Parquet file's image column and where each row group starts."""

    def __init__(self, path: str, column: str, is_path: bool, starts: list[int], rows: int):
        self.path, self.column, self.is_path, self.starts, self.rows = path, column, is_path, starts, rows


@functools.lru_cache(maxsize=256)
def _parquet_file(path: str, stamp: tuple[int, int], column: str | None) -> _ParquetFile:
    pq = require("pyarrow.parquet", "parquet", f"{path}: reading Parquet")
    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except Exception as err:  # pyarrow has its own error types for a damaged footer
        raise MediaError(path, f"not a readable Parquet file ({err})") from None
    name, is_path = choose_column(schema, column, path)
    starts, total = [], 0
    for group in range(meta.num_row_groups):
        starts.append(total)
        total += meta.row_group(group).num_rows
    return _ParquetFile(path, name, is_path, starts, total)


def _collect_parquet(path: str, column: str | None, unlisted: bool = False) -> list[str]:
    table = _parquet_file(path, _stamp(path), column)
    # Ray Data's reader names the file in a column "path" of its own: a table whose image column has that
    # name is listed here instead, its rows read one by one.
    if not table.is_path and unlisted and table.column != "path":
        return [Unlisted(PARQUET, path, table.column, table.rows)]
    if not table.is_path:
        return [SampleRef(PARQUET, path, row, column=column) for row in range(table.rows)]
    pq = require("pyarrow.parquet", "parquet", f"{path}: reading Parquet")
    values = pq.read_table(path, columns=[table.column]).column(table.column).to_pylist()
    folder = os.path.dirname(path)
    # Paths are listed like a manifest's (relative to the table's folder); an empty one is a row that says so.
    return [os.path.join(folder, value) if value else SampleRef(PARQUET, path, row, column=column)
            for row, value in enumerate(values)]


@functools.lru_cache(maxsize=2)  # the row groups a batch's neighbouring samples share
def _row_group(path: str, stamp: tuple[int, int], group: int, column: str) -> list:
    pq = require("pyarrow.parquet", "parquet", f"{path}: reading Parquet")
    return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(column).to_pylist()


def _read_parquet(ref: SampleRef) -> bytes | str:
    stamp = _stamp(ref.container)
    table = _parquet_file(ref.container, stamp, ref.column)
    row = int(ref.key) if ref.key.isdigit() else -1
    if not 0 <= row < table.rows:
        raise MediaError(ref, f"the table has no row {ref.key} ({table.rows} rows)")
    group = bisect.bisect_right(table.starts, row) - 1
    try:
        value = _row_group(ref.container, stamp, group, table.column)[row - table.starts[group]]
    except Exception as err:  # a damaged data page: this row's group fails, the others are read
        raise MediaError(ref, f"cannot read row group {group} of the table ({err})") from None
    return _image_value(ref, value, table.column, os.path.dirname(ref.container))


# ---------------------------------------------------------------- Hugging Face datasets


@functools.lru_cache(maxsize=8)
def _dataset(container: str, split: str | None) -> tuple[Any, str | None]:
    """The dataset (an arrow-formatted ``datasets.Dataset``) and the split it is, opened once per process."""
    datasets = require("datasets", "datasets", f"{container}: reading a Hugging Face dataset")
    try:
        if container.startswith(HUB_PREFIX):
            # The same code path as a saved one, through the hub cache (needs access to the dataset).
            loaded = datasets.load_dataset(container[len(HUB_PREFIX):], split=split)
        else:
            loaded = datasets.load_from_disk(container)
    except Exception as err:  # missing files, no access, a damaged arrow file: all name the dataset
        raise MediaError(container, f"cannot load the dataset ({err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise MediaError(container, f"the dataset has splits {', '.join(loaded)}: choose one with --split")
            split = next(iter(loaded))
        if split not in loaded:
            raise MediaError(container, f"the dataset has no split {split!r} (it has: {', '.join(loaded)})")
        loaded = loaded[split]
    elif split is not None and not container.startswith(HUB_PREFIX):
        raise MediaError(container, f"a dataset saved without splits; drop --split {split}")
    return loaded.with_format("arrow"), split  # rows as arrow: image structs stay undecoded bytes


def _collect_dataset(container: str, column: str | None, split: str | None) -> list[str]:
    dataset, split = _dataset(container, split)
    name, is_path = choose_column(dataset.features.arrow_schema, column, container)
    if not is_path:
        return [SampleRef(DATASET, container, row, column=column, split=split) for row in range(len(dataset))]
    values = dataset.select_columns([name])[:][name].to_pylist()
    folder = "" if container.startswith(HUB_PREFIX) else container
    return [os.path.join(folder, value) if value else SampleRef(DATASET, container, row, column=column, split=split)
            for row, value in enumerate(values)]


def _read_dataset(ref: SampleRef) -> bytes | str:
    dataset, _ = _dataset(ref.container, ref.split)
    name, _ = choose_column(dataset.features.arrow_schema, ref.column, ref.container)
    row = int(ref.key) if ref.key.isdigit() else -1
    if not 0 <= row < len(dataset):
        raise MediaError(ref, f"the dataset has no row {ref.key} ({len(dataset)} rows)")
    value = dataset[row][name][0].as_py()
    folder = "" if ref.container.startswith(HUB_PREFIX) else ref.container
    return _image_value(ref, value, name, folder)


# ---------------------------------------------------------------- columns


def choose_column(schema, column: str | None, where: str) -> tuple[str, bool]:
    """(the image column of an arrow ``schema``, whether it holds paths rather than bytes).

    ``column`` when given; else the one column of image bytes (binary, or the Hugging Face image
    struct ``{bytes, path}``), else the one text column with a path-like name. Several candidates,
    or none, raise :class:`MediaError` listing the columns.
    """
    kinds = {field.name: _column_kind(field.type) for field in schema}
    if column is not None:
        if column not in kinds:
            raise MediaError(where, f"no column {column!r} (it has: {', '.join(kinds)})")
        if kinds[column] is None:
            raise MediaError(where, f"column {column!r} holds {schema.field(column).type}, not image bytes or paths")
        return column, kinds[column] == "path"
    images = [name for name, kind in kinds.items() if kind == "bytes"]
    paths = [name for name, kind in kinds.items() if kind == "path" and name.lower() in PATH_COLUMN_NAMES]
    for found in (images, paths):
        if len(found) == 1:
            return found[0], found is paths
        if len(found) > 1:
            raise MediaError(where, f"several image columns ({', '.join(found)}): choose one with --image-column")
    raise MediaError(where, f"no column of image bytes or image paths among {', '.join(kinds)}: name it with "
                            "--image-column")


def _column_kind(arrow_type) -> str | None:
    import pyarrow as pa

    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "bytes"
    if pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0:
        return "bytes"  # the Hugging Face image struct {bytes, path}
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "path"
    return None


def _image_value(ref: SampleRef, value, column: str, folder: str) -> bytes | str:
    """A column's value -> image bytes or an image path (relative paths from the container's folder)."""
    if isinstance(value, dict):  # the Hugging Face image struct: bytes, else the file it names
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes) and value:
        return value
    if isinstance(value, str) and value:
        return os.path.join(folder, value)
    raise MediaError(ref, f"no image in column {column!r} (the value is {'empty' if value is not None else 'null'})")
