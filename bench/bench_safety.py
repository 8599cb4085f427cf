"""The safety checker's cost per image, as a share of one SDXL image on the balanced preset.

Full-size random checkers in the real architectures: CompVis's (a CLIP ViT-L/14 vision tower and a
768-wide projection) and Falconsai's second opinion (a ViT-B/16 classifier), saved as folders and
loaded by the service's own ``pipeline.safety_checker.checker_for``. Both always run here (every image
is flagged, so the second opinion is asked about each), which is the checker's worst case. Medians of
--runs after a warm-up, for 1 and 4 images. Target: at most 3 % of one image's generation.

GPU (bench/gpu_check.sh features runs this):
    python bench/bench_safety.py --weights weights/sdxl-full --size 1024
CPU smoke run (tiny checkers and weights; the figures mean nothing for a GPU):
    python bench/bench_safety.py --weights weights/sdxl-tiny --size 64 --tiny --runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_generation import PROMPT, timed_runs  # noqa: E402


def full_size_checkers(folder: Path) -> None:
    """CompVis's and Falconsai's architectures at full size, random, every image flagged by both."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = CLIPConfig(vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                                       "num_hidden_layers": 24, "image_size": 224, "patch_size": 14}, projection_dim=768)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-10.0)
    checker.save_pretrained(folder / "compvis")
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder / "compvis")
    vit = ViTForImageClassification(ViTConfig(id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1}))
    with torch.no_grad():
        vit.classifier.weight.zero_()
        vit.classifier.bias.copy_(torch.tensor([0.0, 10.0]))
    vit.save_pretrained(folder / "falconsai")
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder / "falconsai")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="an SDXL diffusers folder")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny checkers (tests/fixtures/make_safety_checker.py), for a CPU run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    folder = Path(tempfile.mkdtemp(prefix="bench-safety-"))
    if args.tiny:
        from tests.fixtures.make_safety_checker import compvis, falconsai

        for name, (model, processor) in (("compvis", compvis("all")), ("falconsai", falconsai("all"))):
            model.save_pretrained(folder / name)
            processor.save_pretrained(folder / name)
    else:
        full_size_checkers(folder)
    os.environ.update(SAFETY_CHECKER_WEIGHTS=str(folder / "compvis"), NSFW_CLASSIFIER_WEIGHTS=str(folder / "falconsai"))

    import torch

    from pipeline.generate import Batch, generate
    from pipeline.safety_checker import checker_for
    from presets import resolve
    from request.generation import parse_request
    from startup.chain import run_startup

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    service = run_startup(args.weights)
    model = service.model
    settings = resolve("sdxl", "balanced")
    request = parse_request({"prompt": PROMPT, "width": args.size, "height": args.size, "seed": 1})

    def timed(run) -> tuple[float, object]:
        sync()
        started = time.perf_counter()
        result = run()
        sync()
        return time.perf_counter() - started, result

    generation = statistics.median(timed_runs(lambda: generate(model, Batch([PROMPT], 1, 1), request, settings),
                                              args.runs, sync)[0])
    image = generate(model, Batch([PROMPT], 1, 1), request, settings).images[0]
    load_s, checker = timed(lambda: checker_for(model.pipe.device.type, model.pipe.dtype))
    rows = []
    for count in (1, 4):
        images = [image] * count
        seconds = statistics.median(timed_runs(lambda images=images: checker.verdicts(images), args.runs, sync)[0])
        rows.append({"images": count, "check_s": seconds, "per_image_s": seconds / count,
                     "share_of_one_image": seconds / count / generation})
    name = torch.cuda.get_device_name() if cuda else "cpu"
    lines = [f"Device: {name}. One SDXL {args.size}x{args.size} image on the balanced preset: {generation:.3f} s "
             f"(median of {args.runs}). Checker load (first use): {load_s:.2f} s. Both opinions run on every image.", "",
             "| images checked | seconds | per image | share of one image (target ≤ 3 %) |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['images']} | {r['check_s']:.4f} | {r['per_image_s']:.4f} | {100 * r['share_of_one_image']:.2f} % |"
              for r in rows]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "safety.json").write_text(json.dumps({"device": name, "generation_s": generation, "load_s": load_s,
                                                       "rows": rows}, indent=2))
    (args.out / "safety.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
