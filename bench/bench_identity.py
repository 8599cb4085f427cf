"""Time per image with and without ``face_image`` at each preset, and a 6-scene storyboard's total.

Runs through ``Predictor.predict`` (the path a request takes), median of --runs after a warm-up
that also loads the adapter and embeds the face, so the figures are per-request cost.

GPU (full-size random weights):
    python tests/fixtures/make_weights.py --size full --out weights/sdxl-full
    python tests/fixtures/make_ip_adapter.py --size full --out weights/ip-adapter-full
    python bench/bench_identity.py --weights weights/sdxl-full --ip-adapter weights/ip-adapter-full
CPU smoke run (tiny weights; the figures mean nothing for a GPU):
    python bench/bench_identity.py --weights weights/sdxl-tiny --ip-adapter weights/ip-adapter-tiny --size 256 --runs 1
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

SCENES = "\n".join([
    "waking up in a small flat", "making coffee in the kitchen", "walking to the station in rain",
    "reading on a crowded train", "presenting at a meeting", "walking home at sunset",
])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--ip-adapter", required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench_results" / "identity.json")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    os.environ["IP_ADAPTER_WEIGHTS"] = args.ip_adapter

    import torch
    from PIL import Image
    from skimage import data

    from predict import Predictor
    from presets import PRESET_NAMES
    from request.inputs import INPUTS

    predictor = Predictor()
    predictor.setup(args.weights)
    cuda = predictor.service.backend.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    face = Path(tempfile.mkdtemp()) / "face.png"
    Image.fromarray(data.astronaut()).save(face)
    defaults = {name: spec.default for name, spec in INPUTS.items()}

    def seconds(**inputs: object) -> float:
        sync()
        started = time.perf_counter()
        predictor.predict_sync(**{**defaults, "prompt": "a portrait", "width": args.size, "height": args.size, "seed": 1, **inputs})
        sync()
        return time.perf_counter() - started

    def median(runs: int, **inputs: object) -> float:
        seconds(**inputs)  # warm-up
        return statistics.median(seconds(**inputs) for _ in range(runs))

    rows = []
    for preset in PRESET_NAMES:
        plain = median(args.runs, preset=preset)
        with_face = median(args.runs, preset=preset, face_image=face)
        rows.append({"preset": preset, "without_face_s": plain, "with_face_s": with_face, "ratio": with_face / plain})
        print(f"{preset:>10}: without face {plain:.3f} s, with face {with_face:.3f} s ({with_face / plain:.2f}x)")
    storyboard = median(max(1, args.runs // 2), prompt="", scenes=SCENES, character="a woman with short dark hair",
                        face_image=face)
    print(f"6-scene storyboard with face, balanced: {storyboard:.3f} s total")
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "weights": args.weights, "ip_adapter": args.ip_adapter, "size": args.size, "runs": args.runs,
        "presets": rows, "storyboard_6_scenes_s": storyboard,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
