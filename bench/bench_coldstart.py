"""Cold start, measured from outside in fresh processes: process start -> Cog health-check READY.

For each page-cache state (warm, and dropped for the weight files) and --runs times, it measures:
  * the floor: ``python -c "import torch"``;
  * the service: ``scripts/serve.py`` (the real Cog HTTP server) from spawn to READY, plus every
    ``[Timer: stage]`` from the service's timings JSON, and then its first image (--first-image),
    which carries whatever work start-up deferred (CUDA-graph capture, compilation), so process
    start -> first image is what a cold boot's waiting caller sees;
  * the service again with each --variant's environment (by default the weight stream switched the
    other way from the device's default, ``FAST_LOAD=0`` on a GPU and ``FAST_LOAD=1`` on the CPU,
    ``LAZY_IMPORTS=0``, and a start without transformers' model-map file, as in an image built
    without cog.yaml's step), so what each changes is measured in the same run and CI runs every path;
  * plain diffusers: ``from_pretrained`` + ``.to(device)`` in a fresh process;
  * the time to read the weight bytes from disk with the cache dropped.
It prints a markdown table with medians and ratios and writes JSON and the table to --out.

GPU (full-size random SDXL, then Flux-dev in bf16):
    python bench/bench_coldstart.py --weights weights/sdxl-full --build full
    python bench/bench_coldstart.py --model flux-dev --weights weights/flux-dev-full --build dev
CI (tiny weights on the CPU; checks every stage reported and the chain completed, never a time):
    python bench/bench_coldstart.py --ci
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.loading.component_build import weight_files  # noqa: E402
from startup.chain import STAGES  # noqa: E402
from startup.import_structure_cache import BUILD_COMMAND  # noqa: E402

# an IMPORT_CACHE_DIR that cannot exist: every start builds transformers' model map and cannot keep it
NO_IMPORT_CACHE = "IMPORT_CACHE_DIR=/dev/null/imports"

READY_TIMEOUT_S = 600.0


def drop_page_cache(files: list[Path]) -> None:
    """Evict the weight files, and only them, from the page cache.

    Only the weights: the targets compare against an ``import torch`` floor measured with the
    libraries cached, and dropping every cache (``/proc/sys/vm/drop_caches``) would slow the
    imports too and hide what the weights cost. ``fadvise`` needs no privilege.
    """
    subprocess.run(["sync"], check=False)
    for path in files:
        with path.open("rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def wall(command: list[str], env: Optional[dict] = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - started


def read_seconds(files: list[Path]) -> float:
    started = time.perf_counter()
    buffer = bytearray(16 * 1024 * 1024)
    for path in files:
        with path.open("rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    return time.perf_counter() - started


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_import_cache(folder: Path) -> None:
    """What ``cog build`` does with cog.yaml's step: write transformers' model map, here into ``folder``,
    which every service start of this run then reads (``IMPORT_CACHE_DIR``)."""
    command = shlex.quote(sys.executable) + BUILD_COMMAND.removeprefix("python")  # this interpreter, whatever PATH holds
    subprocess.run(["bash", "-c", command], check=True, env=dict(os.environ, IMPORT_CACHE_DIR=str(folder)), cwd=ROOT)
    os.environ["IMPORT_CACHE_DIR"] = str(folder)


def parse_variant(text: str) -> dict[str, str]:
    """``FAST_LOAD=0,WEIGHT_STREAM_WORKERS=8`` -> {"FAST_LOAD": "0", "WEIGHT_STREAM_WORKERS": "8"}."""
    return dict(item.split("=", 1) for item in text.split(","))


def first_image_seconds(port: int, case: tuple[int, int, int]) -> float:
    """One prediction right after READY, timed from the client: what a cold boot's first caller
    waits beyond READY (it includes any CUDA-graph capture or compilation at that size)."""
    width, height, steps = case
    body = json.dumps({"input": {"prompt": "a lighthouse at dusk", "width": width, "height": height,
                                 "num_inference_steps": steps, "seed": 1}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predictions", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=READY_TIMEOUT_S) as response:
        result = json.loads(response.read())
    if result.get("status") != "succeeded":
        raise RuntimeError(f"first prediction {result.get('status')}: {str(result.get('error'))[:500]}")
    return time.perf_counter() - started


def service_to_ready(weights: Path, workdir: Path, model: str, extra_env: Optional[dict] = None,
                     first_image: Optional[tuple[int, int, int]] = None) -> dict[str, Any]:
    """Spawn the real server and time it to READY (and, if asked, its first image); return those
    and the service's own stage record."""
    port = free_port()
    timings = workdir / f"startup-{port}.json"
    env = dict(os.environ, STARTUP_TIMINGS_PATH=str(timings), DEFAULT_MODEL=model, **(extra_env or {}))
    log = (workdir / f"server-{port}.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "serve.py"), "--port", str(port), "--weights", str(weights),
         "--await-explicit-shutdown", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health-check", timeout=2) as response:
                    status = json.loads(response.read())["status"]
            except OSError:
                status = "DOWN"
            if status == "READY":
                ready = time.perf_counter() - started
                break
            if status == "SETUP_FAILED" or process.poll() is not None:
                raise RuntimeError(f"service failed to start; see {log.name}")
            if time.perf_counter() - started > READY_TIMEOUT_S:
                raise TimeoutError(f"not READY after {READY_TIMEOUT_S} s; see {log.name}")
            time.sleep(0.02)
        first = first_image_seconds(port, first_image) if first_image else None
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    return {"ready_s": ready, "first_image_s": first, "record": json.loads(timings.read_text())}


def plain_diffusers_seconds(weights: Path, model: str) -> float:
    flux = model.startswith("flux")
    pipeline_class = "FluxPipeline" if flux else "StableDiffusionXLPipeline"
    code = (
        "import torch\n"
        f"from diffusers import {pipeline_class}\n"
        "cuda = torch.cuda.is_available()\n"
        f"pipe = {pipeline_class}.from_pretrained({str(weights)!r}, local_files_only=True,"
        f" dtype=torch.{'bfloat16' if flux else 'float16'} if cuda else torch.float32)\n"
        "pipe.to('cuda' if cuda else 'cpu')\n"
        "torch.cuda.synchronize() if cuda else None\n"
    )
    return wall([sys.executable, "-c", code])


def measure(weights: Path, cache: str, runs: int, workdir: Path, model: str, variants: list[str],
            first_image: Optional[tuple[int, int, int]] = None) -> dict[str, Any]:
    files = weight_files(weights)
    rows: dict[str, list[float]] = {"import_torch_s": [], "service_ready_s": [], "plain_diffusers_s": [], "weights_read_s": [],
                                    "first_image_s": [], "start_to_first_image_s": []}
    for variant in variants:
        rows.update({f"service_ready_s[{variant}]": [], f"first_image_s[{variant}]": [], f"start_to_first_image_s[{variant}]": []})
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    variant_load: dict[str, list[float]] = {variant: [] for variant in variants}
    records = []
    for _ in range(runs):
        rows["import_torch_s"].append(wall([sys.executable, "-c", "import torch"]))
        if cache == "dropped":
            drop_page_cache(files)
            rows["weights_read_s"].append(read_seconds(files))
            drop_page_cache(files)
        result = service_to_ready(weights, workdir, model, first_image=first_image)
        rows["service_ready_s"].append(result["ready_s"])
        if result["first_image_s"] is not None:
            rows["first_image_s"].append(result["first_image_s"])
            rows["start_to_first_image_s"].append(result["ready_s"] + result["first_image_s"])
        records.append(result["record"])
        for stage in result["record"]["stages"]:
            stages.setdefault(stage["name"], []).append(stage["seconds"])
        for variant in variants:
            if cache == "dropped":
                drop_page_cache(files)
            other = service_to_ready(weights, workdir, model, parse_variant(variant), first_image=first_image)
            rows[f"service_ready_s[{variant}]"].append(other["ready_s"])
            if other["first_image_s"] is not None:
                rows[f"first_image_s[{variant}]"].append(other["first_image_s"])
                rows[f"start_to_first_image_s[{variant}]"].append(other["ready_s"] + other["first_image_s"])
            records.append(other["record"])
            variant_load[variant] += [s["seconds"] for s in other["record"]["stages"] if s["name"] == "load"]
        if cache == "dropped":
            drop_page_cache(files)
        rows["plain_diffusers_s"].append(plain_diffusers_seconds(weights, model))
    medians = {key: statistics.median(values) for key, values in rows.items() if values}
    return {
        "cache": cache, "runs": runs, "medians": medians, "all": rows,
        "stage_medians": {name: statistics.median(v) for name, v in stages.items() if v},
        "variant_load_medians": {name: statistics.median(v) for name, v in variant_load.items() if v},
        "records": records, "weight_bytes": sum(f.stat().st_size for f in files),
    }


def markdown(results: list[dict[str, Any]], device: str) -> str:
    lines = [f"Device: {device}. Medians of fresh processes; seconds.", "",
             "| page cache | `import torch` | service to READY | READY − floor | plain diffusers | service / plain | "
             "weight read (cold) | first image after READY | process start → first image |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    shown = lambda m, key: f"{m[key]:.2f}" if key in m else "–"  # noqa: E731
    for result in results:
        m = result["medians"]
        lines.append(
            f"| {result['cache']} | {m['import_torch_s']:.2f} | {m['service_ready_s']:.2f} | "
            f"{m['service_ready_s'] - m['import_torch_s']:.2f} | {m['plain_diffusers_s']:.2f} | "
            f"{m['service_ready_s'] / m['plain_diffusers_s']:.2f} | {shown(m, 'weights_read_s')} | "
            f"{shown(m, 'first_image_s')} | {shown(m, 'start_to_first_image_s')} |"
        )
    variants = [key[len("service_ready_s["):-1] for key in results[0]["medians"] if key.startswith("service_ready_s[")]
    if variants:
        lines += ["", "| page cache | variant | service to READY | its load stage | this service / variant | "
                      "first image after READY | process start → first image |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for result in results:
            m = result["medians"]
            for variant in variants:
                ready = m[f"service_ready_s[{variant}]"]
                lines.append(f"| {result['cache']} | `{variant}` | {ready:.2f} | "
                             f"{result['variant_load_medians'].get(variant, float('nan')):.3f} | {m['service_ready_s'] / ready:.2f} | "
                             f"{shown(m, f'first_image_s[{variant}]')} | {shown(m, f'start_to_first_image_s[{variant}]')} |")
    lines += ["", "| stage | " + " | ".join(r["cache"] for r in results) + " |", "| --- |" + " --- |" * len(results)]
    for name in STAGES:
        lines.append(f"| {name} | " + " | ".join(f"{r['stage_medians'].get(name, float('nan')):.3f}" for r in results) + " |")
    return "\n".join(lines) + "\n"


def check_chain(results: list[dict[str, Any]]) -> list[str]:
    """What CI asserts: every run completed and reported every stage. Never a time."""
    problems = []
    for result in results:
        for record in result["records"]:
            names = [stage["name"] for stage in record["stages"]]
            if names != list(STAGES):
                problems.append(f"{result['cache']}: stages {names}, expected {list(STAGES)}")
            if not record.get("completed"):
                problems.append(f"{result['cache']}: chain did not complete")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["sdxl", "flux-dev", "flux-schnell"], default="sdxl")
    parser.add_argument("--weights", type=Path, help="the model's diffusers folder")
    parser.add_argument("--build", choices=["tiny", "full", "dev", "schnell", "tiny-schnell"],
                        help="build random weights at --weights if missing (tiny/full: SDXL; tiny/dev/schnell...: Flux)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", choices=["warm", "dropped", "both"], default="both")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    parser.add_argument("--variant", action="append", default=None,
                        help="VAR=VALUE[,VAR=VALUE]: also time the service with this environment (repeatable; "
                             f"default: FAST_LOAD the other way from the device default, LAZY_IMPORTS=0 and {NO_IMPORT_CACHE}; "
                             "--variant none for none)")
    parser.add_argument("--first-image", default="1024x1024x20", metavar="WxHxSTEPS",
                        help="after READY, time one prediction of this size (none: skip); --ci uses 64x64x2")
    parser.add_argument("--ci", action="store_true", help="tiny weights, one run per cache state, check the chain")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="coldstart-"))
    if args.ci:
        args.weights, args.build, args.runs, args.first_image = workdir / "sdxl-tiny", "tiny", 1, "64x64x2"
    first_image = None if args.first_image == "none" else tuple(int(p) for p in args.first_image.split("x"))
    if args.weights is None:
        parser.error("--weights is required (or --ci)")
    if args.build and not (args.weights / "model_index.json").is_file():
        if args.model == "sdxl":
            build = ["make_weights.py", "--size", args.build]
        else:
            build = ["make_flux.py", "--variant", args.build]
        subprocess.run([sys.executable, str(ROOT / "tests" / "fixtures" / build[0]), *build[1:], "--out", str(args.weights)],
                       check=True, cwd=ROOT)
    caches = ["warm", "dropped"] if args.cache == "both" else [args.cache]
    if args.variant is None:
        import torch

        args.variant = ["FAST_LOAD=0" if torch.cuda.is_available() else "FAST_LOAD=1", "LAZY_IMPORTS=0", NO_IMPORT_CACHE]
    variants = [v for v in args.variant if v != "none"]
    write_import_cache(workdir / "import-cache")
    results = [measure(args.weights, cache, args.runs, workdir, args.model, variants, first_image) for cache in caches]
    device = results[0]["records"][0].get("device", "?")
    if device == "cuda":
        import torch

        device = torch.cuda.get_device_name()
    table = markdown(results, device)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "coldstart" if args.model == "sdxl" else f"coldstart-{args.model}"
    record = {"device": device, "model": args.model, "weights": str(args.weights), "results": results}
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")
    problems = check_chain(results)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"cold-start chain: {len(STAGES)} stages reported and completed in every run")


if __name__ == "__main__":
    main()
