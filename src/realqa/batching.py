"""Model inputs for Qwen2-VL: one image + prompt ids -> an example; examples -> a padded batch.

Scoring and training both build their batches here, so the model sees the same inputs in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .compat import accepts_token_types  # noqa: F401 (its old home: still importable from here)
from .media import DEFAULT_MAX_IMAGE_PIXELS, MediaError, load_image
from .model import MAX_PIXELS, MIN_PIXELS
from .preprocessing import DEFAULT_PROFILE, profile

IGNORE_INDEX = -100  # label value the loss skips (prompt and padding positions)


@dataclass
class Example:
    """One conversation with its image: prompt ids (image tokens expanded), patches, optional labels."""

    input_ids: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    labels: list[int] | None = None
    extra: dict = field(default_factory=dict)


def processor_size(min_pixels: int, max_pixels: int) -> dict:
    """The Qwen2-VL image processor's ``size`` for these pixel bounds."""
    return {"shortest_edge": min_pixels, "longest_edge": max_pixels}


class ExampleBuilder:
    """Turns (image, token ids with one image placeholder) into an :class:`Example`.

    The decoded image is prepared by the model's preprocessing profile (:mod:`realqa.preprocessing`),
    then goes through the checkpoint's own image processor with the given pixel bounds; the single
    image placeholder token is repeated once per visual token the image produces.
    """

    def __init__(
        self,
        image_processor,
        image_token_id: int,
        *,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        preprocessing: str = DEFAULT_PROFILE,
    ):
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
        self.image_processor = image_processor
        self.image_token_id = image_token_id
        self.size = processor_size(min_pixels, max_pixels)
        self.max_image_pixels = max_image_pixels
        self.profile = profile(preprocessing)
        self.merge = getattr(image_processor, "merge_size", 2)

    def build(self, image, label: str, input_ids: Sequence[int], labels: Sequence[int] | None = None) -> Example:
        """Raises :class:`MediaError` naming ``label`` when the image cannot be used."""
        picture = load_image(image, max_pixels=self.max_image_pixels, label=label, prepare=self.profile.prepare)
        try:
            features = self.image_processor(images=[picture], size=self.size, return_tensors="pt")
        except ValueError as err:  # e.g. an aspect ratio beyond what the processor accepts
            raise MediaError(label, f"image cannot be preprocessed ({err})") from None
        grid = features["image_grid_thw"]
        count = int(grid[0].prod()) // self.merge**2
        ids = list(input_ids)
        if ids.count(self.image_token_id) != 1:
            raise ValueError(f"expected one image placeholder in the prompt, found {ids.count(self.image_token_id)}")
        at = ids.index(self.image_token_id)
        expanded = ids[:at] + [self.image_token_id] * count + ids[at + 1 :]
        if labels is not None:
            labels = list(labels)
            labels = labels[:at] + [IGNORE_INDEX] * count + labels[at + 1 :]
        return Example(expanded, features["pixel_values"], grid, labels)


def collate(
    examples: Sequence[Example],
    *,
    pad_id: int,
    image_token_id: int,
    padding_side: str = "left",
    token_types: bool = True,
) -> dict[str, torch.Tensor]:
    """Pad to the longest example. Scoring pads left, so every row's next token comes at the same
    position; training may pad either side."""
    longest = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    with_labels = examples[0].labels is not None
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long) if with_labels else None
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        span = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        input_ids[row, span] = torch.tensor(example.input_ids)
        attention_mask[row, span] = 1
        if labels is not None:
            labels[row, span] = torch.tensor(example.labels)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.cat([e.pixel_values for e in examples]),
        "image_grid_thw": torch.cat([e.image_grid_thw for e in examples]),
    }
    if token_types:
        batch["mm_token_type_ids"] = (input_ids == image_token_id).long()
    if labels is not None:
        batch["labels"] = labels
    return batch
