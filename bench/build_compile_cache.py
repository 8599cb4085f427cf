"""Build go_fast's compile-artifact file for a model on this machine, then check it in a fresh process.

1. Build: start the service with empty caches, let go_fast compile each case's size in the
   background (as after READY in production), time each, generate one go_fast image per case, and
   save PyTorch's cache artifacts where the service looks for them
   (``pipeline.speed.compile_cache.cache_path``: ``$COMPILE_CACHE_DIR``, per GPU model and torch version).
2. Check: a fresh process with an empty inductor cache restores the file and compiles the same sizes.
   It reports each size's compile time cold and restored, inductor's cache hits and misses, the
   process's spawn -> READY and spawn -> first go_fast image, and the largest pixel difference
   between the two processes' go_fast images.

Ship the file next to the weights (``COMPILE_CACHE`` takes a path or URL). Without it the service
starts as fast, and go_fast requests run the exact path until their size is compiled.

GPU:
    python bench/build_compile_cache.py --model flux-dev --weights weights/flux-dev-full --cases 1024x1024x28
    python bench/build_compile_cache.py --model sdxl --weights weights/sdxl-full --cases 1024x1024x20,768x768x15
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
WAIT_S = 1800.0


def compile_and_generate(model_name: str, weights: str, cases: list[tuple[int, int, int]], seed: int,
                         spawned_at: float) -> dict[str, Any]:
    """Start the service, compile each case's size on the go_fast path, then generate one go_fast
    image per case; times (from ``spawned_at``, the process's spawn), cache counters, pixels."""
    import numpy as np
    import torch
    from torch._dynamo.utils import counters

    from pipeline.generate import Batch, generate
    from pipeline.loading.cache import MODEL_CACHE
    from presets import resolve
    from request.generation import parse_request
    from startup.chain import run_startup

    os.environ["DEFAULT_MODEL"] = model_name
    service = run_startup(weights)
    ready_s = time.time() - spawned_at
    model = dict(MODEL_CACHE.entries())[service.default_source.model_id]
    if model.fast is None:
        raise SystemExit(f"go_fast has no recipe here ({model.speed.describe()}): nothing to compile")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    guidance = resolve(model_name, "balanced").guidance_scale
    shapes = [model.fast.shape(width, height, 1, guidance) for width, height, _ in cases]
    before = dict(counters["inductor"])
    started = time.perf_counter()
    model.fast.start(shapes)
    if not model.fast.wait(shapes, WAIT_S):
        raise SystemExit(f"go_fast did not compile {', '.join(map(str, shapes))}: {model.fast.error or 'timed out'}")
    all_compiled_s = time.perf_counter() - started
    after = counters["inductor"]
    rows, first_image_s = [], None
    for (width, height, steps), shape in zip(cases, shapes, strict=True):
        request = parse_request({"prompt": PROMPT, "width": width, "height": height, "seed": seed, "model": model_name})
        settings = resolve(model_name, "balanced", num_inference_steps=steps)
        started = time.perf_counter()
        result = generate(model, Batch([PROMPT], 1, seed), request, settings, go_fast=True)
        sync()
        if first_image_s is None:
            first_image_s = time.time() - spawned_at
        rows.append({
            "case": f"{width}x{height}x{steps}", "compile_s": model.fast.warm_seconds[shape],
            "image_s": time.perf_counter() - started, "fast_path": result.fast_path,
            "pixels": np.asarray(result.images[0]).astype(int).tolist(),
        })
    counts = {"cache_hits": after.get("fxgraph_cache_hit", 0) - before.get("fxgraph_cache_hit", 0),
              "cache_misses": after.get("fxgraph_cache_miss", 0) - before.get("fxgraph_cache_miss", 0),
              "all_compiled_s": all_compiled_s}
    return {"ready_s": ready_s, "first_fast_image_s": first_image_s, "recipe": model.fast.name, "rows": rows, **counts}


def main() -> None:
    spawned_at = float(os.environ.pop("BUILD_COMPILE_CACHE_SPAWNED_AT", "0") or 0) or time.time()
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
    # only the cases' sizes are compiled; on a CPU the recipe is the compile alone (no fp8 tensor cores)
    os.environ["GO_FAST_SIZES"] = ",".join(f"{w}x{h}" for w, h, _ in cases)
    os.environ.setdefault("SPEED_GO_FAST", "auto")

    if args.check:  # restore and time, in a process of its own
        args.check.write_text(json.dumps(compile_and_generate(args.model, args.weights, cases, args.seed, spawned_at)))
        return

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ["SPEED_GO_FAST"] == "auto":
        os.environ["SPEED_GO_FAST"] = "compile"
    from pipeline.speed.compile_cache import cache_path, save

    scratch = Path(tempfile.mkdtemp(prefix="compile-cache-"))
    target_dir = os.environ.get("COMPILE_CACHE_DIR")
    # Build from nothing: no inductor disk cache, no artifact file to restore.
    os.environ.pop("COMPILE_CACHE", None)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor-build")
    os.environ["COMPILE_CACHE_DIR"] = str(scratch / "none")
    cold = compile_and_generate(args.model, args.weights, cases, args.seed, spawned_at)
    if target_dir is None:
        os.environ.pop("COMPILE_CACHE_DIR")
    else:
        os.environ["COMPILE_CACHE_DIR"] = target_dir
    path = cache_path(args.model, device)
    size = save(path)
    print(f"saved {size / 1e6:.1f} MB of compile artifacts to {path}")

    check = scratch / "check.json"
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor-check"), COMPILE_CACHE=str(path),
               BUILD_COMPILE_CACHE_SPAWNED_AT=repr(time.time()))
    subprocess.run([sys.executable, __file__, "--model", args.model, "--weights", args.weights, "--cases", args.cases,
                    "--seed", str(args.seed), "--check", str(check)], check=True, env=env, cwd=ROOT)
    restored = json.loads(check.read_text())

    import numpy as np

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows = []
    for a, b in zip(cold["rows"], restored["rows"], strict=True):
        rows.append({
            "case": a["case"], "cold_compile_s": a["compile_s"], "restored_compile_s": b["compile_s"],
            "ratio": b["compile_s"] / a["compile_s"], "go_fast_image_s": b["image_s"], "fast_path": b["fast_path"],
            "max_abs_pixel_diff": int(np.abs(np.array(a["pixels"]) - np.array(b["pixels"])).max()),
        })
    lines = [f"Device: {name}. go_fast ({restored['recipe']}) compiling each size in a fresh process, from nothing "
             "and from the artifact file; seconds.", "",
             "| case | compile, cold | compile, restored | restored / cold | go_fast image (restored process) "
             "| pixel diff cold vs restored |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['cold_compile_s']:.2f} | {r['restored_compile_s']:.2f} | {r['ratio']:.2f} | "
                     f"{r['go_fast_image_s']:.3f} ({r['fast_path']}) | {r['max_abs_pixel_diff']} |")
    lines += ["", f"Inductor's FX-graph cache: {cold['cache_misses']} misses cold; {restored['cache_hits']} hits and "
                  f"{restored['cache_misses']} misses restored. All sizes compiled {cold['all_compiled_s']:.2f} s cold, "
                  f"{restored['all_compiled_s']:.2f} s restored (from the request that started them).",
              f"With the artifact, fresh process: spawn -> READY {restored['ready_s']:.2f} s, spawn -> first go_fast "
              f"image done {restored['first_fast_image_s']:.2f} s (every size above compiled first). Artifact file: "
              f"{size / 1e6:.1f} MB."]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"compile-cache-{args.model}"
    (args.out / f"{stem}.json").write_text(json.dumps({
        "device": name, "cache_file": str(path), "bytes": size, "recipe": restored["recipe"],
        "restored_ready_s": restored["ready_s"], "restored_first_fast_image_s": restored["first_fast_image_s"],
        "cold_ready_s": cold["ready_s"], "cold_cache_misses": cold["cache_misses"],
        "restored_cache_hits": restored["cache_hits"], "restored_cache_misses": restored["cache_misses"],
        "cold_all_compiled_s": cold["all_compiled_s"], "restored_all_compiled_s": restored["all_compiled_s"],
        "rows": rows}, indent=2))
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
