"""HTTP scoring service: FastAPI app, micro-batching queue, request limits.

``POST /score`` takes image uploads (multipart/form-data, repeatable field ``images``) and returns
one result row per image, in upload order. Requests that arrive together are merged into one model
batch by :class:`MicroBatcher` (at most ``max_batch`` images, waiting at most ``max_wait_ms`` for
more); the model runs in one worker thread, so the event loop keeps accepting, reading and
answering requests while it computes. Images are decoded from the uploaded bytes only: the service
never opens a path a client names.

Memory. Queued images wait as their uploaded (compressed) bytes, counted against a memory budget
(``max_queue_bytes``); each is decoded just before its model batch, one at a time, into exactly the
image a file on disk would give the scorer, so decoded pixels never wait in the queue. Admission
checks every upload's header and data without keeping pixels (JPEGs at 1/8 scale, PIL's draft mode;
the scorer never sees those). Memory freed after large images is handed back to the system.

Every limit breach is a 4xx for that request alone, with a JSON message saying which limit and image:
body or upload too large (413), too many images or pixels (413), wrong content type (415), empty,
truncated or undecodable image, or one the model's preprocessing refuses (422), bad or incomplete
form (400/422), body not received in time (408). A full queue or memory budget, too many requests
in progress, or a request the model could not finish in time is a 503 (JSON, with Retry-After).

Slow clients. An upload that sends nothing for ``idle_timeout`` seconds gets a 408; when
``max_connections`` requests are in progress a new one closes the longest-stalled upload (nothing
received for a second) instead of being refused, so stalled clients cannot lock others out. Under
:func:`run` a connection must also send its request headers within ``header_timeout`` seconds, and
connections still waiting for headers are closed first when more than ``max_connections`` are open.
"""

import asyncio
import contextlib
import ctypes
import functools
import http
import inspect
import io
import json
import logging
import math
import os
import time
import warnings
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from .media import MediaError, load_image
from .numeric import MAX_DECIMALS
from .results import STATUS_ERROR

log = logging.getLogger("realqa.serve")

MiB = 1024 * 1024
IMAGE_FIELD = "images"
OPTION_FIELDS = ("task", "decimals", "attributes", "cot")  # the form fields besides the images
ACCEPTED_TYPES = ("image/", "application/octet-stream")  # octet-stream: what clients send when unsure
STALLED_AFTER = 1.0  # seconds without a byte after which an upload or idle connection may be closed to make room
SLOW_AFTER = 0.25  # seconds after which an upload slower than MIN_UPLOAD_RATE may be closed to make room
MIN_UPLOAD_RATE = 32 * 1024  # bytes a second: slower uploads count as stalled while the server is full
DRAIN_LIMIT = MiB  # a refused request's body up to this size is read first, so the client gets the answer
TRIM_AFTER = 64 * MiB  # decoded bytes after which freed memory is handed back to the system
VALIDATING = 2  # uploads checked (decoded without keeping the pixels) at a time


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the service, how requests are merged into model batches, and
    what all requests together may hold."""

    max_images: int = 16  # uploads per request
    max_image_bytes: int = 20 * MiB  # one upload
    max_request_bytes: int = 80 * MiB  # the whole body, checked as it arrives
    max_image_pixels: int = 36_000_000  # width x height of one image, read from its header before decoding
    request_timeout: float = 60.0  # seconds from the request's start to its answer, body upload included
    max_batch: int | None = None  # images per model batch; default: the scorer's batch size
    max_wait_ms: float = 10.0  # how long the first queued image waits for others to join its batch
    max_queue: int = 128  # images admitted and not yet scored; beyond it new requests get a 503
    max_queue_bytes: int = 512 * MiB  # memory budget: uploaded bytes of admitted requests until answered
    max_connections: int = 64  # requests in progress (and, under `run`, open connections) before stalled ones go
    idle_timeout: float = 10.0  # seconds an upload may send nothing before it is answered 408
    header_timeout: float = 10.0  # seconds from connecting to the end of the request headers (under `run`)

    def __post_init__(self) -> None:
        for name in ("max_images", "max_image_bytes", "max_request_bytes", "max_image_pixels", "max_queue",
                     "max_queue_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.request_timeout > 0 or self.max_wait_ms < 0:
            raise ValueError("request_timeout must be > 0 and max_wait_ms >= 0")
        if not (self.idle_timeout > 0 and self.header_timeout > 0):
            raise ValueError("idle_timeout and header_timeout must be > 0")


class RequestError(Exception):
    """A request the service refuses: answered with ``status`` and ``{"detail": ..., "errors": [...]}``.

    ``close``: the body may be partly unread, so the connection cannot carry another request.
    """

    def __init__(self, status: int, detail: str, errors: Sequence[dict] = (), headers: dict | None = None,
                 close: bool = False):
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, list(errors), headers
        self.close = close or status in (408, 413)

    def body(self) -> dict:
        return {"detail": self.detail, **({"errors": self.errors} if self.errors else {})}


class ImageRejected(Exception):
    """One upload that cannot be scored: it does not decode, or the model's preprocessing refuses it."""

    def __init__(self, name: str, problem: str, stage: str):
        super().__init__(name, problem, stage)
        self.name, self.problem, self.stage = name, problem, stage


class ScoringFailed(RuntimeError):
    """The model failed on a batch (not the fault of one image)."""


def _busy(why: str) -> RequestError:
    return RequestError(503, f"server busy: {why}; retry shortly", headers={"Retry-After": "1"})


# ---------------------------------------------------------------- micro-batching


@dataclass
class _Upload:
    name: str
    data: bytes


@dataclass
class _Item:
    upload: _Upload
    options: tuple  # images with the same options can share a model batch
    future: asyncio.Future
    request: int  # which request it came with: batches take the requests' images in turn


class BatchStats:
    """Counts of what the model was asked: requests, images, and the size of every model batch."""

    def __init__(self) -> None:
        self.requests = 0
        self.images = 0
        self.batch_sizes: Counter[int] = Counter()

    @property
    def batches(self) -> int:
        return sum(self.batch_sizes.values())

    def to_dict(self) -> dict:
        batches = self.batches
        return {
            "requests": self.requests,
            "images": self.images,
            "batches": batches,
            "images_per_batch": (round(sum(k * n for k, n in self.batch_sizes.items()) / batches, 3)
                                 if batches else None),
            "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())},
        }


class MicroBatcher:
    """Merges images from concurrent requests into model batches run in one worker thread.

    A batch starts with the oldest waiting image and takes images with the same options until
    ``max_batch``, one from each waiting request in turn (so a one-image request never waits behind
    all the batches of a large one); when fewer are waiting it waits up to ``max_wait`` seconds for
    more. While the model computes, new images queue up, so under load batches fill without waiting.

    Images wait as uploaded bytes (admitted with :meth:`admit` against ``max_queue`` images and
    ``max_queue_bytes`` bytes) and are decoded in the worker thread as the scorer takes them.
    """

    def __init__(self, scorer, *, max_batch: int, max_wait: float, max_queue: int,
                 max_queue_bytes: int = ServeLimits.max_queue_bytes,
                 max_image_pixels: int = ServeLimits.max_image_pixels):
        self.scorer = scorer
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.max_queue_bytes, self.max_image_pixels = max_queue_bytes, max_image_pixels
        self.stats = BatchStats()
        self._waiting: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._in_flight = 0  # admitted images not yet answered (being read, checked, waiting or in the model)
        self._bytes = 0  # their uploaded bytes
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realqa-model")
        self._task: asyncio.Task | None = None
        self._requests = 0

    @property
    def load(self) -> int:
        return self._in_flight

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._worker.shutdown(wait=False, cancel_futures=True)

    def check_room(self, count: int, nbytes: int = 0) -> None:
        """Raise a 503 when ``count`` more images of ``nbytes`` would overfill the queue or its budget
        (a 413 when ``nbytes`` alone is over the budget: waiting would not help)."""
        if nbytes > self.max_queue_bytes:
            raise RequestError(413, f"uploads total {_mib(nbytes)}, more than the service's memory budget for "
                                    f"queued images ({_mib(self.max_queue_bytes)}); send fewer or smaller images")
        if self._in_flight + count > self.max_queue:
            raise _busy(f"{self._in_flight} images queued (limit {self.max_queue})")
        if self._bytes + nbytes > self.max_queue_bytes:
            raise _busy(f"queued uploads hold {_mib(self._bytes)} (memory budget {_mib(self.max_queue_bytes)})")

    @contextlib.contextmanager
    def admit(self, count: int, nbytes: int):
        """Reserve queue room for ``count`` images of ``nbytes`` uploaded bytes while the block runs."""
        self.check_room(count, nbytes)
        self._in_flight += count
        self._bytes += nbytes
        try:
            yield
        finally:
            self._in_flight -= count
            self._bytes -= nbytes

    async def score(self, uploads: Sequence[_Upload], options: dict) -> list:
        """Queue admitted uploads and wait for their :class:`~realqa.results.ScoreResult` rows, in order.

        Raises a 422 :class:`RequestError` naming every upload that does not decode or that the
        model's preprocessing refuses, and :class:`ScoringFailed` when the model fails the batch.
        """
        loop = asyncio.get_running_loop()
        key = tuple(sorted(options.items()))
        self._requests += 1
        items = [_Item(upload, key, loop.create_future(), self._requests) for upload in uploads]
        self.stats.requests += 1
        self._waiting.extend(items)
        self._arrived.set()
        try:
            outcomes = await asyncio.gather(*(item.future for item in items), return_exceptions=True)
        finally:
            for item in items:  # a cancelled request's images are skipped when their batch forms
                item.future.cancel()
        rejected = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, ImageRejected)]
        if rejected:
            stages = {o.stage for _, o in rejected}
            what = " or ".join(sorted(stages, key=["decoded", "preprocessed for the model"].index))
            raise RequestError(422, f"image(s) could not be {what}",
                               [{"index": i, "image": o.name, "error": o.problem} for i, o in rejected])
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self.stats.images += len(batch)
            self.stats.batch_sizes[len(batch)] += 1
            options = dict(batch[0].options)
            try:
                outcomes = await loop.run_in_executor(self._worker, self._score_batch, batch, options)
            except Exception as err:  # the model failed this batch; the service goes on with the next
                log.exception("scoring a batch of %d images failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(ScoringFailed(f"scoring failed: {type(err).__name__}: {err}"))
                continue
            for item, outcome in zip(batch, outcomes):
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    def _score_batch(self, batch: Sequence[_Item], options: dict) -> list:
        """In the worker thread: decode each upload as the scorer takes it, score, name every row by its
        upload. An upload that fails is an :class:`ImageRejected` in its place."""
        outcomes: list[Any] = [None] * len(batch)
        taken: list[int] = []  # the batch positions handed to the scorer, in order
        decoded = 0

        def images():
            nonlocal decoded
            for position, item in enumerate(batch):
                try:
                    image = decode_upload(item.upload.data, item.upload.name, self.max_image_pixels)
                except MediaError as err:
                    outcomes[position] = ImageRejected(item.upload.name, err.problem, "decoded")
                    continue
                except RequestError as err:  # over the pixel limit: admission checked it already
                    outcomes[position] = ImageRejected(item.upload.name, err.errors[0]["error"], "decoded")
                    continue
                decoded += _decoded_bytes(image)
                taken.append(position)
                yield image
                del image  # only the scorer holds it now: one decoded image at a time

        try:
            results = list(self.scorer.score(images(), batch_size=len(batch), **options))
        finally:
            if decoded >= TRIM_AFTER:
                release_memory()
        if len(results) != len(taken):
            raise ScoringFailed(f"the scorer returned {len(results)} results for {len(taken)} images")
        for position, result in zip(taken, results):
            name = batch[position].upload.name
            if result.status == STATUS_ERROR:  # the scorer's own error row: its preprocessing refused the image
                problem = _problem(result.error, result.path)
                outcomes[position] = ImageRejected(name, problem, "preprocessed for the model")
            else:
                outcomes[position] = replace(result, path=name)
        return outcomes

    async def _next_batch(self) -> list[_Item]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while self._count_like(self._waiting[0]) < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return self._take()

    def _count_like(self, first: _Item) -> int:
        return sum(1 for item in self._waiting if item.options == first.options and not item.future.done())

    def _take(self) -> list[_Item]:
        """Remove and return up to ``max_batch`` live items sharing the oldest live item's options,
        one from each request in turn (requests in arrival order, each request's images in order)."""
        live = [item for item in self._waiting if not item.future.done()]  # skips timed-out or cancelled requests
        if not live:
            self._waiting = deque()
            return []
        turns: dict[int, deque[_Item]] = {}
        for item in live:
            if item.options == live[0].options:
                turns.setdefault(item.request, deque()).append(item)
        batch: list[_Item] = []
        while len(batch) < self.max_batch and turns:
            for request in list(turns):
                if len(batch) == self.max_batch:
                    break
                batch.append(turns[request].popleft())
                if not turns[request]:
                    del turns[request]
        taken = set(map(id, batch))
        self._waiting = deque(item for item in live if id(item) not in taken)
        return batch


def _problem(error: str | None, label: str) -> str:
    """A scorer error row's message without the scorer's own label for the image ("<image 7>: ...")."""
    error = error or "image cannot be used"
    return error[len(label) + 2:] if error.startswith(f"{label}: ") else error


_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "LA": 2, "PA": 2}


def _decoded_bytes(image: Image.Image) -> int:
    return image.width * image.height * _PIXEL_BYTES.get(image.mode, 4)  # PIL keeps RGB in 4 bytes a pixel


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise, so RSS would stay at its
    peak after a burst of large images). A no-op where the C library is not glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# ---------------------------------------------------------------- request guard (ASGI middleware)


class _Slot:
    """A request in progress, as the guard sees it."""

    def __init__(self, client: str, has_body: bool, now: float):
        self.client = client
        self.receiving = has_body  # until the last body chunk (or a disconnect) arrives
        self.started = now
        self.last = now  # when a body chunk last arrived (or the request began)
        self.received = 0
        self.evicted = asyncio.Event()
        self.why = ""


class RequestGuard:
    """Refuses bodies over ``max_request_bytes`` (at once from Content-Length, else as the bytes
    arrive, so no larger body is ever buffered), answers 408 to an upload that sends nothing for
    ``idle_timeout`` seconds, and keeps at most ``max_connections`` requests in progress: beyond it
    a new request closes a stalled upload with a 408 (nothing for ``STALLED_AFTER`` s, or under
    ``MIN_UPLOAD_RATE`` after ``SLOW_AFTER`` s; the slowest first) or, when none has stalled within
    ``STALLED_AFTER`` s and no request ended, is answered 503. Every answer is JSON."""

    def __init__(self, app, limits: ServeLimits):
        self.app, self.limits = app, limits
        self.slots: list[_Slot] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limits = self.limits
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
            return await _send_json(send, *_too_large(limits.max_request_bytes, int(declared)))
        loop = asyncio.get_running_loop()
        if not await self._room(loop):
            log.warning("refused a request: %d requests in progress (limit %d), none stalled",
                        len(self.slots), limits.max_connections)
            if declared is not None and declared.isdigit() and int(declared) <= DRAIN_LIMIT:
                await _drain(receive, limits.idle_timeout)  # an unread body would reset the connection, answer and all
            return await _send_json(send, 503, f"server busy: {len(self.slots)} requests in progress (limit "
                                               f"{limits.max_connections}); retry shortly", {"Retry-After": "1"})
        has_body = (declared is not None and declared != b"0") or b"chunked" in headers.get(b"transfer-encoding", b"")
        slot = _Slot(_client(scope), has_body, loop.time())
        self.slots.append(slot)
        try:
            await self.app(scope, self._receiver(slot, receive), send)
        finally:
            with contextlib.suppress(ValueError):
                self.slots.remove(slot)

    async def _room(self, loop) -> bool:
        """Whether a new request may start: at once, or within ``STALLED_AFTER`` seconds as requests end
        or an upload comes to count as stalled (and is closed)."""
        deadline = loop.time() + STALLED_AFTER
        while len(self.slots) >= self.limits.max_connections and not self._make_room(loop.time()):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _make_room(self, now: float) -> bool:
        def rate(s: _Slot) -> float:
            return s.received / max(now - s.started, 1e-3)

        stalled = [s for s in self.slots if s.receiving and (
            now - s.last >= STALLED_AFTER or (now - s.started >= SLOW_AFTER and rate(s) < MIN_UPLOAD_RATE))]
        if not stalled:
            return False
        victim = min(stalled, key=rate)
        victim.why = (f"upload stalled: nothing received for {now - victim.last:.1f} s, {_mib(victim.received)} in "
                      f"{now - victim.started:.1f} s, while the server was full; closed to serve others")
        log.warning("closed a stalled upload from %s (%s in %.1f s, nothing for the last %.1f s) to make room",
                    victim.client, _mib(victim.received), now - victim.started, now - victim.last)
        victim.evicted.set()
        self.slots.remove(victim)
        return True

    def _receiver(self, slot: _Slot, receive):
        limits = self.limits

        async def guarded():
            if slot.evicted.is_set():
                raise RequestError(408, slot.why)
            if not slot.receiving:
                return await receive()
            getter = asyncio.ensure_future(receive())
            evicted = asyncio.ensure_future(slot.evicted.wait())
            try:
                done, _ = await asyncio.wait((getter, evicted), timeout=limits.idle_timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                evicted.cancel()
                if not getter.done():
                    getter.cancel()
            if getter not in done:
                if slot.evicted.is_set():
                    raise RequestError(408, slot.why)
                log.info("upload from %s stalled: nothing received for %g s", slot.client, limits.idle_timeout)
                raise RequestError(408, f"upload stalled: nothing received for {limits.idle_timeout:g} s")
            message = getter.result()
            slot.last = asyncio.get_running_loop().time()
            slot.received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                slot.receiving = False
            if slot.received > limits.max_request_bytes:
                raise RequestError(*_too_large(limits.max_request_bytes, slot.received))
            return message

        return guarded


async def _drain(receive, timeout: float) -> None:
    """Read and drop a request's body (for at most ``timeout`` seconds)."""
    async def drain():
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    with contextlib.suppress(asyncio.TimeoutError, RequestError):
        await asyncio.wait_for(drain(), timeout)


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


def _too_large(limit: int, size: int) -> tuple[int, str]:
    return 413, f"request body too large: {_mib(size)} (limit {_mib(limit)})"


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB" if size >= MiB else f"{size:,} bytes"


async def _send_json(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


def _raw_json_response(status: int, detail: str) -> bytes:
    """A whole HTTP/1.1 response, for a connection answered before any request on it was read."""
    body = json.dumps({"detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + body


# ---------------------------------------------------------------- reading a request


def _boundary(content_type: str) -> bytes:
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart/form-data without a boundary parameter in its content type")
    return boundary


async def _until_closing_boundary(stream, boundary: bytes):
    """The body's chunks; raises a 400 when the body ends before the multipart closing delimiter
    (the multipart parser would silently drop the unfinished last part)."""
    closing = b"\r\n--" + boundary + b"--"
    tail, closed, received = b"\r\n", False, 0  # a body may open with its closing delimiter
    async for chunk in stream:
        received += len(chunk)
        if not closed:
            window = tail + chunk
            closed = closing in window
            tail = window[-(len(closing) - 1):]
        yield chunk
    if not closed:
        raise RequestError(400, f"incomplete multipart body: it ended after {received:,} bytes without its closing "
                                f"boundary (--{boundary.decode('latin-1')}--), so its last upload is cut off; "
                                "send the whole body")


@contextlib.asynccontextmanager
async def _multipart_form(request, limits: ServeLimits):
    """The parsed form of a multipart request whose body arrived whole; its files are closed on exit."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise RequestError(415, f"send images as multipart/form-data in the repeatable field {IMAGE_FIELD!r} "
                                f"(got content type {content_type or 'none'!r})")
    boundary = _boundary(content_type)
    parser = MultiPartParser(request.headers, _until_closing_boundary(request.stream(), boundary),
                             max_files=limits.max_images + 1, max_fields=len(OPTION_FIELDS) + 1)
    try:
        form = await parser.parse()
    except MultiPartException as err:  # python-multipart's complaints, re-worded where we know better
        if "Too many files" in err.message:
            raise _too_many(limits) from None
        raise RequestError(400, f"malformed multipart body: {err.message}") from None
    try:
        yield form
    finally:
        await form.close()


def _form_parts(form, limits: ServeLimits, options_allowed: Sequence[str]) -> tuple[list, list[str], dict]:
    """The image parts, their names and the option fields of a form, checked against ``limits``."""
    from starlette.datastructures import UploadFile

    unknown = sorted(set(form.keys()) - {IMAGE_FIELD, *OPTION_FIELDS})
    if unknown:
        raise RequestError(400, f"unknown form field(s) {', '.join(map(repr, unknown))}; send images in "
                                f"{IMAGE_FIELD!r} and options in {', '.join(options_allowed)}")
    parts = form.getlist(IMAGE_FIELD)
    if not parts:
        raise RequestError(422, f"no images: send one or more files in the multipart field {IMAGE_FIELD!r}")
    if len(parts) > limits.max_images:
        raise _too_many(limits)
    texts = [i for i, part in enumerate(parts) if not isinstance(part, UploadFile)]
    if texts:
        raise RequestError(422, f"field {IMAGE_FIELD!r} must hold file uploads; part(s) {texts} are text "
                                "(the service never reads a server-side path)")
    names = [part.filename or f"image {i}" for i, part in enumerate(parts)]
    _check_parts(parts, names, limits)
    options = {key: form[key] for key in OPTION_FIELDS if key in form}
    if any(not isinstance(value, str) for value in options.values()):
        raise RequestError(422, f"option fields ({', '.join(OPTION_FIELDS)}) must be text, not files")
    return parts, names, options


def _too_many(limits: ServeLimits) -> RequestError:
    return RequestError(413, f"too many images: at most {limits.max_images} per request")


def _check_parts(parts, names: Sequence[str], limits: ServeLimits) -> None:
    wrong = [{"index": i, "image": name, "error": f"content type {part.content_type!r} is not an image type"}
             for i, (part, name) in enumerate(zip(parts, names))
             if part.content_type and not part.content_type.lower().startswith(ACCEPTED_TYPES)]
    if wrong:
        raise RequestError(415, "uploads must be images (image/* or application/octet-stream)", wrong)
    large = [{"index": i, "image": name, "error": f"upload is {_mib(part.size)} (limit {_mib(limits.max_image_bytes)})"}
             for i, (part, name) in enumerate(zip(parts, names)) if (part.size or 0) > limits.max_image_bytes]
    if large:
        raise RequestError(413, "image upload too large", large)


def _open_upload(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The upload opened lazily (header read, nothing decoded), its pixel count checked."""
    if not data:
        raise MediaError(name, "empty upload (0 bytes)")
    try:
        with warnings.catch_warnings():  # our own pixel limit below is the one that speaks
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise _too_many_pixels(name, str(err)) from None
    except UnidentifiedImageError:
        raise MediaError(name, "not a recognised image format") from None
    except Exception as err:  # PIL signals malformed headers with many exception types
        raise MediaError(name, f"image data is truncated or corrupt ({err})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(name, f"{width}x{height} = {width * height:,} pixels (limit {max_pixels:,})")
    return image


def decode_upload(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes as stored (as :func:`realqa.media.load_image` does a file); the scorer
    then prepares the image with its model's preprocessing profile, as it does a file.

    Raises ``RequestError`` 413 when the header states more than ``max_pixels`` pixels (nothing is
    decoded then) and ``MediaError`` for empty, truncated or undecodable data.
    """
    image = _open_upload(data, name, max_pixels)
    return load_image(image, max_pixels=max_pixels, label=name, prepare=_as_stored)


def check_upload(data: bytes, name: str, max_pixels: int) -> None:
    """Raise as :func:`decode_upload` would, keeping no pixels: a JPEG is decoded at 1/8 scale (PIL's
    draft mode reads all of its data, so truncation shows), other formats in full and dropped.
    The scorer never sees these pixels: it gets the full decode of :func:`decode_upload`."""
    image = _open_upload(data, name, max_pixels)
    decoded = 0
    try:
        if isinstance(image, JpegImagePlugin.JpegImageFile):
            with contextlib.suppress(Exception):  # no draft: decoded in full
                image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        decoded = _decoded_bytes(image)
    except MemoryError:
        raise
    except Exception as err:  # PIL plugins signal bad data with many exception types
        raise MediaError(name, f"image data is truncated or corrupt ({err})") from None
    finally:
        image.close()
        del image
        if decoded >= TRIM_AFTER:
            release_memory()


def _as_stored(image: Image.Image) -> Image.Image:
    return image


def _too_many_pixels(name: str, why: str) -> RequestError:
    return RequestError(413, "image has too many pixels", [{"image": name, "error": why}])


async def _check_all(uploads: Sequence[_Upload], max_pixels: int, gate: asyncio.Semaphore) -> None:
    """Check every upload off the event loop, a few at a time; all failures are reported together."""
    async def check(upload: _Upload):
        async with gate:
            return await asyncio.to_thread(check_upload, upload.data, upload.name, max_pixels)

    outcomes = await asyncio.gather(*(check(u) for u in uploads), return_exceptions=True)
    for status, kind in ((413, RequestError), (422, MediaError)):
        failed = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, kind)]
        if failed:
            if kind is RequestError:
                errors = [{"index": i, **e} for i, o in failed for e in o.errors]
                raise RequestError(status, failed[0][1].detail, errors)
            raise RequestError(status, "image(s) could not be decoded",
                               [{"index": i, "image": uploads[i].name, "error": o.problem} for i, o in failed])
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def _unless_disconnected(work, receive):
    """Await ``work``; if the client goes away first, cancel it (its queued images are skipped) and
    raise ``ClientDisconnect``."""
    from starlette.requests import ClientDisconnect

    async def disconnected():
        while (await receive())["type"] != "http.disconnect":
            pass

    job, gone = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((job, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not job.done():
            job.cancel()
    if job.done() and not job.cancelled():
        return job.result()
    raise ClientDisconnect()


# ---------------------------------------------------------------- the app


def public_model_name(name: str) -> str:
    """What the service says it runs: a hub id as it is, a local folder by its own name only (never
    a path on the server). ``model+adapter`` names each part."""
    def public(part: str) -> str:
        path = os.path.expanduser(part)
        local = os.path.isabs(path) or part.startswith((".", "~")) or "\\" in part or os.path.exists(path)
        return (os.path.basename(os.path.abspath(path).rstrip("/\\")) or "model") if local else part

    return "+".join(public(part) for part in name.split("+"))


def create_app(scorer, limits: ServeLimits = ServeLimits(), *, model_name: str | None = None):
    """A FastAPI app scoring images with ``scorer`` (a :class:`~realqa.engine.Scorer`) within ``limits``."""
    # Imported here so that the CLI can build its parser without FastAPI. (No postponed annotations
    # in this module: FastAPI reads the endpoints' annotations, and ``Request`` is local to this call.)
    require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect

    name = public_model_name(model_name or getattr(getattr(scorer, "loaded", None), "name", "model"))
    supported = inspect.signature(scorer.score).parameters
    flags = [flag for flag in ("attributes", "cot") if flag in supported]
    options_allowed = ["task", "decimals", *flags]
    batcher = MicroBatcher(scorer, max_batch=limits.max_batch or getattr(scorer, "batch_size", 8),
                           max_wait=limits.max_wait_ms / 1000, max_queue=limits.max_queue,
                           max_queue_bytes=limits.max_queue_bytes, max_image_pixels=limits.max_image_pixels)
    checking = asyncio.Semaphore(VALIDATING)  # uploads decoded at admission at a time (bounds their pixels)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="realqa scoring service", version="1", lifespan=lifespan, description=(
        f"Image quality and aesthetic scores from a multimodal LLM ({name}). POST images to /score as "
        f"multipart/form-data (repeatable field `images`, up to {limits.max_images} per request, "
        f"{_mib(limits.max_image_bytes)} each, {limits.max_image_pixels:,} pixels each)."))
    app.state.batcher = batcher
    app.state.limits = limits
    app.add_middleware(RequestGuard, limits=limits)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError):
        headers = dict(err.headers or {})
        if err.close:  # the body may be partly unread: this connection cannot carry another request
            headers["Connection"] = "close"
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.get("/health", summary="Liveness and what the service scores")
    async def health() -> dict:
        return {"status": "ok", "model": name, "tasks": list(scorer.tasks), "options": options_allowed,
                "queued_images": batcher.load}

    @app.get("/stats", summary="Micro-batching counters: requests, images, model batches and their sizes")
    async def stats() -> dict:
        return {**batcher.stats.to_dict(), "max_batch": batcher.max_batch, "max_wait_ms": limits.max_wait_ms,
                "queued_images": batcher.load, "queued_bytes": batcher.queued_bytes, "limits": asdict(limits)}

    @app.post("/score", summary="Score uploaded images", openapi_extra=_openapi_body(scorer, limits, flags),
              responses={400: {"description": "malformed or incomplete multipart body, an unknown field or a query "
                                              "parameter"},
                         413: {"description": "body, upload, image count or pixel count over the limit"},
                         415: {"description": "not multipart/form-data, or an upload that is not an image"},
                         422: {"description": "no images, bad option, or an image that cannot be decoded or that "
                                              "the model's preprocessing refuses (named)"},
                         408: {"description": "the request body did not arrive in time, or stalled"},
                         503: {"description": "queue or memory budget full, too many requests in progress, or "
                                              "scoring not finished in time"}})
    async def score(request: Request) -> dict:
        """One row per image, in upload order: ``path`` (the upload's file name), ``score``, ``ncm``,
        ``ncm_std`` (the spread of the score under the model's digit probabilities: its uncertainty),
        ``status``, ``text``, ``error``, and ``attributes`` when asked."""
        phase = ["receiving"]
        started = time.monotonic()
        try:
            return await asyncio.wait_for(_score(request, phase), limits.request_timeout)
        except asyncio.TimeoutError:
            if phase[0] == "receiving":
                raise RequestError(408, f"request body not received within {limits.request_timeout:g} s") from None
            raise RequestError(503, f"scoring did not finish within {limits.request_timeout:g} s (server busy); "
                                    "retry shortly", headers={"Retry-After": "1"}) from None
        except ClientDisconnect:  # nobody to answer: one line, no traceback
            log.warning("client %s disconnected while %s, after %.1f s; request dropped", _client(request.scope),
                        "uploading" if phase[0] == "receiving" else "its images were scored",
                        time.monotonic() - started)
            raise RequestError(400, "client disconnected", close=True) from None

    async def _score(request: Request, phase: list) -> dict:
        if request.query_params:  # ?task=exposure would otherwise be ignored and the default task answered
            raise RequestError(400, f"unknown query parameter(s) {', '.join(map(repr, sorted(request.query_params)))}; "
                                    f"send options as form fields ({', '.join(options_allowed)})")
        declared = request.headers.get("content-length", "")
        if declared.isdigit():
            try:
                batcher.check_room(0, int(declared))  # a full budget refuses before the body is read
            except RequestError:
                if int(declared) <= DRAIN_LIMIT:
                    await _drain(request.receive, limits.idle_timeout)
                raise
        async with _multipart_form(request, limits) as form:
            parts, names, fields = _form_parts(form, limits, options_allowed)
            phase[0] = "scoring"
            options = _options(fields, scorer, flags)
            with batcher.admit(len(parts), sum(part.size or 0 for part in parts)):
                uploads = [_Upload(name, await part.read()) for name, part in zip(names, parts)]
                await form.close()  # the spooled copies are no longer needed
                await _check_all(uploads, limits.max_image_pixels, checking)
                try:
                    results = await _unless_disconnected(batcher.score(uploads, options), request.receive)
                except ScoringFailed as err:
                    raise RequestError(500, str(err)) from None
        rows = [result.to_row() for result in results]
        return {"model": name, "task": options["task"], "count": len(rows), "results": rows}

    return app


def _options(fields: dict, scorer, flags: Sequence[str]) -> dict:
    """Scoring options from the form's text fields, validated (422 names the field)."""
    task = fields.get("task", "quality").strip()
    if task not in scorer.tasks:
        raise RequestError(422, f"unknown task {task!r}; this model answers: {', '.join(scorer.tasks)}")
    options: dict[str, Any] = {"task": task}
    if fields.get("decimals", "").strip():
        text = fields["decimals"].strip()
        if not (text.isdigit() and 0 <= int(text) <= MAX_DECIMALS):
            raise RequestError(422, f"decimals must be an integer 0..{MAX_DECIMALS}, got {text!r}")
        options["decimals"] = int(text)
    for flag in ("attributes", "cot"):
        if flag not in fields:
            continue
        value = fields[flag].strip().lower()
        if value not in ("true", "false", "1", "0", "yes", "no", ""):
            raise RequestError(422, f"{flag} must be true or false, got {fields[flag]!r}")
        if value in ("true", "1", "yes"):
            if flag not in flags:
                raise RequestError(422, f"this scorer cannot answer {flag}")
            options[flag] = True
    from .model import check_asked

    loaded = getattr(scorer, "loaded", None)
    if loaded is not None:  # what the card says the model was not trained to answer: refused here, not in a shared batch
        try:
            check_asked(loaded.card, loaded.card_source, task, decimals=options.get("decimals"),
                        cot=options.get("cot", False))
        except ValueError as err:
            raise RequestError(422, str(err)) from None
    return options


def _openapi_body(scorer, limits: ServeLimits, flags: Sequence[str]) -> dict:
    """The multipart request schema, for the docs (the endpoint parses the form itself)."""
    properties = {
        IMAGE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": limits.max_images,
                      "description": "image files (repeat the field for several images)"},
        "task": {"type": "string", "enum": list(scorer.tasks), "default": "quality"},
        "decimals": {"type": "integer", "minimum": 0, "maximum": MAX_DECIMALS,
                     "description": "decimals in the answer (default: the model card's)"},
    }
    for flag in flags:
        properties[flag] = {"type": "boolean", "default": False,
                            "description": "also ask the fine-grained attributes" if flag == "attributes"
                            else "reason over the attributes before the score (chain of thought)"}
    schema = {"type": "object", "required": [IMAGE_FIELD], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


# ---------------------------------------------------------------- the server


def require_serve_extra() -> None:
    """Raise a one-line :class:`~realqa.compat.MissingExtra` when the ``serve`` extra is not installed."""
    from .compat import require

    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "serve", "the HTTP service")


def guarded_protocol(base: type, limits: ServeLimits) -> type:
    """``base`` (a uvicorn HTTP protocol) with a deadline for request headers and room made for new
    connections: past ``max_connections`` open, the connection that has waited longest for request
    headers (for a second or more) is closed, with a JSON 408 unless it sits idle after an earlier
    request (then as a keep-alive timeout closes it)."""

    class GuardedProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._seen_cycle = None
            self._headers_due = None
            self.waiting_since: float | None = None
            self._await_headers()
            self._make_room()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._note_request()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._note_request()  # a pipelined request may have begun
                if self._headers_due is None and self.cycle is self._seen_cycle:
                    self._await_headers()

        def connection_lost(self, exc) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def refuse(self, status: int, detail: str) -> None:
            self._stop_waiting()
            if not self.transport.is_closing():
                self.transport.write(_raw_json_response(status, detail))
                self.transport.close()

        def _await_headers(self) -> None:
            self.waiting_since = self.loop.time()
            self._headers_due = self.loop.call_later(limits.header_timeout, self._headers_late)

        def _stop_waiting(self) -> None:
            if self._headers_due is not None:
                self._headers_due.cancel()
            self._headers_due, self.waiting_since = None, None

        def _note_request(self) -> None:
            if self.cycle is not None and self.cycle is not self._seen_cycle:
                self._seen_cycle = self.cycle
                self._stop_waiting()

        def _headers_late(self) -> None:
            self._headers_due = None
            log.info("closed a connection from %s: no request headers within %g s",
                     "%s:%s" % tuple(self.client or ("?", "?")), limits.header_timeout)
            self.refuse(408, f"request headers not received within {limits.header_timeout:g} s")

        def _make_room(self) -> None:
            if len(self.connections) <= limits.max_connections:
                return
            now = self.loop.time()
            waiting = [c for c in self.connections if c is not self and getattr(c, "waiting_since", None) is not None]
            stale = [c for c in waiting if now - c.waiting_since >= STALLED_AFTER]
            if not stale:
                return
            oldest = min(stale, key=lambda c: c.waiting_since)
            if oldest._seen_cycle is not None and not oldest.transport.is_closing():
                oldest._stop_waiting()  # idle between requests: closed as a keep-alive timeout closes it,
                oldest.transport.close()  # without an answer a client sending just now would take for its own
                return
            oldest.refuse(408, f"request headers not received after {now - oldest.waiting_since:.1f} s while "
                               "the server was full; connection closed to serve others")

    return GuardedProtocol


def server_config(app, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """The uvicorn configuration :func:`run` serves ``app`` (from :func:`create_app`) with."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    limits: ServeLimits = app.state.limits
    # No uvicorn limit_concurrency (its overload answer is plain text and stalled uploads fill it):
    # RequestGuard caps requests in progress and the protocol closes connections stalled before their
    # headers. timeout_keep_alive: idle connections are closed after 5 s.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5,
                          http=guarded_protocol(AutoHTTPProtocol, limits))


def run(scorer, limits: ServeLimits = ServeLimits(), *, host: str = "127.0.0.1", port: int = 8000,
        max_connections: int | None = None, log_level: str = "info") -> None:
    """Serve ``scorer`` with uvicorn until interrupted (``max_connections`` overrides the limits')."""
    require_serve_extra()
    import uvicorn
    from uvicorn.logging import DefaultFormatter

    if max_connections is not None:
        limits = replace(limits, max_connections=max_connections)
    if not math.isfinite(limits.request_timeout):
        raise ValueError("request_timeout must be finite")
    if not log.handlers:  # our one-line notices, formatted as uvicorn's own
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    level = logging.getLevelName(log_level.upper())
    log.setLevel(level if isinstance(level, int) else logging.INFO)
    server = uvicorn.Server(server_config(create_app(scorer, limits), host=host, port=port, log_level=log_level))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C: uvicorn has shut down gracefully (as uvicorn.run does)
        server.run()
