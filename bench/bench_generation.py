"""Generation speed of the service against plain diffusers, in one process, same weights and seeds.

For each size and step count: plain diffusers (``from_pretrained`` + ``.to(device)``, its default
settings) and then the service's own pipeline (start-up chain + ``pipeline.generate``), each with a
warm-up and the median of --runs; it/s, peak GPU memory, the speed ratio, and the largest pixel
difference between the two images for the same seed (the equivalence check). The warm-up's own time
is reported too: it includes any CUDA-graph capture, which a new size costs once.

``--ablate`` adds one service row per speed switch (``pipeline/configs/speed.json``) flipped from
its default, each on a freshly loaded model, so every switch's contribution and deviation is
measured in the same run (``--ablate a,b`` names the switches, in that row order);
``--variant SPEED_X=v[,...]`` adds rows with any other settings. ``--go-fast [RECIPE]`` adds a row with
``go_fast=true`` after the defaults (its sizes compiled first, the compile's time reported), with two
quality figures against ``go_fast=false`` for the same seed: the relative L2 error of one denoiser
forward on the same inputs, and the final image's PSNR. A variant that fails becomes a row
with its error, the other rows still run, and the exit status is 1. The JSON and the markdown table
are rewritten after every row, so a run stopped at a device's time limit keeps the rows it finished.

GPU (full-size random weights):
    python tests/fixtures/make_weights.py --size full --out weights/sdxl-full
    python bench/bench_generation.py --model sdxl --weights weights/sdxl-full --cases 1024x1024x20,768x768x15 --ablate
    python tests/fixtures/make_flux.py --variant dev --out weights/flux-dev-full
    python bench/bench_generation.py --model flux-dev --weights weights/flux-dev-full --cases 1024x1024x28 --go-fast
    python tests/fixtures/make_flux.py --variant schnell --out weights/flux-schnell-full
    python bench/bench_generation.py --model flux-schnell --weights weights/flux-schnell-full --cases 1024x1024x4
CPU smoke run (tiny weights; the figures mean nothing for a GPU):
    python bench/bench_generation.py --model sdxl --weights weights/sdxl-tiny --cases 256x256x4 --runs 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GUIDANCE = {"sdxl": 7.5, "flux-dev": 3.5, "flux-schnell": 0.0}
PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    """``1024x1024x20,768x768x15`` -> [(1024, 1024, 20), (768, 768, 15)]."""
    return [tuple(int(part) for part in case.split("x")) for case in text.split(",")]  # type: ignore[misc]


def timed_runs(run: Callable[[], Any], runs: int, sync: Callable[[], None]) -> tuple[list[float], Any, float]:
    """The times of ``runs`` calls after a warm-up, the last image, and the warm-up's own time."""
    started = time.perf_counter()
    run()  # warm-up: kernel selection, allocator growth, first-use work (CUDA graph capture)
    sync()
    first = time.perf_counter() - started
    times, image = [], None
    for _ in range(runs):
        started = time.perf_counter()
        image = run()
        sync()
        times.append(time.perf_counter() - started)
    return times, image, first


def count_host_syncs(run: Callable[[], Any], cuda: bool) -> Optional[int]:
    """Host-device synchronisations during one call, from PyTorch's sync debug mode (CUDA only).
    The denoising loop should add none per step; the decode's copy to host is one."""
    if not cuda:
        return None
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def ablation(device: str, pipeline_class: str) -> list[str]:
    """One variant per speed switch that applies to the model, flipped from the device's default."""
    from pipeline.speed.settings import ENV_PREFIX, OFF, speed_settings, speed_table

    table = speed_table()
    defaults = speed_settings(device, env={})
    variants = []
    for name, off in OFF.items():
        if pipeline_class not in table[name].get("models", [pipeline_class]) or not table[name].get("ablate", True):
            continue  # go_fast's switches change only go_fast requests: the --go-fast row measures them
        current = getattr(defaults, name)
        if isinstance(off, bool):
            variants.append(f"{ENV_PREFIX}{name.upper()}={0 if current else 1}")
        else:
            variants += [f"{ENV_PREFIX}{name.upper()}={choice}" for choice in table[name]["choices"] if choice != current]
    return variants


@contextlib.contextmanager
def environment(values: dict[str, str]):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def log_failure(variant: str, error: BaseException) -> None:
    import traceback

    print(f"variant {variant} FAILED: {type(error).__name__}: {error}", file=sys.stderr)
    traceback.print_exception(error, file=sys.stderr)


def denoiser_error(model: Any, request: Any, settings: Any, seed: int) -> float:
    """Relative L2 error of one go_fast denoiser forward against the exact one, on the inputs the
    exact denoiser saw at the first step of a generation with this seed."""
    import torch

    from pipeline.generate import Batch, generate

    exact = model.fast.family.denoiser(model.pipe)
    seen: dict[str, Any] = {}

    def record(module: Any, args: tuple, kwargs: dict) -> None:
        if not seen:
            seen.update(args=args, kwargs=kwargs)

    handle = exact.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generate(model, Batch([PROMPT], 1, seed), request, dataclasses.replace(settings, num_inference_steps=1))
    finally:
        handle.remove()
    with torch.inference_mode(), torch.compiler.set_stance("eager_on_recompile"):
        reference = exact(*seen["args"], **{**seen["kwargs"], "return_dict": False})[0].float()
        approx = model.fast.denoiser()(*seen["args"], **{**seen["kwargs"], "return_dict": False})[0].float()
    return float((approx - reference).norm() / reference.norm())


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0 ** 2 / mse))


def service_rows(service: Any, variant: str, overrides: dict[str, str], args: argparse.Namespace, cases: list[tuple[int, int, int]],
                 plain: dict[tuple, dict], guidance: float, cuda: bool, sync: Callable[[], None],
                 peak_gb: Callable[[], float], reset_peak: Callable[[], None],
                 exact_images: Optional[dict[tuple, Any]] = None) -> list[dict[str, Any]]:
    """The service's rows for one variant, on a model loaded fresh with its settings. ``go_fast``
    variants compile their sizes first and are compared with ``exact_images`` (the defaults row's)."""
    import numpy as np

    from pipeline.generate import Batch, generate
    from pipeline.loading.cache import MODEL_CACHE, release_memory
    from pipeline.select import load_source
    from presets import resolve
    from request.generation import parse_request

    go_fast = variant.startswith("go_fast")
    with environment(overrides):
        for model_id in MODEL_CACHE.ids():
            MODEL_CACHE.evict(model_id)
        release_memory()
        model = load_source(service.default_source, service.backend)
        compile_s = None
        if go_fast:
            if model.fast is None:
                raise RuntimeError(f"go_fast has no recipe here ({model.speed.describe()})")
            shapes = [model.fast.shape(w, h, 1, guidance) for w, h, _ in cases]
            started = time.perf_counter()
            model.fast.start(shapes)
            if not model.fast.wait(shapes, 1800):
                raise RuntimeError(f"go_fast did not compile: {model.fast.error or 'timed out'}")
            compile_s = time.perf_counter() - started
    rows = []
    for width, height, steps in cases:
        request = parse_request({"prompt": PROMPT, "width": width, "height": height, "seed": args.seed, "model": args.model})
        settings = resolve(args.model, "balanced", num_inference_steps=steps, guidance_scale=guidance)
        reset_peak()
        paths = []

        def run() -> Any:
            result = generate(model, Batch([PROMPT], 1, args.seed), request, settings, go_fast=go_fast)
            paths.append(result.fast_path)
            return result.images[0]

        times, image, first = timed_runs(run, args.runs, sync)
        syncs = count_host_syncs(run, cuda)
        base = plain[(width, height, steps)]
        plain_median, service_median = statistics.median(base["times"]), statistics.median(times)
        difference = np.abs(np.asarray(image).astype(int) - base["image"])
        row = {
            "model": args.model, "variant": variant, "speed": model.speed.describe(),
            "width": width, "height": height, "steps": steps, "runs": args.runs,
            "plain_median_s": plain_median, "service_median_s": service_median,
            "speedup": plain_median / service_median, "service_it_per_s": steps / service_median,
            "plain_first_s": base["first_s"], "service_first_s": first,
            "plain_peak_gb": base["peak_gb"], "service_peak_gb": peak_gb(),
            "max_abs_pixel_diff": int(difference.max()), "mean_abs_pixel_diff": float(difference.mean()),
            "host_syncs_per_image": syncs, "plain_times": base["times"], "service_times": times,
            "fast_paths": sorted(set(paths)),
        }
        if exact_images is not None and not go_fast:
            exact_images[(width, height, steps)] = np.asarray(image).astype(int)
        if go_fast:
            row.update(compile_s=compile_s, fp8_layers=model.fast.fp8_layers, recipe=model.fast.name,
                       denoiser_rel_l2=denoiser_error(model, request, settings, args.seed),
                       psnr_vs_exact_db=psnr(image, exact_images[(width, height, steps)]) if exact_images else None)
        rows.append(row)
    return rows


def write_results(args: argparse.Namespace, device_name: str, rows: list[dict[str, Any]]) -> str:
    """Write the JSON and the markdown table of the rows so far; return the table."""
    lines = [f"Device: {device_name}. Median of {args.runs} runs after a warm-up; seconds per image.", "",
             "| model | service settings | size | steps | plain diffusers | service | speed-up | service it/s | "
             "first image (plain / service) | peak GB (plain / service) | pixel diff max / mean | host syncs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | failed: {r['error'].splitlines()[0][:200]} |" + " |" * 9)
            continue
        lines.append(f"| {r['model']} | {r['variant']} | {r['width']}x{r['height']} | {r['steps']} | {r['plain_median_s']:.3f} | "
                     f"{r['service_median_s']:.3f} | {r['speedup']:.2f}x | {r['service_it_per_s']:.1f} | "
                     f"{r['plain_first_s']:.2f} / {r['service_first_s']:.2f} | "
                     f"{r['plain_peak_gb']:.1f} / {r['service_peak_gb']:.1f} | "
                     f"{r['max_abs_pixel_diff']} / {r['mean_abs_pixel_diff']:.2f} | "
                     f"{'–' if r['host_syncs_per_image'] is None else r['host_syncs_per_image']} |")
    for r in rows:
        if "recipe" in r:
            lines.append(f"\n{r['variant']} ({r['recipe']}) at {r['width']}x{r['height']}: compiled in {r['compile_s']:.1f} s "
                         f"before timing, {r['fp8_layers']} Linear layers in fp8; against go_fast=false, same seed: "
                         f"one denoiser forward's relative L2 error {r['denoiser_rel_l2']:.4f}, image PSNR "
                         f"{r['psnr_vs_exact_db']:.1f} dB; ran on {', '.join(r['fast_paths'])}.")
    defaults = next((r for r in rows if r["variant"] == "defaults" and "speed" in r), None)
    if defaults:
        lines += ["", f"Service defaults on this device: {defaults['speed']}."]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"generation-{args.model}"
    (args.out / f"{stem}.json").write_text(json.dumps({"device": device_name, "weights": args.weights, "rows": rows}, indent=2))
    (args.out / f"{stem}.md").write_text(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(GUIDANCE), default="sdxl")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--cases", default="1024x1024x20,768x768x15", help="WIDTHxHEIGHTxSTEPS,...")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    parser.add_argument("--ablate", nargs="?", const="all", default=None, metavar="SWITCH,...",
                        help="add a row per speed switch flipped from its default (all, or the switches named); "
                             "on a 10-minute device call, split a Flux ablation into groups")
    parser.add_argument("--variant", action="append", default=[], help="SPEED_X=v[,...]: add a service row with these settings")
    parser.add_argument("--go-fast", nargs="?", const="auto", default=None, metavar="RECIPE",
                        help="add a go_fast=true row after the defaults (auto, fp8 or compile)")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]

    import diffusers
    import numpy as np
    import torch

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
        times, image, first = timed_runs(run, args.runs, sync)
        plain[(width, height, steps)] = {"times": times, "image": np.asarray(image).astype(int), "peak_gb": peak_gb(), "first_s": first}
    pipe = None  # plain diffusers' copy goes before the service loads its own
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    # 2. the service: its defaults, then each variant on a freshly loaded model
    os.environ["DEFAULT_MODEL"] = args.model
    # no background compile beside the timed rows: the --go-fast row turns go_fast on for itself
    os.environ["SPEED_GO_FAST"] = "off"
    from startup.chain import run_startup

    service = run_startup(args.weights)
    flipped = ablation(device, pipeline_class.__name__) if args.ablate else []
    if args.ablate and args.ablate != "all":
        wanted = [f"SPEED_{name.strip().upper()}" for name in args.ablate.split(",")]
        flipped = [variant for name in wanted for variant in flipped if variant.split("=")[0] == name]  # in the order named
    sizes = ",".join(f"{w}x{h}" for w, h, _ in cases)
    go_fast_rows = [f"go_fast={args.go_fast}"] if args.go_fast else []
    variants = ["defaults"] + go_fast_rows + flipped + args.variant
    name = torch.cuda.get_device_name() if cuda else "cpu"
    rows: list[dict[str, Any]] = []
    exact_images: dict[tuple, Any] = {}  # the defaults row's images: go_fast's quality is measured against them
    for variant in variants:
        if variant == "defaults":
            overrides = {}
        elif variant.startswith("go_fast="):
            overrides = {"SPEED_GO_FAST": variant.split("=", 1)[1], "GO_FAST_SIZES": sizes}
        else:
            overrides = dict(item.split("=", 1) for item in variant.split(","))
        try:
            rows += service_rows(service, variant, overrides, args, cases, plain, guidance, cuda, sync, peak_gb, reset_peak,
                                 exact_images)
        except Exception as error:  # noqa: BLE001 - one switch failing must not lose the others' rows
            log_failure(variant, error)
            rows.append({"model": args.model, "variant": variant, "error": f"{type(error).__name__}: {error}"[:2000]})
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        table = write_results(args, name, rows)  # after every row: a run cut off still leaves its rows
    print(table)
    print(f"wrote {args.out}/generation-{args.model}.json and .md")
    failed = [row["variant"] for row in rows if "error" in row]
    if failed:
        sys.exit(f"FAILED variants (their rows say why): {', '.join(failed)}")


if __name__ == "__main__":
    main()
