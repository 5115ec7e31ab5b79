"""Images -> model examples ahead of the model: in worker processes, or in this one.

Decoding a JPEG and running the Qwen2-VL image processor costs ~20 ms of CPU per image, about what
a GPU needs to score one, so done in line it halves throughput. Here a ``DataLoader`` runs
:class:`~realqa.batching.ExampleBuilder` in ``workers`` processes while the model works; examples
come back in input order. A bad input comes back as its :class:`~realqa.media.MediaError`,
never raised, so it becomes that input's error row and the run goes on.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

import torch

from .batching import Example, ExampleBuilder
from .media import MediaError

__all__ = ["Prepared", "default_workers", "input_label", "prepare_examples"]

Prepared = tuple[int, str, "Example | MediaError"]  # (input index, label, example or the reason it failed)


def default_workers(device: str | torch.device) -> int:
    """On a GPU, enough processes to decode ahead of it (one core stays with the main process);
    on a CPU the model's own threads use the cores, so images are prepared in line."""
    if torch.device(device).type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def prepare_examples(
    images: Iterable,
    builder: ExampleBuilder,
    prompt_ids: Sequence[int],
    *,
    dtype: torch.dtype,
    workers: int = 0,
    chunk: int = 8,
    ahead: int = 32,
) -> Iterator[Prepared]:
    """For each image, in input order: ``(index, label, Example or MediaError)``.

    ``pixel_values`` are cast to ``dtype`` (the model's) where they are made: half the bytes to
    move between processes in bf16, and the same values the model would cast them to. With
    ``workers`` > 0 the images are handed out ``chunk`` at a time and about ``ahead`` images are
    prepared ahead of the consumer.
    """
    job = _Build(builder, list(prompt_ids), dtype)
    if workers > 0:
        images = list(images)
        if len(images) <= chunk:
            workers = 0  # one chunk: starting processes would cost more than it saves
    if workers <= 0:
        for index, image in enumerate(images):
            label = input_label(index, image)
            yield (index, label, job(image, label))
        return
    from torch.utils.data import DataLoader

    items = images
    dataset = _Inputs(items, [input_label(i, image) for i, image in enumerate(items)], job)
    loader = DataLoader(dataset, batch_size=chunk, shuffle=False, num_workers=workers, collate_fn=_as_list,
                        prefetch_factor=max(2, -(-ahead // (chunk * workers))), worker_init_fn=_one_thread)
    for part in loader:
        yield from part


class _Build:
    """Builds one example; a bad input's error is returned, not raised (it must cross processes)."""

    def __init__(self, builder: ExampleBuilder, prompt_ids: list[int], dtype: torch.dtype):
        self.builder, self.prompt_ids, self.dtype = builder, prompt_ids, dtype

    def __call__(self, image, label: str) -> "Example | MediaError":
        try:
            example = self.builder.build(image, label, self.prompt_ids)
        except MediaError as err:
            return err
        example.pixel_values = example.pixel_values.to(self.dtype)
        return example


class _Inputs(torch.utils.data.Dataset):
    def __init__(self, items: list, labels: list[str], job: _Build):
        self.items, self.labels, self.job = items, labels, job

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Prepared:
        return (index, self.labels[index], self.job(self.items[index], self.labels[index]))


def _as_list(batch: list) -> list:
    return batch


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # many workers x many threads would oversubscribe the cores


def input_label(index: int, image) -> str:
    """The identity a result row keeps: the path as given, or the position of an in-memory image."""
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        return os.fsdecode(image)
    return f"<image {index}>"
