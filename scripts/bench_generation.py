"""Generation speed of the service against plain diffusers, in one process, same weights and seeds.

For each size and step count: plain diffusers (``from_pretrained`` + ``.to(device)``, its default
settings) and then the service's own pipeline (start-up chain + ``pipeline.generate``), each with a
warm-up and the median of --runs; it/s, peak GPU memory, the speed ratio, and the largest pixel
difference between the two images for the same seed (the equivalence check). Prints a markdown table,
writes JSON and the table.

GPU (full-size random weights):
    python scripts/make_weights.py --size full --out weights/sdxl-full
    python scripts/bench_generation.py --model sdxl --weights weights/sdxl-full --cases 1024x1024x20,768x768x15
    python scripts/make_flux.py --variant dev --out weights/flux-dev-full
    python scripts/bench_generation.py --model flux-dev --weights weights/flux-dev-full --cases 1024x1024x28
CPU smoke run (tiny weights; the figures mean nothing for a GPU):
    python scripts/bench_generation.py --model sdxl --weights weights/sdxl-tiny --cases 256x256x4 --runs 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GUIDANCE = {"sdxl": 7.5, "flux-dev": 3.5, "flux-schnell": 0.0}
PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    """``1024x1024x20,768x768x15`` -> [(1024, 1024, 20), (768, 768, 15)]."""
    return [tuple(int(part) for part in case.split("x")) for case in text.split(",")]  # type: ignore[misc]


def timed_runs(run: Callable[[], Any], runs: int, sync: Callable[[], None]) -> tuple[list[float], Any]:
    run()  # warm-up: kernel selection, allocator growth, first-use work
    sync()
    times, image = [], None
    for _ in range(runs):
        started = time.perf_counter()
        image = run()
        sync()
        times.append(time.perf_counter() - started)
    return times, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(GUIDANCE), default="sdxl")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--cases", default="1024x1024x20,768x768x15", help="WIDTHxHEIGHTxSTEPS,...")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]

    import numpy as np
    import torch
    import diffusers

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device = "cuda" if cuda else "cpu"
    dtype = (torch.bfloat16 if args.model.startswith("flux") else torch.float16) if cuda else torch.float32
    pipeline_class = getattr(diffusers, "FluxPipeline" if args.model.startswith("flux") else "StableDiffusionXLPipeline")
    cases = parse_cases(args.cases)
    guidance = GUIDANCE[args.model]

    def peak_gb() -> float:
        return torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")

    def reset_peak() -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    # 1. plain diffusers
    plain: dict[tuple, dict] = {}
    pipe = pipeline_class.from_pretrained(args.weights, dtype=dtype, local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    for width, height, steps in cases:
        reset_peak()
        run = lambda: pipe(PROMPT, width=width, height=height, num_inference_steps=steps, guidance_scale=guidance,  # noqa: E731
                           generator=torch.Generator("cpu").manual_seed(args.seed)).images[0]
        times, image = timed_runs(run, args.runs, sync)
        plain[(width, height, steps)] = {"times": times, "image": np.asarray(image).astype(int), "peak_gb": peak_gb()}
    del pipe
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    # 2. the service
    os.environ["DEFAULT_MODEL"] = args.model
    from pipeline.generate import Batch, generate
    from pipeline.request import parse_request
    from presets import resolve
    from startup.chain import run_startup

    service = run_startup(args.weights)
    model = service.model
    rows = []
    for width, height, steps in cases:
        request = parse_request({"prompt": PROMPT, "width": width, "height": height, "seed": args.seed, "model": args.model})
        settings = resolve(args.model, "balanced", num_inference_steps=steps, guidance_scale=guidance)
        reset_peak()
        run = lambda: generate(model, Batch([PROMPT], 1, args.seed), request, settings).images[0]  # noqa: E731
        times, image = timed_runs(run, args.runs, sync)
        base = plain[(width, height, steps)]
        plain_median, service_median = statistics.median(base["times"]), statistics.median(times)
        rows.append({
            "model": args.model, "width": width, "height": height, "steps": steps, "runs": args.runs,
            "plain_median_s": plain_median, "service_median_s": service_median,
            "speedup": plain_median / service_median, "service_it_per_s": steps / service_median,
            "plain_peak_gb": base["peak_gb"], "service_peak_gb": peak_gb(),
            "max_abs_pixel_diff": int(np.abs(np.asarray(image).astype(int) - base["image"]).max()),
            "plain_times": base["times"], "service_times": times,
        })

    name = torch.cuda.get_device_name() if cuda else "cpu"
    lines = [f"Device: {name}. Median of {args.runs} runs after a warm-up; seconds per image.", "",
             "| model | size | steps | plain diffusers | service | speed-up | service it/s | peak GB (plain / service) | max pixel diff |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['width']}x{r['height']} | {r['steps']} | {r['plain_median_s']:.3f} | "
                     f"{r['service_median_s']:.3f} | {r['speedup']:.2f}x | {r['service_it_per_s']:.1f} | "
                     f"{r['plain_peak_gb']:.1f} / {r['service_peak_gb']:.1f} | {r['max_abs_pixel_diff']} |")
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"generation-{args.model}"
    (args.out / f"{stem}.json").write_text(json.dumps({"device": name, "weights": args.weights, "rows": rows}, indent=2))
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
