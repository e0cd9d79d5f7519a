"""Load on `histodetect serve` over loopback: latency percentiles and patches/s at several
numbers of concurrent clients, with and without micro-batching, against the batch rate of
`histodetect predict` on the same files; prints a table for docs/BENCHMARKS.md.

Usage: python benchmarks/bench_serve.py [--clients 1,8,32] [--requests 400] [--time-cap-s 60]
                                        [--cli-patches 1024] [--model M] [--device cpu]
                                        [--client raw|httpx] [--server-threads N]
                                        [--max-wait-ms MS]

Each client sends one real PCam valid patch (JPEG) per POST /v1/predict and waits for the
answer before sending the next. Every configuration sends a fixed number of requests and stops
early at the time cap (bounded); the server is a real `histodetect serve` process on
127.0.0.1, the clients one asyncio process beside it (so on a small machine they share its
cores). "CLI" is `Predictor.predict_paths` on --cli-patches files: what `histodetect predict`
runs after loading the model, decoding in worker processes and scoring in batches of 256.

The load generator shares the machine with the server, so its own CPU time is measured and
printed beside the server's (CPU ms per request, from /proc). `--client raw` (default) writes
pre-built HTTP/1.1 multipart requests on keep-alive sockets and reads the answers with asyncio
streams, about 0.1 ms of CPU per request; `--client httpx` uses httpx's AsyncClient, about
6 ms per request here, which on 2 cores takes as much CPU as the server itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HISTODETECT_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass
class LoadResult:
    """One configuration: requests answered, seconds, and latencies in ms."""

    label: str
    clients: int
    answered: int
    failed: int
    elapsed_s: float
    latencies_ms: np.ndarray
    patches_per_pass: float
    server_cpu_ms: float
    client_cpu_ms: float

    def row(self, cli_rate: float) -> str:
        p50, p95, p99 = np.percentile(self.latencies_ms, [50, 95, 99])
        rate = self.answered / self.elapsed_s
        return (
            f"| {self.label} | {self.clients} | {self.answered} | {p50:.0f} | {p95:.0f} | "
            f"{p99:.0f} | {rate:.0f} | {rate / cli_rate:.2f} | {self.patches_per_pass:.1f} | "
            f"{self.server_cpu_ms:.1f} | {self.client_cpu_ms:.1f} |"
        )


def patch_files(n: int) -> list[Path]:
    valid = SHARED / "pcam-subset" / "valid"
    files = sorted(valid.glob("*/*.jpg"))
    if not files:
        sys.exit(f"no patches under {valid}; set HISTODETECT_SHARED_DATA")
    return [files[i % len(files)] for i in range(0, n * 7, 7)]


def cli_rate(files: list[Path], model: str | None, device: str) -> float:
    """Patches/s of predict's batch path (best of two runs, model already loaded)."""
    from histodetect.inference.predictor import Predictor

    predictor = Predictor(model, device=device)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        predictor.predict_paths(files, progress=False)
        best = min(best, time.perf_counter() - start)
    return len(files) / best


def start_server(
    model: str | None,
    device: str,
    batching: bool,
    threads: int | None = None,
    max_wait_ms: float | None = None,
) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "histodetect", "serve", "--port", "0", "--device", device]
    command += [] if batching else ["--no-batching"]
    command += [] if max_wait_ms is None else ["--max-wait-ms", str(max_wait_ms)]
    command += ["--model", model] if model else []
    env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"Serving on (http://\S+/) ", line)
        if found:
            return process, found.group(1)
    sys.exit("histodetect serve did not start")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BOUNDARY = "histodetect-bench-boundary"


def raw_request(host: str, port: int, name: str, payload: bytes) -> bytes:
    """One complete POST /v1/predict (HTTP/1.1, multipart field `files`), ready to write."""
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def load_raw(
    url: str, payloads: list[bytes], clients: int, requests: int, cap_s: float
) -> tuple[int, int, float, list[float]]:
    """`load` with pre-built requests on raw keep-alive sockets: a client that costs the
    shared CPU almost nothing. Every answer's status is checked and its body read in full."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    prepared = [raw_request(host, int(port), f"p{i}.jpg", p) for i, p in enumerate(payloads)]
    latencies: list[float] = []
    counter = iter(range(requests))
    failed = 0
    start = time.perf_counter()

    async def one_client() -> None:
        nonlocal failed
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in counter:
                if time.perf_counter() - start > cap_s:
                    return
                sent = time.perf_counter()
                writer.write(prepared[i % len(prepared)])
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length is None:
                    raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")
                body = await reader.readexactly(int(length.group(1)))
                latencies.append(1000 * (time.perf_counter() - sent))
                failed += head[9:12] != b"200" or b'"probability"' not in body
        finally:
            writer.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return len(latencies) - failed, failed, elapsed, latencies


async def load(
    url: str, payloads: list[bytes], clients: int, requests: int, cap_s: float
) -> tuple[int, int, float, list[float]]:
    """`requests` POSTs from `clients` concurrent clients, stopping at `cap_s` seconds."""
    import httpx

    latencies: list[float] = []
    counter = iter(range(requests))
    failed = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        start = time.perf_counter()

        async def one_client() -> None:
            nonlocal failed
            for i in counter:
                if time.perf_counter() - start > cap_s:
                    return
                files = [("files", (f"p{i}.jpg", payloads[i % len(payloads)], "image/jpeg"))]
                sent = time.perf_counter()
                response = await client.post("v1/predict", files=files)
                latencies.append(1000 * (time.perf_counter() - sent))
                failed += response.status_code != 200

        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return len(latencies) - failed, failed, elapsed, latencies


def health(url: str) -> dict[str, int]:
    import httpx

    counters: dict[str, int] = httpx.get(url + "health").json()
    return counters


def run_server_configs(args: argparse.Namespace, payloads: list[bytes]) -> list[LoadResult]:
    results = []
    for batching in (True, False):
        process, url = start_server(
            args.model, args.device, batching, args.server_threads, args.max_wait_ms
        )
        try:
            loader = load_raw if args.client == "raw" else load
            asyncio.run(loader(url, payloads, 4, 16, 30))  # warm-up, not counted
            for clients in args.clients:
                before = health(url)
                cpu_before = process_cpu_s(process.pid), time.process_time()
                answered, failed, elapsed, latencies = asyncio.run(
                    loader(url, payloads, clients, args.requests, args.time_cap_s)
                )
                cpu_after = process_cpu_s(process.pid), time.process_time()
                after = health(url)
                passes = after["forward_passes"] - before["forward_passes"]
                per_pass = (after["patches_scored"] - before["patches_scored"]) / max(passes, 1)
                label = "micro-batching" if batching else "no batching"
                sent = max(answered + failed, 1)
                server_ms = 1000 * (cpu_after[0] - cpu_before[0]) / sent
                client_ms = 1000 * (cpu_after[1] - cpu_before[1]) / sent
                result = LoadResult(
                    label, clients, answered, failed, elapsed, np.array(latencies), per_pass,
                    server_ms, client_ms,
                )  # fmt: skip
                results.append(result)
                print(
                    f"  {label}, {clients} clients: {answered} answered in {elapsed:.1f} s",
                    file=sys.stderr,
                )
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--requests", type=int, default=400, help="per configuration")
    parser.add_argument("--time-cap-s", type=float, default=60.0, help="per configuration")
    parser.add_argument("--cli-patches", type=int, default=1024)
    parser.add_argument("--model", help="model.pt or run folder (default: bundled)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-wait-ms", type=float, help="the server's (default: its default)")
    parser.add_argument(
        "--server-threads", type=int, help="OMP_NUM_THREADS of the server (default: inherited)"
    )
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw",
        help="load generator: raw keep-alive sockets (default, ~0.1 ms CPU per request) or httpx",
    )  # fmt: skip
    args = parser.parse_args()

    load_before = os.getloadavg()
    files = patch_files(args.cli_patches)
    # The CLI rate is measured before and after the service and averaged: on a shared virtual
    # machine the CPU's speed drifts by up to a third over minutes, and one side alone would
    # put that drift into the ratio.
    before = cli_rate(files, args.model, args.device)
    payloads = [p.read_bytes() for p in files[:256]]
    results = run_server_configs(args, payloads)
    after = cli_rate(files, args.model, args.device)
    rate = (before + after) / 2
    load_after = os.getloadavg()

    import torch

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"device {args.device}; load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
        f"client {args.client}; server threads {args.server_threads or 'inherited'}; "
        f"max wait {args.max_wait_ms if args.max_wait_ms is not None else 'default'} ms."
    )
    print(
        f"CLI batch predict (predict_paths, {len(files)} files): {rate:.0f} patches/s "
        f"(mean of {before:.0f} before and {after:.0f} after the service)\n"
    )
    print(
        "| server | clients | requests answered | p50 ms | p95 ms | p99 ms | patches/s | / CLI "
        "| patches per forward pass | server CPU ms/request | client CPU ms/request |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for result in results:
        print(result.row(rate))
    if any(r.failed for r in results):
        print(
            "\nfailed requests: "
            + ", ".join(f"{r.label}/{r.clients}: {r.failed}" for r in results if r.failed)
        )


if __name__ == "__main__":
    main()
