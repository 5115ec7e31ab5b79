"""Command line: ``realqa data list | prepare | card | synth | export-llamafactory | import-llamafactory`` and ``realqa bench``.

:func:`add_commands` adds both commands to the main parser's subparsers; each sets ``run`` to a
function ``(args) -> exit code``. Errors are raised as ValueError/OSError for the main CLI to print.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data import export_sharegpt, get_adapter, import_sharegpt, names, prepare, read_manifest, write_manifest
from ..data.adapter import SPLIT_STRATEGIES
from ..data.problems import DataError
from ..preprocessing import PROFILES
from .options import add_model_arguments, model_options


def add_commands(subparsers) -> None:
    """Add ``data`` and ``bench`` to an ``argparse`` subparsers object."""
    data = subparsers.add_parser("data", help="list, prepare, export and import datasets")
    commands = data.add_subparsers(dest="data_command", required=True)

    listing = commands.add_parser("list", help="the dataset adapters and their options")
    listing.set_defaults(run=_list)

    prep = commands.add_parser("prepare", help="validate a dataset and write its split manifests and report")
    prep.add_argument("name", help="dataset name (see `realqa data list`)")
    prep.add_argument("--root", help="dataset folder (label file found inside; images checked)")
    prep.add_argument("--out", required=True, help="output folder; files go to OUT/<dataset>/")
    _add_load_options(prep)
    prep.set_defaults(run=_prepare)

    export = commands.add_parser("export-llamafactory", help="write a manifest as LLaMA-Factory sharegpt JSON")
    export.add_argument("manifest", help="a .jsonl manifest written by `data prepare`")
    export.add_argument("--out", required=True, help="sharegpt .json file; dataset_info.json is updated beside it")
    export.add_argument("--decimals", type=int, default=2, help="decimals in the answers (default 2)")
    export.add_argument("--media-dir", help="write image paths relative to this folder (LLaMA-Factory media_dir)")
    export.add_argument("--name", help="entry name in dataset_info.json (default: the file's stem)")
    export.add_argument("--root", help="dataset root, when the images moved since preparing")
    export.set_defaults(run=_export)

    imp = commands.add_parser("import-llamafactory", help="read sharegpt files back into a manifest")
    imp.add_argument("files", nargs="+", help="sharegpt .json/.jsonl files")
    imp.add_argument("--out", required=True, help="manifest .jsonl to write (its .meta.json goes beside it)")
    imp.add_argument("--media-dir", help="folder relative image paths start from; images are then checked")
    imp.add_argument("--split-name", default="train", help="split of the imported samples (default train)")
    imp.add_argument("--name", help="dataset name (default: the first file's stem)")
    imp.set_defaults(run=_import)

    card = commands.add_parser("card", help="write a realqa_card.json from LLaMA-Factory conversation files, so that "
                                             "scoring asks the questions a model was trained with")
    card.add_argument("files", nargs="+", help="conversation .json/.jsonl files (e.g. the official koniq10k_test.json)")
    card.add_argument("--out", required=True, help="folder to write realqa_card.json into (e.g. the adapter's), or a .json file")
    card.add_argument("--preprocessing", default="llamafactory",
                      help="the image pipeline the model was trained with (default: llamafactory, as for every "
                           "official RealQA checkpoint)")
    card.add_argument("--description", default="", help="a line saying what the model is")
    card.set_defaults(run=_card)

    synth = commands.add_parser("synth", help="distort clean photos into a benchmark with pseudo opinion scores")
    synth.add_argument("--photos", required=True, help="folder of clean photos")
    synth.add_argument("--out", required=True, help="output folder: images/, train.jsonl, test.jsonl, README.md")
    synth.add_argument("--seed", type=int, default=0, help="seed of the split by photo and of the distortions")
    synth.add_argument("--test-fraction", type=float, default=0.25, help="share of the photos held out (default 0.25)")
    synth.add_argument("--test-sources", nargs="+", metavar="NAME",
                       help="hold out exactly these sources (photo names without extension; a clip's frames "
                       "CLIP__fN by CLIP) instead of a seeded share")
    synth.add_argument("--types", nargs="+", help="distortion types (default: all; see the README written)")
    synth.add_argument("--levels", type=int, default=5, help="severity levels per type (default 5)")
    synth.add_argument("--views", type=int, default=4, help="random crops per training photo (default 4)")
    synth.add_argument("--pairs", type=int, default=0, help="extra images per view with two distortions (default 0)")
    synth.add_argument("--variants", type=int, default=0,
                       help="(type, level) draws per training view (default 0: the whole grid)")
    synth.add_argument("--max-pixels", type=int,
                       help="distort at a working size of at most this many pixels (sides multiples of 28); "
                            "give the model's max_pixels so it sees the distortions pixel for pixel")
    synth.add_argument("--preprocessing", choices=sorted(PROFILES),
                       help="distort at each photo's own resolution, store the output of this preprocessing profile "
                            "and label quality by how visible the damage is in it (SSIM; needs scikit-image)")
    synth.add_argument("--workers", type=int, default=1, help="processes writing images (default 1)")
    synth.add_argument("--overwrite", action="store_true", help="replace what --out holds (default: refuse a "
                       "folder that is not empty)")
    synth.set_defaults(run=_synth)

    bench = subparsers.add_parser("bench", help="score test splits or LLaMA-Factory test files; SRCC/PLCC per dataset")
    sources = bench.add_mutually_exclusive_group(required=True)
    sources.add_argument("--datasets", help="comma-separated dataset names, manifest paths or folders holding "
                                            "test.jsonl (else all.jsonl); a known name means the dataset: "
                                            "write ./NAME for a folder of that name")
    sources.add_argument("--conversations", nargs="+", metavar="FILE",
                         help="LLaMA-Factory conversation files (e.g. the official koniq10k_test.json): each example "
                              "is asked its own question verbatim and labelled by its own answer")
    bench.add_argument("--media-dir", help="--conversations: folder relative image paths start from "
                                           "(LLaMA-Factory's media_dir; default: each file's folder)")
    bench.add_argument("--data-root", help="folder holding one folder per dataset (e.g. DATA/koniq10k)")
    bench.add_argument("--prepared", help="folder of `data prepare` output (PREPARED/<dataset>/test.jsonl)")
    bench.add_argument("--out", required=True, help="folder for predictions, bench.csv and bench.md")
    bench.add_argument("--split", help="split to score (default: test, else all)")
    bench.add_argument("--decimals", type=int, help="decimals in the answer (default: the model card's)")
    bench.add_argument("--limit", type=int, help="score only the first N images of each dataset (smoke runs)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(bench)
    bench.set_defaults(run=_bench)


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", nargs="+", help="label file(s) to use instead of searching the root")
    parser.add_argument("--split", choices=SPLIT_STRATEGIES, help="split rule (default: the dataset's convention)")
    parser.add_argument("--seed", type=int, help="seed of a random split")
    parser.add_argument("--ratios", help="random split ratios, e.g. 0.8,0.2 or 0.7,0.1,0.2")
    parser.add_argument("--image-dir", help="image folder under the root (default: found automatically)")
    parser.add_argument("--check-decode", action="store_true", help="decode every image fully (slower)")
    parser.add_argument("--image-column", help="generic/realqa: column naming the image")
    parser.add_argument("--score-column", action="append", metavar="TASK=COLUMN", help="generic: score column")
    parser.add_argument("--native-range", action="append", metavar="LO,HI", help="generic: native range (or TASK=LO,HI)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an adapter option")


def _load_options(args) -> dict:
    options = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = value
    for key, value in (("image_column", args.image_column), ("score_columns", args.score_column),
                       ("native_range", args.native_range)):
        if value:
            options[key] = value
    return dict(options, labels=args.labels, split=args.split, seed=args.seed, ratios=args.ratios,
                image_dir=args.image_dir, check_decode=args.check_decode)


# ---------------------------------------------------------------- data


def _list(args) -> int:
    for name in names():
        adapter = get_adapter(name)
        print(f"{name:<13} {adapter.task:<10} {adapter.media:<5} split: {adapter.default_split:<8} {adapter.description}")
        for option in adapter.options:
            default = "" if option.default in (None, ()) else f" (default: {option.default})"
            print(f"{'':<13} --set {option.name}=...  {option.help}{default}")
    return 0


def _prepare(args) -> int:
    dataset, paths = prepare(args.name, args.root, args.out, **_load_options(args))
    report = dataset.report
    print(report.summary())
    for split, path in paths.items():
        print(f"wrote {path} ({dataset.split_counts()[split]} samples)")
    print(f"validation report: {Path(args.out) / dataset.name / 'report.txt'} ({len(report.problems)} rows excluded)")
    return 0


def _export(args) -> int:
    dataset = read_manifest(args.manifest, root=args.root)
    entry = export_sharegpt(dataset, args.out, decimals=args.decimals, media_dir=args.media_dir, name=args.name)
    count = sum(len(sample.scores) for sample in dataset.samples)
    print(f"wrote {args.out} ({count} conversations from {len(dataset)} samples); "
          f"registered as {args.name or Path(args.out).stem!r} in {Path(args.out).parent / 'dataset_info.json'}")
    print(f"file_name: {entry['file_name']}")
    return 0


def _import(args) -> int:
    dataset = import_sharegpt(args.files, media_dir=args.media_dir, split_name=args.split_name,
                             dataset_name=args.name)
    print(dataset.report.summary())
    write_manifest(dataset, args.out)
    print(f"wrote {args.out} ({len(dataset)} samples)")
    return 0


def _card(args) -> int:
    from ..conversations import card_tasks, read_conversations
    from ..model import CARD_FILE, ModelCard
    from ..tasks import DEFAULT_TASKS

    conversations = read_conversations(args.files)
    tasks, notes = card_tasks(conversations)
    card = ModelCard(tasks=tasks, description=args.description, trained_on=[Path(f).name for f in args.files],
                     preprocessing=args.preprocessing, attributes=[name for name in tasks if name not in DEFAULT_TASKS])
    out = Path(args.out)
    target = out if out.suffix == ".json" else out / CARD_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    card.save_to(target)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for task in tasks.values():
        kind = f"{task.low:g}-{task.high:g}, {task.decimals} decimals" if task.is_score else "one of " + ", ".join(task.values)
        print(f"{task.name}: {task.question_text()!r} -> {task.answer_prefix!r}... ({kind})"
              + (" and a chain-of-thought question" if task.cot_question else ""))
    print(f"wrote {target} ({len(conversations)} examples read; preprocessing {card.preprocessing})")
    return 0


def _synth(args) -> int:
    from ..data.synth import synthesize

    dataset, paths = synthesize(args.photos, args.out, seed=args.seed, test_fraction=args.test_fraction,
                                types=args.types, levels=args.levels, views=args.views, variants=args.variants,
                                pairs=args.pairs, max_pixels=args.max_pixels, preprocessing=args.preprocessing,
                                test_sources=args.test_sources, workers=args.workers, overwrite=args.overwrite)
    for split, path in paths.items():
        photos = len({s.info["photo"] for s in dataset.samples if s.split == split})
        print(f"wrote {path} ({dataset.split_counts()[split]} images of {photos} photos)")
    print(f"pseudo-score formula and distortion table: {Path(args.out) / 'README.md'}")
    return 0


# ---------------------------------------------------------------- bench


def _bench(args) -> int:
    from ..bench import run_bench, run_conversation_bench

    datasets = [] if args.conversations else [(entry.strip(), _bench_dataset(entry.strip(), args))
                                              for entry in args.datasets.split(",") if entry.strip()]
    scorer = model_options(args).load(own_questions=bool(args.conversations))
    model = Path(args.adapter or scorer.loaded.name).name
    if args.conversations:
        table = run_conversation_bench(scorer, args.conversations, args.out, media_dir=args.media_dir,
                                       limit=args.limit, model=model)
    else:
        table = run_bench(scorer, datasets, args.out, split=args.split, decimals=args.decimals, limit=args.limit,
                          model=model, progress=not args.quiet)
    print(table.to_text())
    print(f"predictions, bench.csv and bench.md in {args.out}")
    return 0


def _bench_dataset(entry: str, args):
    """A dataset for the bench: a known dataset's name (its prepared manifest, or prepared now from
    --data-root), else a manifest path or a folder of manifests (read now, before the model loads)."""
    from ..bench import load_dataset

    try:
        adapter = get_adapter(entry)
    except ValueError as err:
        if entry.endswith(".jsonl") or Path(entry).is_dir():
            return load_dataset(entry, args.split)
        raise ValueError(f"{err}; nor is it a manifest (.jsonl) or a folder holding test.jsonl") from None
    if args.prepared:
        for split in filter(None, (args.split, "test", "all")):
            manifest = Path(args.prepared) / adapter.name / f"{split}.jsonl"
            if manifest.is_file():
                print(f"{adapter.name}: using {manifest}", file=sys.stderr)
                return read_manifest(manifest)
    if not args.data_root:
        raise ValueError(f"{adapter.name}: no prepared manifest" + (f" in {args.prepared}" if args.prepared else "")
                         + "; give --data-root to prepare it")
    dataset, _ = prepare(adapter.name, _dataset_root(Path(args.data_root), adapter), Path(args.out) / "prepared")
    print(dataset.report.summary(max_listed=3), file=sys.stderr)
    return dataset


def _dataset_root(data_root: Path, adapter) -> Path:
    if not data_root.is_dir():
        raise DataError(f"{data_root}: --data-root is not a folder")
    wanted = {adapter.name.lower(), *(name.lower() for name in adapter.folder_names)}
    for folder in sorted(data_root.iterdir()):
        if folder.is_dir() and folder.name.lower() in wanted:
            return folder
    raise DataError(f"{data_root}: no folder for {adapter.title} (looked for {', '.join(sorted(wanted))})")
