"""Fetch more clean photographs for the demo model from Debian wallpaper packages.

    python scripts/debian_photos.py --out demo-work/debian-photos

Downloads the packages below with ``apt-get download`` (no root, nothing installed), unpacks them with
``dpkg-deb -x`` into a temporary folder, and writes each listed photograph shrunk to a long side of
1024 px (Lanczos), JPEG quality 95 with 4:4:4 chroma, as ``debian_<name>.jpg``, the same treatment as
``../shared/data/photos``. Every file is a photograph (the packages' illustrations and renders are
left out); licences from each package's copyright file are written to ``SOURCES.md`` beside them.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

LONG_SIDE = 1024

# (name, package, path inside the package, licence per the package's debian/copyright)
PHOTOS = [
    ("bridge", "lomiri-wallpapers-16.04", "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0"),
    ("dragonfly", "lomiri-wallpapers-16.04", "usr/share/backgrounds/Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0"),
    ("fig", "lomiri-wallpapers-16.04", "usr/share/backgrounds/Picture_0B_by_freespace.jpg", "CC-BY-4.0"),
    ("brushes", "lomiri-wallpapers-16.04", "usr/share/backgrounds/Picture_1A_by_freespace.jpg", "CC-BY-4.0"),
    ("wine", "lomiri-wallpapers-16.04", "usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0"),
    ("aitzgorri", "lomiri-wallpapers-16.04", "usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    ("analogpattern", "lomiri-wallpapers-16.04", "usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg",
     "CC-BY-SA-4.0"),
    ("free", "lomiri-wallpapers-16.04", "usr/share/backgrounds/free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0"),
    ("friends", "lomiri-wallpapers-16.04", "usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    ("life", "lomiri-wallpapers-16.04", "usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    ("picosdeeuropa", "lomiri-wallpapers-16.04", "usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
     "CC-BY-4.0"),
    ("seeding", "lomiri-wallpapers-16.04", "usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg", "CC0-1.0"),
    ("sunset", "lomiri-wallpapers-16.04", "usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    ("kleiber", "lomiri-wallpapers-20.04", "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0"),
    ("ladybird", "mate-backgrounds", "usr/share/backgrounds/mate/nature/LadyBird.jpg", "GPL-2+/CC (package copyright)"),
    ("storm", "mate-backgrounds", "usr/share/backgrounds/mate/nature/Storm.jpg", "GPL-2+/CC (package copyright)"),
    ("eveningglow", "plasma-workspace-wallpapers", "usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg",
     "LGPL/CC-BY-SA (package copyright)"),
    ("path", "plasma-workspace-wallpapers", "usr/share/wallpapers/Path/contents/images/2560x1600.jpg",
     "LGPL/CC-BY-SA (package copyright)"),
]


def fetch(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        versions = {}
        for package in sorted({p for _, p, _, _ in PHOTOS}):
            subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True)
            deb = next(tmp.glob(f"{package}_*.deb"))
            versions[package] = deb.name.split("_")[1].replace("%3a", ":")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True)
        for name, package, path, licence in PHOTOS:
            image = Image.open(tmp / "root" / path).convert("RGB")
            scale = LONG_SIDE / max(image.size)
            if scale < 1:
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            target = out / f"debian_{name}.jpg"
            image.save(target, quality=95, subsampling=0)
            written.append(target)
            rows.append(f"| {target.name} | Debian `{package}` {versions[package]}, /{path} | {licence} |")
    (out / "SOURCES.md").write_text("| file | source | licence |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-work/debian-photos", help="folder for the photos")
    args = parser.parse_args()
    written = fetch(Path(args.out))
    print(f"{len(written)} photos in {args.out}")


if __name__ == "__main__":
    main()
