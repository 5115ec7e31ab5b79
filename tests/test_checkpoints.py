"""Checkpoints load whatever key layout they were saved in, or fail loudly (realqa.checkpoints).

The official RealQA adapters were saved under transformers 4.4x (``model.layers.*``, ``visual.*``);
transformers 5.x names the same modules ``model.language_model.layers.*`` / ``model.visual.*``.
Each test builds its adapter or checkpoint from the tiny random model, offline, and compares logits
with a merge done by hand from the file's own tensors.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from realqa.checkpoints import load_adapter, split_hub_path
from realqa.model import build_tiny_model, load_model, read_card

PREFIX = "base_model.model."
ADAPTER_FILE = "adapter_model.safetensors"
# Text attention/MLP and vision blocks: qkv in both towers, fc1 in Qwen2-VL's, gate_proj in Qwen2.5-VL's
# (and the text MLP's).
TARGETS = ["q_proj", "v_proj", "qkv", "fc1", "gate_proj"]
# LLaMA-Factory's form, "^(?!.*{frozen}).*(?:{targets}).*": it still matches under 5.x names, so
# PeftModel.from_pretrained injects LoRA, loads none of the 4.4x-named tensors, and only warns.
LLAMAFACTORY_REGEX = r"^(?!.*merger).*(?:q_proj|v_proj|qkv|fc1|gate_proj).*"
# A regex anchored on 4.4x names: under 5.x names it matches nothing at all.
ANCHORED_REGEX = r"^(?:model\.layers|visual\.blocks)\.\d+\.(?:self_attn|attn|mlp)\.(?:q_proj|v_proj|qkv|fc1|gate_proj)$"


def to_old_name(name: str) -> str:
    """A transformers 5.x module/parameter name as transformers 4.4x wrote it."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def to_new_name(name: str) -> str:
    """The inverse of :func:`to_old_name`, written out independently of realqa's own mapping."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model.") and not name.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + name[len("model."):]
    return name


@pytest.fixture(scope="module")
def tiny25_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2.5"), architecture="qwen2_5_vl")


def fixed_inputs(model_dir: Path) -> dict:
    """One text + image input: a 56x56 image is 16 patches, 4 image tokens after the 2x2 merge."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (56, 56, 3), dtype=np.uint8))
    features = processor(images=[image], return_tensors="pt")
    tokens = features["image_grid_thw"].prod().item() // 4
    ids = tokenizer.convert_tokens_to_ids
    input_ids = (tokenizer("Rate this image:")["input_ids"] + [ids("<|vision_start|>")]
                 + [ids("<|image_pad|>")] * tokens + [ids("<|vision_end|>")] + tokenizer(" quality")["input_ids"])
    input_ids = torch.tensor([input_ids])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "pixel_values": features["pixel_values"], "image_grid_thw": features["image_grid_thw"]}
    from transformers import Qwen2VLForConditionalGeneration

    if "mm_token_type_ids" in inspect.signature(Qwen2VLForConditionalGeneration.forward).parameters:
        inputs["mm_token_type_ids"] = (input_ids == ids("<|image_pad|>")).long()  # 1 = image, for M-RoPE
    return inputs


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def make_adapter(model_dir: Path, out: Path, *, old_layout: bool, seed: int = 1, regex: str = ANCHORED_REGEX) -> Path:
    """A rank-4 LoRA with random non-zero A and B on both towers, saved by peft; in 4.4x layout when asked
    (keys renamed, ``target_modules`` the regex LLaMA-Factory would write)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = load_model(model_dir, device="cpu").model
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    peft_model.save_pretrained(out)
    if old_layout:
        weights = load_file(out / ADAPTER_FILE)
        save_file(
            {PREFIX + to_old_name(key[len(PREFIX) :]): value for key, value in weights.items()}, out / ADAPTER_FILE
        )
        config = json.loads((out / "adapter_config.json").read_text())
        config["target_modules"] = regex
        (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def merged_by_hand(model_dir: Path, adapter: Path):
    """The base model with W + (alpha / r) * B @ A added for every module of the adapter file."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(adapter / ADAPTER_FILE)
    model = load_model(model_dir, device="cpu").model
    modules = dict(model.named_modules())
    merged = 0
    with torch.no_grad():
        for key, a in weights.items():
            if key.endswith(".lora_A.weight"):
                module = modules[to_new_name(key[len(PREFIX):-len(".lora_A.weight")])]
                b = weights[key.replace(".lora_A.", ".lora_B.")]
                # A convolution's LoRA (LLaMA-Factory's "proj" also names the patch embedding's Conv3d):
                # A holds the kernel, B is 1x1x1, so the update is B @ A over the flattened kernel.
                module.weight += (scale * b.flatten(1) @ a.flatten(1)).view_as(module.weight)
                merged += 1
    assert merged == len(weights) // 2
    return model


def assert_loads_like_hand_merge(model_dir: Path, adapter: Path) -> None:
    inputs = fixed_inputs(model_dir)
    loaded = logits(load_model(model_dir, str(adapter), device="cpu").model, inputs)
    expected = logits(merged_by_hand(model_dir, adapter), inputs)
    base = logits(load_model(model_dir, device="cpu").model, inputs)
    assert torch.allclose(loaded, expected, atol=1e-5, rtol=1e-4)
    assert (loaded - base).abs().max() > 1e-3  # the adapter changes the model


@pytest.mark.parametrize("old_layout, regex", [(True, LLAMAFACTORY_REGEX), (True, ANCHORED_REGEX), (False, None)],
                         ids=["4.4x-keys-llamafactory-regex", "4.4x-keys-anchored-regex", "current-keys"])
def test_adapter_loads_like_a_merge_by_hand_qwen2_vl(tiny_model_dir, tmp_path, old_layout, regex):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", old_layout=old_layout, regex=regex)
    keys = list(load_file(adapter / ADAPTER_FILE))
    assert any(k.startswith(PREFIX + ("visual.blocks." if old_layout else "model.visual.blocks.")) for k in keys)
    assert any(k.startswith(PREFIX + ("model.layers." if old_layout else "model.language_model.layers.")) for k in keys)
    assert_loads_like_hand_merge(tiny_model_dir, adapter)


@pytest.mark.parametrize("old_layout", [True, False], ids=["transformers-4.4x-keys", "current-keys"])
def test_adapter_loads_like_a_merge_by_hand_qwen2_5_vl(tiny25_dir, tmp_path, old_layout):
    adapter = make_adapter(tiny25_dir, tmp_path / "adapter", old_layout=old_layout)
    assert any(".visual.blocks.0.mlp.gate_proj." in k or k.startswith(PREFIX + "visual.blocks.0.mlp.gate_proj.")
               for k in load_file(adapter / ADAPTER_FILE))
    assert_loads_like_hand_merge(tiny25_dir, adapter)


def test_unmerged_adapter_gives_the_merged_logits(tiny_model_dir, tmp_path):
    """The path quantized models take: the PeftModel kept, adapters applied per forward."""
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", old_layout=True)
    inputs = fixed_inputs(tiny_model_dir)
    unmerged = load_adapter(load_model(tiny_model_dir, device="cpu").model, str(adapter), merge=False)
    assert type(unmerged).__name__.startswith("PeftModel")
    lora_b = [p for n, p in unmerged.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    assert torch.allclose(logits(unmerged, inputs), logits(merged_by_hand(tiny_model_dir, adapter), inputs),
                          atol=1e-5, rtol=1e-4)


def test_rank_and_alpha_patterns_written_for_old_names_still_apply(tiny_model_dir, tmp_path):
    """alpha_pattern keys are regexes on the training-time names: an alpha there must not be lost."""
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", old_layout=True)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["alpha_pattern"] = {r"model\.layers\.0\.self_attn\.q_proj": 32}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    peft_model = load_adapter(load_model(tiny_model_dir, device="cpu").model, str(adapter), merge=False)
    modules = dict(peft_model.named_modules())
    assert modules["base_model.model.model.language_model.layers.0.self_attn.q_proj"].scaling["default"] == 8.0
    assert modules["base_model.model.model.language_model.layers.1.self_attn.q_proj"].scaling["default"] == 2.0


def _rewrite(adapter: Path, change) -> None:
    weights = load_file(adapter / ADAPTER_FILE)
    save_file(change(dict(weights)), adapter / ADAPTER_FILE)


def test_adapter_whose_keys_map_to_nothing_is_refused(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", old_layout=False)
    count = len(load_file(adapter / ADAPTER_FILE))
    _rewrite(adapter, lambda w: {k.replace("base_model.model.model.", "base_model.model.encoder.")
                                 .replace("layers.", "block.").replace("blocks.", "block."): v for k, v in w.items()})
    with pytest.raises(ValueError) as err:
        load_model(tiny_model_dir, str(adapter), device="cpu")
    message = str(err.value)
    assert f"0 of {count} adapter tensors map onto this Qwen2VLForConditionalGeneration" in message
    assert message.startswith(f"{adapter}: ") and "not mapped: base_model.model.encoder." in message


def test_adapter_with_one_unmappable_key_is_refused_naming_it(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", old_layout=True)
    count = len(load_file(adapter / ADAPTER_FILE))
    stray = "base_model.model.model.layers.0.self_attn.nonexistent.lora_A.weight"
    _rewrite(adapter, lambda w: {**w, stray: torch.zeros(4, 64)})
    with pytest.raises(ValueError) as err:
        load_model(tiny_model_dir, str(adapter), device="cpu")
    assert f"{count} of {count + 1} adapter tensors map" in str(err.value)
    assert f"not mapped: {stray}." in str(err.value)


def test_adapter_missing_a_tensor_is_refused(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", old_layout=True)
    gone = "base_model.model.visual.blocks.1.mlp.fc1.lora_B.weight"
    _rewrite(adapter, lambda w: {k: v for k, v in w.items() if k != gone})
    with pytest.raises(ValueError, match="1 adapter parameters get no tensor from the file: "
                                         r"base_model\.model\.model\.visual\.blocks\.1\.mlp\.fc1\.lora_B\.weight"):
        load_model(tiny_model_dir, str(adapter), device="cpu")


def test_adapter_with_a_wrong_shape_is_refused(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", old_layout=False)
    key = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    _rewrite(adapter, lambda w: {**w, key: torch.zeros(4, 65)})
    with pytest.raises(ValueError, match=r"1 tensors have the wrong shape: .*q_proj\.lora_A\.weight: "
                                         r"file \(4, 65\) vs model \(4, 64\)"):
        load_model(tiny_model_dir, str(adapter), device="cpu")


def test_adapter_whose_init_rewrites_the_base_is_refused(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", old_layout=False)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "init_lora_weights": "pissa"}))
    with pytest.raises(ValueError, match="init_lora_weights='pissa'"):
        load_model(tiny_model_dir, str(adapter), device="cpu")


def test_modules_to_save_load_with_old_names(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    base = load_model(tiny_model_dir, device="cpu").model
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"],
                                                 init_lora_weights=False))
    with torch.no_grad():
        peft_model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(2)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    _rewrite(adapter, lambda w: {PREFIX + to_old_name(k[len(PREFIX):]): v for k, v in w.items()})
    loaded = load_model(tiny_model_dir, str(adapter), device="cpu").model
    assert torch.equal(loaded.lm_head.weight, load_file(adapter / ADAPTER_FILE)[PREFIX + "lm_head.weight"])


# ---------------------------------------------------------------- full checkpoints


def _full_checkpoint(model_dir: Path, out: Path, rename, drop: str | None = None) -> dict:
    """A copy of ``model_dir`` whose weights file holds the model's tensors under ``rename``d keys."""
    shutil.copytree(model_dir, out)
    state = {k: v.clone() for k, v in load_model(model_dir, device="cpu").model.state_dict().items()}
    (out / "model.safetensors").unlink()
    save_file(
        {rename(k): v for k, v in state.items() if k != drop}, out / "model.safetensors", metadata={"format": "pt"}
    )
    return state


@pytest.mark.parametrize("rename", [to_old_name, lambda name: name], ids=["transformers-4.4x-keys", "current-keys"])
def test_full_checkpoint_loads_with_identical_weights(tiny_model_dir, tmp_path, rename):
    state = _full_checkpoint(tiny_model_dir, tmp_path / "full", rename)
    if rename is to_old_name:
        assert "visual.blocks.0.attn.qkv.weight" in load_file(tmp_path / "full" / "model.safetensors")
    loaded = load_model(tmp_path / "full", device="cpu").model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_full_checkpoint_missing_a_tensor_is_refused_naming_it(tiny_model_dir, tmp_path):
    _full_checkpoint(
        tiny_model_dir, tmp_path / "full", to_old_name, drop="model.language_model.layers.1.mlp.down_proj.weight"
    )
    with pytest.raises(ValueError) as err:
        load_model(tmp_path / "full", device="cpu")
    assert "1 weights missing from the checkpoint: model.language_model.layers.1.mlp.down_proj.weight" in str(err.value)
    assert str(tmp_path / "full") in str(err.value)


def test_full_checkpoint_with_a_wrong_shape_or_stray_tensor_is_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "full"
    _full_checkpoint(tiny_model_dir, out, to_old_name)
    weights = load_file(out / "model.safetensors")
    weights["model.norm.weight"] = torch.ones(7)
    weights["visual.extra.weight"] = torch.ones(3)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        load_model(out, device="cpu")
    message = str(err.value)
    assert "1 weights with the wrong shape: model.language_model.norm.weight: checkpoint (7,) vs model (64,)" in message
    assert "1 checkpoint weights the model does not have: model.visual.extra.weight" in message


def test_tied_lm_head_is_not_a_missing_weight(tiny_model_dir, tmp_path):
    out = tmp_path / "tied"
    _full_checkpoint(tiny_model_dir, out, to_old_name, drop="lm_head.weight")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    model = load_model(out, device="cpu").model
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, load_file(out / "model.safetensors")["model.embed_tokens.weight"])


# ---------------------------------------------------------------- hub ids with a subfolder


@pytest.mark.parametrize("spec, expected", [
    ("MingxingLi/RealQA-models/qwen2vl-7b/lora", ("MingxingLi/RealQA-models", "qwen2vl-7b/lora")),
    ("MingxingLi/RealQA-models", ("MingxingLi/RealQA-models", None)),
    ("Qwen/Qwen2-VL-7B-Instruct", ("Qwen/Qwen2-VL-7B-Instruct", None)),
    ("/abs/path/to/adapter", ("/abs/path/to/adapter", None)),
    ("./rel/path/adapter", ("./rel/path/adapter", None)),
    ("owner/name//x", ("owner/name//x", None)),
    ("owner/name/../x", ("owner/name/../x", None)),
])
def test_split_hub_path(spec, expected):
    assert split_hub_path(spec) == expected


def test_existing_local_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert split_hub_path("owner/name/sub") == ("owner/name/sub", None)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty offline hub cache; ``put(repo, subfolder, source)`` adds a snapshot folder to it.

    huggingface_hub reads its environment at import, so its constants are patched as well.
    """
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def put(repo: str, subfolder: str, source: Path) -> Path:
        commit = "0123456789abcdef0123456789abcdef01234567"
        root = cache / ("models--" + repo.replace("/", "--"))
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(commit)
        target = root / "snapshots" / commit / subfolder
        shutil.copytree(source, target)
        return target

    return put


def test_adapter_from_a_hub_subfolder_loads(tiny_model_dir, tmp_path, offline_hub):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", old_layout=True)
    (adapter / "realqa_card.json").write_text(json.dumps({"description": "from the hub subfolder"}))
    offline_hub("owner/name", "sub/folder", adapter)
    inputs = fixed_inputs(tiny_model_dir)
    loaded = load_model(tiny_model_dir, "owner/name/sub/folder", device="cpu")
    assert torch.allclose(logits(loaded.model, inputs), logits(merged_by_hand(tiny_model_dir, adapter), inputs),
                          atol=1e-5, rtol=1e-4)
    assert loaded.card.description == "from the hub subfolder"


def test_base_model_from_a_hub_subfolder_loads(tiny_model_dir, offline_hub):
    offline_hub("owner/models", "tiny/qwen2-vl", tiny_model_dir)
    inputs = fixed_inputs(tiny_model_dir)
    from_hub = load_model("owner/models/tiny/qwen2-vl", device="cpu")
    assert torch.equal(logits(from_hub.model, inputs), logits(load_model(tiny_model_dir, device="cpu").model, inputs))
    assert from_hub.card.description.startswith("Tiny qwen2_vl-architecture model")  # its card, from the hub


def test_folder_without_adapter_config_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="no adapter_config.json in this folder"):
        load_model(tiny_model_dir, str(tiny_model_dir), device="cpu")


def test_read_card_from_the_hub_absent_or_offline_is_none(tmp_path, offline_hub):
    folder = tmp_path / "with-card"
    folder.mkdir()
    (folder / "realqa_card.json").write_text(json.dumps({"description": "hub card"}))
    offline_hub("owner/model", "", folder)
    (tmp_path / "no-card").mkdir()
    offline_hub("owner/bare", "v1", tmp_path / "no-card")
    assert read_card("owner/model").description == "hub card"
    assert read_card("owner/bare/v1") is None  # cached repo without a card
    assert read_card("nobody/nothing/sub") is None  # offline, nothing cached
    assert read_card(tmp_path / "no-card") is None  # local folder without a card


def test_missing_hub_adapter_fails_clearly(tiny_model_dir, offline_hub):
    with pytest.raises(ValueError, match="nobody/nothing/sub: no adapter_config.json on the hub"):
        load_model(tiny_model_dir, "nobody/nothing/sub", device="cpu")
