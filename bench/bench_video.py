"""One clip and a storyboard's clips with Stable Video Diffusion: plain diffusers against the service.

A 25-frame clip (the checkpoint's count) at the native size on the balanced preset's video steps:
plain diffusers' ``StableVideoDiffusionPipeline`` (``from_pretrained`` + ``.to(device)``, decode chunk
8), then the service's ``pipeline.video.animate`` with its settings; medians of --runs after a warm-up,
and peak GPU memory. Then a storyboard of --scenes clips through the service, timed in all. Target:
a 25-frame clip in at most 10 s on an H100. Prints a markdown table, writes JSON and it.

GPU (full-size random SVD-XT; bench/gpu_check.sh features runs this):
    python tests/fixtures/make_svd.py --size full --device cuda --out weights/svd-full
    python bench/bench_video.py --svd weights/svd-full --sdxl weights/sdxl-full
CPU smoke run (tiny weights; the figures mean nothing for a GPU):
    python bench/bench_video.py --svd weights/svd-tiny --sdxl weights/sdxl-tiny --runs 1 --scenes 2 --preset ultra_fast
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_generation import timed_runs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--svd", required=True, help="an SVD diffusers folder")
    parser.add_argument("--sdxl", required=True, help="an SDXL diffusers folder (the service's default model)")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    os.environ["SVD_WEIGHTS"] = str(args.svd)

    import torch
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    from presets.video import resolve_video

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)

    def peak_gb() -> float:
        return torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")

    def timed(run) -> float:
        sync()
        started = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - started

    # 1. plain diffusers
    plain = StableVideoDiffusionPipeline.from_pretrained(args.svd, dtype=dtype, local_files_only=True).to(device)
    plain.set_progress_bar_config(disable=True)
    frames = plain.unet.config.num_frames
    base = plain.unet.config.sample_size * plain.vae_scale_factor
    size = (8 * round(base * 4 / 3 / 8), 8 * round(base * 3 / 4 / 8))
    steps = resolve_video("medium", args.preset, "cpu").steps
    image = Image.new("RGB", size, (180, 120, 60))

    def plain_clip() -> None:
        plain(image, width=size[0], height=size[1], num_frames=frames, num_inference_steps=steps, decode_chunk_size=8,
              generator=torch.Generator("cpu").manual_seed(1))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    plain_s = statistics.median(timed_runs(plain_clip, args.runs, sync)[0])
    plain_peak = peak_gb()
    plain = None
    if cuda:
        torch.cuda.empty_cache()

    # 2. the service
    from pipeline import video
    from startup.chain import run_startup

    service = run_startup(args.sdxl)
    model = video.video_model(service.backend)
    settings = resolve_video("medium", args.preset, service.backend.settings.name)

    def service_clip(seed: int = 1) -> list:
        return video.animate(model, image, frames, settings, seed, "clip")

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    service_s = statistics.median(timed_runs(service_clip, args.runs, sync)[0])
    service_peak = peak_gb()
    storyboard_s = timed(lambda: [service_clip(seed) for seed in range(args.scenes)])
    name = torch.cuda.get_device_name() if cuda else "cpu"
    row = {"frames": frames, "size": size, "steps": steps, "plain_median_s": plain_s, "service_median_s": service_s,
           "speedup": plain_s / service_s, "plain_peak_gb": plain_peak, "service_peak_gb": service_peak,
           "storyboard_scenes": args.scenes, "storyboard_s": storyboard_s, "decode_chunk_size": settings.decode_chunk_size}
    table = (f"Device: {name}. One {frames}-frame clip at {size[0]}x{size[1]}, {steps} steps ({args.preset}); medians of "
             f"{args.runs} after a warm-up. Target: a 25-frame clip in at most 10 s on an H100.\n\n"
             "| | plain diffusers | service | plain / service | peak GB (plain, service) | storyboard |\n"
             "| --- | --- | --- | --- | --- | --- |\n"
             f"| seconds | {plain_s:.2f} | {service_s:.2f} | {plain_s / service_s:.2f} | {plain_peak:.1f}, {service_peak:.1f} | "
             f"{args.scenes} clips in {storyboard_s:.2f} |\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "video.json").write_text(json.dumps({"device": name, **row}, indent=2))
    (args.out / "video.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
