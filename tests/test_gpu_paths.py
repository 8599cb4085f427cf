"""The CUDA-only paths, checked on a GPU: the pinned, overlapped weight stream, CUDA-graph capture
and replay of the denoiser, the bf16 decode, and go_fast (torchao fp8 and compiled blocks inside
the graphs, compiled in the background). CI has no GPU, so these are skipped there; their
logic is covered on the CPU by ``test_fast_load.py`` and ``test_speed.py`` (the staged copy path and
the graph runner with a stand-in for capture). Run on a GPU machine with
``python -m pytest tests/test_gpu_paths.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_backend():
    from hardware.backend import configure_backend

    return configure_backend({})


def test_weight_stream_puts_the_files_bytes_on_the_gpu(tiny_weights: Path) -> None:
    from pipeline.loading.component_build import model_components, stream_files
    from pipeline.loading.stream import WeightStream

    files = stream_files(model_components(tiny_weights))
    stream = WeightStream(files, "cuda", chunk_bytes=4096).start()  # many chunks, several workers
    try:
        for path in files:
            ours, theirs = stream.state_dict(path), load_file(str(path))
            assert ours.keys() == theirs.keys()
            for name, tensor in theirs.items():
                assert ours[name].device.type == "cuda" and torch.equal(ours[name].cpu(), tensor), name
    finally:
        stream.close()


@pytest.mark.parametrize("model_name", ["sdxl", "flux-dev"])
def test_gpu_defaults_make_the_eager_image(tiny_weights: Path, flux_weights: dict, monkeypatch, model_name: str) -> None:
    """Every CUDA default (weight stream, fused QKV, CUDA graphs, bf16 decode) against
    everything off, on the same seeds: graphs captured once per size and verified."""
    from pipeline.generate import Batch, generate
    from pipeline.loading.weights import resolve_weights
    from pipeline.select import with_speedups
    from presets import resolve
    from request.generation import parse_request

    backend = cuda_backend()
    source = resolve_weights(str(flux_weights.get(model_name, tiny_weights)), model=model_name)

    def load(**env: str):
        for name in ("FAST_LOAD", "SPEED_FUSE_QKV", "SPEED_CHANNELS_LAST", "SPEED_CUDA_GRAPHS", "SPEED_VAE_DECODE",
                     "SPEED_GO_FAST"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        from pipeline.families import family_for
        from request.catalog import MODELS

        return with_speedups(family_for(MODELS[model_name]).load(source, backend), backend)

    def images(model) -> list[np.ndarray]:
        request = parse_request({"prompt": "a red bicycle", "width": 64, "height": 64, "seed": 5, "model": model_name})
        settings = resolve(model_name, "fast", num_inference_steps=4)
        return [np.asarray(generate(model, Batch(["a red bicycle"], 1, seed), request, settings).images[0]).astype(int)
                for seed in (5, 6, 7)]

    fast = load()
    assert fast.speed.cuda_graphs and fast.graphs is not None
    fast_images = images(fast)
    (captured,) = fast.graphs.graphs.values()
    assert captured.verified and not fast.graphs.eager
    eager_images = images(load(SPEED_CUDA_GRAPHS="0"))  # the same kernels, launched one by one
    plain_images = images(load(FAST_LOAD="0", SPEED_FUSE_QKV="0", SPEED_CHANNELS_LAST="0", SPEED_CUDA_GRAPHS="0",
                               SPEED_VAE_DECODE="exact"))
    every = zip(fast_images, eager_images, plain_images, strict=True)
    for graphed_image, eager_image, plain_image in every:
        assert np.abs(graphed_image - eager_image).max() <= 2
        # fp16/bf16 rounding of fused GEMMs, and SDXL's bf16 decode against fp32
        difference = np.abs(graphed_image - plain_image)
        assert difference.mean() < 3 and difference.max() <= 40, (difference.mean(), difference.max())


@pytest.mark.parametrize("model_name", ["sdxl", "flux-dev"])
def test_go_fast_on_the_gpu(tiny_weights: Path, flux_weights: dict, monkeypatch, model_name: str) -> None:
    """go_fast's default recipe on this GPU (fp8 and compile on 8.9+, the compile alone below), built and
    compiled in the background, run inside its own CUDA graphs; go_fast=false stays the exact image."""
    from pipeline.generate import Batch, generate
    from pipeline.loading.cache import MODEL_CACHE, release_memory
    from pipeline.loading.weights import resolve_weights
    from pipeline.select import load_source
    from pipeline.speed.settings import fp8_tensor_cores
    from presets import resolve
    from request.generation import parse_request

    for name in ("SPEED_GO_FAST", "SPEED_GO_FAST_COMPILER", "COMPILE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GO_FAST_SIZES", "64x64")
    backend = cuda_backend()
    model = load_source(resolve_weights(str(flux_weights.get(model_name, tiny_weights)), model=model_name), backend)
    try:
        request = parse_request({"prompt": "a red bicycle", "width": 64, "height": 64, "seed": 5, "model": model_name})
        settings = resolve(model_name, "fast", num_inference_steps=4)

        def run(go_fast: bool):
            result = generate(model, Batch(["a red bicycle"], 1, 5), request, settings, go_fast=go_fast)
            return np.asarray(result.images[0]).astype(int), result.fast_path

        exact, path = run(False)
        assert path == "exact" and model.fast is not None
        assert model.fast.recipe == ("fp8" if fp8_tensor_cores() else "compile")
        assert run(True)[1] == "exact"  # not compiled yet: the exact path, never a wait
        shape = model.fast.shape(64, 64, 1, settings.guidance_scale)
        assert model.fast.wait([shape], timeout=600), model.fast.error
        fast, path = run(True)
        assert path == model.fast.name and (model.fast.fp8_layers > 0) == (model.fast.recipe == "fp8")
        again, _ = run(True)
        assert np.abs(fast - again).max() <= 2  # its graph replays what it captured
        assert np.abs(fast - exact).mean() < 12, np.abs(fast - exact).mean()  # lossy with fp8
        assert np.array_equal(run(False)[0], exact)
    finally:
        MODEL_CACHE.evict(model.source.model_id)
        release_memory()
