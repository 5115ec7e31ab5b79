"""Images -> model examples -> host batches, ahead of the model.

Decoding a JPEG and running the Qwen2-VL image processor costs ~20 ms of CPU per image, about what
a GPU needs to score one, so done in line it halves throughput. Here a ``DataLoader`` runs
:class:`~realqa.batching.ExampleBuilder` in ``workers`` processes while the model works; examples
come back in input order. A bad input comes back as its :class:`~realqa.media.MediaError`,
never raised, so it becomes that input's error row and the run goes on.

The step after, examples -> padded batch tensors, can run ahead too: :func:`run_ahead` moves any
iterator into a background thread, and :class:`HostBuffers` is a small pool of reusable host
buffers (page-locked when the model is on CUDA) that batches are collated into, so the copy to the
GPU is asynchronous and the GPU need not wait for the CPU between batches.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Iterable, Iterator, Sequence, TypeVar

import torch

from .batching import Example, ExampleBuilder
from .media import MediaError

__all__ = ["HostBuffers", "Prepared", "default_workers", "input_label", "prepare_examples", "run_ahead"]

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


# ---------------------------------------------------------------- host batches ahead of the model

T = TypeVar("T")


class HostBuffers:
    """A pool of ``slots`` reusable host buffers that batches are collated into.

    ``take()`` blocks until a slot is free; ``slot.empty(name, shape, dtype)`` is a view of that
    slot's buffer for ``name`` (grown when too small, so after the first batches nothing is
    allocated); ``give_back(slot)`` returns it once the batch no longer needs it. With ``pinned``
    the buffers are page-locked, so ``.to("cuda", non_blocking=True)`` copies them asynchronously;
    ``give_back(slot, after=event)`` then makes the next taker wait for that CUDA event (the copy's
    end) before it writes into the slot again.
    """

    def __init__(self, slots: int, *, pinned: bool = False):
        if slots < 1:
            raise ValueError(f"need at least one slot, got {slots}")
        self.pinned = pinned
        self._free: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        for _ in range(slots):
            self._free.put(_Slot(pinned))

    def take(self) -> "_Slot | None":
        """A free slot, waiting for one; None once the pool is closed (a producer's cue to quit)."""
        while True:
            try:
                slot = self._free.get(timeout=0.1)
            except queue.Empty:
                if self._closed.is_set():
                    return None
                continue
            slot.wait()
            return slot

    def close(self) -> None:
        """Wake whoever waits in :meth:`take` with None: the consumer has stopped."""
        self._closed.set()

    def give_back(self, slot: "_Slot", after=None) -> None:
        slot.event = after
        self._free.put(slot)


class _Slot:
    def __init__(self, pinned: bool):
        self.pinned = pinned
        self.event = None  # a CUDA event the last reader's copy ends with
        self._buffers: dict[str, torch.Tensor] = {}

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()
            self.event = None

    def empty(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype``: a view of this slot's buffer ``name``."""
        numel = 1
        for size in shape:
            numel *= int(size)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            capacity = max(numel, int(buffer.numel() * 1.25) if buffer is not None and buffer.dtype == dtype else 0)
            buffer = torch.empty(max(capacity, 1), dtype=dtype, pin_memory=self.pinned)
            self._buffers[name] = buffer
        return buffer[:numel].view(tuple(int(size) for size in shape))

    def buffers(self) -> dict[str, torch.Tensor]:
        """The buffers as they stand (for tests: reuse keeps their storage)."""
        return dict(self._buffers)


_DONE = object()


def run_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    Items come in order; an exception raised while producing them is raised here, at the point it
    would have been; closing this generator (or dropping it) stops the thread at its next item.
    """
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            put((_DONE, err))
            return
        put((_DONE, None))

    thread = threading.Thread(target=produce, name="realqa-run-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        close = getattr(items, "close", None)
        thread.join(timeout=5.0)
        if close is not None and not thread.is_alive():
            close()  # the producer's own cleanup (e.g. its worker processes), in this thread
