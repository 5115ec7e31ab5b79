"""Loading a scorer's parts (model, adapter, tokenizer, image processor, card) and the tiny test model.

Everything loads through ``from_pretrained``, a local folder or a hub id alike. The image side uses
the checkpoint's own image processor; the prompt side uses its tokenizer and chat template. (The
combined ``AutoProcessor`` is avoided on purpose: in transformers 5.x it also builds a video
processor that needs torchvision, which image scoring does not.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoints import check_loading_info, hub_file, hub_options, load_adapter, require_source
from .numeric import digit_token_ids
from .preprocessing import DEFAULT_PROFILE, UNCARDED_PROFILE, profile
from .tasks import DEFAULT_TASKS, Task

CARD_FILE = "realqa_card.json"
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
# RealQA's image resolution: 256 to 512 visual tokens after the 2x2 merge (28x28 pixels per token).
MIN_PIXELS = 200_704
MAX_PIXELS = 401_408


@dataclass
class ModelCard:
    """What a model folder says about itself: the tasks it answers and how it was trained."""

    tasks: dict[str, Task] = field(default_factory=lambda: dict(DEFAULT_TASKS))
    description: str = ""
    trained_on: list[str] = field(default_factory=list)
    # The image processor's pixel bounds the model was trained with; scoring uses them by default.
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    # The fine-grained attribute tasks (names in ``tasks``) and the chain-of-thought form trained.
    attributes: list[str] = field(default_factory=list)
    cot_form: str | None = None
    # The image pipeline before the image processor (realqa.preprocessing): realqa trains with its own.
    preprocessing: str = DEFAULT_PROFILE
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        profile(self.preprocessing)  # an unknown profile fails here, naming the known ones

    def to_dict(self) -> dict:
        return {
            "tasks": {name: task.to_dict() for name, task in self.tasks.items()},
            "description": self.description,
            "trained_on": self.trained_on,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "attributes": self.attributes,
            "cot_form": self.cot_form,
            "preprocessing": self.preprocessing,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        data = dict(data)
        tasks = {name: Task.from_dict({"name": name, **spec}) for name, spec in data.pop("tasks", {}).items()}
        return cls(
            tasks=tasks or dict(DEFAULT_TASKS),
            description=data.pop("description", ""),
            trained_on=list(data.pop("trained_on", [])),
            min_pixels=int(data.pop("min_pixels", MIN_PIXELS)),
            max_pixels=int(data.pop("max_pixels", MAX_PIXELS)),
            attributes=list(data.pop("attributes", [])),
            cot_form=data.pop("cot_form", None),
            # Cards written before profiles existed come from realqa's own training.
            preprocessing=data.pop("preprocessing", DEFAULT_PROFILE),
            extra=data,
        )

    def save(self, folder: str | Path) -> None:
        self.save_to(Path(folder, CARD_FILE))

    def save_to(self, file: str | Path) -> None:
        Path(file).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def find_card(model: str | Path, adapter: str | Path | None = None,
              card: str | Path | None = None) -> tuple[ModelCard, str | None]:
    """The card scoring follows and where it was found: ``card`` (a file or folder) when given, else
    the adapter's, else the base model's. Without any, the card of an uncarded checkpoint and None.

    An uncarded checkpoint gets the ``llamafactory`` preprocessing profile (every official RealQA
    checkpoint was trained that way) and realqa's default questions; :func:`load_model` says so.
    """
    if card is not None:
        path = Path(card)
        found = read_card(path) if path.is_dir() else _read_card_file(path)
        if found is None:
            raise ValueError(f"{card}: no {CARD_FILE} there")
        return found, str(card)
    for source in (adapter, model):
        found = read_card(source)
        if found is not None:
            return found, str(source)
    return ModelCard(preprocessing=UNCARDED_PROFILE, description="(no realqa card: defaults)"), None


def check_asked(card: ModelCard, card_source: str | None, task: str, *, decimals: int | None = None,
                cot: bool = False) -> None:
    """Refuse asking a carded model for what its card says it was not trained to answer.

    A card records the precision each score task was trained at: asked for fewer decimals, such a model
    still writes its own and the answer is cut (``3.`` read as 3 where it meant 3.47), asked for more it
    never writes them. It records its chain-of-thought form only when it was trained on reasoning
    answers. A checkpoint without a card (``card_source`` None) records neither, so it is asked as told.
    """
    if card_source is None or task not in card.tasks:
        return
    trained = card.tasks[task]
    if decimals is not None and trained.is_score and decimals != trained.decimals:
        raise ValueError(f"this model answers {task} with {trained.decimals} decimals (its card: the "
                         f"precision it was trained with); asked for {decimals} it would still write "
                         f"{trained.decimals} and its answers would be cut or misread: leave decimals unset")
    if cot and not card.cot_form:
        raise ValueError("this model's card names no chain-of-thought form: it was not trained to "
                         "reason before its score, so it cannot be asked for chain of thought (--cot)")


def uncarded_note(name: str, *, own_questions: bool = False) -> str:
    """What scoring a checkpoint without a card means, and how to give it the trained question.
    ``own_questions``: the inputs bring their questions (conversation files), so only the images are at stake."""
    note = (f"note: {name} has no realqa card ({CARD_FILE}). Images go through the 'llamafactory' preprocessing "
            "profile, as every official RealQA checkpoint was trained (--preprocessing realqa changes it).")
    if own_questions:
        return note + " Each example is asked its own question from the conversation file."
    return note + (" The questions are realqa's defaults, which the official models were not trained with: write a "
                   "card from the model's LLaMA-Factory conversation files (realqa data card koniq10k_test.json --out "
                   "CARD_DIR) and pass --card CARD_DIR, or benchmark those files directly (realqa bench "
                   "--conversations FILE ...), which asks each example's own question.")


def _read_card_file(path: Path) -> ModelCard | None:
    if not path.is_file():
        return None
    try:
        return ModelCard.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: invalid model card ({err})") from None


def read_card(folder: str | Path | None) -> ModelCard | None:
    """The card in a local folder or hub checkpoint (``owner/name[/sub/folder]``), or None when it has none.

    A hub card is downloaded alone (one small file); offline with nothing cached it counts as absent.
    """
    if folder is None:
        return None
    path = Path(folder, CARD_FILE)
    if not path.is_file():
        path = None if Path(folder).exists() else hub_file(folder, CARD_FILE)
    return None if path is None else _read_card_file(path)


@dataclass
class ScoringModel:
    """A loaded model with everything scoring needs."""

    model: torch.nn.Module
    tokenizer: object
    image_processor: object
    card: ModelCard
    digit_ids: list[int]
    name: str
    card_source: str | None = None  # where the card was found; None: no card, defaults (see find_card)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def pad_id(self) -> int:
        """The token batches are padded with: the tokenizer's pad token, else its end-of-text token."""
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def load_image_processor(model_id: str):
    """The checkpoint's Qwen2-VL image processor settings, always on the PIL backend.

    The torchvision backend resizes slightly differently, and transformers picks it whenever
    torchvision happens to be installed; one backend everywhere keeps scores reproducible across
    environments. (transformers 5.17's ``AutoImageProcessor`` also needs torchvision outright.)
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    repo, hub = hub_options(model_id)  # owner/name/sub/folder: a subfolder of a hub repo
    return Qwen2VLImageProcessorPil.from_pretrained(repo, **hub)


def load_model(
    model: str | Path,
    adapter: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    merge_adapter: bool = True,
    quantize: str | None = None,
    card: str | Path | None = None,
) -> ScoringModel:
    """Load a Qwen2-VL / Qwen2.5-VL checkpoint, an optional PEFT adapter, and their card.

    ``card`` (a ``realqa_card.json`` or its folder) replaces the checkpoint's own. Otherwise the
    adapter's card, when it has one, wins over the base model's: it describes what the fine-tuning
    taught. Without any card the default tasks of :mod:`realqa.tasks` are used with the
    ``llamafactory`` preprocessing profile (:func:`find_card`); :func:`realqa.engine.load_scorer` says so.
    ``quantize`` (``"8bit"`` or ``"4bit"``, CUDA only) loads the weights through bitsandbytes for
    smaller cards; an adapter then stays unmerged (merging into quantized weights would round it away).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    model_id = str(model)
    require_source(model_id)
    if adapter is not None:
        require_source(adapter, "adapter")
    device = str(device or default_device())
    torch_dtype = _resolve_dtype(dtype, device)
    load_options = {"dtype": torch_dtype, "attn_implementation": "sdpa"}
    if quantize is not None:
        load_options.update(quantization_options(quantize, device, torch_dtype))
        merge_adapter = False

    _refuse_adapter_as_model(model_id)
    repo, hub = hub_options(model_id)  # owner/name/sub/folder: a subfolder of a hub repo
    config = AutoConfig.from_pretrained(repo, **hub)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{model_id}: model type {config.model_type!r} is not supported; "
            f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    tokenizer = AutoTokenizer.from_pretrained(repo, **hub)
    image_processor = load_image_processor(model_id)
    # Every weight must load: transformers only logs missing ones and starts them from random values.
    # (Quantized loads keep transformers' own refusal of wrong shapes.)
    checked = {"output_loading_info": True, "ignore_mismatched_sizes": quantize is None}
    network, loading_info = AutoModelForImageTextToText.from_pretrained(repo, **hub, **load_options, **checked)
    check_loading_info(network, loading_info, model_id)
    if adapter is not None:
        # Mapped onto this model's layout and verified (PeftModel.from_pretrained silently loads nothing
        # from adapters saved under transformers 4.4x); merged for plain weights without per-forward overhead.
        network = load_adapter(network, adapter, merge=merge_adapter)
    name = model_id if adapter is None else f"{model_id}+{adapter}"
    found, source = find_card(model_id, adapter, card)
    if quantize is None:  # quantized weights are placed by device_map and cannot move
        network.to(device)
    network.eval()
    return ScoringModel(
        model=network,
        tokenizer=tokenizer,
        image_processor=image_processor,
        card=found,
        digit_ids=digit_token_ids(tokenizer),
        name=name,
        card_source=source,
    )


def _refuse_adapter_as_model(model_id: str) -> None:
    """A local LoRA output (adapter_config.json, no config.json) passed as the model: name its base.

    transformers would only say the folder has no ``model_type``. The base is named from the
    adapter's config (else the realqa card), never loaded in its place: a recorded path may be
    relative to wherever training ran, or stale.
    """
    from peft.utils import CONFIG_NAME

    folder = Path(model_id)
    if not (folder / CONFIG_NAME).is_file() or (folder / "config.json").is_file():
        return
    try:
        base = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError):
        base = None
    if not base:
        card = read_card(folder)
        base = card.extra.get("base_model") if card else None
    if base:
        raise ValueError(f"{model_id} is a LoRA adapter ({CONFIG_NAME}) for {base}: "
                         f"pass --model {base} --adapter {model_id}")
    raise ValueError(f"{model_id} is a LoRA adapter ({CONFIG_NAME}) that records no base model: "
                     f"pass --model BASE --adapter {model_id} with the model it was trained on")


QUANTIZE = ("8bit", "4bit")


def quantization_options(quantize: str, device: str, compute_dtype: torch.dtype) -> dict:
    """``from_pretrained`` options loading the weights in 8 or 4 bits with bitsandbytes (NF4 for 4 bits)."""
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantization {quantize!r}; use one of {', '.join(QUANTIZE)}")
    if not device.startswith("cuda"):
        raise ValueError(f"--quantize {quantize} needs a CUDA device (bitsandbytes), not {device!r}")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"--quantize {quantize} needs the bitsandbytes package: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    return {"quantization_config": config, "device_map": {"": device}}


# ---------------------------------------------------------------- the tiny test model

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# Renders the same text as Qwen2-VL-Instruct's template for single-turn image questions:
# a default system turn, image parts as <|vision_start|><|image_pad|><|vision_end|>, then the text.
# No whitespace control: the only newlines are the literal ones the format needs.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_corpus() -> list[str]:
    """Text the tiny tokenizer's merges are learned from: the prompts and answers it will see."""
    lines = ["You are a helpful assistant.", "system user assistant"]
    for task in DEFAULT_TASKS.values():
        lines += [task.question_text(), task.answer_text(task.low), task.answer_text(task.high)]
    return lines * 4


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer (every digit its own token)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator(_tiny_corpus(), trainer)
    learned = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=learned["vocab"],
        merges=[tuple(pair) for pair in learned["merges"]],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    architecture: str = "qwen2_vl",
    text_layers: int | None = None,
    vision_depth: int | None = None,
    vision_width: int = 32,
    vision_heads: int = 2,
) -> Path:
    """Save a Qwen2-VL (or Qwen2.5-VL) architecture model with random weights, its tokenizer,
    image processor and card.

    It loads through the same ``from_pretrained`` path as a real checkpoint; its scores are noise.
    ``layers`` sets both towers' depth unless ``text_layers`` / ``vision_depth`` say otherwise;
    ``vision_width`` and ``vision_heads`` size the vision blocks (the demo model trains a wider tower).
    """
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen2VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if architecture not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"architecture must be one of {', '.join(SUPPORTED_MODEL_TYPES)}, got {architecture!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    heads = 4
    head_dim = hidden_size // heads
    # M-RoPE splits each head's rotary half-dimension into (temporal, height, width) sections.
    half = head_dim // 2
    mrope_section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": layers if text_layers is None else text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section},
        "bos_token_id": None,
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": token_id("<|endoftext|>"),
    }
    depth = layers if vision_depth is None else vision_depth
    vision_shared = {"depth": depth, "num_heads": vision_heads, "patch_size": 14, "spatial_merge_size": 2,
                     "temporal_patch_size": 2}
    if architecture == "qwen2_vl":
        config_class = Qwen2VLConfig
        vision_config = {**vision_shared, "embed_dim": vision_width, "hidden_size": hidden_size, "mlp_ratio": 2}
    else:  # Qwen2.5-VL: windowed attention in the vision tower, full attention in its last block
        config_class = Qwen2_5_VLConfig
        vision_config = {**vision_shared, "hidden_size": vision_width, "intermediate_size": 2 * vision_width,
                         "out_hidden_size": hidden_size, "window_size": 56, "fullatt_block_indexes": [depth - 1]}
    config = config_class(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = token_id("<|im_end|>")
    model.generation_config.pad_token_id = token_id("<|endoftext|>")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(out)
    ModelCard(description=f"Tiny {architecture}-architecture model with random weights (seed {seed}); for tests only: "
                          "its scores are noise.").save(out)
    return out
