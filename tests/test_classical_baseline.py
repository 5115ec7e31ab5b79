"""The demo benchmark's references (benchmarks/classical_baseline.py): its statistics respond to the
distortions they are meant to measure, its ridge fits, and the blind-type ceiling is computed right."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from conftest import EXAMPLE_PHOTOS, ROOT
from realqa.data.synth import DISTORTIONS

sys.path.insert(0, str(ROOT / "benchmarks"))  # importable by name: worker processes unpickle its functions
import classical_baseline as baseline  # noqa: E402


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    image = Image.open(EXAMPLE_PHOTOS[0]).convert("RGB")
    image.thumbnail((336, 336))
    path = tmp_path_factory.mktemp("baseline") / "clean.png"
    image.save(path)
    return path


def distorted(photo, tmp_path, kind: str, severity: float = 1.0):
    pixels = np.asarray(Image.open(photo), dtype=np.float32) / 255
    out = DISTORTIONS[kind].apply(pixels, severity, np.random.default_rng(0))
    path = tmp_path / f"{kind}.png"
    Image.fromarray(np.round(out * 255).astype(np.uint8)).save(path)
    return baseline.features(str(path))


@pytest.mark.parametrize("kind, name, direction", [
    ("noise", "noise_log_sigma", 1),
    ("gaussian_blur", "gradient_log_energy_full", -1),
    ("jpeg", "block_step_x", 1),
    ("underexposure", "luma_mean", -1),
    ("overexposure", "bright_share", 1),
    ("saturation_loss", "colourfulness", -1),
])
def test_each_statistic_moves_with_its_distortion(photo, tmp_path, kind, name, direction):
    clean = baseline.features(str(photo))
    assert len(clean) == 51 and all(np.isfinite(v) for v in clean.values())
    after = distorted(photo, tmp_path, kind)
    assert (after[name] - clean[name]) * direction > 0.05 * max(1.0, abs(clean[name])), (clean[name], after[name])


def test_feature_matrix_is_the_same_with_worker_processes(photo, tmp_path):
    paths = [str(photo)] * 3
    assert np.array_equal(baseline.feature_matrix(paths, workers=1), baseline.feature_matrix(paths, workers=2))


def test_ridge_recovers_a_linear_rule_and_cross_validation_groups_by_photo():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = 2 * x[:, 0] - x[:, 3] + 0.05 * rng.normal(size=300)
    groups = [f"photo{i % 12}" for i in range(300)]
    model = baseline.fit_ridge(x, y, groups)
    assert model.alpha in baseline.ALPHAS
    assert stats.pearsonr(model.predict(x), y)[0] > 0.99
    assert abs(model.weights[0] / model.weights[3] + 2 * x[:, 0].std() / x[:, 3].std()) < 0.2
    far = np.zeros((1, 6))
    far[0, 0] = 100.0  # far outside the training data: clipped to the labels' range
    assert model.predict(far)[0] == pytest.approx(y.max())


def test_blind_ceiling_scores_blind_types_as_clean():
    labels = [5.0, 4.5, 2.5, 3.4, 1.0]
    kinds = [(), ("tilt",), ("tilt",), ("noise",), ("noise",)]
    assert baseline.blind_ceiling(labels, kinds, []) == pytest.approx(1.0)
    expected = stats.spearmanr([5.0, 5.0, 5.0, 3.4, 1.0], labels)[0]
    assert baseline.blind_ceiling(labels, kinds, ["tilt"]) == pytest.approx(expected)
    assert expected < 0.9
