"""Load test of `realqa serve` on this machine: throughput and micro-batching at 1 vs N clients, and
the service under abuse: a burst of huge images and a crowd of stalled clients while a few
well-behaved clients keep scoring.

Starts the service in a child process on 127.0.0.1 with the tiny random model (or ``--model``) and
the service's default limits (``--max-connections``, ``--max-wait-ms`` aside). Traffic goes to
loopback only.

Throughput (``--scenario throughput``): for each concurrency level, a bounded number of requests
(``--requests``, or ``--max-seconds``), each with ``--images`` uploads; one row per level:
requests/s, images/s, p50/p99 latency and the mean number of images per model batch (/stats).

Abuse (``--scenario abuse``): ``--good-clients`` clients send one 640x480 JPEG per request, one
request after another, through three phases of the same run:

* ``baseline``: nothing else (``--phase-seconds``);
* ``burst``: one client posts ``--burst-requests`` requests of ``--burst-images`` JPEGs of
  ``--burst-side`` x ``--burst-side`` pixels at once; the phase ends 5 s after the last answer;
* ``stalled``: ``--stalled`` clients send their headers and the start of a body, then nothing, and
  ``--stalled-headers`` clients send half their headers, connecting one after another (20 ms
  apart); each reconnects 1 s after being closed. They connect from 127.0.0.2-9, as other
  machines would (``--phase-seconds``).

One row per phase: the good clients' requests, 5xx answers, other failures, p50/p99 latency, and
the server's RSS (peak in the phase, and at its end), sampled from /proc every 50 ms.

    python benchmarks/serve_load.py [--scenario all] [--concurrency 1,8] [--requests 48] [--photos DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

HOST = "127.0.0.1"
STALLED_FROM = [f"127.0.0.{i}" for i in range(2, 10)]  # loopback addresses standing for other machines


def serve(model: str, port: int, batch_size: int, max_wait_ms: float, pixels: dict, max_connections: int) -> None:
    """The child process: load the scorer, serve until terminated."""
    from realqa.engine import load_scorer
    from realqa.serve import ServeLimits, run

    known = {field.name for field in dataclasses.fields(ServeLimits)}  # the same script measures older versions
    scorer = load_scorer(model, device="cpu", batch_size=batch_size, **pixels)
    run(scorer, ServeLimits(**{k: v for k, v in {"max_wait_ms": max_wait_ms}.items() if k in known}), host=HOST,
        port=port, log_level="error", max_connections=max_connections)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def test_images(photos: str | None, count: int) -> list[tuple[str, bytes]]:
    """JPEG bytes to upload: the photos in ``photos`` (cycled), else generated gradients."""
    files = sorted(Path(photos).glob("*.jpg"))[:count] if photos else []
    if files:
        return [(f.name, f.read_bytes()) for f in files]
    return [(f"gradient{i}.jpg", gradient_jpeg(640, 480, i * 15)) for i in range(count)]


def gradient_jpeg(width: int, height: int, angle: float, quality: int = 90) -> bytes:
    picture = Image.linear_gradient("L").resize((width, height)).convert("RGB").rotate(angle)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


# ---------------------------------------------------------------- throughput


async def level(url: str, clients: int, requests: int, per_request: int, images, max_seconds: float) -> dict:
    """``clients`` concurrent clients send ``requests`` requests in all (bounded by ``max_seconds``)."""
    latencies: list[float] = []
    failures = 0
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent, failures
        while sent < requests and time.perf_counter() < deadline:
            files = [("images", images[(sent + k) % len(images)]) for k in range(per_request)]
            sent += 1
            started = time.perf_counter()
            response = await http.post(url + "/score", files=[(f, (n, d, "image/jpeg")) for f, (n, d) in files])
            latencies.append(time.perf_counter() - started)
            failures += response.status_code != 200

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        before = (await http.get(url + "/stats")).json()
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
        after = (await http.get(url + "/stats")).json()
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients, "requests": len(latencies), "failed": failures, "seconds": wall,
        "req_per_s": len(latencies) / wall, "img_per_s": len(latencies) * per_request / wall,
        "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 0.99),
        "batches": batches, "img_per_batch": (after["images"] - before["images"]) / batches if batches else 0.0,
    }


# ---------------------------------------------------------------- abuse


class RssSampler:
    """The server's resident memory, sampled every 50 ms; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> float:
        try:
            with open(f"/proc/{self.pid}/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
        except (OSError, StopIteration):
            return float("nan")

    def reset(self) -> None:
        self.peak = self.now()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.now()
            if value == value:
                self.peak = max(self.peak, value)
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


async def good_clients(url: str, count: int, images, stop: asyncio.Event) -> list[tuple[float, object, bool]]:
    """(latency, status or exception name, JSON answer?) of every request of ``count`` clients that
    send one image a request, one request after another, until ``stop``."""
    records: list[tuple[float, object, bool]] = []

    async def client(k: int) -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            i = k
            while not stop.is_set():
                name, data = images[i % len(images)]
                i += count
                started = time.perf_counter()
                try:
                    response = await http.post(url + "/score", files=[("images", (name, data, "image/jpeg"))])
                    status: object = response.status_code
                    is_json = response.headers.get("content-type", "").startswith("application/json")
                except httpx.HTTPError as err:
                    status, is_json = type(err).__name__, False
                records.append((time.perf_counter() - started, status, is_json))
                if status != 200:
                    await asyncio.sleep(0.2)  # no tight retry loop

    await asyncio.gather(*(client(k) for k in range(count)))
    return records


async def stalled_clients(port: int, bodies: int, headers: int, stop: asyncio.Event) -> dict:
    """``bodies`` clients stalled mid-upload and ``headers`` stalled mid-headers until ``stop``; each
    reconnects 1 s after the server closes it. Returns what the server answered them."""
    answers: dict[str, int] = {}
    head = (f"POST /score HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
            "Content-Length: 1000000\r\n\r\n--xyz\r\nContent-Disposition: form-data; name=\"images\"; "
            "filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + b"\xff\xd8\xff" + b"\0" * 100
    partial = f"POST /score HTTP/1.1\r\nHost: {HOST}\r\n".encode()

    async def client(k: int, payload: bytes) -> None:
        await asyncio.sleep(0.02 * k)  # one after another, as a slowloris fills the server
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(HOST, port, local_addr=(STALLED_FROM[k % 8], 0))
            except OSError:
                await asyncio.sleep(1)
                continue
            try:
                writer.write(payload)
                await writer.drain()
                reading = asyncio.ensure_future(reader.read())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not reading.done():
                    reading.cancel()
                    break
                reply = reading.result()
                status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/") else "closed"
                kind = "json" if b"application/json" in reply.split(b"\r\n\r\n")[0].lower() else "text"
                key = status if status == "closed" else f"{status} {kind}"
                answers[key] = answers.get(key, 0) + 1
            except OSError:
                answers["reset"] = answers.get("reset", 0) + 1
            finally:
                writer.close()
            await asyncio.sleep(1)

    await asyncio.gather(*(client(k, head) for k in range(bodies)),
                         *(client(bodies + k, partial) for k in range(headers)))
    return answers


def phase_row(name: str, seconds: float, records, rss: RssSampler, note: str) -> dict:
    latencies = [latency for latency, status, _ in records if status == 200]
    server_errors = sum(1 for _, status, _ in records if isinstance(status, int) and status >= 500)
    other = sum(1 for _, status, _ in records if status != 200 and not (isinstance(status, int) and status >= 500))
    plain = sum(1 for _, status, is_json in records if status != 200 and not is_json)
    failures: dict[str, int] = {}
    for _, status, is_json in records:
        if status != 200:
            key = f"{status}{' JSON' if is_json else ''}"
            failures[key] = failures.get(key, 0) + 1
    if failures:
        note += "; the good clients' failures: " + ", ".join(f"{n} x {key}" for key, n in sorted(failures.items()))
    return {"phase": name, "seconds": seconds, "requests": len(records), "ok": len(latencies), "5xx": server_errors,
            "other": other, "not_json": plain,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p99_ms": 1000 * percentile(latencies, 0.99), "rss_peak": rss.peak, "rss_end": rss.now(), "note": note}


async def abuse(url: str, port: int, rss: RssSampler, args, images) -> list[dict]:
    rows = []
    huge = [gradient_jpeg(args.burst_side, args.burst_side, 7 * i, quality=85) for i in range(4)]

    async def with_good_clients(disturbance):
        stop = asyncio.Event()
        clients = asyncio.ensure_future(good_clients(url, args.good_clients, images, stop))
        started = time.perf_counter()
        note = await disturbance()
        stop.set()
        records = await clients
        return records, time.perf_counter() - started, note

    async def baseline():
        await asyncio.sleep(args.phase_seconds)
        return "nothing else"

    async def burst():
        async def one(r: int):
            files = [("images", (f"huge{r}-{i}.jpg", huge[i % len(huge)], "image/jpeg"))
                     for i in range(args.burst_images)]
            started = time.perf_counter()
            try:
                async with httpx.AsyncClient(timeout=600) as http:
                    response = await http.post(url + "/score", files=files)
                return response.status_code, time.perf_counter() - started
            except httpx.HTTPError as err:
                return type(err).__name__, time.perf_counter() - started

        outcomes = await asyncio.gather(*(one(r) for r in range(args.burst_requests)))
        await asyncio.sleep(5)  # settle: does the memory come back?
        size = sum(len(huge[i % len(huge)]) for i in range(args.burst_images)) / 1e6
        answers = ", ".join(f"{status} in {seconds:.0f} s" for status, seconds in outcomes)
        return (f"{args.burst_requests} x {args.burst_images} JPEGs of {args.burst_side}x{args.burst_side} "
                f"({size:.1f} MB a request): {answers}")

    async def stalled():
        stop = asyncio.Event()
        attack = asyncio.ensure_future(stalled_clients(port, args.stalled, args.stalled_headers, stop))
        await asyncio.sleep(args.phase_seconds)
        stop.set()
        answers = await attack
        said = ", ".join(f"{count} {key}" for key, count in sorted(answers.items())) or "none closed"
        return f"{args.stalled} stalled mid-upload + {args.stalled_headers} mid-headers; answers to them: {said}"

    for name, disturbance in (("baseline", baseline), ("burst", burst), ("stalled", stalled)):
        rss.reset()
        records, seconds, note = await with_good_clients(disturbance)
        rows.append(phase_row(name, seconds, records, rss, note))
    return rows


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the tiny random model, built in a temp folder)")
    parser.add_argument("--scenario", choices=("all", "throughput", "abuse"), default="all")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts (default: 1,8)")
    parser.add_argument("--requests", type=int, default=48, help="requests per level (default: 48)")
    parser.add_argument("--images", type=int, default=1, help="images per request (default: 1)")
    parser.add_argument("--max-seconds", type=float, default=60, help="time limit per level (default: 60)")
    parser.add_argument("--batch-size", type=int, default=8, help="the service's max images per model batch")
    parser.add_argument("--max-wait-ms", type=float, default=10, help="the service's batching wait (default: 10)")
    parser.add_argument("--max-connections", type=int, default=64,
                        help="the service's limit (default: 64, as realqa serve)")
    parser.add_argument("--photos", help="folder of JPEGs to upload (default: generated 640x480 images)")
    parser.add_argument("--pixels", type=int, help="image processor min=max pixels (default: the model card's)")
    abuse_options = parser.add_argument_group("abuse")
    abuse_options.add_argument("--good-clients", type=int, default=2,
                               help="well-behaved clients throughout (default: 2)")
    abuse_options.add_argument("--phase-seconds", type=float, default=20,
                               help="baseline and stalled phases (default: 20)")
    abuse_options.add_argument("--burst-requests", type=int, default=1, help="requests in the burst (default: 1)")
    abuse_options.add_argument("--burst-images", type=int, default=16, help="images per burst request (default: 16)")
    abuse_options.add_argument("--burst-side", type=int, default=6000,
                               help="burst image side in pixels (default: 6000)")
    abuse_options.add_argument("--stalled", type=int, default=72, help="clients stalled mid-upload (default: 72)")
    abuse_options.add_argument("--stalled-headers", type=int, default=16,
                               help="clients stalled mid-headers (default: 16)")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    if min(levels) < 1 or args.requests < 1 or args.images < 1 or args.good_clients < 1:
        parser.error("concurrency, requests, images and good clients must be >= 1")

    with tempfile.TemporaryDirectory() as work:
        model = args.model
        if model is None:
            from realqa.model import build_tiny_model

            model = str(build_tiny_model(Path(work) / "tiny"))
        pixels = {"min_pixels": args.pixels, "max_pixels": args.pixels} if args.pixels else {}
        port = free_port()
        url = f"http://{HOST}:{port}"
        server = multiprocessing.get_context("spawn").Process(
            target=serve, args=(model, port, args.batch_size, args.max_wait_ms, pixels, args.max_connections),
            daemon=True)
        server.start()
        rss = None
        try:
            _wait_ready(url, server)
            rss = RssSampler(server.pid)
            images = test_images(args.photos, 16)
            asyncio.run(level(url, 1, 2, args.images, images, 30))  # warm-up, not reported
            rows = [] if args.scenario == "abuse" else [
                asyncio.run(level(url, n, args.requests, args.images, images, args.max_seconds)) for n in levels]
            phases = [] if args.scenario == "throughput" else asyncio.run(abuse(url, port, rss, args, images[:4]))
        finally:
            if rss is not None:
                rss.close()
            os.kill(server.pid, signal.SIGINT)  # uvicorn's own graceful shutdown
            server.join(10)
    model_name = "tiny random model" if args.model is None else args.model
    if rows:
        print(f"realqa serve load test: {args.images} image(s)/request, model batch <= {args.batch_size}, "
              f"max wait {args.max_wait_ms:g} ms, {model_name}")
        print(f"{'clients':>7} {'requests':>8} {'failed':>6} {'req/s':>7} {'img/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'batches':>7} {'img/batch':>9}")
        for r in rows:
            print(f"{r['clients']:>7} {r['requests']:>8} {r['failed']:>6} {r['req_per_s']:>7.1f} "
                  f"{r['img_per_s']:>7.1f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} {r['batches']:>7} "
                  f"{r['img_per_batch']:>9.2f}")
    if phases:
        print(f"\nrealqa serve under abuse: {args.good_clients} well-behaved clients (one 640x480 JPEG a request) "
              f"throughout; --max-connections {args.max_connections}, other limits the service's defaults; "
              f"{model_name}")
        print(f"{'phase':<9} {'seconds':>7} {'requests':>8} {'ok':>5} {'5xx':>5} {'other':>5} {'not JSON':>8} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'RSS peak MB':>11} {'RSS end MB':>10}")
        for p in phases:
            print(f"{p['phase']:<9} {p['seconds']:>7.0f} {p['requests']:>8} {p['ok']:>5} {p['5xx']:>5} {p['other']:>5} "
                  f"{p['not_json']:>8} {p['p50_ms']:>8.0f} {p['p99_ms']:>8.0f} {p['rss_peak']:>11.0f} "
                  f"{p['rss_end']:>10.0f}")
        for p in phases:
            print(f"  {p['phase']}: {p['note']}")
    failed = any(r["failed"] for r in rows) or any(p["5xx"] or p["other"] for p in phases)
    return 1 if failed else 0


def _wait_ready(url: str, server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.is_alive():
            raise SystemExit("the service exited during start-up")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the service did not answer on {url} within {timeout:g} s")


if __name__ == "__main__":
    sys.exit(main())
