"""Command line: ``realqa score | eval | train | data | bench | serve | report | tiny-model``.

Every command lives in this package; each module declares its flags and turns them into the typed
values the library takes (``options`` holds the flags the scoring commands share).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would drown the scoring progress bar
    parser = _parser()
    args = parser.parse_args(argv)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        print(f"realqa {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning  # a program calling main() keeps its own


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as a user of the command reads it: what it says, not the source line that said it."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"warning: {message}{kind}\n"


def _parser() -> argparse.ArgumentParser:
    from . import app, data, evaluate, score, train

    parser = argparse.ArgumentParser(prog="realqa", description="Image quality and aesthetic scoring with a multimodal LLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    score.add_command(commands)
    evaluate.add_command(commands)
    train.add_commands(commands)
    data.add_commands(commands)  # data list | prepare | card | synth | export/import-llamafactory, and bench
    app.add_commands(commands)  # serve, report
    return parser
