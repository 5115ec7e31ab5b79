"""Loading checkpoints whatever key layout they were saved in, and refusing loudly what does not fit.

Why this exists: RealQA's official LoRA adapters were trained with LLaMA-Factory under transformers
<= 4.46, where ``Qwen2VLForConditionalGeneration`` held the vision tower as ``.visual`` and the
language model as ``.model``; transformers 5.x nests both under ``.model`` (``model.visual``,
``model.language_model``). ``PeftModel.from_pretrained`` then matches none of the adapter's keys,
warns once, and leaves the model scoring as the bare base model. Here every tensor of an adapter is
mapped onto the loaded model's own module names, LoRA is injected exactly where the file has
tensors, and anything that does not fit raises ``ValueError`` instead of scoring with the wrong model.

Hub ids may name a subfolder (``owner/name/sub/folder``): the official repo holds several adapters.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# An ``owner/name`` hub repo id (the characters the hub allows).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# LoRA tensors in a saved adapter: ``<module>.lora_A.weight``, ``<module>.lora_magnitude_vector``, ...
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<rest>lora_[A-Za-z_]+(?:\..+)?)$")
_SAVED_PREFIX = "base_model.model."
# LoRA initialisations that only set the adapter's own tensors: safe to replace by a plain one, since
# every adapter tensor is overwritten from the file. Others (PiSSA, OLoRA, LoftQ, EVA, CorDA...)
# rewrite the base weights or need data at load time.
_PLAIN_INITS = (True, False, "gaussian", "orthogonal")
_SHOWN = 8  # keys named in an error message


def split_hub_path(spec: str | Path) -> tuple[str, str | None]:
    """``(repo_or_path, subfolder)``: ``owner/name/sub/folder`` that is not a local path means hub
    repo ``owner/name`` with subfolder ``sub/folder``; anything else is returned as is, without one.

    ``from_pretrained`` only takes a subfolder as a separate argument, and a repo may hold several
    checkpoints (the official RealQA repo holds one adapter per subfolder).
    """
    text = str(spec)
    if Path(text).exists() or text.startswith(("/", ".", "~")) or "\\" in text:
        return text, None
    parts = text.split("/")
    if len(parts) <= 2 or not _REPO_ID.match("/".join(parts[:2])):
        return text, None
    if any(part in ("", ".", "..") for part in parts[2:]):
        return text, None
    return "/".join(parts[:2]), "/".join(parts[2:])


def hub_options(spec: str | Path) -> tuple[str, dict]:
    """``(repo_or_path, from_pretrained keyword arguments)`` for ``spec``: the subfolder, when it names one."""
    repo, subfolder = split_hub_path(spec)
    return repo, ({"subfolder": subfolder} if subfolder else {})


def is_hub_id(spec: str | Path) -> bool:
    """Whether ``spec`` is no local path and reads as ``owner/name`` (plus an optional subfolder)."""
    repo, _ = split_hub_path(spec)
    return not Path(str(spec)).exists() and bool(_REPO_ID.match(repo))


def require_source(spec: str | Path, what: str = "model") -> None:
    """Refuse ``spec`` at once when it is neither a local path that exists nor a hub id: transformers would
    otherwise report a mistyped folder as an invalid repo id."""
    if not Path(str(spec)).exists() and not is_hub_id(spec):
        raise FileNotFoundError(f"{what} {spec}: no such file or folder (nor a hub id such as owner/name)")


def hub_file(spec: str | Path, filename: str) -> Path | None:
    """One file of a hub checkpoint (``owner/name[/sub/folder]``), downloaded or from the cache.

    None when ``spec`` is no hub id, the file does not exist there, or the hub cannot be reached
    (offline) and the cache does not hold it: callers use it for optional files such as the card.
    """
    if not is_hub_id(spec):
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo, subfolder = split_hub_path(spec)
    try:
        return Path(hf_hub_download(repo, filename, subfolder=subfolder))
    except EntryNotFoundError:  # also the offline, not-cached case (LocalEntryNotFoundError)
        return None


def adapter_folder(adapter: str | Path) -> Path:
    """A local folder holding the adapter's config and weights: the folder itself, or the hub snapshot's.

    Hub files are fetched here rather than by ``peft.utils.load_peft_weights(repo, subfolder=...)``
    because peft 0.21 doubles the subfolder in offline mode (``sub/sub/adapter_model.safetensors``).
    """
    from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

    name = str(adapter)
    path = Path(name)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise ValueError(f"{name}: no {CONFIG_NAME} in this folder; a full model is passed as the model, "
                             "not as an adapter")
        return path
    if path.exists():
        raise ValueError(f"{name}: an adapter is a folder (with {CONFIG_NAME}), not a file")
    if not is_hub_id(name):
        raise ValueError(f"{name}: no such adapter folder")
    config = hub_file(name, CONFIG_NAME)
    if config is None:
        raise ValueError(f"{name}: no {CONFIG_NAME} on the hub (or in the offline cache) for this adapter")
    if hub_file(name, SAFETENSORS_WEIGHTS_NAME) is None and hub_file(name, WEIGHTS_NAME) is None:
        raise ValueError(f"{name}: neither {SAFETENSORS_WEIGHTS_NAME} nor {WEIGHTS_NAME} on the hub "
                         "(or in the offline cache) for this adapter")
    return config.parent


class ModuleNames:
    """Maps module paths written under another transformers version onto this model's module names.

    A path that names a module of the model is kept. Otherwise the candidates are the model's modules
    that equal the path with extra components inserted at one place (``visual.blocks.0.attn.qkv`` ->
    ``model.visual.blocks.0.attn.qkv``, ``model.layers.0.mlp.up_proj`` ->
    ``model.language_model.layers.0.mlp.up_proj``): the 4.4x -> 5.x wrapping, found from the model's
    own names rather than a table per architecture. Exactly one candidate must exist; none or several
    leave the path unmapped, which callers refuse.
    """

    def __init__(self, names) -> None:
        self.names = set(names)
        self._by_leaf: dict[str, list[str]] = {}
        for name in self.names:
            self._by_leaf.setdefault(name.rsplit(".", 1)[-1], []).append(name)

    def resolve(self, path: str) -> str | None:
        if path in self.names:
            return path
        parts = path.split(".")
        found = set()
        for name in self._by_leaf.get(parts[-1], ()):
            if name.count(".") <= path.count("."):
                continue
            for i in range(len(parts)):  # the inserted components go right before parts[i]
                head, tail = ".".join(parts[:i]), ".".join(parts[i:])
                if name.endswith("." + tail) and (not head or name.startswith(head + ".")):
                    found.add(name)
                    break
        return found.pop() if len(found) == 1 else None


def _first(keys, count: int = _SHOWN) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:count])
    return shown + (f", ... ({len(keys) - count} more)" if len(keys) > count else "")


def _problems(*groups: tuple[str, list]) -> list[str]:
    """"N <what>: first keys" for each non-empty group, for one error message."""
    return [f"{len(keys)} {what}: {_first(keys)}" for what, keys in groups if keys]


def _split_saved_key(key: str) -> tuple[str, str, bool] | None:
    """``(module path, rest, is_lora)`` of a saved PEFT key, or None when it lacks peft's prefix."""
    if not key.startswith(_SAVED_PREFIX):
        return None
    inner = key[len(_SAVED_PREFIX):]
    lora = _LORA_KEY.match(inner)
    if lora:
        return lora["module"], lora["rest"], True
    if "." not in inner:
        return None
    module, rest = inner.rsplit(".", 1)
    return module, rest, False


def _refuse_unsupported(config, name: str) -> None:
    """Adapter features this loader cannot place exactly: refused rather than half-loaded."""
    from peft import PeftType

    if config.peft_type != PeftType.LORA:
        raise ValueError(f"{name}: only LoRA adapters are supported, this one is {config.peft_type}")
    problems = []
    if getattr(config, "target_parameters", None):
        problems.append(f"target_parameters={config.target_parameters!r}")
    if getattr(config, "layer_replication", None):
        problems.append("layer_replication")
    if getattr(config, "trainable_token_indices", None):
        problems.append("trainable_token_indices")
    if getattr(config, "bias", "none") != "none":
        problems.append(f"bias={config.bias!r}")
    if config.init_lora_weights not in _PLAIN_INITS:
        problems.append(f"init_lora_weights={config.init_lora_weights!r} (it rewrites the base weights at load; "
                        "convert the adapter to a plain LoRA first)")
    if problems:
        raise ValueError(f"{name}: adapter settings not supported by realqa: {'; '.join(problems)}")


def _translated_patterns(patterns: dict, renamed: dict[str, str]) -> dict:
    """``rank_pattern`` / ``alpha_pattern`` re-keyed by exact current module names.

    The patterns were written against the names at training time, so they are matched (with peft's
    own matcher) against the file's module paths, then stored under the mapped names.
    """
    if not patterns:
        return {}
    from peft.utils.other import get_pattern_key

    translated = {}
    for old, new in renamed.items():
        key = get_pattern_key(list(patterns), old)
        if key in patterns:
            translated[re.escape(new)] = patterns[key]
    return translated


def load_adapter(network, adapter: str | Path, *, merge: bool):
    """``network`` with the LoRA adapter ``adapter`` (folder or ``owner/name[/sub/folder]``) loaded.

    Every tensor of the adapter file is mapped onto ``network``'s module names (see
    :class:`ModuleNames`), LoRA is injected exactly into the modules the file has tensors for (the
    config's ``target_modules``, possibly a regex on another version's names, is not trusted), and the
    load is verified: each file tensor went into an adapter parameter of its shape, and each adapter
    parameter the injection created got a tensor. Otherwise ``ValueError``, naming the adapter and the
    keys. Rank, alpha, rsLoRA and DoRA settings come from the adapter's config. ``merge`` folds the
    adapter into the weights (``merge_and_unload``); without it the ``PeftModel`` is returned (quantized
    weights cannot take a merge). On failure ``network`` may hold injected layers: discard it.
    """
    from peft import PeftConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict

    name = str(adapter)
    folder = adapter_folder(adapter)
    config = PeftConfig.from_pretrained(str(folder))
    _refuse_unsupported(config, name)
    weights = load_peft_weights(str(folder), device="cpu")
    if not weights:
        raise ValueError(f"{name}: the adapter file holds no tensors")

    modules = ModuleNames(module_name for module_name, _ in network.named_modules())
    model_kind = type(network).__name__
    mapped: dict[str, torch.Tensor] = {}
    unmapped, lora_modules, other_modules, renamed = [], set(), set(), {}
    for key, tensor in weights.items():
        parts = _split_saved_key(key)
        target = modules.resolve(parts[0]) if parts else None
        new_key = f"{_SAVED_PREFIX}{target}.{parts[1]}" if target else None
        if new_key is None or new_key in mapped:  # unplaceable, or two file keys onto one place
            unmapped.append(key)
            continue
        mapped[new_key] = tensor
        (lora_modules if parts[2] else other_modules).add(target)
        if parts[2]:
            renamed[parts[0]] = target
    if unmapped:
        raise ValueError(
            f"{name}: {len(mapped)} of {len(weights)} adapter tensors map onto this {model_kind}; "
            f"not mapped: {_first(unmapped)}. Is the adapter for another model?"
        )
    if not lora_modules:
        raise ValueError(f"{name}: the adapter file holds no LoRA tensors (keys: {_first(weights)})")
    if other_modules and not config.modules_to_save:
        raise ValueError(f"{name}: tensors that are neither LoRA weights nor modules_to_save: "
                         f"{_first(k for k in mapped if not _LORA_KEY.match(k[len(_SAVED_PREFIX):]))}")
    if config.modules_to_save and not other_modules:
        raise ValueError(f"{name}: the config names modules_to_save {config.modules_to_save} "
                         "but the adapter file holds no tensors for them")

    config.target_modules = set(lora_modules)
    config.modules_to_save = sorted(other_modules) or None
    config.exclude_modules = None
    config.layers_to_transform = None
    config.layers_pattern = None
    config.rank_pattern = _translated_patterns(config.rank_pattern, renamed)
    config.alpha_pattern = _translated_patterns(config.alpha_pattern, renamed)
    config.init_lora_weights = True  # every adapter tensor is overwritten below
    config.inference_mode = True
    config.base_model_name_or_path = None  # the base is whatever was loaded: no rename warning

    peft_model = get_peft_model(network, config)
    expected = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    missing = [key for key in expected if key not in mapped]
    extra = [key for key in mapped if key not in expected]
    wrong = [f"{key}: file {tuple(mapped[key].shape)} vs model {tuple(value.shape)}"
             for key, value in expected.items() if key in mapped and mapped[key].shape != value.shape]
    problems = _problems(("adapter parameters get no tensor from the file", missing),
                         ("file tensors have no adapter parameter", extra), ("tensors have the wrong shape", wrong))
    if problems:
        raise ValueError(f"{name}: the adapter does not fit this {model_kind} "
                         f"({len(expected)} adapter parameters, {len(weights)} file tensors): " + "; ".join(problems))

    result = set_peft_model_state_dict(peft_model, mapped)
    loaded = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    not_loaded = list(result.unexpected_keys) + [
        key for key, tensor in mapped.items()
        if key not in loaded or not torch.equal(loaded[key], tensor.to(loaded[key].device, loaded[key].dtype))
    ]
    if not_loaded:
        raise ValueError(
            f"{name}: {len(not_loaded)} of {len(mapped)} adapter tensors did not load: {_first(not_loaded)}"
        )
    peft_model.eval()
    return peft_model.merge_and_unload() if merge else peft_model


def check_loading_info(network, info: dict, name: str) -> None:
    """Refuse a full checkpoint whose weights did not all load (``from_pretrained(output_loading_info=True)``).

    transformers 5.x only logs missing / unexpected weights and starts the missing ones from random
    values, so a checkpoint in a layout it does not know would score as noise. Weights tied to a
    loaded one (``tie_word_embeddings``'s ``lm_head``) are not missing.
    """
    parameters = dict(network.named_parameters(remove_duplicate=False))
    missing_keys = set(info.get("missing_keys") or ())
    owners: dict[int, set[str]] = {}
    for key, parameter in parameters.items():
        owners.setdefault(id(parameter), set()).add(key)
    missing = sorted(key for key in missing_keys
                     if key not in parameters or not (owners[id(parameters[key])] - missing_keys))
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    errors = list(info.get("error_msgs") or ())
    shown = [f"{key}: checkpoint {tuple(saved)} vs model {tuple(wanted)}" for key, saved, wanted in mismatched]
    problems = _problems(("weights missing from the checkpoint", missing),
                         ("checkpoint weights the model does not have", unexpected),
                         ("weights with the wrong shape", shown), ("loading errors", errors))
    if problems:
        raise ValueError(f"{name}: the checkpoint does not fit {type(network).__name__}: " + "; ".join(problems))


# ---------------------------------------------------------------- fingerprints

_WHOLE_FILE_BYTES = 16 * 1024 * 1024
_SAMPLE_BYTES = 1024 * 1024


def fingerprint(spec: str | Path | None) -> dict[str, str]:
    """Per file of a local checkpoint folder (or a single file, e.g. a card): a digest that changes
    when the file's content does, cheap enough for 15 GB of weights.

    Files up to 16 MiB (configs, tokenizer, card, processor) are hashed whole; larger ones (weights)
    by their size and their first, middle and last MiB: retrained weights differ there, and reading
    3 MiB of a 15 GB file costs milliseconds. Only the folder's own files count (not ``checkpoint-*``
    subfolders, not hidden files). A hub id that is not a local path gives ``{}``: it is identified
    by its name.
    """
    import hashlib

    if spec is None:
        return {}
    path = Path(spec)
    if not path.exists():
        return {}
    files = (
        [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    )
    digests = {}
    for file in files:
        size = file.stat().st_size
        digest = hashlib.sha256(str(size).encode())
        with open(file, "rb") as handle:
            if size <= _WHOLE_FILE_BYTES:
                digest.update(handle.read())
            else:
                for offset in (0, size // 2, size - _SAMPLE_BYTES):
                    handle.seek(offset)
                    digest.update(handle.read(_SAMPLE_BYTES))
        digests[file.name] = digest.hexdigest()[:16]
    return digests
