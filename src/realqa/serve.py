"""HTTP scoring service: FastAPI app, micro-batching queue, request limits.

``POST /score`` takes image uploads (multipart/form-data, repeatable field ``images``) and returns
one result row per image, in upload order. Requests that arrive together are merged into one model
batch by :class:`MicroBatcher` (at most ``max_batch`` images, waiting at most ``max_wait_ms`` for
more); the model runs in one worker thread, so the event loop keeps accepting, reading and
answering requests while it computes. Images are decoded from the uploaded bytes only: the service
never opens a path a client names.

Every limit breach is a 4xx for that request alone, with a message saying which limit and image:
body or upload too large (413), too many images or pixels (413), wrong content type (415), empty,
truncated or undecodable image (422), bad form fields (400/422), body not received in time (408).
A full queue or a request the model could not finish in time is a 503.
"""

import asyncio
import collections
import contextlib
import inspect
import io
import json
import logging
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

from .media import MediaError, load_image

log = logging.getLogger("realqa.serve")

MiB = 1024 * 1024
IMAGE_FIELD = "images"
OPTION_FIELDS = ("task", "decimals", "attributes", "cot")  # the form fields besides the images
ACCEPTED_TYPES = ("image/", "application/octet-stream")  # octet-stream: what clients send when unsure


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the service, and how requests are merged into model batches."""

    max_images: int = 16  # uploads per request
    max_image_bytes: int = 20 * MiB  # one upload
    max_request_bytes: int = 80 * MiB  # the whole body, checked as it arrives
    max_image_pixels: int = 36_000_000  # width x height of one image, read from its header before decoding
    request_timeout: float = 60.0  # seconds from the request's start to its answer, body upload included
    max_batch: int | None = None  # images per model batch; default: the scorer's batch size
    max_wait_ms: float = 10.0  # how long the first queued image waits for others to join its batch
    max_queue: int = 128  # images admitted and not yet scored; beyond it new requests get a 503

    def __post_init__(self) -> None:
        for name in ("max_images", "max_image_bytes", "max_request_bytes", "max_image_pixels", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.request_timeout > 0 or self.max_wait_ms < 0:
            raise ValueError("request_timeout must be > 0 and max_wait_ms >= 0")


class RequestError(Exception):
    """A request the service refuses: answered with ``status`` and ``{"detail": ..., "errors": [...]}``."""

    def __init__(self, status: int, detail: str, errors: Sequence[dict] = (), headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, list(errors), headers

    def body(self) -> dict:
        return {"detail": self.detail, **({"errors": self.errors} if self.errors else {})}


# ---------------------------------------------------------------- micro-batching


@dataclass
class _Item:
    image: Image.Image
    options: tuple  # images with the same options can share a model batch
    future: asyncio.Future


class BatchStats:
    """Counts of what the model was asked: requests, images, and the size of every model batch."""

    def __init__(self) -> None:
        self.requests = 0
        self.images = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    @property
    def batches(self) -> int:
        return sum(self.batch_sizes.values())

    def to_dict(self) -> dict:
        batches = self.batches
        return {
            "requests": self.requests,
            "images": self.images,
            "batches": batches,
            "images_per_batch": round(sum(k * n for k, n in self.batch_sizes.items()) / batches, 3) if batches else None,
            "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())},
        }


class MicroBatcher:
    """Merges images from concurrent requests into model batches run in one worker thread.

    A batch starts with the oldest waiting image and takes the next images with the same options
    until ``max_batch``; when fewer are waiting it waits up to ``max_wait`` seconds for more. While
    the model computes, new images queue up, so under load batches fill without any waiting.
    """

    def __init__(self, scorer, *, max_batch: int, max_wait: float, max_queue: int):
        self.scorer = scorer
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.stats = BatchStats()
        self._waiting: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._in_flight = 0  # admitted images not yet answered (waiting or in the model)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realqa-model")
        self._task: asyncio.Task | None = None

    @property
    def load(self) -> int:
        return self._in_flight

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._worker.shutdown(wait=False, cancel_futures=True)

    def check_room(self, count: int) -> None:
        """Raise a 503 when ``count`` more images would overfill the queue."""
        if self._in_flight + count > self.max_queue:
            raise RequestError(503, f"server busy: {self._in_flight} images queued (limit {self.max_queue}); "
                                    "retry shortly", headers={"Retry-After": "1"})

    async def score(self, images: Sequence[Image.Image], options: dict) -> list:
        """Queue the images and wait for their :class:`~realqa.results.ScoreResult` rows, in order."""
        self.check_room(len(images))
        loop = asyncio.get_running_loop()
        key = tuple(sorted(options.items()))
        items = [_Item(image, key, loop.create_future()) for image in images]
        self._in_flight += len(items)
        self.stats.requests += 1
        self._waiting.extend(items)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            self._in_flight -= len(items)
            for item in items:  # a cancelled request's images are skipped when their batch forms
                item.future.cancel()

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
                results = await loop.run_in_executor(
                    self._worker, lambda: self.scorer.score([i.image for i in batch], batch_size=len(batch), **options))
            except Exception as err:  # the model failed this batch; the service goes on with the next
                log.exception("scoring a batch of %d images failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError(f"scoring failed: {type(err).__name__}: {err}"))
                continue
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)

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
        """Remove and return up to ``max_batch`` live items sharing the oldest item's options."""
        first, batch, rest = self._waiting[0], [], collections.deque()
        for item in self._waiting:
            if item.future.done():
                continue  # its request timed out or was cancelled
            if item.options == first.options and len(batch) < self.max_batch:
                batch.append(item)
            else:
                rest.append(item)
        self._waiting = rest
        return batch


# ---------------------------------------------------------------- request body limit (ASGI middleware)


class BodyLimit:
    """Refuses bodies over ``limit`` bytes: at once from Content-Length, else as the bytes arrive.

    Counting as they arrive also covers chunked uploads, so no body larger than the limit is ever
    buffered or spooled to disk.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_json(send, *_too_large(self.limit, int(declared)))
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise RequestError(*_too_large(self.limit, received))
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int, size: int) -> tuple[int, str]:
    return 413, f"request body too large: {_mib(size)} (limit {_mib(limit)})"


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB" if size >= MiB else f"{size:,} bytes"


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- reading a request


@dataclass
class _Upload:
    name: str
    data: bytes


async def _read_form(request, limits: ServeLimits, options_allowed: Sequence[str]) -> tuple[list[_Upload], dict]:
    """The uploads and the option fields of a multipart request, checked against ``limits``."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise RequestError(415, f"send images as multipart/form-data in the repeatable field {IMAGE_FIELD!r} "
                                f"(got content type {content_type or 'none'!r})")
    try:
        form = await request.form(max_files=limits.max_images + 1, max_fields=len(OPTION_FIELDS) + 1)
    except HTTPException as err:  # python-multipart's complaints, re-worded where we know better
        if "Too many files" in str(err.detail):
            raise _too_many(limits) from None
        raise RequestError(400, f"malformed multipart body: {err.detail}") from None
    try:
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
        uploads = [_Upload(name, await part.read()) for name, part in zip(names, parts)]
        options = {key: form[key] for key in OPTION_FIELDS if key in form}
        if any(not isinstance(value, str) for value in options.values()):
            raise RequestError(422, f"option fields ({', '.join(OPTION_FIELDS)}) must be text, not files")
        return uploads, options
    finally:
        await form.close()


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


def decode_upload(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes as stored (as :func:`realqa.media.load_image` does a file); the scorer
    then prepares the image with its model's preprocessing profile, as it does a file.

    Raises ``RequestError`` 413 when the header states more than ``max_pixels`` pixels (nothing is
    decoded then) and ``MediaError`` for empty, truncated or undecodable data.
    """
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
    return load_image(image, max_pixels=max_pixels, label=name, prepare=_as_stored)


def _as_stored(image: Image.Image) -> Image.Image:
    return image


def _too_many_pixels(name: str, why: str) -> RequestError:
    return RequestError(413, "image has too many pixels", [{"image": name, "error": why}])


async def _decode_all(uploads: Sequence[_Upload], max_pixels: int) -> list[Image.Image]:
    """Decode every upload off the event loop; all failures are reported together."""
    outcomes = await asyncio.gather(*(asyncio.to_thread(decode_upload, u.data, u.name, max_pixels) for u in uploads),
                                    return_exceptions=True)
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
    return list(outcomes)


# ---------------------------------------------------------------- the app


def create_app(scorer, limits: ServeLimits = ServeLimits(), *, model_name: str | None = None):
    """A FastAPI app scoring images with ``scorer`` (a :class:`~realqa.engine.Scorer`) within ``limits``."""
    # Imported here so that the CLI can build its parser without FastAPI. (No postponed annotations
    # in this module: FastAPI reads the endpoints' annotations, and ``Request`` is local to this call.)
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    name = model_name or getattr(getattr(scorer, "loaded", None), "name", "model")
    supported = inspect.signature(scorer.score).parameters
    flags = [flag for flag in ("attributes", "cot") if flag in supported]
    options_allowed = ["task", "decimals", *flags]
    batcher = MicroBatcher(scorer, max_batch=limits.max_batch or getattr(scorer, "batch_size", 8),
                           max_wait=limits.max_wait_ms / 1000, max_queue=limits.max_queue)

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
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError):
        headers = dict(err.headers or {})
        if err.status in (408, 413):  # the body may be partly unread: this connection cannot carry another request
            headers["Connection"] = "close"
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.get("/health", summary="Liveness and what the service scores")
    async def health() -> dict:
        return {"status": "ok", "model": name, "tasks": list(scorer.tasks), "options": options_allowed,
                "queued_images": batcher.load}

    @app.get("/stats", summary="Micro-batching counters: requests, images, model batches and their sizes")
    async def stats() -> dict:
        return {**batcher.stats.to_dict(), "max_batch": batcher.max_batch, "max_wait_ms": limits.max_wait_ms,
                "queued_images": batcher.load, "limits": asdict(limits)}

    @app.post("/score", summary="Score uploaded images", openapi_extra=_openapi_body(scorer, limits, flags),
              responses={413: {"description": "body, upload, image count or pixel count over the limit"},
                         415: {"description": "not multipart/form-data, or an upload that is not an image"},
                         422: {"description": "no images, bad option, or an image that cannot be decoded"},
                         408: {"description": "the request body did not arrive in time"},
                         503: {"description": "queue full or scoring not finished in time"}})
    async def score(request: Request) -> dict:
        """One row per image, in upload order: ``path`` (the upload's file name), ``score``, ``ncm``,
        ``status``, ``text``, ``error``, and ``attributes`` when asked."""
        phase = ["receiving"]
        try:
            return await asyncio.wait_for(_score(request, phase), limits.request_timeout)
        except asyncio.TimeoutError:
            if phase[0] == "receiving":
                raise RequestError(408, f"request body not received within {limits.request_timeout:g} s") from None
            raise RequestError(503, f"scoring did not finish within {limits.request_timeout:g} s (server busy); "
                                    "retry shortly", headers={"Retry-After": "1"}) from None

    async def _score(request: Request, phase: list) -> dict:
        uploads, fields = await _read_form(request, limits, options_allowed)
        phase[0] = "scoring"
        options = _options(fields, scorer, flags)
        batcher.check_room(len(uploads))  # refuse before spending time on decoding
        images = await _decode_all(uploads, limits.max_image_pixels)
        try:
            results = await batcher.score(images, options)
        except RuntimeError as err:
            raise RequestError(500, str(err)) from None
        rows = [{**result.to_row(), "path": upload.name} for upload, result in zip(uploads, results)]
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
        if not (text.isdigit() and 0 <= int(text) <= 3):
            raise RequestError(422, f"decimals must be an integer 0..3, got {text!r}")
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
    return options


def _openapi_body(scorer, limits: ServeLimits, flags: Sequence[str]) -> dict:
    """The multipart request schema, for the docs (the endpoint parses the form itself)."""
    properties = {
        IMAGE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": limits.max_images,
                      "description": "image files (repeat the field for several images)"},
        "task": {"type": "string", "enum": list(scorer.tasks), "default": "quality"},
        "decimals": {"type": "integer", "minimum": 0, "maximum": 3,
                     "description": "decimals in the answer (default: the model card's)"},
    }
    for flag in flags:
        properties[flag] = {"type": "boolean", "default": False,
                            "description": "also ask the fine-grained attributes" if flag == "attributes"
                            else "reason over the attributes before the score (chain of thought)"}
    schema = {"type": "object", "required": [IMAGE_FIELD], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def run(scorer, limits: ServeLimits = ServeLimits(), *, host: str = "127.0.0.1", port: int = 8000,
        max_connections: int | None = 64, log_level: str = "info") -> None:
    """Serve ``scorer`` with uvicorn until interrupted."""
    import uvicorn

    if not math.isfinite(limits.request_timeout):
        raise ValueError("request_timeout must be finite")
    # timeout_keep_alive: idle connections are closed after 5 s; limit_concurrency: beyond it, 503s
    # instead of an ever longer line of open connections.
    uvicorn.run(create_app(scorer, limits), host=host, port=port, log_level=log_level, timeout_keep_alive=5,
                limit_concurrency=max_connections)
