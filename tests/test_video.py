"""Video scoring: frame sampling with PyAV (generated clips, and the shared real ones when present), per-frame and
whole-video scoring, the Qwen2-VL video layout, bad files, and video datasets in the bench."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_PIXELS
from realqa import data
from realqa.bench import run_bench
from realqa.engine import load_scorer
from realqa.job import VideoOptions
from realqa.media import FrameSampling, MediaError, is_video, sample_frames
from realqa.model import build_tiny_model
from realqa.results import ScoreResult
from realqa.video import FrameWriter, iter_with_videos, score_video, video_inputs

av = pytest.importorskip("av")  # the 'video' extra

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
REAL_CLIPS = sorted(VIDEOS.glob("*.mp4")) if VIDEOS.is_dir() else []


def write_video(path: Path, count: int = 20, fps: int = 10, size=(64, 48), level=lambda i: 10 + 12 * i) -> Path:
    """A clip whose frame i is a flat grey of ``level(i)``: a frame's brightness tells which it is."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.qmax = 2  # near-lossless: flat greys come back within a level or two
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), level(i), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def levels(frames) -> list[int]:
    return [round(float(np.asarray(f.image).mean())) for f in frames]


class BrightnessScorer:
    """Stands in for the Scorer: a frame's score is its brightness / 50, its spread brightness / 1000;
    level 250 gives no score."""

    class examples:
        max_image_pixels = 10_000_000

    def task(self, name, decimals=None):
        from realqa.tasks import DEFAULT_TASKS

        return DEFAULT_TASKS[name]

    def score(self, images, task="quality", *, decimals=None, batch_size=None):
        rows = []
        for image in images:
            level = round(float(np.asarray(image).mean()))
            rows.append(ScoreResult("<image>", task, None, None, "no_score", "blurry") if level > 245 else
                        ScoreResult("<image>", task, level / 50, level / 50 + 0.01, "ok", f"{level / 50:.2f}",
                                    ncm_std=level / 1000))
        return rows

    def iter_scores(self, images, task="quality", *, decimals=None, batch_size=None):
        yield from (ScoreResult(str(p), task, 1.0, None, "ok", "1.00") for p in images)


@pytest.fixture(scope="module")
def tiny_scorer(tiny_model_dir):
    return load_scorer(str(tiny_model_dir), device="cpu", batch_size=8, **SMALL_PIXELS)


# ---------------------------------------------------------------- sampling


def test_uniform_sampling_takes_the_frame_shown_at_each_segment_middle(tmp_path):
    frames, duration = sample_frames(write_video(tmp_path / "c.mp4"), FrameSampling(frames=4))
    assert duration == pytest.approx(2.0)
    # segment middles 0.25, 0.75, 1.25, 1.75 s -> the first frames at or after: 3, 8, 13, 18
    assert [round(f.time, 2) for f in frames] == [0.3, 0.8, 1.3, 1.8]
    assert levels(frames) == pytest.approx([10 + 12 * i for i in (3, 8, 13, 18)], abs=2)
    assert frames[0].image.mode == "RGB" and frames[0].image.size == (64, 48)


def test_fps_sampling_is_capped_by_the_frame_count(tmp_path):
    clip = write_video(tmp_path / "c.mp4")
    assert len(sample_frames(clip, FrameSampling(frames=32, fps=2))[0]) == 4  # 2 s at 2 fps
    assert len(sample_frames(clip, FrameSampling(frames=3, fps=8))[0]) == 3
    with pytest.raises(ValueError, match="fps must be a positive number"):
        FrameSampling(fps=0)


def test_far_apart_samples_in_a_long_clip_are_exact(tmp_path):
    clip = write_video(tmp_path / "long.mp4", count=240, fps=4, size=(32, 32), level=lambda i: i)  # 60 s
    frames, duration = sample_frames(clip, FrameSampling(frames=3))
    assert duration == pytest.approx(60.0)
    assert [f.time for f in frames] == [10.0, 30.0, 50.0]  # reached by seeking
    assert levels(frames) == pytest.approx([40, 120, 200], abs=2)


def test_bad_video_files_raise_media_errors_naming_the_file(tmp_path):
    clip = write_video(tmp_path / "good.mp4")
    (tmp_path / "cut.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    (tmp_path / "text.mp4").write_text("not a video at all")
    (tmp_path / "empty.mp4").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "still.png")
    (tmp_path / "still.mov").write_bytes((tmp_path / "still.png").read_bytes())
    expected = {"empty.mp4": "file is empty", "missing.mp4": "file not found", "text.mp4": "not a readable video",
                "cut.mp4": "not a readable video"}
    for name, problem in expected.items():
        with pytest.raises(MediaError, match=problem) as caught:
            sample_frames(tmp_path / name)
        assert caught.value.source == str(tmp_path / name)
    with pytest.raises(MediaError, match="too large"):
        sample_frames(clip, max_pixels=1000)


# ---------------------------------------------------------------- scoring frame by frame


def test_frame_scores_are_kept_and_averaged(tmp_path):
    video = score_video(BrightnessScorer(), write_video(tmp_path / "c.mp4"), sampling=FrameSampling(frames=4))
    assert [f.score for f in video.frames] == pytest.approx([0.92, 2.12, 3.32, 4.52], abs=0.05)
    assert video.result.score == pytest.approx(np.mean([f.score for f in video.frames]))
    assert video.result.ncm == pytest.approx(video.result.score + 0.01)
    # The clip's spread is the mean of its frames' spreads (each frame's is its brightness / 1000).
    assert [f.ncm_std for f in video.frames] == pytest.approx([s / 20 for s in (0.92, 2.12, 3.32, 4.52)], abs=0.003)
    assert video.result.ncm_std == pytest.approx(np.mean([f.ncm_std for f in video.frames]))
    assert video.result.status == "ok" and video.result.text.startswith("mean of 4 frames: ")
    assert video.result.path == str(tmp_path / "c.mp4") and video.duration == pytest.approx(2.0)


def test_a_frame_without_a_score_leaves_the_video_without_one(tmp_path):
    clip = write_video(tmp_path / "c.mp4", level=lambda i: 250 if i == 8 else 100)
    video = score_video(BrightnessScorer(), clip, sampling=FrameSampling(frames=4))
    assert video.result.score is None and video.result.status == "no_score" and video.result.ncm_std is None
    assert "1 of 4 frames have no score (first: frame 1 at 0.80s: blurry)" in video.result.error


def test_bad_files_are_error_rows_and_the_others_are_scored(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "a.png")
    inputs = [str(tmp_path / "a.png"), str(write_video(tmp_path / "c.mp4")), str(tmp_path / "empty.mp4"), "b.png"]
    seen = []
    rows = list(iter_with_videos(BrightnessScorer(), inputs, video={"sampling": FrameSampling(frames=2)},
                                 on_video=seen.append))
    assert [r.path for r in rows] == inputs
    assert [r.status for r in rows] == ["ok", "ok", "error", "ok"]
    assert "file is empty" in rows[2].error and len(seen) == 2
    assert is_video("x.MKV") and not is_video("x.png")
    in_memory = Image.new("RGB", (40, 30), (90, 90, 90))  # a PIL image among paths is an image, never a video
    assert [r.status for r in iter_with_videos(BrightnessScorer(), [in_memory, inputs[1]],
                                               video={"sampling": FrameSampling(frames=2)})] == ["ok", "ok"]
    with pytest.raises(ValueError, match="attributes: not available for videos"):
        list(iter_with_videos(BrightnessScorer(), inputs, attributes=True))


def test_frames_side_file(tmp_path):
    video = score_video(BrightnessScorer(), write_video(tmp_path / "c.mp4"), sampling=FrameSampling(frames=2))
    with FrameWriter(FrameWriter.beside(tmp_path / "scores.csv")) as writer:
        writer.write(video)
    with open(tmp_path / "scores.frames.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["video"], r["index"], r["time"]) for r in rows] == [(video.result.path, "0", "0.5"),
                                                                  (video.result.path, "1", "1.5")]
    assert float(rows[0]["score"]) == video.frames[0].score
    assert float(rows[0]["ncm_std"]) == video.frames[0].ncm_std


def test_tiny_model_scores_frames(tiny_scorer, tmp_path):
    video = score_video(tiny_scorer, write_video(tmp_path / "c.mp4", size=(96, 64)), sampling=FrameSampling(frames=3))
    assert len(video.frames) == 3 and all(f.status in ("ok", "no_score", "out_of_range") for f in video.frames)
    assert video.result.status != "error" and video.mode == "frames"
    with pytest.raises(ValueError, match="unknown video mode"):
        score_video(tiny_scorer, tmp_path / "c.mp4", mode="clip")


# ---------------------------------------------------------------- one Qwen2-VL video input


def frames_of(*seeds, size=(84, 56)):
    return [Image.fromarray(np.random.default_rng(s).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
            for s in seeds]


def test_video_patches_follow_the_qwen2_vl_video_layout(tiny_scorer):
    frames = frames_of(1, 2, 3, size=(112, 112))  # odd: the last frame is repeated to fill its temporal pair
    batch = video_inputs(tiny_scorer, frames, tiny_scorer.task("quality"))
    processor = tiny_scorer.loaded.image_processor
    # Reference: transformers' Qwen2VLVideoProcessor.patchify (which needs torchvision) on the
    # normalised frames: (t, 2, C, H/28, 2, 14, W/28, 2, 14) -> t, H/28, W/28, 2, 2, C, 2, 14, 14.
    arrays = [(np.asarray(f, np.float32) / 255 - processor.image_mean) / processor.image_std for f in frames]
    video = np.stack(arrays + arrays[-1:]).transpose(0, 3, 1, 2)  # 112x112: the size the processor keeps
    t, c, h, w = len(video) // 2, 3, 112 // 14, 112 // 14
    reference = video.reshape(t, 2, c, h // 2, 2, 14, w // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    assert batch["video_grid_thw"].tolist() == [[2, h, w]]
    np.testing.assert_allclose(batch["pixel_values_videos"].numpy(), reference.reshape(t * h * w, -1), atol=1e-5)
    video_id = tiny_scorer.loaded.model.config.video_token_id
    assert int((batch["input_ids"] == video_id).sum()) == t * h * w // 4


def test_a_still_video_is_seen_exactly_as_its_image(tiny_scorer):
    image = frames_of(7)[0]
    task = tiny_scorer.task("quality")
    as_video = video_inputs(tiny_scorer, [image, image], task, duration=1.0)
    as_image = tiny_scorer.collate([tiny_scorer.examples.build(image, "x", tiny_scorer.prompt_ids(task))])
    model = tiny_scorer.loaded.model
    with torch.no_grad():
        torch.testing.assert_close(model(**as_video).logits[0, -1], model(**as_image).logits[0, -1])
        moving = video_inputs(tiny_scorer, frames_of(7, 8), task, duration=1.0)
        assert not torch.allclose(model(**moving).logits[0, -1], model(**as_image).logits[0, -1])


def generate_reference(scorer, path, sampling: FrameSampling) -> ScoreResult:
    """What mode "video" answered before it joined the engine's loop: transformers' ``generate`` (greedy, the
    same token budget) on the same video batch, its answer read by the engine's own reader."""
    from transformers import GenerationConfig

    from realqa.engine import Question, _Answer

    task = scorer.task("quality")
    frames, duration = sample_frames(path, sampling)
    batch = video_inputs(scorer, [f.image for f in frames], task, duration=duration)
    loaded, question = scorer.loaded, Question(task)
    config = GenerationConfig(max_new_tokens=scorer._max_new_tokens(question), do_sample=False, num_beams=1,
                              output_logits=True, return_dict_in_generate=True,
                              eos_token_id=loaded.tokenizer.eos_token_id, pad_token_id=loaded.pad_id)
    with torch.no_grad():
        output = loaded.model.generate(**batch, generation_config=config)
    tokens = output.sequences[0, batch["input_ids"].shape[1]:].tolist()
    if loaded.tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(loaded.tokenizer.eos_token_id)]
    digit_logits = torch.stack(output.logits, dim=1)[0, : len(tokens)][:, loaded.digit_ids].float()
    return scorer._read(str(path), question, _Answer(tokens, digit_logits))


def assert_same_answer(result: ScoreResult, reference: ScoreResult) -> None:
    assert (result.text, result.score, result.status) == (reference.text, reference.score, reference.status)
    if reference.ncm is None:
        assert result.ncm is None and result.ncm_std is None
    else:
        assert result.ncm == pytest.approx(reference.ncm, abs=1e-4)
        assert result.ncm_std == pytest.approx(reference.ncm_std, abs=1e-4) and result.ncm_std > 0


def test_video_mode_answers_once_per_clip_as_generate_would(tmp_path):
    """The engine's prefill and decode loop gives the clip the answer ``generate`` gives it, and the demo model
    (which answers scores) makes the NCM comparison count."""
    from realqa.models import demo_model_path

    scorer = load_scorer(str(demo_model_path()), device="cpu")
    path = write_video(tmp_path / "c.mp4", size=(96, 64), level=lambda i: 40 + 8 * i)
    sampling = FrameSampling(frames=4)
    video = score_video(scorer, path, mode="video", sampling=sampling)
    reference = generate_reference(scorer, path, sampling)
    assert video.mode == "video" and reference.score is not None and reference.ncm is not None
    assert_same_answer(video.result, reference)
    assert [f.score for f in video.frames] == [None] * 4 and len({f.time for f in video.frames}) == 4


def test_video_mode_on_qwen2_5_vl(tmp_path):
    """Qwen2.5-VL spaces a video's temporal positions by real time: the loop's positions are the model's own."""
    scorer = load_scorer(str(build_tiny_model(tmp_path / "m", architecture="qwen2_5_vl", layers=1)), device="cpu",
                         **SMALL_PIXELS)
    batch = video_inputs(scorer, frames_of(1, 2, 3, 4), scorer.task("quality"), duration=2.0)
    assert batch["second_per_grid_ts"].tolist() == [1.0]  # 2 frames per temporal patch, 0.5 s apart
    path = write_video(tmp_path / "c.mp4", size=(96, 64))
    video = score_video(scorer, path, mode="video")
    assert_same_answer(video.result, generate_reference(scorer, path, FrameSampling()))
    assert video.result.text  # the tiny model wrote something, so the comparison compared tokens


# ---------------------------------------------------------------- real clips and datasets


def write_clips(folder: Path) -> list[Path]:
    """Ten-second textured clips (a moving pattern over noise; landscape and portrait) and an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for name, (width, height) in [("moving.mp4", (96, 64)), ("tall.mp4", (64, 112))]:
        y, x = np.mgrid[0:height, 0:width]
        with av.open(str(folder / name), "w") as out:
            stream = out.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(100):
                pattern = 128 + 90 * np.sin((x + 2 * i) / 6.0) * np.cos((y - i) / 9.0)
                picture = np.clip(pattern[..., None] + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, 10)
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
    (folder / "empty.mp4").write_bytes(b"")
    return sorted(folder.glob("*.mp4"))


def test_clips(tiny_scorer, tmp_path):
    """Clips made here, and the shared real ones when present."""
    clips = write_clips(tmp_path / "clips") + REAL_CLIPS
    good = [clip for clip in clips if clip.stat().st_size > 0]
    assert len(good) >= 2
    for clip in good:
        frames, duration = sample_frames(clip)
        assert len(frames) == 8 and 9 < duration < 11 and np.asarray(frames[4].image).std() > 5
    rows = list(iter_with_videos(tiny_scorer, [str(c) for c in clips], video={"sampling": FrameSampling(4)}))
    assert [r.path for r in rows] == [str(c) for c in clips]
    for clip, row in zip(clips, rows):
        assert (row.status == "error") == (clip.name == "empty.mp4")
    assert "file is empty (0 bytes)" in rows[[c.name for c in clips].index("empty.mp4")].error


def test_bench_scores_a_video_dataset_through_its_adapter(tmp_path):
    folder = tmp_path / "KoNViD_1k_videos"
    folder.mkdir()
    lines = []
    for n, (level, mos) in enumerate([(40, 1.5), (110, 2.5), (180, 4.0)]):
        write_video(folder / f"{n}.mp4", level=lambda i, level=level: level)
        lines.append(f"KoNViD_1k_videos/{n}.mp4, 2.0, 10.0, {mos}")
    (tmp_path / "konvid1k_labels.txt").write_text("\n".join(lines) + "\n")
    dataset = data.load("konvid1k", tmp_path)
    table = run_bench(BrightnessScorer(), [("konvid1k", dataset)], tmp_path / "bench",
                      video=VideoOptions(frames=2))
    row = table.rows[0]
    assert (row.rows, row.evaluated, row.errors, row.srcc) == (3, 3, 0, pytest.approx(1.0))
    with open(tmp_path / "bench" / "konvid1k.frames.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6
