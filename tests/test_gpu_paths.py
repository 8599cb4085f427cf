"""The CUDA-only paths, checked on a GPU: the pinned, overlapped weight stream, CUDA-graph capture
and replay of the denoiser (also with compiled blocks inside), and the bf16 decode. CI has no GPU, so these are skipped there; their
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
                     "SPEED_COMPILE"):
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
    compiled_images = images(load(SPEED_COMPILE="regional"))  # compiled blocks inside the graphs
    every = zip(fast_images, eager_images, plain_images, compiled_images, strict=True)
    for graphed_image, eager_image, plain_image, compiled_image in every:
        assert np.abs(graphed_image - eager_image).max() <= 2
        assert np.abs(compiled_image - graphed_image).mean() < 3
        # fp16/bf16 rounding of fused GEMMs, and SDXL's bf16 decode against fp32
        difference = np.abs(graphed_image - plain_image)
        assert difference.mean() < 3 and difference.max() <= 40, (difference.mean(), difference.max())


def test_fp8_matmuls_on_the_gpu_stay_close_to_bf16() -> None:
    """``torch._scaled_mm`` with row-wise scales on this GPU (needs compute capability 8.9+)."""
    from pipeline.speed.fp8_linear import Fp8Linear, fp8_matmul_supported

    if not fp8_matmul_supported("cuda"):
        pytest.skip("fp8 matmuls need compute capability 8.9+")
    torch.manual_seed(0)
    linear = torch.nn.Linear(3072, 3072 * 3, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, 4096, 3072, device="cuda", dtype=torch.bfloat16)
    exact, approx = linear(x).float(), Fp8Linear.from_linear(linear)(x).float()
    assert (approx - exact).abs().max() / exact.abs().max() < 0.1
