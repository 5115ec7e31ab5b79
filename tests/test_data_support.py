"""Helpers shared by the test_data_* modules (this module holds no tests)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LABELS = SHARED_DATA / "labels"
needs_labels = pytest.mark.skipif(not LABELS.is_dir(), reason="../shared/data/labels is absent")


def write_image(path: Path, size=(32, 24), color=(120, 80, 40)) -> Path:
    """A tiny real image; the format follows the extension (JPEG, PNG, BMP)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def koniq_csv(rows: list[tuple[str, float, str]]) -> str:
    """The official KonIQ sets file: image_name,c1..c5,c_total,MOS,SD,set (MOS on 0-100)."""
    lines = ["image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set"]
    lines += [f"{name},0.0,0.1,0.3,0.5,0.1,100,{mos},0.5,{split}" for name, mos, split in rows]
    return "\n".join(lines) + "\n"


def cli(*argv: str) -> int:
    """Run the data/bench commands through a parser built like the main CLI's."""
    from realqa.cli.data import add_commands

    parser = argparse.ArgumentParser(prog="realqa")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.run(args)
