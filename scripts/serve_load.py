"""The drawing page under load: do the page's drawings stay fast while huge pictures arrive?

    python scripts/serve_load.py --workdir runs/mnist --requests 600 --concurrency 20

Starts `python -m jaxmnist.serve` on 127.0.0.1 (never another address) and sends it, at once:
- REQUESTS drawings as the page sends them (280x280 PNGs, CONCURRENCY at a time), and
- one huge picture every HUGE_EVERY seconds, in turn: a 12000x12000 PNG of 30 KB (refused from its
  header), a 7000x7000 one with a digit (49 million pixels, under the limit: decoded, aside),
  and a 21 MB body (refused while it is read).
Prints the drawings' latency (p50, p99, max) with and without the huge pictures, what the huge
ones got, the answer to a foreign Host header, and how many tracebacks the server printed for
ABORTED uploads cut off half-way. Bounded: at most 5,000 requests, and every
phase stops sending after --seconds. The server runs in a scratch folder, so PYTHONPATH says
which checkout is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HOST = "127.0.0.1"  # this machine only, whatever the flags say
MAX_REQUESTS = 5_000


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def a_drawing(size: int, width: int) -> Image.Image:
    """A 7 in black strokes on white, as the page draws it."""
    picture = Image.new("L", (size, size), 255)
    ImageDraw.Draw(picture).line([(0.25 * size, 0.2 * size), (0.75 * size, 0.2 * size), (0.4 * size, 0.85 * size)],
                                 fill=0, width=width)
    return picture


def huge_bodies() -> list[tuple[str, bytes]]:
    return [("12000x12000 PNG", png(Image.new("1", (12_000, 12_000), 1))),
            ("7000x7000 PNG with a digit", png(a_drawing(7_000, 400))),
            ("21 MB body", b"\0" * 21_000_000)]


async def send_drawings(client, body: bytes, count: int, concurrency: int, deadline: float) -> list[float]:
    """count POSTs of the drawing, concurrency at a time; the seconds each took."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one():
        async with gate:
            if time.monotonic() > deadline:
                return
            start = time.perf_counter()
            reply = await client.post("/predict", content=body, headers={"Content-Type": "image/png"})
            latencies.append(time.perf_counter() - start)
            assert reply.status_code == 200, reply.text

    await asyncio.gather(*(one() for _ in range(count)))
    return latencies


async def send_huge(client, bodies, every: float, stop: asyncio.Event) -> list[dict]:
    """One huge body every `every` seconds, in turn, until stop is set; each answer and its time."""
    answers, turn = [], 0
    while not stop.is_set():
        name, body = bodies[turn % len(bodies)]
        start = time.perf_counter()
        reply = await client.post("/predict", content=body, headers={"Content-Type": "image/png"})
        answers.append({"picture": name, "status": reply.status_code, "seconds": round(time.perf_counter() - start, 3),
                        "answer": reply.json().get("error") or reply.json().get("digit")})
        turn += 1
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass
    return answers


async def abort_uploads(port: int, count: int) -> None:
    """Start count uploads and hang up half-way through each, as a closed browser tab does."""
    for _ in range(count):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: image/png\r\n"
                     "Content-Length: 100000\r\n\r\n".encode() + b"\0" * 50_000)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(1)  # the server notices the last ones


def percentiles(latencies: list[float]) -> dict[str, float]:
    milliseconds = 1000 * np.asarray(latencies)
    return {"requests": len(latencies), "p50_ms": round(float(np.percentile(milliseconds, 50)), 1),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 1), "max_ms": round(float(milliseconds.max()), 1)}


async def measure(port: int, args) -> dict:
    import httpx

    drawing = png(a_drawing(280, 20))
    bodies = huge_bodies()
    limits = httpx.Limits(max_connections=args.concurrency + 2)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=120, limits=limits) as client:
        foreign = await client.get("/run", headers={"Host": "evil.example"})
        await send_drawings(client, drawing, 20, 1, time.monotonic() + args.seconds)  # compile the model first
        alone = await send_drawings(client, drawing, args.requests, args.concurrency, time.monotonic() + args.seconds)
        stop = asyncio.Event()
        huge = asyncio.create_task(send_huge(client, bodies, args.huge_every, stop))
        mixed = await send_drawings(client, drawing, args.requests, args.concurrency, time.monotonic() + args.seconds)
        stop.set()
        await abort_uploads(port, args.aborted)
        return {"foreign_host_status": foreign.status_code, "drawings_alone": percentiles(alone),
                "drawings_with_huge_pictures": percentiles(mixed), "huge_pictures": await huge}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained run's workdir")
    parser.add_argument("--requests", type=int, default=600, help="drawings per phase (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=20, help="drawings in flight (default: %(default)s)")
    parser.add_argument("--huge-every", type=float, default=0.5, help="seconds between huge pictures (default: %(default)s)")
    parser.add_argument("--aborted", type=int, default=100, help="uploads cut off half-way (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60, help="each phase stops sending after this (default: %(default)s)")
    args = parser.parse_args()
    bounded = (0 < args.requests and 0 <= args.aborted and 2 * args.requests + args.aborted <= MAX_REQUESTS
               and 0 < args.concurrency <= 100 and 0 < args.seconds <= 300)
    if not bounded:
        parser.error(f"at most {MAX_REQUESTS:,} requests in all (2 x --requests + --aborted), --concurrency 1-100 "
                     "and --seconds up to 300 keep the load bounded")
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="jaxmnist-load-") as scratch:
        errors = Path(scratch) / "server-stderr.txt"
        with errors.open("w") as stderr:
            server = subprocess.Popen([sys.executable, "-m", "jaxmnist.serve", "--workdir", args.workdir, "--host", HOST,
                                       "--port", str(port)], cwd=scratch, stdout=subprocess.PIPE, stderr=stderr, text=True)
            try:
                if "drawing page" not in server.stdout.readline():
                    sys.exit(f"The server did not start: {errors.read_text().strip()}")
                result = asyncio.run(measure(port, args))
            finally:
                server.terminate()
                server.wait(timeout=30)
        result["aborted_uploads"] = args.aborted
        result["server_tracebacks"] = errors.read_text().count("Traceback")
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
