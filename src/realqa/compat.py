"""What differs between the transformers releases realqa supports, and the optional extras.

realqa supports transformers 5.17 up to (not including) 6 (``make test-compat`` runs the model
tests on 5.17). The releases differ in a few argument and output names; every such fact is
answered here, read from the installed code (a forward's signature, an output's keys), never from
version numbers, so a backport or a fork answers for itself:

* :func:`accepts_token_types`: whether the forward takes ``mm_token_type_ids`` (M-RoPE's
  image/video token types; the releases that know it need it, earlier ones refuse it);
* :func:`cache_argument` / :func:`returned_cache`: the KV cache's name going in and coming out
  (``cache`` from 5.2x, ``past_key_values`` before);
* :func:`forward_parameters`: the names a model's forward takes (an adapter-wrapped model's base).

:func:`require` imports an optional dependency, or fails in one line naming the extra to install.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

# Which extra (pyproject's optional-dependencies) installs each optional top-level module.
EXTRAS = {
    "av": "video",
    "matplotlib": "report",
    "pyarrow": "parquet",
    "datasets": "datasets",
    "braceexpand": "webdataset",
    "ray": "ray",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
}


# ---------------------------------------------------------------- optional extras


class MissingExtra(ImportError, ValueError):
    """An optional dependency is not installed. An :class:`ImportError`, and a :class:`ValueError`
    so that the command line reports it as one line (as it does bad arguments) instead of a traceback."""

    def __init__(self, module: str, extra: str, what: str | None = None):
        self.extra = extra
        super().__init__(f"{what or module} needs the '{extra}' extra: pip install 'realqa[{extra}]'", name=module)


def require(module: str, extra: str | None = None, what: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"av"``, ``"pyarrow.parquet"``) and return it; when it is not
    installed, raise :class:`MissingExtra` naming the extra that installs it (``extra``; default: the
    top-level module's entry in :data:`EXTRAS`) and what needed it (``what``, e.g. ``"scoring video"``).

    An import that fails for another reason (the module is there but one of its own dependencies is
    broken) is raised as it is.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        parts = module.split(".")
        if err.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise
        raise MissingExtra(module, extra or EXTRAS[parts[0]], what) from None


# ---------------------------------------------------------------- transformers releases


def base_model(model) -> Any:
    """The model under a PEFT wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_parameters(model) -> frozenset[str]:
    """The argument names of the (base) model's ``forward``."""
    return frozenset(inspect.signature(base_model(model).forward).parameters)


def accepts_token_types(model) -> bool:
    """Whether the forward takes ``mm_token_type_ids`` (the token types M-RoPE needs: 1 image, 2 video)."""
    return "mm_token_type_ids" in forward_parameters(model)


def cache_argument(model) -> str:
    """The forward's KV-cache argument: ``cache`` (transformers 5.2x) or ``past_key_values`` (before)."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def returned_cache(outputs) -> Any:
    """The KV cache a forward returned: ``outputs["cache"]`` (5.2x) or ``outputs.past_key_values`` (before)."""
    return outputs["cache"] if "cache" in outputs else outputs.past_key_values
