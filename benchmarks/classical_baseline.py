"""References for the demo model's held-out figures: a classical baseline and what the split allows.

1. A classical no-reference baseline: hand-made image statistics and a ridge regression, trained on
   the same synthetic train split (the same photos, same labels) and scored on the same held-out images. The
   statistics are the usual ones of no-reference IQA, written out here with numpy/scipy:

   - natural-scene statistics in the manner of BRISQUE (Mittal, Moorthy and Bovik, 2012), as moments
     instead of fitted distributions: the log variance, kurtosis and mean |x| / rms of the
     mean-subtracted contrast-normalised luma (MSCN), and the mean and log variance of the products
     of neighbouring MSCN values in four directions, at full and half size (blur, noise, JPEG);
   - gradient and Laplacian energies and gradient percentiles at both sizes (blur, downscaling);
   - Immerkaer's fast noise estimate (noise);
   - luma mean, spread, percentiles and clipped fractions (exposure);
   - chroma mean, spread and 95th percentile, and the spread term of Hasler and Suesstrunk's
     colourfulness (saturation);
   - the step across 8 px block boundaries relative to the average step (JPEG blocking);
   - the share of edge energy within 1.5 degrees of level or plumb, and between 1.5 and 14 (tilt).

2. What the split allows at all: the SRCC of a predictor that is exact on every image except those of
   some distortion types, which it cannot see and scores as clean. Such a predictor bounds what any
   model blind to those types can reach on this split.

Both are context, not targets: they say how much of the gap to a target comes from the model and how
much from the data (few photos, distortions that photo content can imitate).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage, stats

from realqa.metrics import evaluate

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))  # right, down, down-right, down-left
ALPHAS = np.logspace(-2, 3, 11)  # ridge strengths tried by the grouped cross-validation


def _mscn(luma: np.ndarray, sigma: float = 7 / 6) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (BRISQUE's local normalisation)."""
    mean = ndimage.gaussian_filter(luma, sigma)
    variance = ndimage.gaussian_filter(luma * luma, sigma) - mean * mean
    return (luma - mean) / (np.sqrt(np.abs(variance)) + 1 / 255)


def _neighbour_products(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    height, width = m.shape
    rows = slice(0, height - dy)
    if dx >= 0:
        return m[rows, : width - dx] * m[dy:, dx:]
    return m[rows, -dx:] * m[dy:, : width + dx]


def _log(x) -> float:
    return float(np.log(x + 1e-10))


def features(path: str) -> dict[str, float]:
    """The statistics listed in the module docstring, by name, for one image file."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    luma = rgb @ LUMA
    f: dict[str, float] = {"luma_mean": luma.mean(), "luma_std": luma.std()}
    f.update({f"luma_p{q}": v for q, v in zip((1, 5, 50, 95, 99), np.percentile(luma, [1, 5, 50, 95, 99]))})
    f["dark_share"], f["bright_share"] = (luma < 0.02).mean(), (luma > 0.98).mean()
    red_green = rgb[..., 0] - rgb[..., 1]
    yellow_blue = (rgb[..., 0] + rgb[..., 1]) / 2 - rgb[..., 2]
    chroma = np.hypot(red_green, yellow_blue)
    f.update(chroma_mean=chroma.mean(), chroma_std=chroma.std(), chroma_p95=np.percentile(chroma, 95),
             colourfulness=np.hypot(red_green.std(), yellow_blue.std()))
    for size, image in (("full", luma), ("half", ndimage.zoom(ndimage.gaussian_filter(luma, 1), 0.5, order=1))):
        m = _mscn(image)
        rms = np.sqrt(np.mean(m * m))
        f[f"mscn_log_var_{size}"] = _log(rms * rms)
        f[f"mscn_kurtosis_{size}"] = stats.kurtosis(m.ravel())
        f[f"mscn_shape_{size}"] = np.mean(np.abs(m)) / (rms + 1e-8)
        for dy, dx in NEIGHBOURS:
            product = _neighbour_products(m, dy, dx)
            f[f"pair_mean_{dy}{dx}_{size}"] = product.mean()
            f[f"pair_log_var_{dy}{dx}_{size}"] = _log(product.var())
        gy, gx = np.gradient(image)
        energy = gx * gx + gy * gy
        laplacian = ndimage.laplace(image)
        f[f"gradient_log_energy_{size}"] = _log(energy.mean())
        f[f"laplacian_log_energy_{size}"] = _log(np.mean(laplacian * laplacian))
        for q, v in zip((50, 90, 99), np.percentile(energy, [50, 90, 99])):
            f[f"gradient_log_p{q}_{size}"] = _log(v)
    # Immerkaer (1996): noise sigma from the mean |response| to a mask that cancels smooth structure.
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    response = np.abs(ndimage.convolve(luma, mask))[1:-1, 1:-1]
    f["noise_log_sigma"] = _log(np.sqrt(np.pi / 2) / 6 * response.mean())
    f["noise_log_p10"] = _log(np.percentile(response, 10))
    steps_x = np.abs(np.diff(luma, axis=1)).mean(0)
    steps_y = np.abs(np.diff(luma, axis=0)).mean(1)
    f["block_step_x"] = steps_x[7::8].mean() / (steps_x.mean() + 1e-6)
    f["block_step_y"] = steps_y[7::8].mean() / (steps_y.mean() + 1e-6)
    gy, gx = np.gradient(ndimage.gaussian_filter(luma, 1))
    energy = gx * gx + gy * gy
    angle = np.degrees(np.arctan2(gy, gx)) % 90
    off_axis = np.minimum(angle, 90 - angle)  # 0 for a level or plumb edge
    total = energy.sum() + 1e-8
    f["level_edge_share"] = energy[off_axis < 1.5].sum() / total
    f["near_level_edge_share"] = energy[(off_axis >= 1.5) & (off_axis < 14)].sum() / total
    return {name: float(np.nan_to_num(value)) for name, value in f.items()}


def _feature_vector(path: str) -> np.ndarray:
    return np.fromiter(features(path).values(), dtype=np.float64)


def feature_matrix(paths: Sequence[str], workers: int = 2) -> np.ndarray:
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return np.stack(list(pool.map(_feature_vector, paths, chunksize=16)))
    return np.stack([_feature_vector(p) for p in paths])


class Ridge:
    """Ridge regression on standardised features (closed form); predictions are clipped to the range
    of the training labels, since a linear rule extrapolates wildly on a photo unlike the training ones."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Ridge":
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-12
        z = (x - self.mean) / self.scale
        self.offset, self.low, self.high = y.mean(), y.min(), y.max()
        self.weights = np.linalg.solve(z.T @ z + self.alpha * np.eye(z.shape[1]), z.T @ (y - self.offset))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.mean) / self.scale @ self.weights + self.offset, self.low, self.high)


def fit_ridge(x: np.ndarray, y: np.ndarray, groups: Sequence[str], folds: int = 6, seed: int = 0) -> Ridge:
    """Ridge with the strength that ranks best (mean SRCC) when whole photos are held out in turn."""
    names = np.array(sorted(set(groups)))
    np.random.default_rng(seed).shuffle(names)
    groups = np.asarray(groups)
    fold_of = {name: i % folds for i, name in enumerate(names)}
    fold = np.array([fold_of[g] for g in groups])

    def cross_validated(alpha: float) -> float:
        scores = []
        for k in range(min(folds, len(names))):
            held = fold == k
            model = Ridge(alpha).fit(x[~held], y[~held])
            scores.append(stats.spearmanr(model.predict(x[held]), y[held])[0])
        return float(np.nanmean(scores))

    best = max(ALPHAS, key=cross_validated)
    return Ridge(best).fit(x, y)


def photo_curve(x: np.ndarray, y: np.ndarray, photos: Sequence[str], test_x: np.ndarray, test_y: np.ndarray,
                sizes: Sequence[int], draws: int = 3, seed: int = 0) -> list[dict]:
    """Held-out SRCC of the baseline trained on fewer photos (random draws): how it grows with content."""
    photos = np.asarray(photos)
    names = sorted(set(photos))
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        runs = 1 if size >= len(names) else draws
        srccs = []
        for _ in range(runs):
            keep = np.isin(photos, rng.choice(names, min(size, len(names)), replace=False))
            model = fit_ridge(x[keep], y[keep], photos[keep])
            srccs.append(evaluate(list(model.predict(test_x)), list(test_y)).srcc)
        rows.append({"photos": min(size, len(names)), "draws": runs, "srcc": float(np.mean(srccs)),
                     "srcc_each": [round(s, 4) for s in srccs]})
    return rows


def blind_ceiling(labels: Sequence[float], kinds: Sequence[tuple[str, ...]], blind: Sequence[str],
                  clean: float = 5.0) -> float:
    """SRCC of a predictor exact everywhere except on images with a blind type, which it scores as clean."""
    predicted = [clean if set(kind) & set(blind) else label for label, kind in zip(labels, kinds)]
    return evaluate(predicted, list(labels)).srcc
