"""The HTTP service against hostile or careless clients: cut-off bodies, bursts of huge images,
stalled connections, disconnects, unusable images, and what the service says about itself.

The tests that need the real server (``realqa.serve.run``: its protocol, its logging, its memory)
start it in a child process on a free loopback port with a stub scorer; the others run the app
in this process (``serving`` from test_serve).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import SMALL_PIXELS
from realqa.engine import load_scorer
from realqa.serve import ServeLimits, create_app
from test_serve import StubScorer, image, png, post, serving

# The service in a child process: a stub scorer (red value / 50) that takes the images one at a time,
# as the real scorer does, and then sleeps `delay` seconds, or green / 10 s for an image whose first
# pixel's blue value is 7 (see `slow`). Limits the service does not know are left out, so the same
# child serves any version of realqa.serve.
CHILD = r"""
import dataclasses, json, sys, time
from realqa.results import ScoreResult
from realqa.serve import ServeLimits, run

class Stub:
    batch_size = 4
    tasks = {"quality": None}

    def __init__(self, delay):
        self.delay = delay

    def score(self, images, task="quality", *, decimals=None, batch_size=None):
        results, delay = [], self.delay
        for image in images:
            pixel = image.getpixel((0, 0))
            pixel = pixel if isinstance(pixel, tuple) else (pixel, pixel, pixel)
            if pixel[2] == 7:
                delay = max(delay, pixel[1] / 10)
            results.append(ScoreResult("<image>", task, pixel[0] / 50, None, "ok", f"{pixel[0] / 50:.2f}"))
        time.sleep(delay)
        return results

config = json.loads(sys.argv[1])
known = {field.name for field in dataclasses.fields(ServeLimits)}
limits = ServeLimits(**{k: v for k, v in config["limits"].items() if k in known})
run(Stub(config["delay"]), limits, host="127.0.0.1", port=config["port"], max_connections=config["max_connections"],
    log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Child:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log
        self.port = int(url.rsplit(":", 1)[1])

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def child_server(folder: Path, *, delay: float = 0.0, max_connections: int = 64, **limits):
    port = free_port()
    log = folder / f"server-{port}.log"
    config = {"port": port, "delay": delay, "max_connections": max_connections, "limits": limits}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(config)], stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the server did not start"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield Child(url, process, log)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")


def slow(name: str, seconds: float):
    """An upload the child's stub takes ``seconds`` to score (with the rest of its model batch)."""
    return image(name, (100, int(seconds * 10), 7))


def multipart(parts, boundary="xyz", closed=True) -> bytes:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
                    f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for name, data in parts)
    return body + (f"--{boundary}--\r\n".encode() if closed else b"")


def stalled_upload(port: int, sent: bytes = b"\x89PNG") -> socket.socket:
    """A client that sends its headers and the start of a 100 kB body, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                 b"Content-Length: 100000\r\n\r\n--xyz\r\nContent-Disposition: form-data; name=\"images\"; "
                 b"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n" + sent)
    return sock


def read_all(sock: socket.socket) -> bytes:
    reply = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """The real server (``run``) with small limits: 3 requests in progress, a 4 MiB memory budget for
    queued uploads, 5 s for request headers and for each pause in an upload."""
    with child_server(tmp_path_factory.mktemp("guarded"), max_connections=3, max_queue_bytes=4 * 1024 * 1024,
                      idle_timeout=5, header_timeout=5, request_timeout=30) as server:
        yield server


@pytest.fixture(scope="module")
def stub_url():
    with serving(create_app(StubScorer(), model_name="stub")) as url:
        yield url


@pytest.fixture(scope="module")
def tiny_scorer(tiny_model_dir):
    return load_scorer(str(tiny_model_dir), device="cpu", batch_size=8, **SMALL_PIXELS)


# ---------------------------------------------------------------- 5: a body cut off before its end


def test_a_body_cut_before_its_closing_boundary_is_refused_not_half_scored(stub_url):
    parts = [("one.png", png((100, 0, 0))), ("two.png", png((150, 0, 0)))]
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    cut = httpx.post(stub_url + "/score", content=multipart(parts, closed=False), headers=headers)
    assert cut.status_code == 400, cut.text
    detail = cut.json()["detail"]
    assert "incomplete multipart body" in detail and "closing boundary (--xyz--)" in detail
    whole = httpx.post(stub_url + "/score", content=multipart(parts), headers=headers)
    assert [(r["path"], r["score"]) for r in whole.json()["results"]] == [("one.png", 2.0), ("two.png", 3.0)]


# ---------------------------------------------------------------- 6: memory bounded by a budget


def big_jpeg(side: int) -> bytes:
    picture = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


@linux_only
def test_a_burst_of_huge_images_never_holds_their_decoded_pixels(tmp_path):
    """24 images of 4000 x 4000 (64 MB each decoded, 1.5 GB together; 2 MB as uploaded) wait behind
    a slow model: the server's memory grows by far less than one request's decoded pixels, and
    comes back after the burst."""
    data = big_jpeg(4000)
    with child_server(tmp_path, delay=0.5) as server:
        post(server.url, [image()])  # warm: first-request allocations are not the burst's
        time.sleep(0.5)
        baseline = server.rss_mb()
        peak, stop = [baseline], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], server.rss_mb())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(3) as pool:
                responses = list(pool.map(
                    lambda r: post(server.url, [(f"r{r}-{i}.jpg", data, "image/jpeg") for i in range(8)], timeout=120),
                    range(3)))
        finally:
            stop.set()
            sampler.join()
        time.sleep(1.0)
        after = server.rss_mb()
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text[:200] for r in responses]
    assert [row["path"] for row in responses[1].json()["results"]] == [f"r1-{i}.jpg" for i in range(8)]
    assert peak[0] - baseline < 400, f"RSS {baseline:.0f} -> peak {peak[0]:.0f} MB"
    assert after - baseline < 150, f"RSS {baseline:.0f} -> {after:.0f} MB after the burst"


def noise_png(megabytes: float) -> bytes:
    side = int((megabytes * 1024 * 1024 / 3) ** 0.5)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def test_uploads_beyond_the_memory_budget_get_a_503_naming_it(guarded):
    data = noise_png(1.5)  # incompressible: 1.5 MB as uploaded
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, guarded.url, [("a.png", data, "image/png"), slow("b.png", 2)])
        time.sleep(0.8)  # the first request's 1.5 MB wait for the slow model
        second = post(guarded.url, [("c.png", data, "image/png"), ("d.png", data, "image/png")])
        assert first.result().status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert second.json()["detail"].startswith("server busy: queued uploads hold 1.5 MiB (memory budget 4.0 MiB)")
    again = post(guarded.url, [("c.png", data, "image/png"), ("d.png", data, "image/png")])
    assert [row["path"] for row in again.json()["results"]] == ["c.png", "d.png"]  # room again


def test_a_small_request_does_not_wait_behind_every_batch_of_a_large_one():
    stub = StubScorer(delay=0.5)  # 4 images a model batch, 0.5 s each
    with serving(create_app(stub, ServeLimits(max_wait_ms=0))) as url:
        with ThreadPoolExecutor(2) as pool:
            large = pool.submit(post, url, [image(f"{i}.png", (10 * i, 0, 0)) for i in range(12)])
            time.sleep(0.1)  # the large request's first batch is in the model
            small = pool.submit(post, url, [image("small.png", (150, 0, 0))]).result()
            large = large.result()
    assert small.json()["results"][0]["score"] == 3.0
    assert [r["path"] for r in large.json()["results"]] == [f"{i}.png" for i in range(12)]
    # In the second model batch (about 0.9 s), not after the large request's three (about 1.9 s).
    assert small.elapsed.total_seconds() < 1.4 < large.elapsed.total_seconds()


# ---------------------------------------------------------------- 7: stalled clients


def test_stalled_clients_cannot_lock_the_others_out(guarded):
    uploads = [stalled_upload(guarded.port) for _ in range(3)]  # headers sent, body stalled: every request slot
    headers_only = []
    for _ in range(2):  # request headers never finished
        sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=30)
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        headers_only.append(sock)
    time.sleep(1.5)
    started = time.monotonic()
    served = [post(guarded.url, [image(f"{i}.png", (50 * i, 0, 0))]) for i in (1, 2, 3)]
    took = time.monotonic() - started
    # Each stalled client gets a JSON 408 saying why: closed to make room, or at its own deadline.
    replies = [read_all(sock).decode(errors="replace") for sock in uploads + headers_only]
    for sock in uploads + headers_only:
        sock.close()
    assert [r.status_code for r in served] == [200, 200, 200], [r.text[:200] for r in served]
    assert [r.json()["results"][0]["score"] for r in served] == [1.0, 2.0, 3.0]
    assert took < 3.5  # not after the stalled clients' 5 s deadlines
    assert all(reply.startswith("HTTP/1.1 408") for reply in replies), replies
    details = [json.loads(reply.split("\r\n\r\n", 1)[1])["detail"] for reply in replies]
    assert all(d.startswith(("upload stalled: nothing received", "request headers not received")) for d in details)
    assert sum("while the server was full" in d for d in details) >= 2, details


def test_overload_answers_are_json_naming_the_limit(guarded):
    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(post, guarded.url, [slow(f"{i}.png", 2)]) for i in range(3)]
        time.sleep(0.8)  # three requests in progress, none stalled: they are being scored
        refused = post(guarded.url, [image("late.png")])
        statuses = [f.result().status_code for f in busy]
    assert refused.status_code == 503 and refused.headers["content-type"] == "application/json", refused.text
    assert refused.json()["detail"] == "server busy: 3 requests in progress (limit 3); retry shortly"
    assert refused.headers["retry-after"] == "1"
    assert statuses == [200, 200, 200]


def test_a_client_leaving_mid_upload_is_one_log_line(guarded):
    start = len(guarded.output())
    sock = stalled_upload(guarded.port)
    time.sleep(0.3)
    sock.close()
    time.sleep(0.5)
    assert post(guarded.url, [image()]).status_code == 200
    output = guarded.output()[start:]
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "disconnected" in line]
    assert len(lines) == 1 and "while uploading" in lines[0], output


# ---------------------------------------------------------------- 8: unusable images, named


def test_an_image_the_model_cannot_preprocess_is_a_422_naming_its_upload(tiny_scorer):
    thin = io.BytesIO()
    Image.new("RGB", (1000, 4), (90, 90, 90)).save(thin, "PNG")  # aspect ratio 250: the image processor refuses it
    others = [image(f"other{i}.png", (40 * i, 80, 80)) for i in range(5)]
    mine = [image("a.png", (30, 30, 30)), image("b.png", (200, 200, 200)), ("thin.png", thin.getvalue(), "image/png")]
    with serving(create_app(tiny_scorer, ServeLimits(max_wait_ms=300))) as url:  # both requests share a batch
        with ThreadPoolExecutor(2) as pool:
            crowd = pool.submit(post, url, others)
            time.sleep(0.05)
            response = post(url, mine)
            assert crowd.result().status_code == 200
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"] == "image(s) could not be preprocessed for the model"
    assert body["errors"] == [{"index": 2, "image": "thin.png",
                               "error": "image cannot be preprocessed (absolute aspect ratio must be smaller than 200, "
                                        "got 250.0)"}]
    assert "<image" not in response.text


def test_a_thin_image_under_the_fragments_profile_is_a_422_naming_its_size(tiny_model_dir):
    """The fragments canvas hides an image's shape from the processor: the profile itself refuses what the
    processor would, before it enlarges the image 56-fold along its length."""
    scorer = load_scorer(str(tiny_model_dir), device="cpu", batch_size=8, preprocessing="fragments", **SMALL_PIXELS)
    thin = io.BytesIO()
    Image.new("RGB", (1, 5000), (90, 90, 90)).save(thin, "PNG")
    with serving(create_app(scorer, ServeLimits())) as url:
        response = post(url, [image("a.png"), ("thin.png", thin.getvalue(), "image/png")])
        assert post(url, [image("a.png")]).status_code == 200  # the service goes on
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"] == "image(s) could not be preprocessed for the model"
    assert body["errors"] == [{"index": 1, "image": "thin.png",
                               "error": "image cannot be preprocessed (1x5000 px: aspect ratio 5000.0, above the 200 "
                                        "the Qwen2-VL image processor accepts)"}]


def test_served_scores_equal_scoring_the_same_files(tiny_model_dir, tmp_path):
    """What a file on disk gives the scorer (``realqa score``), an upload of it gives too: EXIF
    orientation, large JPEGs (no reduced decoding), palette transparency, under both preprocessing profiles."""
    files = []
    rotated = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    rotated.save(tmp_path / "rotated.jpg", "JPEG", quality=90, exif=exif.tobytes())
    Image.linear_gradient("L").resize((3000, 2000)).rotate(20).convert("RGB").save(tmp_path / "large.jpg", quality=85)
    palette = Image.new("P", (300, 200), 3)
    palette.putpalette([i % 256 for i in range(768)])
    palette.save(tmp_path / "palette.png", transparency=3)
    files = [tmp_path / name for name in ("rotated.jpg", "large.jpg", "palette.png")]
    for preprocessing in ("realqa", "llamafactory"):
        scorer = load_scorer(str(tiny_model_dir), device="cpu", batch_size=8, preprocessing=preprocessing,
                             **SMALL_PIXELS)
        expected = [r.to_row() for r in scorer.score([str(f) for f in files])]
        with serving(create_app(scorer)) as url:
            rows = post(url, [(f.name, f.read_bytes(), "image/jpeg" if f.suffix == ".jpg" else "image/png")
                              for f in files]).json()["results"]
        assert rows == [{**row, "path": f.name} for row, f in zip(expected, files)], preprocessing


# ---------------------------------------------------------------- what the service says about itself


def test_no_response_shows_the_server_side_model_path(tiny_scorer, tiny_model_dir):
    folder = str(tiny_model_dir)
    assert os.path.isabs(folder) and tiny_scorer.loaded.name == folder
    with serving(create_app(tiny_scorer)) as url:
        health = httpx.get(url + "/health")
        scored = post(url, [image()])
        texts = [health.text, scored.text, httpx.get(url + "/openapi.json").text, httpx.get(url + "/stats").text]
    assert health.json()["model"] == tiny_model_dir.name and scored.json()["model"] == tiny_model_dir.name
    assert not [text for text in texts if folder in text]


def test_serve_without_the_serve_extra_is_one_line(tiny_model_dir, monkeypatch, capsys):
    from realqa.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve", "--model", str(tiny_model_dir), "--device", "cpu", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("pip install 'realqa[serve]'"), err
    assert len(err.splitlines()) == 1 and err.startswith("realqa serve: error:"), err
    assert "Traceback" not in err
