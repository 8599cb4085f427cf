"""What the network reaches through the real Cog server (coglet): weights from a URL at start-up,
and image inputs that must never make the service fetch an inside address or read its own files."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import serve
from tests.fixtures.object_store import Faults
from tests.fixtures.object_store import serve as serve_store
from tests.test_http_server import decode
from tests.test_image_inputs_http import png_url


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path):
    """The object store with the tiny SDXL as a tar, a picture, and a half tar."""
    folder = tmp_path_factory.mktemp("store")
    with tarfile.open(folder / "sdxl.tar", "w") as archive:
        archive.add(tiny_weights, arcname="sdxl-tiny")
    whole = (folder / "sdxl.tar").read_bytes()
    Image.fromarray((np.random.RandomState(5).rand(64, 64, 3) * 255).astype(np.uint8)).save(folder / "picture.png")
    server = serve_store(folder, Faults(rate=20e6, ttfb=0.02))
    server.whole = whole  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.mark.parametrize("field", ["image", "face_image", "mask"])
def test_image_inputs_never_reach_inside_addresses(cog_server, store, field: str) -> None:
    before = store.count()
    port = store.server_address[1]
    inside = [f"{store.url}/picture.png", f"http://[::1]:{port}/picture.png", f"http://localhost:{port}/picture.png",
              f"{cog_server.url}/health-check"]
    for url in inside:
        inputs = {field: url} if field != "mask" else {"image": png_url(Image.new("RGB", (64, 64))), "mask": url}
        response = cog_server.predict(prompt="x", width=64, height=64, num_inference_steps=2, **inputs)
        assert response["status"] == "failed", response
        assert f"invalid input {field}=" in response["error"] and "not a global address" in response["error"], response
    assert store.count() == before  # not one request reached the loopback server
    assert cog_server.predict(prompt="x", width=64, height=64, num_inference_steps=2)["status"] == "succeeded"


@pytest.mark.parametrize("value", ["/etc/hostname", "picture.png", "file:///etc/hostname"])
def test_a_server_path_is_never_read(cog_server, value: str) -> None:
    response = cog_server.predict(prompt="x", width=64, height=64, num_inference_steps=2, image=value)
    if response["status"] == "refused":  # the schema's format: uri, enforced by coglet
        assert response["detail"][0]["loc"][-1] == "image", response
    else:
        assert response["status"] == "failed" and "invalid input image=" in response["error"], response
        assert "URL of an image (a path on the server is not read)" in response["error"], response


def test_weights_from_a_url_start_the_service_and_the_next_start_hits_the_cache(store, tmp_path: Path) -> None:
    url = f"{store.url}/sdxl.tar"
    env = dict(WEIGHTS_CACHE=str(tmp_path / "cache"), WEIGHTS_FETCH_CHUNK_MB="0.5",
               SAFETY_CHECKER_WEIGHTS=str(tmp_path / "none"))
    before = store.count()
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    with serve(url, tmp_path / "first", env) as server:
        log = server.log_path.read_text()
        assert "weights SDXL_WEIGHTS: downloaded" in log and "ranged" in log
        # streamed from the download's memory: on the CPU a local folder is not streamed (FAST_LOAD off there)
        assert "fast load: unet (UNet2DConditionModel) ready" in log
        response = server.predict(prompt="a lighthouse", width=64, height=64, num_inference_steps=2, seed=1)
        assert response["status"] == "succeeded", response
        first = decode(response["output"][0])
    fetched = store.count() - before
    assert fetched >= 2  # the probe and the remaining ranges
    with serve(url, tmp_path / "second", env) as server:
        assert "cache hit" in server.log_path.read_text()
        again = decode(server.predict(prompt="a lighthouse", width=64, height=64, num_inference_steps=2, seed=1)["output"][0])
    assert store.count() - before == fetched  # no request on the second start
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_a_half_delivered_tar_fails_setup_and_is_fetched_whole_next_time(store, tmp_path: Path) -> None:
    url = f"{store.url}/sdxl.tar"
    env = dict(WEIGHTS_CACHE=str(tmp_path / "cache"), SAFETY_CHECKER_WEIGHTS=str(tmp_path / "none"))
    for name in ("broken", "healthy"):
        (tmp_path / name).mkdir()
    store.faults.no_length = store.faults.ignore_range = True
    store.faults.truncate_at = len(store.whole) // 2  # the server closes half-way, with no length to tell
    try:
        with serve(url, tmp_path / "broken", env, ready=False) as server:
            log = server.log_path.read_text()
        assert "SDXL_WEIGHTS" in log and "truncated" in log, log[-3000:]
    finally:
        store.faults.no_length = store.faults.ignore_range = False
        store.faults.truncate_at = None
    with serve(url, tmp_path / "healthy", env) as server:
        assert "weights SDXL_WEIGHTS: downloaded" in server.log_path.read_text()
        assert server.predict(prompt="x", width=64, height=64, num_inference_steps=2)["status"] == "succeeded"


def refused_lora(predictor, tmp_path: Path, monkeypatch, data: bytes, faults: Faults):  # type: ignore[no-untyped-def]
    """The InputError a LoRA request gets for ``data`` served under ``faults`` (LoRA cache in tmp_path)."""
    from request.errors import InputError
    from tests.conftest import predict_inputs

    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "lora.safetensors").write_bytes(data)
    store = serve_store(folder, faults)
    monkeypatch.setenv("LORA_ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("LORA_CACHE", str(tmp_path / "lora-cache"))
    try:
        with pytest.raises(InputError) as caught:
            predictor.predict_sync(**predict_inputs(lora_weights=f"{store.url}/lora.safetensors"))
    finally:
        store.stop()
    return caught.value


def test_a_slow_lora_server_is_abandoned_within_lora_timeout(predictor, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORA_TIMEOUT_S", "1.5")
    started = time.monotonic()
    error = refused_lora(predictor, tmp_path, monkeypatch, b"\x08" + bytes(7) + b"{}" + bytes(5000),
                         Faults(rate=0, ttfb=0, drip=0.05))
    assert error.field == "lora_weights" and "1.5 s deadline" in str(error)
    assert time.monotonic() - started < 4
    assert not list((tmp_path / "lora-cache").glob(".staging-*"))


def test_a_lora_header_with_string_offsets_is_refused_by_name(predictor, tmp_path: Path, monkeypatch) -> None:
    import json
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}).encode()
    error = refused_lora(predictor, tmp_path, monkeypatch, struct.pack("<Q", len(header)) + header + bytes(4),
                         Faults(rate=0, ttfb=0))
    assert error.field == "lora_weights" and "malformed entry" in str(error)


def test_an_image_url_over_the_cap_stops_at_the_cap(predictor, tmp_path: Path, monkeypatch) -> None:
    from request.errors import InputError
    from request.reference_image import MAX_FILE_BYTES
    from tests.conftest import predict_inputs

    folder = tmp_path / "big"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "PNG")
    (folder / "huge.png").write_bytes(buffer.getvalue() + bytes(MAX_FILE_BYTES))
    store = serve_store(folder, Faults(rate=0, ttfb=0, no_length=True, ignore_range=True))
    monkeypatch.setenv("IMAGE_ALLOW_PRIVATE_URLS", "1")
    try:
        with pytest.raises(InputError) as caught:
            predictor.predict_sync(**predict_inputs(image=f"{store.url}/huge.png"))
    finally:
        store.stop()
    assert caught.value.field == "image" and f"more than {MAX_FILE_BYTES} bytes" in str(caught.value)
