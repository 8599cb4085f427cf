"""Build the regional-compile artifact file for a model on this machine, then check it in a fresh process.

1. Build: start the service with ``SPEED_COMPILE=regional`` and empty caches, generate once per case
   (each size compiles its shapes), and save PyTorch's cache artifacts where the service looks for
   them (``pipeline.speed.compile_cache.cache_path``: ``$COMPILE_CACHE_DIR``, per GPU model and torch version).
2. Check: a fresh process with an empty inductor cache restores the file at load and generates the
   same cases. It reports the first call's time cold and restored, inductor's cache hits and misses,
   and the largest pixel difference between the two runs' images.

Ship the file next to the weights (or bake it into the image) and set ``SPEED_COMPILE=regional``;
without the file the service still starts as fast (nothing compiles in ``setup()``), and the first
call at each size compiles instead.

GPU:
    python bench/build_compile_cache.py --model sdxl --weights weights/sdxl-full --cases 1024x1024x20,768x768x15
    python bench/build_compile_cache.py --model flux-dev --weights weights/flux-dev-full --cases 1024x1024x28
CPU (tiny weights; checks the mechanism, the times mean nothing for a GPU):
    python bench/build_compile_cache.py --model sdxl --weights weights/sdxl-tiny --cases 64x64x2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def first_calls(model_name: str, weights: str, cases: list[tuple[int, int, int]], seed: int) -> list[dict[str, Any]]:
    """Start the service and time the first generation of each case; counters and pixels too."""
    import numpy as np
    import torch
    from torch._dynamo.utils import counters

    from pipeline.generate import Batch, generate
    from presets import resolve
    from request.generation import parse_request
    from startup.chain import run_startup

    os.environ["DEFAULT_MODEL"] = model_name
    service = run_startup(weights)
    model = service.model
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    rows = []
    for width, height, steps in cases:
        request = parse_request({"prompt": PROMPT, "width": width, "height": height, "seed": seed, "model": model_name})
        settings = resolve(model_name, "balanced", num_inference_steps=steps)
        before = dict(counters["inductor"])
        started = time.perf_counter()
        image = generate(model, Batch([PROMPT], 1, seed), request, settings).images[0]
        sync()
        seconds = time.perf_counter() - started
        after = counters["inductor"]
        rows.append({
            "case": f"{width}x{height}x{steps}", "first_call_s": seconds,
            "cache_hits": after.get("fxgraph_cache_hit", 0) - before.get("fxgraph_cache_hit", 0),
            "cache_misses": after.get("fxgraph_cache_miss", 0) - before.get("fxgraph_cache_miss", 0),
            "pixels": np.asarray(image).astype(int).tolist(),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["sdxl", "flux-dev", "flux-schnell"], default="sdxl")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--cases", default="1024x1024x20,768x768x15", help="WIDTHxHEIGHTxSTEPS,...")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    parser.add_argument("--check", type=Path, help=argparse.SUPPRESS)  # internal: the fresh-process half
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    cases = [tuple(int(p) for p in case.split("x")) for case in args.cases.split(",")]
    os.environ["SPEED_COMPILE"] = "regional"

    if args.check:  # restore and time, in a process of its own
        rows = first_calls(args.model, args.weights, cases, args.seed)
        args.check.write_text(json.dumps(rows))
        return

    from pipeline.speed.compile_cache import cache_path, save

    scratch = Path(tempfile.mkdtemp(prefix="compile-cache-"))
    target_dir = os.environ.get("COMPILE_CACHE_DIR")
    # Build from nothing: no inductor disk cache, no artifact file to restore.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor-build")
    os.environ["COMPILE_CACHE_DIR"] = str(scratch / "none")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cold = first_calls(args.model, args.weights, cases, args.seed)
    if target_dir is None:
        os.environ.pop("COMPILE_CACHE_DIR")
    else:
        os.environ["COMPILE_CACHE_DIR"] = target_dir
    path = cache_path(args.model, device)
    size = save(path)
    print(f"saved {size / 1e6:.1f} MB of compile artifacts to {path}")

    check = scratch / "check.json"
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor-check"))
    subprocess.run([sys.executable, __file__, "--model", args.model, "--weights", args.weights, "--cases", args.cases,
                    "--seed", str(args.seed), "--check", str(check)], check=True, env=env, cwd=ROOT)
    restored = json.loads(check.read_text())

    import numpy as np

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows = []
    for a, b in zip(cold, restored, strict=True):
        rows.append({
            "case": a["case"], "cold_first_call_s": a["first_call_s"], "restored_first_call_s": b["first_call_s"],
            "ratio": b["first_call_s"] / a["first_call_s"], "cold_cache_misses": a["cache_misses"],
            "restored_cache_hits": b["cache_hits"], "restored_cache_misses": b["cache_misses"],
            "max_abs_pixel_diff": int(np.abs(np.array(a["pixels"]) - np.array(b["pixels"])).max()),
        })
    lines = [f"Device: {name}. First generation at each size with SPEED_COMPILE=regional, fresh processes; seconds.", "",
             "| case | cold (compiles) | restored from file | restored / cold | inductor cache hits / misses (restored) | pixel diff |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['cold_first_call_s']:.2f} | {r['restored_first_call_s']:.2f} | {r['ratio']:.2f} | "
                     f"{r['restored_cache_hits']} / {r['restored_cache_misses']} | {r['max_abs_pixel_diff']} |")
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"compile-cache-{args.model}"
    (args.out / f"{stem}.json").write_text(json.dumps({"device": name, "cache_file": str(path), "bytes": size, "rows": rows}, indent=2))
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
