"""Throughput of the real Cog server with N concurrent callers: images per second, latency, 409s,
and whether every caller got the images it gets alone.

For each configuration (a batching window, in ms) the script starts ``scripts/serve.py`` with
``COG_MAX_CONCURRENCY`` and ``BATCH_WINDOW_MS`` set, then for each N in --callers runs N client
threads, each sending --requests predictions one after another (each with its own prompt and
seed). A 409 "At capacity" is counted and retried after 50 ms, as Replicate's queue does; a
prediction that fails, or never answers within --timeout, is counted as failed or lost.

Reported per row: images/s over the row's wall time, p50/p95 latency (first POST to answer, 409
retries included), the share of POSTs answered 409, failed and lost predictions, the mean batch
size the server reports (``batch_images``/``batch_callers`` metrics), the pixel check (every
image against the same prompt and seed run alone, one after another, before the first row: how
many differ, and by how many levels at most), and the longest first wait for companions
(``batch_window_seconds``; a lone caller's shows that it did not wait).

A ``burst`` row per configuration sends N predictions at the same instant to an idle server. The
longest first wait in the window (``batch_window_seconds``: a batch's first request waits until
nobody else is on the way, or the window ends) is, with a window longer than it, how far apart
callers released together reach the batcher: the figure BATCH_WINDOW_MS's default comes from.

CPU (tiny weights; only correctness and relative figures mean anything):
    python bench/bench_throughput.py --weights weights/sdxl-tiny --size 64 --steps 4
GPU (full-size random weights; the gpu_check.sh ``throughput`` part):
    python bench/bench_throughput.py --weights weights/sdxl-full --size 1024 --steps 20 --callers 1,4 --windows 0,20
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Call:
    prompt: str
    seed: int
    started: float = 0.0
    seconds: float = 0.0
    status: str = "lost"
    rejected: int = 0  # 409 answers before it was taken
    image: Optional[Any] = None  # numpy array
    metrics: dict = field(default_factory=dict)


@dataclass
class Row:
    window_ms: float
    callers: int
    kind: str  # "closed" (each caller sends its next request when the last is answered) or "burst"
    predictions: int
    images_per_second: float
    p50_s: float
    p95_s: float
    share_409: float
    failed: int
    lost: int
    mean_batch_images: float
    max_batch_callers: int
    differ_from_solo: int  # images not pixel-identical to the same prompt and seed alone
    max_level_diff: int
    compared: int
    leader_wait_ms: Optional[float] = None  # the longest first wait in the window for companions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict, timeout: float) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read()[:2000].decode(errors="replace")}


def decode(data_url: str) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")).astype(int)


class Server:
    """``scripts/serve.py`` on loopback with the given environment, until closed."""

    def __init__(self, weights: str, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "serve.py"), "--port", str(self.port), "--weights", weights,
             "--await-explicit-shutdown", "true"],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health-check", timeout=5) as response:
                    status = json.loads(response.read())["status"]
                if status == "READY":
                    return
                if status == "SETUP_FAILED":
                    raise RuntimeError(f"setup failed; see {log_path}")
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not READY; see {log_path}")

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()


def predict(server: Server, call: Call, inputs: dict, timeout: float) -> Call:
    call.started = time.perf_counter()
    deadline = call.started + timeout
    while time.perf_counter() < deadline:
        try:
            status, body = post(f"{server.url}/predictions", {"input": {**inputs, "prompt": call.prompt, "seed": call.seed}},
                                timeout=max(1.0, deadline - time.perf_counter()))
        except OSError:
            break  # no answer in time: lost
        if status == 409:
            call.rejected += 1
            time.sleep(0.05)
            continue
        call.seconds = time.perf_counter() - call.started
        call.status = body.get("status") or f"http {status}"
        call.metrics = body.get("metrics") or {}
        if call.status == "succeeded":
            call.image = decode(body["output"][0])
        return call
    call.seconds = time.perf_counter() - call.started
    return call


def fresh_call(index: int) -> Call:
    """Prediction ``index`` of every row: the same prompt and seed each time, so each can be checked
    against the same request alone."""
    return Call(f"a lighthouse, variation {index}", 1000 + index)


def timed_callers(work: list[Callable[[], None]]) -> float:
    """Run each caller on its own thread; the wall time until the last one is done."""
    threads = [threading.Thread(target=caller) for caller in work]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def closed_loop(server: Server, callers: int, requests: int, inputs: dict, timeout: float) -> tuple[list[Call], float]:
    """Each caller sends its next prediction when the last is answered."""
    calls = [[fresh_call(c * requests + r) for r in range(requests)] for c in range(callers)]

    def caller(mine: list[Call]) -> Callable[[], None]:
        def run() -> None:
            for call in mine:
                predict(server, call, inputs, timeout)
        return run

    wall = timed_callers([caller(mine) for mine in calls])
    return [call for mine in calls for call in mine], wall


def burst(server: Server, callers: int, inputs: dict, timeout: float) -> tuple[list[Call], float]:
    """Every caller sends one prediction at the same instant."""
    calls = [fresh_call(c) for c in range(callers)]
    gate = threading.Barrier(callers)

    def caller(call: Call) -> Callable[[], None]:
        def run() -> None:
            gate.wait()
            predict(server, call, inputs, timeout)
        return run

    return calls, timed_callers([caller(call) for call in calls])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else float("nan")


def summarize(window_ms: float, callers: int, kind: str, calls: list[Call], wall: float,
              solo: dict[tuple[str, int], Any]) -> Row:
    done = [call for call in calls if call.status == "succeeded"]
    attempts = sum(call.rejected + (call.status != "lost") for call in calls)
    differ, worst, compared = 0, 0, 0
    for call in done:
        alone = solo.get((call.prompt, call.seed))
        if alone is not None:
            compared += 1
            gap = int(abs(alone - call.image).max())
            differ += gap > 0
            worst = max(worst, gap)
    latencies = [call.seconds for call in done]
    batch = [call.metrics.get("batch_images", 1) for call in done]
    waits = [call.metrics.get("batch_window_seconds", 0.0) for call in done]
    return Row(window_ms, callers, kind, len(calls), round(len(done) / wall, 3) if wall else 0.0,
               round(statistics.median(latencies), 4) if latencies else float("nan"), round(percentile(latencies, 0.95), 4),
               round(sum(call.rejected for call in calls) / max(attempts, 1), 3),
               sum(call.status not in ("succeeded", "lost") for call in calls), sum(call.status == "lost" for call in calls),
               round(statistics.mean(batch), 2) if batch else 0.0, max((c.metrics.get("batch_callers", 1) for c in done), default=0),
               differ, worst, compared, round(max(waits) * 1000, 1) if waits else None)


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [f"# Throughput: {meta['model']} {meta['size']}x{meta['size']}, {meta['steps']} steps, "
             f"COG_MAX_CONCURRENCY={meta['concurrency']}", "",
             f"Command: `{meta['command']}`", f"Device: {meta['device']}; {meta['date']}", "",
             "| window ms | callers | kind | predictions | images/s | p50 s | p95 s | 409 share | failed | lost | "
             "mean batch images | max callers in a batch | images differing from solo (max levels) | longest window wait ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row.window_ms:g} | {row.callers} | {row.kind} | {row.predictions} | {row.images_per_second} | "
                     f"{row.p50_s} | {row.p95_s} | {row.share_409} | {row.failed} | {row.lost} | {row.mean_batch_images} | "
                     f"{row.max_batch_callers} | {row.differ_from_solo} of {row.compared} ({row.max_level_diff}) | "
                     f"{'' if row.leader_wait_ms is None else row.leader_wait_ms} |")
    return "\n".join(lines) + "\n"


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"CPU ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="sdxl")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--callers", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=4, help="predictions each caller sends, one after another")
    parser.add_argument("--windows", default="0,20", help="BATCH_WINDOW_MS values, one server each")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "throughput.json")
    parser.add_argument("--go-fast", action="store_true",
                        help="requests with go_fast=true (default: false, and the server's go_fast off, so no "
                             "background compile shares the GPU with the rows)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server, repeatable")
    args = parser.parse_args()

    callers = [int(n) for n in args.callers.split(",")]
    windows = [float(w) for w in args.windows.split(",")]
    inputs = {"model": args.model, "width": args.size, "height": args.size, "num_inference_steps": args.steps,
              "output_format": "png", "disable_safety_checker": True, "go_fast": args.go_fast}
    weights_env = {"sdxl": "SDXL_WEIGHTS", "flux-dev": "FLUX_DEV_WEIGHTS", "flux-schnell": "FLUX_SCHNELL_WEIGHTS"}[args.model]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "size": args.size, "steps": args.steps, "concurrency": args.concurrency,
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "device": device_name(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    rows: list[Row] = []
    solo: dict[tuple[str, int], Any] = {}
    failed = False

    def write() -> None:
        args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(row) for row in rows]}, indent=2))
        args.out.with_suffix(".md").write_text(markdown(rows, meta))

    for window in windows:
        env = {"COG_MAX_CONCURRENCY": str(args.concurrency), "BATCH_WINDOW_MS": str(window), "DEFAULT_MODEL": args.model,
               weights_env: args.weights, **({} if args.go_fast else {"SPEED_GO_FAST": "off"}),
               **dict(item.split("=", 1) for item in args.env)}
        server = Server(args.weights, env, args.out.with_name(f"{args.out.stem}-server-{window:g}ms.log"))
        try:
            predict(server, Call("warm-up", 1), inputs, args.timeout)  # first-use work, outside every row
            if not solo:  # the reference: every prompt and seed the rows use, each alone
                for index in range(max(callers) * args.requests):
                    call = predict(server, fresh_call(index), inputs, args.timeout)
                    if call.image is not None:
                        solo[(call.prompt, call.seed)] = call.image
            for n in callers:
                calls, wall = closed_loop(server, n, args.requests, inputs, args.timeout)
                rows.append(summarize(window, n, "closed", calls, wall, solo))
                print(markdown(rows[-1:], meta).splitlines()[-1], flush=True)
                write()
            for n in callers:
                if n == 1:
                    continue
                predict(server, Call("idle", 2), inputs, args.timeout)  # the server idle before the burst
                calls, wall = burst(server, n, inputs, args.timeout)
                rows.append(summarize(window, n, "burst", calls, wall, solo))
                print(markdown(rows[-1:], meta).splitlines()[-1], flush=True)
                write()
        finally:
            server.close()
        failed |= any(row.failed or row.lost for row in rows)
    print(markdown(rows, meta))
    write()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
