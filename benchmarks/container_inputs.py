"""Reading images from containers: samples/s of ``load_image`` over a tar shard and a Parquet table, as
realqa reads them (a shard's member index and a table's latest row groups kept per process), against a
baseline that opens the container afresh for every sample, and against the same images as files.

    python benchmarks/container_inputs.py [--images 2000] [--size 256] [--row-group 256]

Decoding is included (each sample ends as an RGB image), as in scoring; one process, one thread.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from realqa import sources  # noqa: E402
from realqa.media import collect_inputs, load_image  # noqa: E402


def write(work: Path, count: int, size: int, row_group: int) -> tuple[list[str], Path, Path]:
    rng = np.random.default_rng(0)
    (work / "files").mkdir()
    files, blobs = [], []
    for i in range(count):
        # Smooth gradients plus noise: JPEGs of a realistic size, not incompressible noise.
        base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, 3)
        pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
        path = work / "files" / f"{i:06d}.jpg"
        path.write_bytes(blobs[-1])
        files.append(str(path))
    shard = work / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for i, blob in enumerate(blobs):
            for extension, data in (("jpg", blob), ("json", b'{"id": %d}' % i)):
                info = tarfile.TarInfo(f"{i:06d}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    table = work / "table.parquet"
    pq.write_table(pa.table({"id": list(range(count)), "jpg": blobs}), table, row_group_size=row_group)
    return files, shard, table


def rate(inputs: list[str], fresh: bool = False) -> float:
    """Samples per second through ``load_image``; ``fresh``: every sample opens its container anew."""
    for cache in (sources._tar_index, sources._parquet_file, sources._row_group):
        cache.cache_clear()
    start = time.perf_counter()
    for item in inputs:
        if fresh:
            for cache in (sources._tar_index, sources._parquet_file, sources._row_group):
                cache.cache_clear()
        load_image(item)
    return len(inputs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--row-group", type=int, default=256, help="Parquet rows per row group")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files, shard, table = write(Path(folder), args.images, args.size, args.row_group)
        listed = {}
        for name, argument in (("tar shard", shard), ("Parquet table", table)):
            start = time.perf_counter()
            listed[name] = collect_inputs([argument])
            listed[name + " listing"] = time.perf_counter() - start
        print(f"{args.images} JPEGs of {args.size}x{args.size} px; Parquet row groups of {args.row_group} rows")
        print(f"{'input':<16}{'samples/s (realqa)':>20}{'samples/s (container opened per sample)':>42}{'listing s':>11}")
        print(f"{'files':<16}{rate(files):>20.0f}{'':>42}{'':>11}")
        for name in ("tar shard", "Parquet table"):
            print(f"{name:<16}{rate(listed[name]):>20.0f}{rate(listed[name], fresh=True):>42.0f}"
                  f"{listed[name + ' listing']:>11.3f}")


if __name__ == "__main__":
    main()
