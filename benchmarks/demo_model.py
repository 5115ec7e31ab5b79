"""Benchmark of the bundled demo model: held-out accuracy per distortion type, the precision ablation,
greedy score vs NCM expected value, and scoring throughput against a naive generate loop.

    OMP_NUM_THREADS=1 python benchmarks/demo_model.py [--photos ../shared/data/photos] [--ablation] [--references]

1. Held-out accuracy: the synthetic test split (the held-out photos named in the model card,
   regenerated with the card's settings, or ``--synth DIR``) scored through ``load_scorer`` +
   ``Scorer.score``; SRCC/PLCC of the greedy score and of the NCM value, overall and per distortion
   type (each type: the clean test images plus that type's images).
2. Throughput: the photos with a 1024 px long side, scored end to end (JPEG decoding, preprocessing,
   model) by the scorer (batched, forced answer prefix) and by a naive loop (one ``model.generate``
   per image, from the bare question, until the end of the answer), on the same images in the same run.
3. ``--ablation``: the training recipe rerun at 0 and 1 decimals (about as long as the demo model's
   own training, each), against the bundled 2-decimal model; uses ``--work`` of the training script.
4. ``--references``: on the same held-out images, a classical baseline (image statistics + ridge,
   trained on the model's own train split, also on fewer of its photos) and the SRCC ceiling of a
   predictor blind to some distortion types (see ``classical_baseline.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
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


def synth_split(card, photos: str, work: Path, synth: str | None, split: str = "test"):
    """A split of the model's synthetic set: from ``synth``, or regenerated (that split only) with the
    card's synth settings; the photos are checked against the card's held-out photos."""
    if synth:
        return read_manifest(Path(synth) / f"{split}.jsonl")
    from realqa.data.synth import synthesize

    settings = card.extra["synth_settings"]
    folder = work / f"synth-{split}"
    # The card records synthesize()'s own settings: pass them all, so a new setting cannot be forgotten here.
    _, paths = synthesize(photos, folder, **{**settings, "splits": [split]}, workers=2)
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


def ablation(model_dir: Path, dataset, work: Path, seed: int) -> list[dict]:
    """The demo recipe at 0 and 1 decimals (trained now unless present in WORK/ablation) vs the bundled model."""
    script = training_script()
    train_manifest = work / "synth" / "train.jsonl"
    if not train_manifest.is_file():
        raise SystemExit(f"{train_manifest} is missing: run scripts/train_demo_model.py --work {work} first")
    rows = []
    paths = [str(dataset.image_path(s)) for s in dataset.samples]
    labels = [s.scores["quality"] for s in dataset.samples]
    for decimals in (0, 1, 2):
        folder = model_dir if decimals == 2 else work / "ablation" / f"decimals{decimals}"
        if decimals != 2 and not (folder / "config.json").is_file():
            started = time.time()
            script.train_model(work, train_manifest, folder, seed=seed, overrides=[f"decimals={decimals}"])
            (folder / "wall_seconds.txt").write_text(f"{time.time() - started:.0f}\n")
        scorer = load_scorer(str(folder), device="cpu", batch_size=16)
        if decimals == 2:
            wall = scorer.loaded.card.extra["wall_seconds"]["train"]
        else:
            wall = float((folder / "wall_seconds.txt").read_text())
        rows.append({"decimals": decimals, **agreement(scorer.score(paths), labels), "train_s": wall})
    return rows


def print_ablation(rows: list[dict]) -> None:
    print(f"| decimals | {AGREEMENT_HEADER} | train s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['decimals']} | {agreement_cells(r)} | {r['train_s']:.0f} |")


# ---------------------------------------------------------------- references


BLIND_SETS = (("tilt",), ("tilt", "saturation_loss"), ("tilt", "saturation_loss", "saturation_excess"),
              ("tilt", "saturation_loss", "saturation_excess", "jpeg"))
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
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "photos"))
    parser.add_argument("--synth", help="a `realqa data synth` folder whose test.jsonl to use")
    parser.add_argument("--work", default="demo-work", help="the training script's work folder")
    parser.add_argument("--images", type=int, default=60, help="images in the throughput run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--ablation", action="store_true", help="also train and compare 0/1 decimals")
    parser.add_argument("--references", action="store_true",
                        help="also fit the classical baseline on the train split and print the blind-type ceilings")
    parser.add_argument("--json", help="write every figure to this JSON file too")
    args = parser.parse_args()

    import torch

    from realqa.models import demo_model_path

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else demo_model_path()
    scorer = load_scorer(str(model_dir), device="cpu", batch_size=16)
    work = Path(args.work)
    dataset = synth_split(scorer.loaded.card, args.photos, work, args.synth)
    photos = sorted({s.info["photo"] for s in dataset.samples})
    figures = {}
    print(f"model: {model_dir}\nheld-out: {len(dataset)} images of {len(photos)} photos ({', '.join(photos)})\n")
    results = scorer.score([str(dataset.image_path(s)) for s in dataset.samples], attributes=True)
    rows = accuracy_rows(dataset, results)
    print_accuracy(rows)
    print()
    figures["attributes"] = attribute_rows(dataset, results, [task.name for task in scorer.attributes])
    print_attributes(figures["attributes"])
    clean = [r.ncm for r, s in zip(results, dataset.samples) if not s.info["distortions"] and r.ncm is not None]
    print(f"\nclean test photos: mean NCM score {statistics.mean(clean) if clean else float('nan'):.2f} (label 5.00)\n")
    figures["held_out"] = rows

    speed = throughput(scorer, args.photos, args.images, args.batch_size)
    print_throughput(speed, args.batch_size, args.threads)
    figures["throughput"] = {k: v for k, v in speed.items() if k != "sizes"}

    if args.ablation:
        print("\nPrecision ablation (same recipe, seed and data; held-out split):\n")
        figures["ablation"] = ablation(model_dir, dataset, work, scorer.loaded.card.extra["synth_settings"]["seed"])
        print_ablation(figures["ablation"])
    if args.references:
        print("\nReferences on the same held-out split:\n")
        train = synth_split(scorer.loaded.card, args.photos, work, args.synth, "train")
        figures["references"] = references(train, dataset, figures["held_out"], workers=2)
        print_references(figures["references"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
