"""Image aesthetics datasets: AVA and TAD66K, with the splits their label files define."""

from __future__ import annotations

from .layouts import LabelLayout, Scale, TableAdapter
from .problems import RowProblem
from .records import TEST, TRAIN
from .tables import WHITESPACE, Row

RATINGS = range(1, 11)
VOTE_COLUMNS = tuple(f"score{column}" for column in range(2, 12))  # file columns 2..11 hold ratings 1..10
VOTE_MEAN = Scale(1, 10, "vote-weighted mean of the 1-10 ratings")


class AVA(TableAdapter):
    """AVA: the MOS is computed from the vote counts, sum(r * n_r) / sum(n_r)."""

    name = "ava"
    title = "AVA"
    task = "aesthetics"
    description = "dpchallenge photos with 1-10 vote counts; split from the train/val/test files"
    folder_names = ("ava", "AVA", "AVA_dataset")
    image_dirs = ("images", "image")
    default_split = "official"
    layouts = (
        LabelLayout("tanet", ("train.csv", "test.csv", "val.csv"), image="image_id", score=VOTE_COLUMNS,
                    scales=(VOTE_MEAN,), split_by_file=True, image_suffix=".jpg",
                    info={"tag1": "tag1", "tag2": "tag2", "tag3": "tag3"}),
        LabelLayout("official", ("AVA.txt",), image="image_id", score=VOTE_COLUMNS, scales=(VOTE_MEAN,),
                    columns=("index", "image_id", *VOTE_COLUMNS, "tag1", "tag2", "challenge"), delimiter=WHITESPACE,
                    image_suffix=".jpg", info={"tag1": "tag1", "tag2": "tag2", "challenge": "challenge"}),
    )

    def native_score(self, row: Row, layout: LabelLayout) -> float:
        counts = self._vote_counts(row, layout)
        return sum(rating * count for rating, count in zip(RATINGS, counts)) / sum(counts)

    def parse_row(self, row, layout):
        label = super().parse_row(row, layout)
        counts = self._vote_counts(row, layout)
        label.info.update(votes=sum(counts), vote_counts=counts)
        return label

    @staticmethod
    def _vote_counts(row: Row, layout: LabelLayout) -> list[int]:
        counts = [row.number(column) for column in layout.score]
        if any(count < 0 or count != int(count) for count in counts):
            raise RowProblem(f"vote counts must be whole numbers >= 0, got {[f'{c:g}' for c in counts]}")
        if not any(counts):
            raise RowProblem("no votes: every count is 0")
        return [int(count) for count in counts]


class TAD66K(TableAdapter):
    name = "tad66k"
    title = "TAD66K"
    task = "aesthetics"
    description = "66,327 theme-annotated photos (MOS 1-10); train 52,248 / test 14,079"
    folder_names = ("tad66k", "TAD66K")
    image_dirs = ("images", "imgs", "TAD66K")
    default_split = "official"
    layouts = (
        LabelLayout("tanet", ("train.csv", "test.csv"), image="image", score="score", scales=(Scale(1, 10),),
                    split_by_file=True),
    )

    def published_counts(self, opts):
        return {"total": 66327, TRAIN: 52248, TEST: 14079}
