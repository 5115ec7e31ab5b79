"""A scores file as one self-contained HTML page: ranking with thumbnails, attributes, plots, metrics.

The page embeds everything (thumbnails as JPEG and plots as PNG data URIs, inline CSS, no script),
so it can be mailed or archived as one file. The plots are also written as PNG files beside it:
``report.html`` -> ``report.histogram.png`` and, when labels are present, ``report.scatter.png``.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from .compat import require
from .evaluation import Labels, file_label, label_keys
from .media import DEFAULT_MAX_IMAGE_PIXELS, load_image
from .metrics import Evaluation, evaluate
from .results import ScoreResult, read_results

DEFAULT_THUMB_SIZE = 160


@dataclass(frozen=True)
class Entry:
    """One row of a scores file, as the report shows it: a :class:`~realqa.results.ScoreResult` and its label."""

    result: ScoreResult
    label: float | None = None

    @property
    def name(self) -> str:
        return self.result.path

    @property
    def score(self) -> float | None:
        """The score when it is a number (a categorical task's word is not ranked)."""
        return _finite(self.result.score)

    @property
    def ncm(self) -> float | None:
        return self.result.ncm

    @property
    def ncm_std(self) -> float | None:
        return self.result.ncm_std

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def note(self) -> str:
        """Why there is no score, or what the model wrote when it is not "ok"."""
        return self.result.error or (self.result.text if self.status != "ok" else "")

    @property
    def attributes(self) -> dict[str, str]:
        """Attribute values as shown, flagged with their status when it is not ok."""
        return {name: _flagged(entry.get("value"), entry.get("status"))
                for name, entry in (self.result.attributes or {}).items()}


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    histogram: Path
    scatter: Path | None
    evaluation: Evaluation | None


def read_entries(path: str | os.PathLike, labels: Labels | None = None) -> list[Entry]:
    """The rows of our results (CSV/JSONL/Parquet) or bench predictions; ``labels`` matched as ``realqa eval``
    matches them (:func:`realqa.evaluation.label_keys`; a row no label fits has none), else the file's own
    ``label`` (or ``mos``) column."""
    stored = read_results(path)
    if not stored.results:
        raise ValueError(f"{path}: no rows")
    keys = label_keys([r.path for r in stored.results], labels) if labels is not None else None
    entries = []
    for number, (result, others) in enumerate(zip(stored.results, stored.others), 1):
        if keys is not None:
            key = keys[number - 1]
            label = labels.scores[key] if key is not None else None
        else:
            try:
                label = file_label(others)
            except ValueError as err:
                raise ValueError(f"{path}: row {number}: {err}") from None
        entries.append(Entry(result, label))
    return entries


def _finite(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _flagged(value, status) -> str:
    text = "" if value is None else str(value)
    return text if status in (None, "", "ok") else f"{text} ({status})".strip()


def rank(entries: Sequence[Entry]) -> list[Entry]:
    """Scored entries best first (ties: higher NCM, then name), then the rest in file order."""
    scored = sorted((e for e in entries if e.score is not None),
                    key=lambda e: (-e.score, -(e.ncm if e.ncm is not None else -math.inf), e.name))
    return scored + [e for e in entries if e.score is None]


# ---------------------------------------------------------------- plots


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def histogram_png(entries: Sequence[Entry]) -> bytes:
    """The distribution of scores (and of NCM values, when present) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [e.score for e in entries if e.score is not None]
    ncms = [e.ncm for e in entries if e.ncm is not None]
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    if scores:
        low, high = min(scores + ncms), max(scores + ncms)
        bins = max(5, min(40, int(math.sqrt(len(scores))) * 2)) if high > low else 1
        span = (low, high) if high > low else (low - 0.5, high + 0.5)
        ax.hist(scores, bins=bins, range=span, color="#4c72b0", alpha=0.85, label=f"score (n={len(scores)})")
        if ncms:
            ax.hist(ncms, bins=bins, range=span, histtype="step", color="#dd8452", linewidth=2,
                    label=f"NCM (n={len(ncms)})")
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("score")
    ax.set_ylabel("images")
    ax.set_title("Score distribution")
    return _figure_png(fig)


def scatter_png(entries: Sequence[Entry], evaluation: Evaluation) -> bytes:
    """Prediction against label (MOS) for the entries that have both, with SRCC/PLCC in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(e.label, e.score) for e in entries if e.score is not None and e.label is not None]
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    if pairs:
        ax.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=14, color="#4c72b0", alpha=0.7)
    ax.set_xlabel("label (MOS)")
    ax.set_ylabel("predicted score")
    ax.set_title(f"SRCC {_fmt(evaluation.srcc)}   PLCC {_fmt(evaluation.plcc)}   (n={evaluation.n_evaluated})")
    return _figure_png(fig)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


# ---------------------------------------------------------------- thumbnails


def thumbnail_uri(path: str, roots: Sequence[Path], size: int = DEFAULT_THUMB_SIZE) -> tuple[str | None, str]:
    """(data URI of a JPEG thumbnail, or None; why there is none). Videos show their middle frame."""
    from .media import FrameSampling, is_video, sample_frames
    from .sources import parse

    found = next((root / path for root in roots if (root / path).is_file()), None)
    # A sample inside a tar shard, a Parquet table or a dataset (``shard.tar#key``): read through its container.
    sample = None if found is not None else next((parse(str(root / path)) for root in roots if parse(str(root / path))), None)
    if found is None and sample is None:
        return None, "image not found"
    try:
        if sample is not None:
            picture = load_image(sample, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
        elif is_video(found):
            picture = sample_frames(found, FrameSampling(frames=1))[0][0].image
        else:
            with Image.open(found) as opened:
                opened.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale, much faster
                picture = load_image(opened, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, label=str(found))
        picture.thumbnail((size, size))
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, "JPEG", quality=85)
    except Exception as err:  # a preview is a courtesy: any failure only costs the thumbnail
        return None, f"no preview ({err})"
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), ""


# ---------------------------------------------------------------- the page


def build_report(
    scores: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: Labels | None = None,
    title: str | None = None,
    image_root: str | os.PathLike | None = None,
    thumb_size: int = DEFAULT_THUMB_SIZE,
    max_thumbnails: int = 1000,
) -> ReportFiles:
    """Write the HTML report of a scores file and its plot PNGs; return their paths.

    Relative image paths are looked up under ``image_root``, else the current folder, else the
    scores file's folder. Only the ``max_thumbnails`` best-ranked rows get a thumbnail.
    """
    scores, out = Path(scores), Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"{out}: the report must end in .html")
    require("matplotlib", "report", "drawing the report's plots")  # one line naming the extra, before any file is read
    entries = rank(read_entries(scores, labels))
    labelled = any(e.label is not None for e in entries)
    evaluation = evaluate([e.score for e in entries if e.label is not None],
                          [e.label for e in entries if e.label is not None]) if labelled else None
    out.parent.mkdir(parents=True, exist_ok=True)
    histogram = histogram_png(entries)
    histogram_path = out.with_name(out.stem + ".histogram.png")
    histogram_path.write_bytes(histogram)
    plots = [("Score distribution", histogram)]
    scatter_path = None
    if evaluation is not None:
        scatter = scatter_png(entries, evaluation)
        scatter_path = out.with_name(out.stem + ".scatter.png")
        scatter_path.write_bytes(scatter)
        plots.append(("Prediction vs label", scatter))
    roots = [Path(image_root)] if image_root else [Path.cwd(), scores.resolve().parent]
    page = _page(title or f"realqa report: {scores.name}", scores, entries, evaluation, plots, roots,
                 thumb_size, max_thumbnails)
    out.write_text(page, encoding="utf-8")
    return ReportFiles(out, histogram_path, scatter_path, evaluation)


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } .meta { color: #666; margin-bottom: 16px; }
.summary td, .summary th { padding: 2px 12px 2px 0; text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; margin: 16px 0; } .plots img { max-width: 100%; }
table.ranking { border-collapse: collapse; } .ranking th { background: #f0f0f0; position: sticky; top: 0; }
.ranking td, .ranking th { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: middle; }
.ranking td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ranking img { display: block; } .nopreview { color: #999; font-size: 12px; }
.unscored td { color: #a33; } .name { max-width: 420px; word-break: break-all; }
"""


def _page(title, source: Path, entries, evaluation, plots, roots, thumb_size, max_thumbnails) -> str:
    e = html.escape
    scored = [x for x in entries if x.score is not None]
    errors = sum(x.status == "error" for x in entries)
    summary = [("rows", len(entries)), ("scored", len(scored)),
               ("without a score", len(entries) - len(scored) - errors), ("errors", errors)]
    if scored:
        values = [x.score for x in scored]
        summary += [("mean score", _fmt(statistics.fmean(values), 3)), ("median score", _fmt(statistics.median(values), 3))]
    if evaluation is not None:
        summary += [("labelled rows evaluated", evaluation.n_evaluated), ("SRCC", _fmt(evaluation.srcc)),
                    ("PLCC", _fmt(evaluation.plcc)), ("KRCC", _fmt(evaluation.krcc)), ("RMSE", _fmt(evaluation.rmse))]
    attributes = list(dict.fromkeys(name for x in entries for name in x.attributes))
    with_labels = evaluation is not None
    with_std = any(x.ncm_std is not None for x in entries)  # files written before ncm_std existed have none
    head = (["rank", "preview", "image", "score", "NCM"] + (["NCM std"] if with_std else []) + (["label"] if with_labels else [])
            + attributes + ["status", "note"])
    rows = []
    for position, entry in enumerate(entries):
        ranked = entry.score is not None
        if position < max_thumbnails:
            uri, why = thumbnail_uri(entry.name, roots, thumb_size)
        else:
            uri, why = None, "over --max-thumbnails"
        preview = (f'<img src="{uri}" alt="{e(entry.name)}">' if uri
                   else f'<span class="nopreview">{e(why)}</span>')
        cells = [f'<td class="num">{position + 1 if ranked else "–"}</td>', f"<td>{preview}</td>",
                 f'<td class="name">{e(entry.name)}</td>', f'<td class="num">{_fmt(entry.score, 3)}</td>',
                 f'<td class="num">{_fmt(entry.ncm, 3)}</td>']
        if with_std:
            cells.append(f'<td class="num">{_fmt(entry.ncm_std, 3)}</td>')
        if with_labels:
            cells.append(f'<td class="num">{_fmt(entry.label, 3)}</td>')
        cells += [f"<td>{e(entry.attributes.get(name, ''))}</td>" for name in attributes]
        cells += [f"<td>{e(entry.status)}</td>", f"<td>{e(entry.note)}</td>"]
        rows.append(f'<tr{"" if ranked else " class=unscored"}>{"".join(cells)}</tr>')
    figures = "".join(f'<img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                      for name, png in plots)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>", f'<div class="meta">from {e(str(source))}</div>',
        '<table class="summary">' + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in summary) + "</table>",
        f'<div class="plots">{figures}</div>',
        '<h2>Ranking</h2><table class="ranking" id="ranking"><thead><tr>'
        + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>",
        *rows,
        "</tbody></table></body></html>",
    ]) + "\n"
