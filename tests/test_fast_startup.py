"""Start-up helpers that overlap work: weight prefetch, device init, and how the loader places weights."""

import logging
import shutil
from pathlib import Path

import pytest

from hardware.backend import Backend, start_device_init
from pipeline.loading.component_build import weight_files
from startup.prefetch import start_prefetch


def test_prefetch_reads_exactly_the_files_the_loader_reads(tiny_weights: Path, tmp_path: Path, caplog) -> None:
    folder = tmp_path / "w"
    shutil.copytree(tiny_weights, folder)
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    shutil.copy(unet, folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")  # a variant nobody loads
    (folder / "notes.safetensors").write_bytes(b"x")  # not a component
    files = weight_files(folder)
    assert set(files) == {unet, *(folder / c / "model.safetensors" for c in ("text_encoder", "text_encoder_2")),
                          folder / "vae" / "diffusion_pytorch_model.safetensors"}
    assert files[0] == unet  # largest first
    prefetch = start_prefetch(str(folder))
    with caplog.at_level(logging.INFO):
        prefetch.join()
    assert prefetch.bytes_read == sum(f.stat().st_size for f in files) and prefetch.error is None
    assert "weight prefetch: " in caplog.text and "from 4 files, done in" in caplog.text


def test_prefetch_skips_urls_and_survives_missing_paths(tmp_path: Path) -> None:
    assert start_prefetch("https://example.invalid/w.tar") is None
    assert start_prefetch(str(tmp_path / "missing")) is None
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"\0" * 1000)
    prefetch = start_prefetch(str(single))
    prefetch.join()
    assert prefetch.bytes_read == 1000


def test_device_init_creates_a_cuda_context_only_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    calls = []
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: calls.append(kwargs.get("device")))
    make = lambda device: Backend(device=device, dtype_name="float16", tf32=False, bitsandbytes="-")  # noqa: E731
    start_device_init(make("cpu")).join()
    assert calls == []
    start_device_init(make("cuda")).join()
    assert calls == ["cuda"]


def test_cuda_loads_place_weights_with_device_map_and_skip_the_copy(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU-only branch of the loader, checked on the CPU: what it asks diffusers for."""
    import diffusers

    from pipeline.loading.sdxl import load_sdxl
    from pipeline.loading.weights import resolve_weights

    seen = {}

    class FakePipe:
        scheduler = type("S", (), {"config": {"a": 1}})()

        def to(self, device):
            seen["to"] = device
            return self

        def set_progress_bar_config(self, **kwargs):
            pass

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        return FakePipe()

    monkeypatch.setattr(diffusers.StableDiffusionXLPipeline, "from_pretrained", staticmethod(from_pretrained))
    cuda = Backend(device="cuda", dtype_name="float16", tf32=True, bitsandbytes="-")
    load_sdxl(resolve_weights(str(tiny_weights)), cuda)
    assert seen["device_map"] == "cuda" and "to" not in seen
    cpu = Backend(device="cpu", dtype_name="float32", tf32=False, bitsandbytes="-")
    seen.clear()
    load_sdxl(resolve_weights(str(tiny_weights)), cpu)
    assert seen["device_map"] is None and seen["to"] == "cpu"


def test_optional_parts_preload_in_the_background_only_when_asked(tiny_weights: Path, ip_adapter_weights: Path,
                                                                   tmp_path: Path, monkeypatch, capfd) -> None:
    from pipeline.loading.cache import MODEL_CACHE
    from startup.chain import run_startup
    from startup.optional_parts import requested_parts

    assert requested_parts({}) == []
    with pytest.raises(ValueError, match="unknown part.*facefix"):
        requested_parts({"PRELOAD_OPTIONAL": "adetailer,facefix"})
    monkeypatch.setenv("IP_ADAPTER_WEIGHTS", str(ip_adapter_weights))
    monkeypatch.setenv("PRELOAD_OPTIONAL", "adetailer,ip_adapter")
    service = run_startup(str(tiny_weights), timings_path=tmp_path / "t.json")
    assert service.preload is not None
    service.preload.join(120)
    err = capfd.readouterr().err
    assert "[Timer: optional:adetailer]" in err and "[Timer: optional:ip_adapter]" in err
    model_id = service.default_source.model_id
    ids = MODEL_CACHE.ids()
    assert f"inpaint:{model_id}" in ids and any(i.startswith("detector:mediapipe_face") for i in ids)
    assert any(i.startswith("ip-adapter:") and i.endswith(model_id) for i in ids)
    monkeypatch.delenv("PRELOAD_OPTIONAL")
    assert run_startup(str(tiny_weights), timings_path=tmp_path / "u.json").preload is None
