"""Measure what the ADetailer face pass adds to one image's time.

Generates at the given size and preset (median of --runs after a warm-up), then runs the face pass
on a real portrait (scikit-image's astronaut, scaled to the same size; random weights draw no faces,
so the portrait guarantees exactly one detection), and prints medians, the ratio, and JSON.

GPU (full-size random SDXL):
    python tests/fixtures/make_weights.py --size full --out weights/sdxl-full
    python bench/bench_adetailer.py --weights weights/sdxl-full --size 1024 --preset balanced
CPU smoke run (tiny weights; the figures mean nothing for a GPU):
    python bench/bench_adetailer.py --weights weights/sdxl-tiny --size 512 --runs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], object], runs: int, sync: Callable[[], None]) -> list[float]:
    fn()  # warm-up: first-use work (detector load, kernel selection) is not per-image cost
    sync()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench_results" / "adetailer.json")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]

    import torch
    from PIL import Image
    from skimage import data

    from adetailer.runner import detector_for, run_adetailer
    from pipeline.generate import Batch, generate
    from presets import resolve
    from request.adetailer import parse_adetailer_args
    from request.generation import parse_request
    from startup.chain import run_startup

    service = run_startup(args.weights)
    model = service.model
    sync = torch.cuda.synchronize if service.backend.device == "cuda" else (lambda: None)
    request = parse_request({"prompt": "a portrait photo of an astronaut", "width": args.size, "height": args.size, "seed": 1,
                             "preset": args.preset})
    settings = resolve("sdxl", args.preset)
    portrait = Image.fromarray(data.astronaut()).resize((args.size, args.size), Image.LANCZOS)
    ad_args = parse_adetailer_args({"adetailer": True})
    found = detector_for("face").detect(portrait, ad_args.ad_confidence)

    generation = timed(lambda: generate(model, Batch([request.prompt], 1, 1), request, settings), args.runs, sync)
    face_pass = timed(lambda: run_adetailer(model, [portrait], ad_args, [request.prompt], "", settings, 1), args.runs, sync)
    gen_median, face_median = statistics.median(generation), statistics.median(face_pass)
    result = {
        "device": torch.cuda.get_device_name() if service.backend.device == "cuda" else service.backend.device,
        "weights": args.weights,
        "size": args.size,
        "preset": args.preset,
        "steps": settings.num_inference_steps,
        "faces_detected": len(found),
        "runs": args.runs,
        "generation_median_s": gen_median,
        "face_pass_median_s": face_median,
        "face_pass_over_generation": face_median / gen_median,
        "generation_s": generation,
        "face_pass_s": face_pass,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"device {result['device']}, {args.size}x{args.size}, preset {args.preset}, {len(found)} face(s)")
    print(f"image:     median {gen_median:.3f} s over {args.runs} runs")
    print(f"face pass: median {face_median:.3f} s ({100 * face_median / gen_median:.1f}% of the image)")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
