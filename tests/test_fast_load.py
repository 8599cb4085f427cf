"""The weight stream and the models built from it: the same tensors, dtypes and images as the
libraries' own loading, on both the direct and the staged (GPU-shaped) copy paths."""

from __future__ import annotations

import itertools
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hardware.backend import Backend
from pipeline.loading.component_build import build_components, fast_load_enabled, model_components, stream_files, streamed_components
from pipeline.loading.stream import StreamError, WeightStream, plan_chunks, read_header

CPU = Backend(device="cpu", dtype_name="float32", tf32=False, bitsandbytes="-")


@pytest.fixture()
def mixed_file(tmp_path: Path) -> Path:
    """Every dtype the stream handles, odd sizes, a scalar and an empty tensor."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.f32": torch.randn(3, 5, generator=generator),
        "b.f16": torch.randn(7, generator=generator).half(),
        "c.bf16": torch.randn(2, 3, 3, generator=generator).bfloat16(),
        "d.i64": torch.arange(11),
        "e.bool": torch.tensor([True, False, True]),
        "f.u8": torch.arange(13, dtype=torch.uint8),
        "g.fp8": torch.randn(9, generator=generator).to(torch.float8_e4m3fn),
        "h.scalar": torch.tensor(2.5),
        "i.empty": torch.zeros(0, 4),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    return path


def assert_same(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype, name
        assert ours[name].shape == theirs[name].shape, name
        assert torch.equal(ours[name].reshape(-1).view(torch.uint8), theirs[name].reshape(-1).view(torch.uint8)), name


def test_header_lists_every_tensor_in_file_order(mixed_file: Path) -> None:
    entries = read_header(mixed_file)
    reference = load_file(str(mixed_file))
    assert {e.name for e in entries} == set(reference)
    assert [e.start for e in entries] == sorted(e.start for e in entries)
    for entry in entries:
        assert entry.shape == tuple(reference[entry.name].shape)
        assert entry.end - entry.start == reference[entry.name].numel() * reference[entry.name].element_size()


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("chunk_bytes", [5, 64, 1 << 20])
def test_streamed_tensors_are_the_files_bytes(mixed_file: Path, staged: bool, chunk_bytes: int) -> None:
    """Chunks of 5 bytes split nearly every tensor across chunks and workers."""
    stream = WeightStream([mixed_file], "cpu", workers=3, chunk_bytes=chunk_bytes, staged=staged).start()
    try:
        assert_same(stream.state_dict(mixed_file), load_file(str(mixed_file)))
    finally:
        stream.close()
    assert "GB from 1 files to cpu" in stream.describe()


def test_chunk_plan_covers_every_byte_once(mixed_file: Path) -> None:
    entries = read_header(mixed_file)
    tensors = {e.name: torch.empty(e.shape, dtype=getattr(torch, e.dtype)) for e in entries}
    chunks = plan_chunks(entries, tensors, 16)
    pieces = [piece for chunk in chunks for piece in chunk]
    covered = sorted((p.start, p.end) for p in pieces)
    data = [(e.start, e.end) for e in entries if e.end > e.start]
    assert covered[0][0] == data[0][0] and covered[-1][1] == data[-1][1]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))  # contiguous, no overlap
    assert all(sum(p.end - p.start for p in chunk) <= 16 for chunk in chunks)


def test_truncated_file_is_refused_with_its_path(mixed_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(mixed_file.read_bytes()[:-20])
    stream = WeightStream([cut], "cpu").start()
    with pytest.raises(StreamError, match="cut.safetensors.*truncated"):
        stream.state_dict(cut)
    stream.close()


def test_fast_load_is_on_for_cuda_and_off_for_cpu_unless_set() -> None:
    assert fast_load_enabled("cuda", env={}) and not fast_load_enabled("cpu", env={})
    assert fast_load_enabled("cpu", env={"FAST_LOAD": "1"}) and not fast_load_enabled("cuda", env={"FAST_LOAD": "0"})


def reference_pipeline(folder: Path, dtype: torch.dtype, pipeline_class: str):
    import diffusers

    return getattr(diffusers, pipeline_class).from_pretrained(str(folder), dtype=dtype, local_files_only=True)


def assert_models_match(built: dict, reference) -> None:
    for name, model in built.items():
        theirs = getattr(reference, name)
        assert type(model) is type(theirs), name
        ours_state, their_state = model.state_dict(), theirs.state_dict()
        assert ours_state.keys() == their_state.keys(), name
        for key, tensor in their_state.items():
            assert ours_state[key].dtype == tensor.dtype, (name, key, ours_state[key].dtype, tensor.dtype)
            assert torch.equal(ours_state[key], tensor), (name, key)
        for key, buffer in dict(theirs.named_buffers()).items():
            assert torch.equal(dict(model.named_buffers())[key], buffer), (name, key)
        assert not model.training and not any(p.is_meta for p in model.parameters()), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sdxl_components_equal_from_pretrained(tiny_weights: Path, dtype: torch.dtype, monkeypatch) -> None:
    monkeypatch.setenv("FAST_LOAD", "1")
    built = streamed_components(tiny_weights, dtype, "cpu")
    assert set(built) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert_models_match(built, reference_pipeline(tiny_weights, dtype, "StableDiffusionXLPipeline"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flux_components_keep_the_libraries_dtype_rules(flux_weights: dict, dtype: torch.dtype, monkeypatch) -> None:
    """T5 keeps its ``wo`` layers in fp32 under fp16 (transformers' rule), streamed or not."""
    monkeypatch.setenv("FAST_LOAD", "1")
    folder = flux_weights["flux-dev"]
    built = streamed_components(folder, dtype, "cpu")
    assert set(built) == {"transformer", "vae", "text_encoder", "text_encoder_2"}
    reference = reference_pipeline(folder, dtype, "FluxPipeline")
    assert_models_match(built, reference)
    wo = {p.dtype for n, p in built["text_encoder_2"].named_parameters() if n.endswith("wo.weight")}
    assert wo == {reference.text_encoder_2.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype}


def test_staged_stream_builds_the_same_models(tiny_weights: Path) -> None:
    components = model_components(tiny_weights)
    stream = WeightStream(stream_files(components), "cpu", chunk_bytes=4096, staged=True).start()
    built = build_components(components, stream, torch.float32, "cpu")
    stream.close()
    assert_models_match(built, reference_pipeline(tiny_weights, torch.float32, "StableDiffusionXLPipeline"))


def test_a_component_that_does_not_fit_its_class_falls_back(tiny_weights: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    """A VAE file with a key renamed: only the VAE loads the library's way; the image is unaffected."""
    folder = tmp_path / "sdxl"
    shutil.copytree(tiny_weights, folder)
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(vae_file))
    key = next(k for k in tensors if k.endswith("conv_in.weight"))
    tensors["legacy." + key] = tensors.pop(key)
    save_file(tensors, str(vae_file))
    monkeypatch.setenv("FAST_LOAD", "1")
    with caplog.at_level(logging.WARNING):
        built = streamed_components(folder, torch.float32, "cpu")
    assert set(built) == {"unet", "text_encoder", "text_encoder_2"}
    assert "vae falls back to from_pretrained" in caplog.text and "legacy." in caplog.text


def test_streamed_model_makes_the_same_image(tiny_weights: Path, monkeypatch) -> None:
    from pipeline.generate import Batch, generate
    from pipeline.loading.sdxl import load_sdxl
    from pipeline.loading.weights import resolve_weights
    from presets import resolve
    from request.generation import parse_request

    source = resolve_weights(str(tiny_weights), model="sdxl")
    request = parse_request({"prompt": "a red bicycle", "width": 64, "height": 64, "seed": 3})
    settings = resolve("sdxl", "fast", num_inference_steps=3)
    images = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("FAST_LOAD", setting)
        model = load_sdxl(source, CPU)
        images[setting] = np.asarray(generate(model, Batch(["a red bicycle"], 1, 3), request, settings).images[0])
    assert np.array_equal(images["0"], images["1"])


def test_components_listed_from_the_model_index_smallest_first(tiny_weights: Path) -> None:
    components = model_components(tiny_weights)
    sizes = [sum(f.stat().st_size for f in c.files) for c in components]
    assert sizes == sorted(sizes)
    assert {c.name for c in components} == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert "unet" not in {c.name for c in model_components(tiny_weights, skip={"unet"})}


def test_a_stream_closed_before_it_finished_frees_what_it_read(tiny_weights: Path) -> None:
    """What happens when the model turned out to be loaded already: the stream is closed unused."""
    components = model_components(tiny_weights)
    stream = WeightStream(stream_files(components), "cpu", workers=1, chunk_bytes=1024).start()
    stream.close()
    assert "from 4 files" in stream.describe()
    for future in stream._streams.values():  # never started, stopped by the shutdown, or emptied
        assert future.cancelled() or future.exception() is not None or future.result().tensors == {}
