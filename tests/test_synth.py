"""The synthetic distortion benchmark: pseudo scores, distortions, labels, split by photo, manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from realqa.data.manifest import read_manifest
from realqa.data.synth import (
    CLEAN_ATTRIBUTES,
    DISTORTIONS,
    Applied,
    Job,
    attribute_labels,
    colourfulness,
    plan,
    pseudo_score,
    render,
    source_of,
    split_photos,
    synthesize,
    visibility_score,
    working_size,
)
from realqa.preprocessing import profile


def photo(seed: int, size=(160, 112), grey: bool = False) -> Image.Image:
    """A small 'photo': smooth colour gradients, a few sharp-edged shapes and fine texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    pixels = np.stack([0.5 + 0.3 * np.sin(6 * x + seed), 0.45 + 0.3 * np.cos(5 * y), 0.4 + 0.2 * x], -1)
    for _ in range(4):
        x0, y0 = rng.integers(0, size[0] - 30), rng.integers(0, size[1] - 30)
        pixels[y0 : y0 + 25, x0 : x0 + 25] = rng.uniform(0.1, 0.9, 3)
    pixels += rng.normal(0, 0.02, pixels.shape)
    if grey:
        pixels = pixels.mean(-1, keepdims=True).repeat(3, -1)
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i in range(7):
        photo(i).save(folder / f"photo{i}.jpg", quality=95)
    photo(99, grey=True).save(folder / "grey.png")
    return folder


def test_pseudo_score_is_five_when_clean_and_falls_strictly_with_severity():
    assert pseudo_score(()) == 5.0
    for name in DISTORTIONS:
        scores = [pseudo_score([Applied(name, level, 8)]) for level in range(0, 9)]
        assert all(a > b for a, b in zip(scores, scores[1:])), (name, scores)
        assert 1.0 <= scores[-1] < 5.0
    pair = [Applied("gaussian_blur", 5, 5), Applied("noise", 5, 5)]
    assert pseudo_score(pair) == 1.0  # clipped at the bottom of the range
    assert pseudo_score([Applied("noise", 1, 5), Applied("tilt", 1, 5)]) < pseudo_score([Applied("noise", 1, 5)])


def _render(source, applied, view=0):
    return np.asarray(render(Job("x", "p", str(source), view, "test", tuple(applied), 7)), dtype=np.float64) / 255


def _sharpness(pixels):
    """Gradient energy: smoothing in any direction lowers it, noise raises it."""
    grey = pixels.mean(-1)
    return float((np.diff(grey, axis=0) ** 2).mean() + (np.diff(grey, axis=1) ** 2).mean())


def _chroma(pixels):
    return float(np.abs(pixels - pixels.mean(-1, keepdims=True)).mean())


@pytest.mark.parametrize("name, statistic, direction", [
    ("gaussian_blur", _sharpness, -1), ("motion_blur", _sharpness, -1), ("downscale", _sharpness, -1),
    ("noise", _sharpness, +1), ("overexposure", np.mean, +1), ("underexposure", np.mean, -1),
    ("saturation_loss", _chroma, -1), ("saturation_excess", _chroma, +1),
])
def test_each_level_moves_the_image_further_than_the_last(photos, name, statistic, direction):
    source = photos / "photo1.jpg"
    values = [statistic(_render(source, [Applied(name, level, 4)] if level else [])) for level in range(5)]
    assert all(direction * (b - a) > 0 for a, b in zip(values, values[1:])), values


def test_jpeg_and_tilt_change_the_image_more_with_severity(photos):
    source = photos / "photo2.jpg"
    clean = _render(source, [])
    for name in ("jpeg", "tilt"):
        errors = [np.abs(_render(source, [Applied(name, level, 3)]) - clean).mean() for level in (1, 2, 3)]
        assert 0 < errors[0] < errors[1] < errors[2], (name, errors)


def test_attribute_labels_follow_the_distortions():
    assert attribute_labels(()) == CLEAN_ATTRIBUTES
    assert attribute_labels([Applied("overexposure", 1, 5)])["exposure"] == "overexposed"
    assert attribute_labels([Applied("underexposure", 3, 5)])["exposure"] == "underexposed"
    assert attribute_labels([Applied("saturation_loss", 5, 5)])["saturation"] == "low"
    assert attribute_labels([Applied("saturation_excess", 2, 5)])["saturation"] == "high"
    assert attribute_labels([Applied("tilt", 1, 5)])["level_shot"] == "tilted"
    assert attribute_labels([Applied("gaussian_blur", 2, 5)])["clarity"] == "slightly blurry"
    assert attribute_labels([Applied("motion_blur", 3, 5)])["clarity"] == "blurry"
    # Noise and JPEG set no attribute; of two blurs the stronger one wins.
    assert attribute_labels([Applied("noise", 5, 5), Applied("jpeg", 5, 5)]) == CLEAN_ATTRIBUTES
    assert attribute_labels([Applied("downscale", 5, 5), Applied("gaussian_blur", 1, 5)])["clarity"] == "blurry"


def test_plan_splits_by_photo_and_skips_saturation_on_grey_photos(photos):
    jobs = plan(sorted(photos.iterdir()), seed=3, levels=2, views=2, pairs=2)
    train = {job.photo for job in jobs if job.split == "train"}
    test = {job.photo for job in jobs if job.split == "test"}
    assert train and test and not train & test and len(train | test) == 8
    assert len(test) == 2  # a quarter of 8 photos
    assert {job.view for job in jobs if job.split == "test"} == {0}
    grey_types = {a.type for job in jobs if job.photo == "grey" for a in job.applied}
    assert not grey_types & {"saturation_loss", "saturation_excess"} and "noise" in grey_types
    for job in jobs:
        if len(job.applied) == 2:
            touched = [next(iter(a.distortion.labels(1.0)), None) for a in job.applied]
            assert touched[0] is None or touched[0] != touched[1] or touched[0] == "clarity"
    assert colourfulness(photo(0, grey=True)) < 1 < 15 < colourfulness(photo(0))
    assert [j.split for j in plan(sorted(photos.iterdir()), seed=3, levels=2)] != \
           [j.split for j in plan(sorted(photos.iterdir()), seed=4, levels=2)]


def test_variants_draw_part_of_the_grid_per_training_view_and_leave_the_test_split_whole(photos):
    full = plan(sorted(photos.iterdir()), seed=3, levels=2, views=3)
    drawn = plan(sorted(photos.iterdir()), seed=3, levels=2, views=3, variants=4)
    assert [j for j in full if j.split == "test"] == [j for j in drawn if j.split == "test"]
    views = {(j.photo, j.view) for j in drawn if j.split == "train"}
    assert len(views) == 6 * 3
    for photo_name, view in views:
        jobs = [j for j in drawn if (j.photo, j.view) == (photo_name, view)]
        assert len(jobs) == 1 + 4 and sum(not j.applied for j in jobs) == 1  # the clean view and 4 draws
        assert len({j.applied for j in jobs}) == 5
    grids = {tuple(j.applied for j in drawn if (j.photo, j.view) == key) for key in views}
    assert len(grids) > 1  # each view draws its own


def test_synthesize_writes_readable_manifests_and_a_readme(photos, tmp_path):
    types = ["gaussian_blur", "overexposure", "saturation_loss", "tilt"]
    dataset, paths = synthesize(photos, tmp_path / "synth", seed=1, types=types, levels=2, views=2)
    train, test = read_manifest(paths["train"]), read_manifest(paths["test"])
    assert len(train) + len(test) == len(dataset)
    assert not {s.info["photo"] for s in train} & {s.info["photo"] for s in test}
    for sample in train.samples + test.samples:
        assert train.image_path(sample).is_file()
        assert 1.0 <= sample.scores["quality"] <= 5.0
        assert sample.scores["quality"] == pseudo_score([Applied(d["type"], d["level"], 2)
                                                         for d in sample.info["distortions"]])
        assert set(sample.attributes) == set(CLEAN_ATTRIBUTES)
    clean = [s for s in test.samples if not s.info["distortions"]]
    assert clean and all(s.scores["quality"] == 5.0 for s in clean)
    assert {spec.name for spec in test.attribute_schema} == set(CLEAN_ATTRIBUTES)
    meta = json.loads((tmp_path / "synth" / "synth.json").read_text())
    assert meta["settings"]["types"] == types and "max_penalty" in meta["formula"]
    assert "Pseudo opinion score" in (tmp_path / "synth" / "README.md").read_text()

    again, _ = synthesize(photos, tmp_path / "again", seed=1, types=types, levels=2, views=2)
    first = (tmp_path / "synth" / "images" / test.samples[3].image.split("images/")[1]).read_bytes()
    assert first == (tmp_path / "again" / "images" / test.samples[3].image.split("images/")[1]).read_bytes()
    assert [s.to_dict() for s in again.samples] == [s.to_dict() for s in dataset.samples]


def test_unknown_type_is_refused(photos):
    with pytest.raises(ValueError, match="unknown distortion type"):
        plan(sorted(photos.iterdir()), types=["blurr"])


def test_cli_synth(photos, tmp_path, capsys):
    from realqa.cli import main

    code = main(["data", "synth", "--photos", str(photos), "--out", str(tmp_path / "s"), "--types", "noise",
                 "--levels", "2", "--views", "1"])
    assert code == 0
    assert "test.jsonl" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "s" / "test.jsonl")) == 2 * 3  # 2 photos x (clean + 2 levels)
    code = main(["data", "synth", "--photos", str(photos), "--out", str(tmp_path / "v"), "--types", "noise",
                 "--levels", "1", "--views", "1", "--preprocessing", "fragments"])
    assert code == 0 and "SSIM" in json.loads((tmp_path / "v" / "synth.json").read_text())["formula"]


def test_a_set_is_never_written_over_another_in_place(photos, tmp_path, capsys):
    """Written into a folder that holds a set, a new one would leave the old one's other images and
    manifests beside it, under labels that no longer match: refused, unless told to replace what is there
    (then nothing of the old set is left); through a link, replacing is refused, and the linked set kept."""
    from realqa.cli import main

    first = ["data", "synth", "--photos", str(photos), "--types", "noise", "--levels", "2", "--views", "1"]
    out = tmp_path / "set"
    assert main([*first, "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "images" / "stale.png").write_bytes(b"from an older set")
    capsys.readouterr()
    again = ["data", "synth", "--photos", str(photos), "--types", "jpeg", "--levels", "1", "--views", "1"]
    assert main([*again, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(out) in error and "not empty" in error and "--overwrite" in error
    assert all(p.read_bytes() == data for p, data in before.items())  # nothing written

    link = tmp_path / "link"
    link.symlink_to(out)
    assert main([*again, "--out", str(link), "--overwrite"]) == 2
    assert "a link to" in capsys.readouterr().err and (out / "images" / "stale.png").is_file()

    assert main([*again, "--out", str(out), "--overwrite"]) == 0
    samples = [s for manifest in out.glob("*.jsonl") for s in read_manifest(manifest).samples]
    assert {d["type"] for s in samples for d in s.info["distortions"]} == {"jpeg"}  # no manifest of the old set
    images = {str(p.relative_to(out)) for p in (out / "images").rglob("*") if p.is_file()}
    assert images == {s.image for s in samples}  # the new set's images, and no other


def test_working_size_shrinks_to_the_budget_on_the_28_px_grid_and_never_enlarges():
    assert working_size(1024, 683, None) == (1024, 683)
    assert working_size(1024, 683, 28 * 28 * 100) == (336, 224)  # what the processor makes of it
    assert working_size(100, 60, 28 * 28 * 100) == (84, 56)  # small: only rounded down to the grid
    for width, height in [(1024, 683), (683, 1024), (512, 512), (4000, 300)]:
        w, h = working_size(width, height, 28 * 28 * 64)
        assert w % 28 == 0 and h % 28 == 0 and w * h <= 28 * 28 * 64 and w <= width and h <= height
    with pytest.raises(ValueError, match="max_pixels"):
        plan([], max_pixels=100)


def test_a_working_size_is_applied_before_the_distortions(photos, tmp_path):
    budget = 28 * 28 * 12
    dataset, paths = synthesize(photos, tmp_path / "small", seed=1, types=["noise", "gaussian_blur"], levels=2,
                                views=2, max_pixels=budget)
    test = read_manifest(paths["test"])
    for sample in test.samples:
        with Image.open(test.image_path(sample)) as image:
            assert image.size == (112, 56)  # 160 x 112 photos shrunk onto the grid (as the processor would)
        for d in sample.info["distortions"]:
            if d["type"] == "gaussian_blur":  # spatial: given for the image's own long side
                assert d["parameter"] == pytest.approx(
                    DISTORTIONS["gaussian_blur"].parameter(d["severity"], 112), abs=1e-4
                )
    # Noise of the stated strength in the stored image (not shrunk away afterwards).
    clean = next(s for s in test.samples if not s.info["distortions"])
    noisy = next(s for s in test.samples if s.info["distortions"] and s.info["distortions"][0]["type"] == "noise"
                 and s.info["distortions"][0]["level"] == 2 and s.info["photo"] == clean.info["photo"])
    difference = np.asarray(Image.open(test.image_path(noisy)), float) - np.asarray(
        Image.open(test.image_path(clean)), float
    )
    assert difference.std() > 0.8 * DISTORTIONS["noise"].high
    assert json.loads((tmp_path / "small" / "synth.json").read_text())["settings"]["max_pixels"] == budget


# ---------------------------------------------------------------- visibility labels (the demo model's set)


def test_visibility_rule_is_five_when_invisible_one_when_ruined_and_falls_in_between():
    assert visibility_score(1.0) == visibility_score(0.998) == 5.0
    assert visibility_score(0.4) == visibility_score(0.1) == 1.0
    similarities = [0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.6]
    labels = [visibility_score(s) for s in similarities]
    assert all(a > b for a, b in zip(labels, labels[1:])) and 1.0 < labels[-1] < labels[0] < 5.0, labels


def test_frames_of_one_clip_share_a_split():
    names = [f"clip{c}__f{f}" for c in range(6) for f in range(3)] + [f"photo{i}" for i in range(6)]
    assert source_of("clip1__f2") == "clip1" and source_of("photo1") == "photo1"
    for seed in range(5):
        split = split_photos(names, 0.25, seed)
        for c in range(6):
            assert len({split[f"clip{c}__f{f}"] for f in range(3)}) == 1
        assert set(split.values()) == {"train", "test"}


def test_named_test_sources_are_exactly_the_test_split_and_a_missing_name_is_an_error():
    names = [f"clip{c}__f{f}" for c in range(2) for f in range(3)] + [f"photo{i}" for i in range(6)]
    split = split_photos(names, 0.25, 0, test_sources=["clip1", "photo4"])
    assert sorted(n for n, s in split.items() if s == "test") == ["clip1__f0", "clip1__f1", "clip1__f2", "photo4"]
    # Adding photos never moves a named one: the held-out set stays held out.
    assert split_photos(names + ["photo9"], 0.25, 0, test_sources=["clip1", "photo4"])["photo4"] == "test"
    with pytest.raises(ValueError, match="test sources not among the photos: photo7"):
        split_photos(names, 0.25, 0, test_sources=["photo4", "photo7"])


def test_visibility_set_stores_what_scoring_sees_and_labels_only_what_it_shows(photos, tmp_path):
    types = ["tilt", "saturation_loss", "noise", "gaussian_blur"]
    dataset, paths = synthesize(photos, tmp_path / "seen", seed=1, types=types, levels=6, views=1,
                                preprocessing="fragments")
    test = read_manifest(paths["test"])
    fragments = profile("fragments").prepare
    by_id = {s.id: s for s in test.samples}
    for sample in test.samples:
        assert sample.image.endswith(".png")
        with Image.open(test.image_path(sample)) as stored:
            assert stored.size == (448, 224)
        kinds = [d["type"] for d in sample.info["distortions"]]
        if not kinds:  # the clean test view is the whole photo: stored exactly as the profile makes it
            with Image.open(photos / f"{sample.info['photo']}.jpg") as source:
                expected = np.asarray(fragments(source))
            assert np.array_equal(np.asarray(Image.open(test.image_path(sample))), expected)
            assert sample.scores["quality"] == 5.0
        elif kinds[0] in ("tilt", "saturation_loss"):  # attributes only: no quality cost
            assert sample.scores["quality"] == 5.0 and sample.info["ssim"] == 1.0
            assert sample.attributes["level_shot" if kinds[0] == "tilt" else "saturation"] != "level"
        else:
            assert sample.scores["quality"] == pytest.approx(visibility_score(sample.info["ssim"]), abs=1e-4)
    for photo_name in {s.info["photo"] for s in test.samples}:
        for kind in ("noise", "gaussian_blur"):
            labels = [by_id[f"{photo_name}_v0_{kind}{level}"].scores["quality"] for level in (1, 2, 3)]  # of 6
            # Never rising; a step too small to show on this 160 px photo may cost nothing.
            assert 5.0 >= labels[0] >= labels[1] >= labels[2] and labels[2] < labels[0], (photo_name, kind, labels)
    meta = json.loads((tmp_path / "seen" / "synth.json").read_text())
    assert meta["settings"]["preprocessing"] == "fragments" and "SSIM" in meta["formula"]


def test_visibility_labels_need_a_known_profile_and_no_working_size(photos):
    with pytest.raises(ValueError, match="exclude each other"):
        plan(sorted(photos.iterdir()), max_pixels=28 * 28 * 4, preprocessing="fragments")
    with pytest.raises(ValueError, match="unknown preprocessing profile"):
        plan(sorted(photos.iterdir()), preprocessing="sharpen")
