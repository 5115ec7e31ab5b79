"""``python -m realqa.cli``: the ``realqa`` command (also what ``torchrun -m realqa.cli`` runs)."""

import sys

from . import main

sys.exit(main())
