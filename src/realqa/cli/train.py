"""``realqa train`` and ``realqa tiny-model``."""

from __future__ import annotations

import sys


def add_commands(commands) -> None:
    trainer = commands.add_parser("train", help="fine-tune a Qwen2-VL model to answer with scores (LoRA or full)")
    trainer.add_argument("config", nargs="?", help="YAML config (see configs/); optional when overrides say it all")
    trainer.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested keys: lora.rank=64")
    trainer.add_argument("--decimals", type=int, help="target precision 0..3 (the paper's ablation); same as decimals=K")
    trainer.set_defaults(run=_train)

    tiny = commands.add_parser("tiny-model", help="build the tiny random Qwen2-VL test model into a folder")
    tiny.add_argument("out", help="folder to write")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--architecture", default="qwen2_vl", choices=("qwen2_vl", "qwen2_5_vl"))
    tiny.set_defaults(run=_tiny_model)


def _train(args) -> int:
    from ..train import load_config, train

    config_file, overrides = args.config, list(args.overrides)
    if config_file and "=" in config_file:  # only overrides were given
        config_file, overrides = None, [config_file, *overrides]
    if args.decimals is not None:
        overrides.append(f"decimals={args.decimals}")
    config = load_config(config_file, overrides)
    result = train(config, log=lambda message: print(message, file=sys.stderr))
    print(f"trained {result.steps} steps in {result.wall_seconds:.0f} s, final train loss {result.train_loss:.4f}; "
          f"output in {result.output_dir}", file=sys.stderr)
    return 0


def _tiny_model(args) -> int:
    from ..model import build_tiny_model

    print(build_tiny_model(args.out, seed=args.seed, architecture=args.architecture))
    return 0
