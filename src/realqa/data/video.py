"""Video quality datasets for zero-shot evaluation, in DOVER's label lists (``path, duration, fps, MOS``)."""

from __future__ import annotations

from .layouts import LabelLayout, Scale, TableAdapter

DOVER_COLUMNS = ("path", "duration", "fps", "mos")
DOVER_INFO = {"duration": "duration", "fps": "fps"}


class KoNViD1k(TableAdapter):
    name = "konvid1k"
    title = "KoNViD-1k"
    media = "video"
    description = "1,200 Flickr videos (MOS 1-5); whole-dataset evaluation"
    folder_names = ("konvid1k", "KoNViD_1k", "KoNViD-1k")
    image_dirs = ("KoNViD_1k_videos",)
    layouts = (
        LabelLayout("dover", ("konvid1k_labels.txt", "labels.txt"), image="path", score="mos", scales=(Scale(1, 5),),
                    columns=DOVER_COLUMNS, info=DOVER_INFO),
    )

    def published_counts(self, opts):
        return {"total": 1200}


class LIVEVQC(TableAdapter):
    name = "livevqc"
    title = "LIVE-VQC"
    media = "video"
    description = "585 smartphone videos (MOS 0-100); whole-dataset evaluation"
    folder_names = ("livevqc", "LIVE-VQC", "LIVE_VQC", "VideoDatabase")
    image_dirs = ("Video",)
    layouts = (
        LabelLayout("dover", ("livevqc_labels.txt", "labels.txt"), image="path", score="mos", scales=(Scale(0, 100),),
                    columns=DOVER_COLUMNS, info=DOVER_INFO),
    )

    def published_counts(self, opts):
        return {"total": 585}
