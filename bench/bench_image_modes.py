"""Time per image for text-to-image, img2img and inpainting: plain diffusers against the service.

SDXL at one size on the ``balanced`` preset's steps and guidance: plain diffusers'
``StableDiffusionXLPipeline``, ``StableDiffusionXLImg2ImgPipeline`` and ``StableDiffusionXLInpaintPipeline``
(``from_pipe`` on one ``from_pretrained``, its default settings, ``strength`` 0.8 for both image modes), then
the service's ``pipeline.generate`` with the same inputs (its speed settings, its img2img and inpaint
variants). Each with a warm-up and the median of --runs, in one process, same weights and seeds.
Prints a markdown table and writes JSON and the table.

GPU (full-size random weights; bench/gpu_check.sh features runs this):
    python bench/bench_image_modes.py --weights weights/sdxl-full --size 1024
CPU smoke run (tiny weights; the figures mean nothing for a GPU):
    python bench/bench_image_modes.py --weights weights/sdxl-tiny --size 64 --runs 1
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_generation import PROMPT, timed_runs  # noqa: E402

MODES = ("text", "img2img", "inpaint")
STRENGTH = 0.8


def inputs_for(size: int) -> tuple[Any, Any]:
    """A start image (smooth colours, as a photo has) and a centred square mask, white to repaint."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], axis=-1)
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return Image.fromarray(image.astype(np.uint8)), mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="an SDXL diffusers folder")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]

    import diffusers
    import torch

    from presets import resolve

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    settings = resolve("sdxl", "balanced")
    steps, guidance = settings.num_inference_steps, settings.guidance_scale
    image, mask = inputs_for(args.size)
    extra = {"text": {"width": args.size, "height": args.size}, "img2img": {"image": image, "strength": STRENGTH},
             "inpaint": {"image": image, "mask_image": mask, "strength": STRENGTH, "width": args.size, "height": args.size}}

    # 1. plain diffusers: one from_pretrained, the image pipelines on its modules
    base = diffusers.StableDiffusionXLPipeline.from_pretrained(args.weights, dtype=dtype, local_files_only=True).to(device)
    pipes = {"text": base, "img2img": diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(base),
             "inpaint": diffusers.StableDiffusionXLInpaintPipeline.from_pipe(base)}
    plain: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        pipes[mode].set_progress_bar_config(disable=True)
        run = lambda mode=mode: pipes[mode](PROMPT, num_inference_steps=steps, guidance_scale=guidance,  # noqa: E731
                                            generator=torch.Generator("cpu").manual_seed(args.seed), **extra[mode]).images[0]
        times, _, first = timed_runs(run, args.runs, sync)
        plain[mode] = {"times": times, "first_s": first}
    pipes = base = None  # plain diffusers' copy goes before the service loads its own
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    # 2. the service, through pipeline.generate with the request's own image inputs
    from pipeline.generate import Batch, generate
    from request.generation import parse_request
    from request.image_inputs import ImageInputs
    from startup.chain import run_startup

    service = run_startup(args.weights)
    model = service.model
    request = parse_request({"prompt": PROMPT, "width": args.size, "height": args.size, "seed": args.seed})
    starts = {"text": None, "img2img": ImageInputs(image, image, None, STRENGTH, True),
              "inpaint": ImageInputs(image, image, mask, STRENGTH, True)}
    rows = []
    for mode in MODES:
        run = lambda mode=mode: generate(model, Batch([PROMPT], 1, args.seed), request, settings, start=starts[mode]).images[0]  # noqa: E731
        times, _, first = timed_runs(run, args.runs, sync)
        plain_median, service_median = statistics.median(plain[mode]["times"]), statistics.median(times)
        rows.append({"mode": mode, "size": args.size, "steps": steps, "strength": None if mode == "text" else STRENGTH,
                     "runs": args.runs, "plain_median_s": plain_median, "service_median_s": service_median,
                     "speedup": plain_median / service_median, "plain_first_s": plain[mode]["first_s"],
                     "service_first_s": first, "plain_times": plain[mode]["times"], "service_times": times,
                     "speed": model.speed.describe()})
    name = torch.cuda.get_device_name() if cuda else "cpu"
    lines = [f"Device: {name}. SDXL {args.size}x{args.size}, preset balanced ({steps} steps, guidance {guidance}); "
             f"img2img and inpaint at strength {STRENGTH} (they run int({steps} x {STRENGTH}) steps). "
             f"Median of {args.runs} runs after a warm-up; seconds per image.", "",
             "| mode | plain diffusers | service | plain / service |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['mode']} | {r['plain_median_s']:.3f} | {r['service_median_s']:.3f} | {r['speedup']:.2f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image-modes.json").write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    (args.out / "image-modes.md").write_text(table)
    print(table)
    print(f"wrote {args.out}/image-modes.json and .md")


if __name__ == "__main__":
    main()
