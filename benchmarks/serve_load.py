"""Load test of `realqa serve` on this machine: throughput, latency and micro-batching at 1 vs N clients.

Starts the service in a child process on 127.0.0.1 with the tiny random model (or ``--model``),
then for each concurrency level sends a bounded number of requests, each with ``--images`` image
uploads, and prints one table row per level: requests/s, images/s, p50/p99 latency and the mean
number of images per model batch (from the service's /stats). Traffic goes to loopback only; every
level stops after ``--requests`` requests or ``--max-seconds`` seconds, whichever comes first.

    python benchmarks/serve_load.py [--concurrency 1,8] [--requests 48] [--images 1] [--photos DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

HOST = "127.0.0.1"


def serve(model: str, port: int, batch_size: int, max_wait_ms: float, pixels: dict) -> None:
    """The child process: load the scorer, serve until terminated."""
    from realqa.engine import load_scorer
    from realqa.serve import ServeLimits, run

    scorer = load_scorer(model, device="cpu", batch_size=batch_size, **pixels)
    run(scorer, ServeLimits(max_wait_ms=max_wait_ms, max_queue=1024), host=HOST, port=port, log_level="warning",
        max_connections=256)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def test_images(photos: str | None, count: int) -> list[tuple[str, bytes]]:
    """JPEG bytes to upload: the photos in ``photos`` (cycled), else generated gradients."""
    files = sorted(Path(photos).glob("*.jpg"))[:count] if photos else []
    if files:
        return [(f.name, f.read_bytes()) for f in files]
    images = []
    for i in range(count):
        picture = Image.linear_gradient("L").resize((640, 480)).convert("RGB").rotate(i * 15)
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        images.append((f"gradient{i}.jpg", buffer.getvalue()))
    return images


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
    latencies.sort()
    return {
        "clients": clients, "requests": len(latencies), "failed": failures, "seconds": wall,
        "req_per_s": len(latencies) / wall, "img_per_s": len(latencies) * per_request / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "batches": batches, "img_per_batch": (after["images"] - before["images"]) / batches if batches else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the tiny random model, built in a temp folder)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts (default: 1,8)")
    parser.add_argument("--requests", type=int, default=48, help="requests per level (default: 48)")
    parser.add_argument("--images", type=int, default=1, help="images per request (default: 1)")
    parser.add_argument("--max-seconds", type=float, default=60, help="time limit per level (default: 60)")
    parser.add_argument("--batch-size", type=int, default=8, help="the service's max images per model batch")
    parser.add_argument("--max-wait-ms", type=float, default=10, help="the service's batching wait (default: 10)")
    parser.add_argument("--photos", help="folder of JPEGs to upload (default: generated 640x480 images)")
    parser.add_argument("--pixels", type=int, help="image processor min=max pixels (default: the model card's)")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    if min(levels) < 1 or args.requests < 1 or args.images < 1:
        parser.error("concurrency, requests and images must be >= 1")

    with tempfile.TemporaryDirectory() as work:
        model = args.model
        if model is None:
            from realqa.model import build_tiny_model

            model = str(build_tiny_model(Path(work) / "tiny"))
        pixels = {"min_pixels": args.pixels, "max_pixels": args.pixels} if args.pixels else {}
        port = free_port()
        url = f"http://{HOST}:{port}"
        server = multiprocessing.get_context("spawn").Process(
            target=serve, args=(model, port, args.batch_size, args.max_wait_ms, pixels), daemon=True)
        server.start()
        try:
            _wait_ready(url, server)
            images = test_images(args.photos, 16)
            asyncio.run(level(url, 1, 2, args.images, images, 30))  # warm-up, not reported
            rows = [asyncio.run(level(url, n, args.requests, args.images, images, args.max_seconds)) for n in levels]
        finally:
            os.kill(server.pid, signal.SIGINT)  # uvicorn's own graceful shutdown
            server.join(10)
    print(f"realqa serve load test: {args.images} image(s)/request, model batch <= {args.batch_size}, "
          f"max wait {args.max_wait_ms:g} ms, {'tiny random model' if args.model is None else args.model}")
    print(f"{'clients':>7} {'requests':>8} {'failed':>6} {'req/s':>7} {'img/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'batches':>7} {'img/batch':>9}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['failed']:>6} {r['req_per_s']:>7.1f} {r['img_per_s']:>7.1f} "
              f"{r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} {r['batches']:>7} {r['img_per_batch']:>9.2f}")
    return 0 if all(r["failed"] == 0 for r in rows) else 1


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
