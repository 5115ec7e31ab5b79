"""Result files: what a .parquet output costs beside .csv and .jsonl.

Writes N result rows through :class:`realqa.results.ResultWriter` (one flushed row at a time, as a
scoring run does), then reads them back with :func:`realqa.results.read_results`. A Parquet file's
rows stream to its JSONL journal, so writing costs what JSONL costs, plus writing the Parquet file
once when the writer closes ("close" below).

    python benchmarks/result_formats.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from realqa.results import ResultWriter, ScoreResult, read_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    rows = [ScoreResult(f"photos/img{i:07d}.jpg", "quality", 3.47, 3.4512, "ok", "3.47.", ncm_std=0.31)
            for i in range(args.rows)]
    print(f"{args.rows} rows")
    print(f"{'format':<9} {'write s':>8} {'close s':>8} {'read s':>7} {'size MB':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".csv", ".jsonl", ".parquet"):
            path = Path(folder) / f"scores{suffix}"
            start = time.perf_counter()
            writer = ResultWriter(path)
            for row in rows:
                writer.write(row)
            closing = time.perf_counter()
            writer.close()
            written = time.perf_counter()
            assert len(read_results(path).results) == len(rows)
            read = time.perf_counter()
            print(f"{suffix:<9} {written - start:8.2f} {written - closing:8.2f} {read - written:7.2f} "
                  f"{path.stat().st_size / 1e6:8.1f}")


if __name__ == "__main__":
    main()
