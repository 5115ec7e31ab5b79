"""Benchmark of the bundled demo model: held-out accuracy per distortion type, the precision ablation,
greedy score vs NCM expected value, and scoring throughput against a naive generate loop.

    OMP_NUM_THREADS=1 python benchmarks/demo_model.py [--photos ../shared/data/photos] [--ablation] [--references]

0. Strengths (the issue's test): each held-out photo (the card's held-out sources that are photos,
   1024 px wide), blurred, JPEG-compressed and noised at four increasing strengths at full resolution
   with PIL/numpy (not the synthetic set's code), scored as files the way ``realqa score`` scores
   them; Spearman's correlation of strength and score per (photo, distortion), mean over photos, for
   the greedy score and the NCM value apart (-1: the score falls at every step).
1. Held-out accuracy: the synthetic test split (the held-out photos named in the model card,
   regenerated with the card's settings, or ``--synth DIR``) scored through ``load_scorer`` +
   ``Scorer.score``; SRCC/PLCC of the greedy score and of the NCM value, overall and per distortion
   type (each type: the clean test images plus that type's images).
2. Throughput: the photos with a 1024 px long side, scored end to end (JPEG decoding, preprocessing,
   model) by the scorer (batched, forced answer prefix) and by a naive loop (one ``model.generate``
   per image, from the bare question, until the end of the answer), on the same images in the same run.
3. ``--ablation``: the answer at 0, 1 and 2 decimals, each at ``--ablation-seeds`` seeds: every arm
   starts from a fresh language model (``build_tiny_model`` at the seed) carrying the benchmarked
   model's vision tower, frozen, and learns to answer in ``--ablation-steps`` steps at lr
   ``--ablation-lr`` on ``--work``'s synthetic train split (the training script's); mean and spread over
   seeds, greedy and NCM apart. Only the answer's precision differs between arms. ``--ablation-jobs``
   trains that many arms side by side (on two CPU cores, two one-thread arms finish in about 0.65 of
   the time two two-thread arms take one after the other).
4. ``--references``: on the same held-out images, a classical baseline (image statistics + ridge,
   trained on the model's own train split, also on fewer of its photos) and the SRCC ceiling of a
   predictor blind to some distortion types (see ``classical_baseline.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import classical_baseline as baseline  # noqa: E402  (beside this script)
import numpy as np  # noqa: E402

from realqa.chat import question_messages  # noqa: E402
from realqa.data.manifest import read_manifest  # noqa: E402
from realqa.engine import load_scorer  # noqa: E402
from realqa.media import load_image  # noqa: E402
from realqa.metrics import classification, evaluate  # noqa: E402
from realqa.numeric import PARSE_OUT_OF_RANGE, parse_score  # noqa: E402


def training_script():
    spec = importlib.util.spec_from_file_location("train_demo_model", ROOT / "scripts" / "train_demo_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- held-out accuracy


def synth_split(card, photos: list[str], videos: str, work: Path, synth: str | None, split: str = "test"):
    """A split of the model's synthetic set: from ``synth``, or regenerated (that split only) with the
    card's synth settings from the same sources as the training script's; the photos are checked
    against the card's held-out photos."""
    if synth:
        return read_manifest(Path(synth) / f"{split}.jsonl")
    from realqa.data.synth import synthesize

    settings = card.extra["synth_settings"]
    folder = work / f"synth-{split}"
    sources = training_script().gather_sources([Path(p) for p in photos], Path(videos) if videos else None,
                                               card.extra.get("frames_per_video", 0), work / "bench-sources")
    # The card records synthesize()'s own settings: pass them all, so a new setting cannot be forgotten here.
    _, paths = synthesize(sources, folder, **{**settings, "splits": [split]}, workers=2, overwrite=True)
    dataset = read_manifest(paths[split])
    held_out = set(card.extra.get("held_out_photos") or ())
    found = {s.info["photo"] for s in dataset.samples}
    if held_out and (found != held_out if split == "test" else found & held_out):
        raise SystemExit(f"the regenerated {split} photos {sorted(found)} do not match the card's held-out "
                         f"photos {sorted(held_out)}")
    return dataset


def distortion_kinds(dataset) -> list[tuple[str, ...]]:
    """Per image, the distortion types applied (empty for a clean image)."""
    return [tuple(d["type"] for d in s.info["distortions"]) for s in dataset.samples]


def type_groups(dataset) -> dict[str, list[int]]:
    """Image indexes: "all", and per distortion type the clean images plus that type's images."""
    kinds = distortion_kinds(dataset)
    groups = {"all": list(range(len(kinds)))}
    for name in dict.fromkeys(k[0] for k in kinds if len(k) == 1):
        groups[name] = [i for i, k in enumerate(kinds) if k in ((), (name,))]
    return groups


def accuracy_rows(dataset, results) -> list[dict]:
    """Overall and per-type SRCC/PLCC of the greedy score and the NCM value."""
    labels = [s.scores["quality"] for s in dataset.samples]
    return [{"type": name, "images": len(index), **agreement([results[i] for i in index], [labels[i] for i in index])}
            for name, index in type_groups(dataset).items()]


def agreement(results, labels) -> dict:
    """SRCC/PLCC of the greedy score and of the NCM value against the labels."""
    greedy = evaluate([r.score for r in results], labels)
    ncm = evaluate([r.ncm for r in results], labels)
    return {"srcc": greedy.srcc, "plcc": greedy.plcc, "ncm_srcc": ncm.srcc, "ncm_plcc": ncm.plcc,
            "failed": greedy.n_failed, "out_of_range": sum(r.status == PARSE_OUT_OF_RANGE for r in results)}


AGREEMENT_HEADER = "SRCC greedy | PLCC greedy | SRCC NCM | PLCC NCM | unparsed | greedy out of range"


def agreement_cells(r: dict) -> str:
    return (f"{r['srcc']:.3f} | {r['plcc']:.3f} | {r['ncm_srcc']:.3f} | {r['ncm_plcc']:.3f} | {r['failed']} | "
            f"{r['out_of_range']}")


def print_accuracy(rows: list[dict]) -> None:
    print(f"| distortion type | images | {AGREEMENT_HEADER} |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['type']} | {r['images']} | {agreement_cells(r)} |")


def photo_rows(dataset, results) -> dict:
    """Where the overall ranking is lost: per held-out photo, the mean NCM of its canvases labelled 5.00
    (clean, tilted or saturation-shifted: no visible damage) and of its damaged ones, and the ranking within
    the photo; then the overall NCM ranking once each photo's mean NCM is moved to its mean label (what a
    model whose only error were a per-photo offset, i.e. content read as damage, would reach)."""
    labels = np.array([s.scores["quality"] for s in dataset.samples])
    ncm = np.array([np.nan if r.ncm is None else r.ncm for r in results])
    photo = np.array([s.info["photo"] for s in dataset.samples])
    rows, shifted = [], ncm.copy()
    for name in sorted(set(photo)):
        mine = (photo == name) & ~np.isnan(ncm)
        intact, damaged = mine & (labels == 5.0), mine & (labels < 5.0)
        rows.append({"photo": name, "images": int(mine.sum()), "intact_ncm": float(ncm[intact].mean()),
                     "damaged_label": float(labels[damaged].mean()), "damaged_ncm": float(ncm[damaged].mean()),
                     "srcc": evaluate(list(ncm[mine]), list(labels[mine])).srcc})
        shifted[mine] += labels[mine].mean() - ncm[mine].mean()
    known = ~np.isnan(ncm)
    return {"photos": rows, "offsets_removed_srcc": evaluate(list(shifted[known]), list(labels[known])).srcc}


def print_photos(figures: dict) -> None:
    print("| held-out photo | images | NCM, canvases labelled 5.00 | damaged: mean label | damaged: mean NCM | "
          "SRCC NCM within the photo |\n|---|---|---|---|---|---|")
    for r in figures["photos"]:
        print(f"| {r['photo']} | {r['images']} | {r['intact_ncm']:.2f} | {r['damaged_label']:.2f} | "
              f"{r['damaged_ncm']:.2f} | {r['srcc']:.3f} |")
    print(f"\nSRCC NCM over all held-out canvases once each photo's mean NCM is moved to its mean label: "
          f"{figures['offsets_removed_srcc']:.3f}")


def attribute_rows(dataset, results, names) -> list[dict]:
    """Per attribute the model was trained on: accuracy and macro-F1 of its answers on the held-out
    images, beside the accuracy of always answering the most common held-out label."""
    rows = []
    for name in names:
        labels = [s.attributes[name] for s in dataset.samples]
        answers = [(r.attributes or {}).get(name, {}).get("value") for r in results]
        scores = classification(answers, labels)
        majority = max(labels.count(v) for v in set(labels)) / len(labels)
        rows.append({"attribute": name, "images": len(labels), "accuracy": scores.accuracy,
                     "macro_f1": scores.macro_f1, "majority": majority, "values": sorted(set(labels))})
    return rows


def print_attributes(rows: list[dict]) -> None:
    print(
        "| attribute | values | images | accuracy | macro-F1 | always the commonest label |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['attribute']} | {', '.join(r['values'])} | {r['images']} | {r['accuracy']:.3f} | "
              f"{r['macro_f1']:.3f} | {r['majority']:.3f} |")


# ---------------------------------------------------------------- strengths at full resolution


def _blur(image, sigma):
    from PIL import ImageFilter

    return image.filter(ImageFilter.GaussianBlur(sigma))


def _jpeg(image, quality):
    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)  # PIL's default 4:2:0 chroma subsampling
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _noise(image, sigma):
    from PIL import Image

    rng = np.random.default_rng(int(sigma))  # white Gaussian noise per pixel and channel, 8-bit levels
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


# (distortion, unit, four increasing strengths, function(image, strength) -> image)
STRENGTHS = (("blur", "Gaussian sigma px", (1, 2, 4, 8), _blur),
             ("jpeg", "JPEG quality", (95, 50, 20, 5), _jpeg),
             ("noise", "sigma (8-bit levels)", (10, 20, 35, 50), _noise))


def strength_rows(scorer, photos: list[Path], work: Path) -> dict:
    """Per distortion: mean over photos of Spearman(strength, score), greedy and NCM (see the docstring)."""
    from PIL import Image
    from scipy import stats

    folder = work / "strengths"
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, unit, strengths, function in STRENGTHS:
        per_photo = []
        for photo in photos:
            clean = Image.open(photo).convert("RGB")
            paths = []
            for strength in strengths:
                path = folder / f"{photo.stem}_{name}{strength}.png"  # lossless: only the distortion shows
                function(clean, strength).save(path)
                paths.append(str(path))
            results = scorer.score(paths)
            greedy, ncm = [r.score for r in results], [r.ncm for r in results]
            rank = list(range(len(strengths)))
            # A constant answer ranks nothing: its correlation counts as 0, not as missing.
            rho = {key: (0.0 if len(set(values)) < 2 else float(stats.spearmanr(rank, values)[0]))
                   for key, values in (("greedy", greedy), ("ncm", ncm))}
            per_photo.append({"photo": photo.stem, **rho, "scores": greedy, "ncms": [round(v, 3) for v in ncm]})
        rows[name] = {"unit": unit, "strengths": list(strengths), "photos": per_photo,
                      "greedy": statistics.mean(p["greedy"] for p in per_photo),
                      "ncm": statistics.mean(p["ncm"] for p in per_photo)}
    return rows


def print_strengths(rows: dict) -> None:
    print("| distortion | strengths | photos | mean Spearman greedy | mean Spearman NCM | worst photo (greedy / NCM) |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        worst_g = min(p["greedy"] for p in row["photos"])
        worst_n = min(p["ncm"] for p in row["photos"])
        print(f"| {name} | {row['unit']} {', '.join(map(str, row['strengths']))} | {len(row['photos'])} | "
              f"{row['greedy']:.3f} | {row['ncm']:.3f} | {worst_g:.2f} / {worst_n:.2f} |")
    print("\nPer photo, greedy scores at the four strengths:\n")
    for name, row in rows.items():
        for p in row["photos"]:
            print(f"  {name:6s} {p['photo']:24s} {' '.join(f'{v:.2f}' if v is not None else 'None' for v in p['scores'])}"
                  f"   NCM {' '.join(f'{v:.2f}' for v in p['ncms'])}")


# ---------------------------------------------------------------- throughput


def naive_scores(scorer, paths: list[str], task_name: str = "quality") -> list[float | None]:
    """One ``generate`` per image from the bare question (no forced prefix), until the answer ends."""
    import torch

    loaded = scorer.loaded
    task = scorer.task(task_name)
    tokenizer = loaded.tokenizer
    prompt = tokenizer.apply_chat_template(question_messages(task), add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    values = []
    for path in paths:
        batch = scorer.collate([scorer.examples.build(path, path, ids)])  # the scorer's own preprocessing
        with torch.inference_mode():
            output = loaded.model.generate(**batch, max_new_tokens=32, do_sample=False, num_beams=1,
                                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        values.append(parse_score(text, task.score_format).value)
    return values


def throughput(scorer, photos: str, images: int, batch_size: int) -> dict:
    """Seconds for the same JPEG paths: the scorer with images prepared in this process and in one
    worker process (overlapping the model), and the naive loop."""
    candidates = sorted(p for p in Path(photos).glob("*.jpg") if max(load_image(p).size) == 1024)
    paths = [str(candidates[i % len(candidates)]) for i in range(images)]
    scorer.score(paths[:batch_size], batch_size=batch_size)  # warm-up
    naive_scores(scorer, paths[:2])
    seconds, outputs = {}, {}
    for workers in (0, 1):
        scorer.workers = workers
        started = time.perf_counter()
        outputs[workers] = scorer.score(paths, batch_size=batch_size)
        seconds[f"scorer_workers{workers}"] = time.perf_counter() - started
    started = time.perf_counter()
    slow = naive_scores(scorer, paths)
    seconds["naive"] = time.perf_counter() - started
    fast = outputs[0]
    assert [r.text for r in outputs[1]] == [r.text for r in fast], "worker preparation changed the answers"
    same = sum(a.score is not None and b is not None and abs(a.score - b) < 1e-9 for a, b in zip(fast, slow))
    return {"images": len(paths), "distinct": len(candidates), "seconds": seconds, "same": same,
            "sizes": sorted({load_image(p).size for p in candidates})}


def print_throughput(t: dict, batch_size: int, threads: int) -> None:
    print(f"{t['images']} scorings of {t['distinct']} JPEGs with a 1024 px long side "
          f"({', '.join(f'{w}x{h}' for w, h in t['sizes'])}), end to end, {threads} torch thread(s):\n")
    print("| method | images/s | ms/image |")
    print("|---|---|---|")
    names = {"scorer_workers0": f"realqa Scorer.score (batch {batch_size}, forced prefix), images prepared in-process",
             "scorer_workers1": f"realqa Scorer.score (batch {batch_size}, forced prefix), 1 preparation worker",
             "naive": "naive loop (generate per image, no forced prefix)"}
    for key, seconds in t["seconds"].items():
        print(f"| {names[key]} | {t['images'] / seconds:.1f} | {1000 * seconds / t['images']:.1f} |")
    best = min(v for k, v in t["seconds"].items() if k != "naive")
    print(f"\nspeed-up {t['seconds']['naive'] / best:.1f}x; same score from both on {t['same']}/{t['images']} images")


# ---------------------------------------------------------------- precision ablation


def _train_arm(work: Path, train_manifest: Path, folder: Path, seed: int, base: Path, overrides: list[str],
               threads: int) -> None:
    """One ablation arm (run in a worker process when arms run side by side); its wall time beside it."""
    import torch

    torch.set_num_threads(threads)
    started = time.time()
    training_script().train_model(work, train_manifest, folder, seed=seed, init=base, overrides=overrides)
    (folder / "wall_seconds.txt").write_text(f"{time.time() - started:.0f}\n")


def ablation(dataset, work: Path, model_dir: Path, seeds: list[int], steps: int, lr: float, jobs: int = 1,
             threads: int = 1) -> list[dict]:
    """The answer at 0, 1 and 2 decimals for each seed (see the module docstring), ``steps`` optimiser
    steps each (trained now unless present in WORK/ablation; ``jobs`` arms side by side, each on
    ``threads // jobs`` torch threads), scored on the held-out split through the training set's canvases."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    script = training_script()
    train_manifest = work / "synth" / "train.jsonl"
    if not train_manifest.is_file():
        raise SystemExit(f"{train_manifest} is missing: run scripts/train_demo_model.py --work {work} first")
    arms = {(decimals, seed): work / "ablation" / f"decimals{decimals}-seed{seed}-steps{steps}"
            for decimals in (0, 1, 2) for seed in seeds}
    missing = {arm: folder for arm, folder in arms.items() if not (folder / "config.json").is_file()}
    bases = {}  # one fresh base per seed, shared by its three arms, written before any arm starts
    for seed in sorted({seed for _, seed in missing}):
        bases[seed] = script.with_fresh_language_model(model_dir, work / "ablation" / f"base-seed{seed}", seed)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        running = [pool.submit(_train_arm, work, train_manifest, folder, seed, bases[seed],
                               [f"decimals={decimals}", f"max_steps={steps}", f"learning_rate={lr}",
                                "train_vision_tower=false"], max(1, threads // jobs))
                   for (decimals, seed), folder in missing.items()]
        for arm in running:
            arm.result()  # a failed arm stops the ablation with its own error
    paths = [str(dataset.image_path(s)) for s in dataset.samples]
    labels = [s.scores["quality"] for s in dataset.samples]
    rows = []
    for decimals in (0, 1, 2):
        runs = []
        for seed in seeds:
            folder = arms[decimals, seed]
            # The set's images are the profile's canvases already: score them as they are.
            results = load_scorer(str(folder), device="cpu", batch_size=16, preprocessing="realqa").score(paths)
            runs.append({**agreement(results, labels), "images": len(results), "distinct": len({r.score for r in results}),
                         "train_s": float((folder / "wall_seconds.txt").read_text())})
        rows.append({"decimals": decimals, "seeds": seeds, "steps": steps, "runs": runs})
    return rows


def _spread(values) -> str:
    values = [v for v in values if v == v]  # NaN (a constant answer) left out of the mean
    if not values:
        return "nan"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def print_ablation(rows: list[dict]) -> None:
    print("| decimals | seeds | steps | SRCC greedy | PLCC greedy | SRCC NCM | PLCC NCM | distinct greedy answers | "
          "unparsed | out of range | train s/run |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        runs = r["runs"]
        print(f"| {r['decimals']} | {len(r['seeds'])} | {r['steps']} | {_spread(x['srcc'] for x in runs)} | "
              f"{_spread(x['plcc'] for x in runs)} | {_spread(x['ncm_srcc'] for x in runs)} | "
              f"{_spread(x['ncm_plcc'] for x in runs)} | {_spread(x['distinct'] for x in runs)} | "
              f"{sum(x['failed'] for x in runs)} | {sum(x['out_of_range'] for x in runs)} | "
              f"{statistics.mean(x['train_s'] for x in runs):.0f} |")


# ---------------------------------------------------------------- references


BLIND_SETS = (("tilt",), ("tilt", "saturation_loss"), ("tilt", "saturation_loss", "saturation_excess"),
              ("tilt", "saturation_loss", "saturation_excess", "jpeg"), ("jpeg", "motion_blur"))
CURVE_PHOTOS = (3, 6, 12, 18)  # training photos for the baseline's content curve


def references(train, dataset, held_out_rows: list[dict], workers: int) -> dict:
    """The classical baseline (trained on ``train``) beside the model's ``held_out_rows`` (from
    :func:`accuracy_rows`), and the blind-type ceilings on the held-out split."""
    labels = [s.scores["quality"] for s in dataset.samples]
    train_x = baseline.feature_matrix([str(train.image_path(s)) for s in train.samples], workers)
    train_y = np.array([s.scores["quality"] for s in train.samples])
    train_photos = [s.info["photo"] for s in train.samples]
    photo_count = len(set(train_photos))
    test_x = baseline.feature_matrix([str(dataset.image_path(s)) for s in dataset.samples], workers)
    predicted = list(baseline.fit_ridge(train_x, train_y, train_photos).predict(test_x))
    model_rows = {row["type"]: row for row in held_out_rows}
    per_type = {}
    for name, index in type_groups(dataset).items():
        classical = evaluate([predicted[i] for i in index], [labels[i] for i in index])
        per_type[name] = {"images": len(index), "model_ncm_srcc": model_rows[name]["ncm_srcc"],
                          "model_srcc": model_rows[name]["srcc"], "baseline_srcc": classical.srcc,
                          "baseline_plcc": classical.plcc}
    curve = baseline.photo_curve(train_x, train_y, train_photos, test_x, np.array(labels),
                                 [n for n in CURVE_PHOTOS if n < photo_count] + [photo_count])
    kinds = distortion_kinds(dataset)
    ceilings = [{"blind": list(blind), "srcc": baseline.blind_ceiling(labels, kinds, blind)} for blind in BLIND_SETS]
    return {"train_images": len(train), "train_photos": photo_count, "per_type": per_type,
            "photo_curve": curve, "blind_ceilings": ceilings}


def print_references(r: dict) -> None:
    print(f"Classical baseline (image statistics + ridge, benchmarks/classical_baseline.py), trained on the same "
          f"{r['train_images']} training images of {r['train_photos']} photos, vs the model, held-out SRCC:\n")
    print("| distortion type | images | model (NCM) | model (greedy) | classical baseline | baseline PLCC |")
    print("|---|---|---|---|---|---|")
    for name, row in r["per_type"].items():
        print(f"| {name} | {row['images']} | {row['model_ncm_srcc']:.3f} | {row['model_srcc']:.3f} | "
              f"{row['baseline_srcc']:.3f} | {row['baseline_plcc']:.3f} |")
    print("\nThe baseline trained on fewer photos (random draws of the training photos):\n")
    print("| training photos | draws | held-out SRCC (mean) | each |\n|---|---|---|---|")
    for row in r["photo_curve"]:
        each = ", ".join(f"{v:.3f}" for v in row["srcc_each"])
        print(f"| {row['photos']} | {row['draws']} | {row['srcc']:.3f} | {each} |")
    print("\nCeiling: a predictor exact on every held-out image except those of the types it is blind to "
          "(scored as clean):\n")
    print("| blind to | SRCC |\n|---|---|")
    for row in r["blind_ceilings"]:
        print(f"| {', '.join(row['blind'])} | {row['srcc']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the bundled demo model)")
    parser.add_argument("--photos", nargs="+", default=[str(ROOT.parent / "shared" / "data" / "photos")],
                        help="the photo folders the model was trained from (the training script's --photos)")
    parser.add_argument("--videos", default=str(ROOT.parent / "shared" / "data" / "videos"))
    parser.add_argument("--synth", help="a `realqa data synth` folder whose test.jsonl to use (default: WORK/synth "
                        "when there, else the held-out split regenerated from the card's settings)")
    parser.add_argument("--work", default="demo-work", help="the training script's work folder")
    parser.add_argument("--images", type=int, default=60, help="images in the throughput run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--ablation", action="store_true", help="also train and compare 0/1/2 decimals")
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation-steps", type=int, default=1200, help="optimiser steps per ablation run")
    parser.add_argument("--ablation-lr", type=float, default=1e-3, help="learning rate of the ablation runs")
    parser.add_argument("--ablation-jobs", type=int, default=1,
                        help="ablation arms trained side by side (worker processes sharing --threads)")
    parser.add_argument("--references", action="store_true",
                        help="also fit the classical baseline on the train split and print the blind-type ceilings")
    parser.add_argument("--json", help="write every figure to this JSON file too")
    args = parser.parse_args()

    import torch

    from realqa.models import demo_model_path

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else demo_model_path()
    scorer = load_scorer(str(model_dir), device="cpu", batch_size=16)
    card = scorer.loaded.card
    work = Path(args.work)
    synth = args.synth or (str(work / "synth") if (work / "synth" / "test.jsonl").is_file() else None)
    dataset = synth_split(card, args.photos, args.videos, work, synth)
    photos = sorted({s.info["photo"] for s in dataset.samples})
    figures = {}
    print(f"model: {model_dir}\nheld-out: {len(dataset)} images of {len(photos)} sources ({', '.join(photos)})\n")

    held_out = sorted((p for folder in args.photos for p in Path(folder).iterdir()
                       if p.stem in set(card.extra.get("held_out_photos", ()))), key=lambda p: p.stem)
    print(f"Held-out photos at four strengths, made at full resolution, scored as `realqa score` does "
          f"(profile {card.preprocessing!r}):\n")
    figures["strengths"] = strength_rows(scorer, held_out, work)
    print_strengths(figures["strengths"])
    print()

    # A set made through a profile stores the profile's output: score those images as they are.
    synth_scorer = (load_scorer(str(model_dir), device="cpu", batch_size=16, preprocessing="realqa")
                    if card.extra["synth_settings"].get("preprocessing") else scorer)
    results = synth_scorer.score([str(dataset.image_path(s)) for s in dataset.samples], attributes=True)
    rows = accuracy_rows(dataset, results)
    print_accuracy(rows)
    print()
    figures["attributes"] = attribute_rows(dataset, results, [task.name for task in scorer.attributes])
    print_attributes(figures["attributes"])
    clean = [r.ncm for r, s in zip(results, dataset.samples) if not s.info["distortions"] and r.ncm is not None]
    print(f"\nclean test photos: mean NCM score {statistics.mean(clean) if clean else float('nan'):.2f} (label 5.00)\n")
    figures["held_out"] = rows
    figures["photos"] = photo_rows(dataset, results)
    print_photos(figures["photos"])
    print()
    distinct = sorted({r.score for r in results if r.score is not None})
    figures["distinct_greedy"] = len(distinct)
    print(f"distinct greedy quality answers on the held-out images: {len(distinct)} "
          f"(from {distinct[0] if distinct else None} to {distinct[-1] if distinct else None})\n")

    speed = throughput(scorer, args.photos[0], args.images, args.batch_size)
    print_throughput(speed, args.batch_size, args.threads)
    figures["throughput"] = {k: v for k, v in speed.items() if k != "sizes"}

    if args.ablation:
        print(f"\nPrecision ablation (fresh language model, this model's vision tower frozen, {args.ablation_steps} "
              f"steps at lr {args.ablation_lr:g}, seeds {args.ablation_seeds}, same data; held-out split; "
              "mean ± standard deviation over seeds):\n")
        figures["ablation"] = ablation(dataset, work, model_dir, args.ablation_seeds, args.ablation_steps,
                                       args.ablation_lr, args.ablation_jobs, args.threads)
        print_ablation(figures["ablation"])
    if args.references:
        print("\nReferences on the same held-out split:\n")
        train = synth_split(card, args.photos, args.videos, work, synth, "train")
        figures["references"] = references(train, dataset, figures["held_out"], workers=2)
        print_references(figures["references"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
