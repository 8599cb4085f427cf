"""Flux on a GPU: load time, time per image at each preset and peak memory for bf16, fp8 and NF4,
and the SDXL <-> Flux switch with both resident.

Each precision runs in its own fresh process (``--worker``), so peak memory and load time are that
precision's alone. Prints a markdown table, writes JSON and the table.

GPU (full-size random weights):
    python tests/fixtures/make_flux.py --variant dev --out weights/flux-dev-full
    python tests/fixtures/make_weights.py --size full --out weights/sdxl-full
    python bench/bench_flux.py --weights weights/flux-dev-full --sdxl-weights weights/sdxl-full
CPU smoke run (tiny weights, bf16 only; the figures mean nothing for a GPU):
    python bench/bench_flux.py --weights /tmp/flux-tiny --sdxl-weights weights/sdxl-tiny --size 128 --runs 1 --modes none
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def worker(args: argparse.Namespace) -> dict:
    """One precision: start the service with Flux-dev as default and time every preset."""
    os.environ["DEFAULT_MODEL"] = args.model
    os.environ["HW_FLUX_QUANTIZATION"] = args.worker
    os.environ["HW_T5_QUANTIZATION"] = "nf4" if args.worker == "nf4" else "none"
    import torch

    from pipeline.generate import Batch, generate
    from presets import PRESET_NAMES, resolve
    from request.generation import parse_request
    from startup.chain import run_startup

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    service = run_startup(args.weights)
    load_s = next(s["seconds"] for s in service.timings["stages"] if s["name"] == "load")
    model = service.model
    request = parse_request({"prompt": PROMPT, "width": args.size, "height": args.size, "seed": 1, "model": args.model})
    presets = {}
    for preset in PRESET_NAMES:
        settings = resolve(args.model, preset)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run = lambda: generate(model, Batch([PROMPT], 1, 1), request, settings)  # noqa: E731
        run()
        sync()
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - started)
        presets[preset] = {"steps": settings.num_inference_steps, "median_s": statistics.median(times),
                           "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}
    return {"mode": args.worker, "profile": service.backend.settings.name, "load_s": load_s, "presets": presets}


def switch(args: argparse.Namespace) -> dict:
    """SDXL default plus Flux resident: alternate requests and time what a switch costs."""
    os.environ["DEFAULT_MODEL"] = "sdxl"
    os.environ["FLUX_DEV_WEIGHTS"] = args.weights
    import torch

    from pipeline.generate import Batch, generate
    from pipeline.select import select_model
    from presets import resolve
    from request.generation import parse_request
    from startup.chain import run_startup

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    service = run_startup(args.sdxl_weights)

    def one(name: str) -> float:
        started = time.perf_counter()
        model = select_model(name, service.default_source, service.backend)
        request = parse_request({"prompt": PROMPT, "width": args.size, "height": args.size, "seed": 1, "model": name})
        generate(model, Batch([PROMPT], 1, 1), request, resolve(name, "balanced", num_inference_steps=1))
        sync()
        return time.perf_counter() - started

    one("sdxl"), one("flux-dev")  # both resident from here on
    same = [one("flux-dev") for _ in range(args.runs)]
    switched = []
    for _ in range(args.runs):
        one("sdxl")
        switched.append(one("flux-dev"))
    return {"flux_after_flux_s": statistics.median(same), "flux_after_sdxl_s": statistics.median(switched),
            "switch_cost_s": statistics.median(switched) - statistics.median(same)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="flux-dev", choices=["flux-dev", "flux-schnell"])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--sdxl-weights", help="also measure the SDXL <-> Flux switch")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default="none,fp8,nf4", help="Flux transformer precisions to compare")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--switch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker or args.switch:
        sys.argv = sys.argv[:1]
        print("RESULT " + json.dumps(worker(args) if args.worker else switch(args)), flush=True)
        return

    def child(*extra: str) -> dict:
        command = [sys.executable, __file__, "--model", args.model, "--weights", args.weights, "--size", str(args.size),
                   "--runs", str(args.runs), *extra]
        if args.sdxl_weights:
            command += ["--sdxl-weights", args.sdxl_weights]
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])

    results = [child("--worker", mode) for mode in args.modes.split(",")]
    switch_result = child("--switch") if args.sdxl_weights else None
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    lines = [f"Device: {device}. {args.model}, {args.size}x{args.size}, median of {args.runs} after a warm-up.", "",
             "| precision | profile | load s | " + " | ".join(f"{p} s (steps)" for p in results[0]["presets"]) + " | peak GB |",
             "| --- | --- | --- |" + " --- |" * (len(results[0]["presets"]) + 1)]
    for r in results:
        peaks = [v["peak_gb"] for v in r["presets"].values() if v["peak_gb"] is not None]
        cells = " | ".join(f"{v['median_s']:.2f} ({v['steps']})" for v in r["presets"].values())
        lines.append(f"| {r['mode']} | {r['profile']} | {r['load_s']:.2f} | {cells} | {max(peaks) if peaks else float('nan'):.1f} |")
    if switch_result:
        lines += ["", f"SDXL -> Flux switch with both resident: {switch_result['switch_cost_s']:.3f} s "
                      f"(Flux 1-step request after SDXL {switch_result['flux_after_sdxl_s']:.3f} s, "
                      f"after Flux {switch_result['flux_after_flux_s']:.3f} s)"]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flux.json").write_text(json.dumps({"device": device, "results": results, "switch": switch_result}, indent=2))
    (args.out / "flux.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'flux.json'} and {args.out / 'flux.md'}")


if __name__ == "__main__":
    main()
