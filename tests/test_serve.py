"""The HTTP service on a real uvicorn server on 127.0.0.1: endpoints, limits, bad clients, micro-batching.

A stub scorer makes batching, timeouts and failures exact and fast; the tiny models check that the
service gives the scores the library gives.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from conftest import SMALL_PIXELS
from realqa.engine import load_scorer
from realqa.results import ScoreResult
from realqa.serve import MicroBatcher, ServeLimits, create_app

uvicorn = pytest.importorskip("uvicorn")  # the 'serve' extra, as every other optional extra: skipped when absent


def png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


class StubScorer:
    """Scores an image by its red value / 50 (NCM 0.01 more, spread red / 1000); records each model batch;
    can be slow or fail."""

    batch_size = 4
    tasks = {"quality": None, "aesthetics": None}

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.batches: list[tuple[str, int]] = []

    def score(self, images, task="quality", *, decimals=None, batch_size=None):
        time.sleep(self.delay)
        results = []
        for i, image in enumerate(images):  # any iterable, taken one image at a time as the real scorer does
            red = image.getpixel((0, 0))[0]
            if red == 13:
                raise RuntimeError("the model broke")
            results.append(ScoreResult(f"<image {i}>", task, red / 50, red / 50 + 0.01, "ok", f"{red / 50:.2f}",
                                       ncm_std=red / 1000))
        self.batches.append((task, len(results)))
        return results


@contextlib.contextmanager
def serving(app):
    """Run ``app`` on a free loopback port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def post(url, images, timeout=30, **fields):
    files = [("images", (name, data, ctype)) for name, data, ctype in images]
    return httpx.post(url + "/score", files=files, data=fields, timeout=timeout)


def image(name="a.png", color=(200, 30, 30)):
    return (name, png(color), "image/png")


@pytest.fixture(scope="module")
def stub_server():
    stub = StubScorer(delay=0.02)
    limits = ServeLimits(max_images=4, max_image_bytes=20_000, max_request_bytes=60_000, max_image_pixels=200 * 200,
                         request_timeout=2.0, max_wait_ms=20)
    with serving(create_app(stub, limits, model_name="stub")) as url:
        yield url, stub


# ---------------------------------------------------------------- endpoints


def test_health_stats_and_openapi(stub_server):
    url, _ = stub_server
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "stub" and health["tasks"] == ["quality", "aesthetics"]
    assert set(httpx.get(url + "/stats").json()) >= {"requests", "images", "batches", "images_per_batch", "limits"}
    schema = httpx.get(url + "/openapi.json").json()["paths"]["/score"]["post"]["requestBody"]["content"]
    assert schema["multipart/form-data"]["schema"]["properties"]["images"]["maxItems"] == 4
    assert httpx.get(url + "/docs").status_code == 200


def test_several_images_give_rows_in_upload_order(stub_server):
    url, _ = stub_server
    response = post(url, [image("x.png", (100, 0, 0)), image("y.png", (150, 0, 0)), image("z.jpg", (50, 0, 0))],
                    task="aesthetics")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "aesthetics" and body["count"] == 3
    assert [(r["path"], r["score"], r["status"]) for r in body["results"]] == [
        ("x.png", 2.0, "ok"), ("y.png", 3.0, "ok"), ("z.jpg", 1.0, "ok")]
    # Each row carries the model's expected score and its spread (the uncertainty), by upload.
    assert [(r["ncm"], r["ncm_std"]) for r in body["results"]] == [(2.01, 0.1), (3.01, 0.15), (1.01, 0.05)]


@pytest.fixture(scope="module")
def tiny_scorer(tiny_model_dir):
    return load_scorer(str(tiny_model_dir), device="cpu", batch_size=8, **SMALL_PIXELS)


def test_served_rows_equal_library_rows(tiny_scorer):
    colors = [(30, 30, 30), (120, 120, 120), (230, 230, 230)]
    expected = tiny_scorer.score([Image.open(io.BytesIO(png(c))) for c in colors])
    with serving(create_app(tiny_scorer)) as url:
        rows = post(url, [image(f"{i}.png", c) for i, c in enumerate(colors)]).json()["results"]
    assert rows == [{**e.to_row(), "path": f"{i}.png"} for i, e in enumerate(expected)]


def test_what_the_card_says_the_model_was_not_trained_for_is_a_422(tiny_scorer):
    """The tiny model's card: quality at 2 decimals, no chain of thought; refused before the request joins a batch."""
    with serving(create_app(tiny_scorer)) as url:
        other = post(url, [image()], decimals="1")
        reasoning = post(url, [image()], cot="true")
        same = post(url, [image()], decimals="2")
    assert other.status_code == 422 and "answers quality with 2 decimals" in other.json()["detail"]
    assert reasoning.status_code == 422 and "no chain-of-thought form" in reasoning.json()["detail"]
    assert same.status_code == 200 and same.json()["count"] == 1


# ---------------------------------------------------------------- micro-batching


def test_concurrent_clients_share_model_batches_and_get_their_own_results(stub_server):
    url, stub = stub_server
    before = len(stub.batches)
    reds = [10 * (i + 1) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda red: post(url, [image(f"{red}.png", (red, 0, 0))]), reds))
    assert [r.json()["results"][0]["score"] for r in responses] == [red / 50 for red in reds]
    batches = stub.batches[before:]
    assert sum(n for _, n in batches) == 12
    assert len(batches) < 12  # merged across requests
    assert max(n for _, n in batches) <= StubScorer.batch_size


def test_different_tasks_never_share_a_batch(stub_server):
    url, stub = stub_server
    before = len(stub.batches)
    jobs = [("quality" if i % 2 else "aesthetics", 20 + i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda job: post(url, [image("a.png", (job[1], 0, 0))], task=job[0]), jobs))
    assert [(r.json()["task"], r.json()["results"][0]["score"]) for r in responses] == [(t, v / 50) for t, v in jobs]
    per_task = {task: sum(n for t, n in stub.batches[before:] if t == task) for task in ("quality", "aesthetics")}
    assert per_task == {"quality": 4, "aesthetics": 4}


def test_tiny_model_batches_concurrent_requests(tiny_scorer):
    with serving(create_app(tiny_scorer, ServeLimits(max_wait_ms=200))) as url:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda i: post(url, [image(f"{i}.png", (i * 30, 90, 60))]), range(8)))
        stats = httpx.get(url + "/stats").json()
    assert all(r.status_code == 200 and r.json()["count"] == 1 for r in responses)
    assert stats["requests"] == 8 and stats["images"] == 8
    assert stats["batches"] < 8 and stats["images_per_batch"] > 1


# ---------------------------------------------------------------- limits and bad input


@pytest.mark.parametrize("files, status, message", [
    ([image(f"{i}.png") for i in range(5)], 413, "too many images: at most 4 per request"),
    ([("big.bmp", b"BM" + b"\0" * 30_000, "image/bmp")], 413, "image upload too large"),
    ([("huge.png", png(size=(300, 200)), "image/png")], 413, "image has too many pixels"),
    ([("notes.txt", b"hello", "text/plain")], 415, "uploads must be images"),
    ([("empty.png", b"", "image/png")], 422, "could not be decoded"),
    ([("cut.png", png()[:60], "image/png")], 422, "could not be decoded"),
    ([("fake.jpg", b"not an image at all", "image/jpeg")], 422, "could not be decoded"),
])
def test_limits_and_bad_uploads_are_4xx_with_a_clear_message(stub_server, files, status, message):
    url, _ = stub_server
    response = post(url, files)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    for error in response.json().get("errors", []):
        assert error["image"] == files[0][0] and error["error"]
    assert post(url, [image()]).status_code == 200  # the service goes on


def test_decode_errors_name_every_bad_image(stub_server):
    url, _ = stub_server
    response = post(url, [image("good.png"), ("empty.png", b"", "image/png"), ("cut.png", png()[:60], "image/png")])
    errors = response.json()["errors"]
    assert [(e["index"], e["image"]) for e in errors] == [(1, "empty.png"), (2, "cut.png")]
    assert "empty upload" in errors[0]["error"] and "truncated" in errors[1]["error"]


@pytest.mark.parametrize("fields, status, message", [
    ({"task": "sharpness"}, 422, "unknown task 'sharpness'"),
    ({"decimals": "7"}, 422, "decimals must be an integer 0..3"),
    ({"attributes": "true"}, 422, "cannot answer attributes"),
    ({"image": "x"}, 400, "unknown form field(s) 'image'"),
])
def test_bad_options_are_refused(stub_server, fields, status, message):
    url, _ = stub_server
    response = post(url, [image()], **fields)
    assert response.status_code == status and message in response.json()["detail"]


def test_requests_that_are_not_image_uploads(stub_server):
    url, _ = stub_server
    in_query = httpx.post(url + "/score?task=exposure", files=[("images", image())])
    assert in_query.status_code == 400 and "unknown query parameter(s) 'task'" in in_query.json()["detail"]
    as_json = httpx.post(url + "/score", json={"images": ["/etc/passwd"]})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]
    as_path = httpx.post(url + "/score", data={"images": "/etc/passwd"}, files={"task": (None, "quality")})
    assert as_path.status_code == 422 and "never reads a server-side path" in as_path.json()["detail"]
    nothing = httpx.post(url + "/score", files={"task": (None, "quality")})
    assert nothing.status_code == 422 and "no images" in nothing.json()["detail"]


def test_oversize_bodies_are_refused_with_and_without_content_length(stub_server):
    url, _ = stub_server
    files = [(f"{i}.bmp", b"BM" + b"\0" * 19_000, "image/bmp") for i in range(4)]  # 76 KB > 60 KB
    declared = post(url, files)
    assert declared.status_code == 413 and "request body too large" in declared.json()["detail"]

    request = httpx.Request("POST", url + "/score", files=[("images", f) for f in files])
    body = request.read()
    chunked = httpx.post(url + "/score", content=(body[i:i + 8192] for i in range(0, len(body), 8192)),
                         headers={"content-type": request.headers["content-type"]})
    assert chunked.status_code == 413 and "request body too large" in chunked.json()["detail"]


def test_a_slow_client_times_out_while_others_are_served(stub_server):
    url, _ = stub_server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                     b"Content-Length: 5000\r\n\r\n--xyz\r\nContent-Disposition: form-data; name=\"images\"; "
                     b"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG")
        assert post(url, [image()]).status_code == 200  # served while the slow one hangs
        reply = b""
        while chunk := slow.recv(4096):  # the server closes the connection after its answer
            reply += chunk
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408") and "request body not received within 2 s" in reply


def test_scoring_timeout_model_failure_and_full_queue_leave_the_service_running():
    stub = StubScorer(delay=0.6)
    limits = ServeLimits(request_timeout=0.4, max_queue=2, max_wait_ms=0)
    with serving(create_app(stub, limits)) as url:
        late = post(url, [image()])
        assert late.status_code == 503 and "did not finish within 0.4 s" in late.json()["detail"]
        stub.delay = 0
        broken = post(url, [image("bad.png", (13, 0, 0))])
        assert broken.status_code == 500 and "the model broke" in broken.json()["detail"]
        full = post(url, [image(f"{i}.png") for i in range(3)])
        assert full.status_code == 503 and "server busy" in full.json()["detail"] and full.headers["retry-after"] == "1"
        assert post(url, [image()]).json()["results"][0]["score"] == 4.0


def test_batcher_limits_are_validated():
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        ServeLimits(max_images=0)
    assert MicroBatcher(StubScorer(), max_batch=2, max_wait=0.01, max_queue=4).load == 0
