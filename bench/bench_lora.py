"""What a LoRA by URL costs: first-request fetch and load (cold), the same LoRA again (cached), time per
image with none, one and two LoRAs, and restoring the base model after a request.

Random LoRAs at each --ranks in both layouts (tests/fixtures/make_lora.py, on the model's own shapes) are
served by a loopback HTTP server, so the real download path runs (``LORA_ALLOW_PRIVATE_URLS=1`` for it).
The service's own code does the work: ``pipeline.lora.fetch_loras``, ``pipeline.lora.applied`` and
``pipeline.generate``. Medians of --runs after a warm-up. Prints a markdown table, writes JSON and it.

GPU (full-size random weights; bench/gpu_check.sh features runs this):
    python bench/bench_lora.py --weights weights/sdxl-full --size 1024 --ranks 16,64
CPU smoke run (tiny weights; the figures mean nothing for a GPU):
    python bench/bench_lora.py --weights weights/sdxl-tiny --size 64 --ranks 4 --runs 1
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_generation import PROMPT  # noqa: E402


def serve(folder: Path) -> str:
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # quiet
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="an SDXL or Flux diffusers folder (the default model)")
    parser.add_argument("--model", choices=["sdxl", "flux-dev", "flux-schnell"], default="sdxl")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--ranks", default="16,64")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    work = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    os.environ.update(DEFAULT_MODEL=args.model, LORA_ALLOW_PRIVATE_URLS="1", LORA_CACHE=str(work / "cache"),
                      LORA_MEMORY_SLOTS="16")

    import torch
    from safetensors.torch import save_file

    from tests.fixtures.make_lora import make_lora

    files = work / "files"
    files.mkdir()
    ranks = [int(r) for r in args.ranks.split(",")]
    for rank in ranks:
        for layout in ("peft", "kohya"):
            save_file(make_lora(Path(args.weights), layout, rank, seed=rank), str(files / f"{layout}-r{rank}.safetensors"))
        save_file(make_lora(Path(args.weights), "peft", rank, seed=rank + 1), str(files / f"second-r{rank}.safetensors"))
    url = serve(files)

    from pipeline.generate import Batch, generate
    from pipeline.lora import applied, fetch_loras
    from presets import resolve
    from request.generation import parse_request
    from startup.chain import run_startup

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    service = run_startup(args.weights)
    model = service.model
    settings = resolve(args.model, "balanced")
    request = parse_request({"prompt": PROMPT, "width": args.size, "height": args.size, "seed": 1, "model": args.model})

    def image_seconds(loras: list) -> tuple[float, dict[str, float]]:
        with model.lock, applied(model, loras) as timings:
            sync()
            started = time.perf_counter()
            generate(model, Batch([PROMPT], 1, 1), request, settings)
            sync()
            seconds = time.perf_counter() - started
        return seconds, timings

    def median_image(loras: list) -> float:
        image_seconds(loras)  # warm-up
        return statistics.median(image_seconds(loras)[0] for _ in range(args.runs))

    rows: list[dict[str, Any]] = []
    base_s = median_image([])
    for rank in ranks:
        for layout in ("peft", "kohya"):
            name = f"{layout}-r{rank}.safetensors"
            shutil.rmtree(work / "cache", ignore_errors=True)
            for adapter in list(model.loras):
                model.pipe.delete_adapters(adapter)
                model.loras.pop(adapter)
            (cold,) = fetch_loras([("lora_weights", f"{url}/{name}", 1.0)])
            _, cold_timings = image_seconds([cold])
            (again,) = fetch_loras([("lora_weights", f"{url}/{name}", 1.0)])
            _, warm_timings = image_seconds([again])
            one_s = median_image([again])
            (second,) = fetch_loras([("extra_lora", f"{url}/second-r{rank}.safetensors", 0.5)])
            two_s = median_image([again, second])
            rows.append({
                "layout": layout, "rank": rank, "file_mb": (files / name).stat().st_size / 1e6,
                "fetch_cold_s": cold.file.seconds, "load_cold_s": cold_timings["lora_load_seconds"],
                "fetch_cached_s": again.file.seconds, "load_cached_s": warm_timings["lora_load_seconds"],
                "restore_s": warm_timings["lora_restore_seconds"],
                "image_none_s": base_s, "image_one_s": one_s, "image_two_s": two_s,
                "one_over_none": one_s / base_s, "two_over_none": two_s / base_s,
            })
    name = torch.cuda.get_device_name() if cuda else "cpu"
    lines = [f"Device: {name}. {args.model} {args.size}x{args.size}, preset balanced ({settings.num_inference_steps} steps); "
             f"random LoRAs on the attention projections; medians of {args.runs} runs after a warm-up; seconds.", "",
             "| layout | rank | MB | fetch cold | load cold | fetch cached | load cached | restore | image, none | one | two "
             "| one / none |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['layout']} | {r['rank']} | {r['file_mb']:.1f} | {r['fetch_cold_s']:.3f} | {r['load_cold_s']:.3f} | "
              f"{r['fetch_cached_s']:.3f} | {r['load_cached_s']:.3f} | {r['restore_s']:.4f} | {r['image_none_s']:.3f} | "
              f"{r['image_one_s']:.3f} | {r['image_two_s']:.3f} | {r['one_over_none']:.2f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"lora-{args.model}.json").write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    (args.out / f"lora-{args.model}.md").write_text(table)
    print(table)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
