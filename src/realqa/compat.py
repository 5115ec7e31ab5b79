"""What differs between the transformers releases realqa supports, and the optional extras.

realqa supports transformers 5.17 up to (not including) 6 (``make test-compat`` runs the model
tests on 5.17). The releases differ in a few argument and output names; every such fact is
answered here, read from the installed code (a forward's signature, an output's keys), never from
version numbers, so a backport or a fork answers for itself:

* :func:`accepts_token_types`: whether the forward takes ``mm_token_type_ids`` (M-RoPE's
  image/video token types; the releases that know it need it, earlier ones refuse it);
* :func:`cache_argument` / :func:`returned_cache`: the KV cache's name going in and coming out
  (``cache`` from 5.2x, ``past_key_values`` before);
* :func:`forward_parameters`: the names a model's forward takes (an adapter-wrapped model's base);
* :func:`precomputed_vision_inputs`: which vision-tower inputs (positions, attention boundaries,
  windows) the forward takes precomputed, so the engine can build them on the host.

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
    "skimage": "synth",
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


def precomputed_vision_inputs(model) -> frozenset[str]:
    """The vision-tower inputs the installed transformers takes precomputed, as ``image_<name>``
    keywords of the model's forward: ``position_ids``, ``cu_seqlens`` and ``max_seqlen``, and for
    Qwen2.5-VL ``window_index``, ``cu_window_seqlens`` and ``max_window_seqlen``.

    Read from the installed code, not its version: the model's ``get_image_features`` must route
    ``image_*`` keywords to the tower (transformers' ``accepts_precomputed_kwargs``), and the tower's
    forward must fetch each value through the ``transformers.vision_utils`` function that takes it
    from those keywords when given. Empty where either is missing: the tower computes them itself.
    """
    try:
        from transformers import vision_utils
    except ImportError:
        return frozenset()
    inner = getattr(base_model(model), "model", None)
    visual = getattr(inner, "visual", None)
    features = getattr(inner, "get_image_features", None)
    if visual is None or features is None:
        return frozenset()
    cells = getattr(features, "__closure__", None) or ()
    closure = dict(zip(features.__code__.co_freevars, (cell.cell_contents for cell in cells)))
    if closure.get("prefix") != "image_":
        return frozenset()
    names = set(inspect.unwrap(type(visual).forward).__code__.co_names)

    def fetched(function: str) -> bool:
        helper = getattr(vision_utils, function, None)
        return function in names and helper is not None and "kwargs" in inspect.signature(helper).parameters

    accepted = set()
    if fetched("get_vision_position_ids"):
        accepted.add("position_ids")
    if fetched("get_vision_attention_seqlens") and hasattr(vision_utils, "get_vision_cu_seqlens"):
        accepted |= {"cu_seqlens", "max_seqlen"}
    if fetched("get_vision_window_index"):
        accepted |= {"window_index", "cu_window_seqlens"}
        if "get_max_seqlen" in names:
            accepted.add("max_window_seqlen")
    return frozenset(accepted)
