import hashlib
import shutil
import tarfile
from pathlib import Path

import pytest

from pipeline.loading.weights import WeightsError, check_safetensors, resolve_weights


def test_diffusers_folder_resolves(tiny_weights: Path) -> None:
    source = resolve_weights(str(tiny_weights))
    assert source.layout == "diffusers" and source.path == tiny_weights
    assert source.model_id == f"sdxl:{tiny_weights.resolve()}"


def test_missing_path_names_the_path_and_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        resolve_weights(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(caught.value) and "model_index.json" in str(caught.value)


def test_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no model_index.json"):
        resolve_weights(str(tmp_path))


def test_missing_component_folder(tiny_weights: Path, tmp_path: Path) -> None:
    copy = tmp_path / "w"
    shutil.copytree(tiny_weights, copy)
    shutil.rmtree(copy / "vae")
    with pytest.raises(WeightsError, match="lists 'vae'"):
        resolve_weights(str(copy))


def test_truncated_safetensors_is_reported_with_its_path(tiny_weights: Path, tmp_path: Path) -> None:
    copy = tmp_path / "w"
    shutil.copytree(tiny_weights, copy)
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[:-1000])
    with pytest.raises(WeightsError) as caught:
        resolve_weights(str(copy))
    assert str(unet) in str(caught.value) and "truncated" in str(caught.value)


def test_garbage_file_is_not_safetensors(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="not a readable .safetensors"):
        check_safetensors(bad)
    other = tmp_path / "model.ckpt"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported weights file"):
        resolve_weights(str(other))


@pytest.fixture
def weights_tar(tiny_weights: Path, tmp_path: Path) -> Path:
    archive = tmp_path / "store" / "sdxl.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(tiny_weights, arcname="sdxl-tiny")
    return archive


def test_url_download_resumes_verifies_unpacks_and_caches(weights_tar: Path, tmp_path: Path, monkeypatch) -> None:
    from tests.fixtures.object_store import Faults, serve

    monkeypatch.setenv("WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WEIGHTS_FETCH_CHUNK_MB", "0.25")
    sha = hashlib.sha256(weights_tar.read_bytes()).hexdigest()
    store = serve(weights_tar.parent, Faults(rate=0, ttfb=0, reset_after=100_000, resets=1))
    try:
        url = f"{store.url}/sdxl.tar#sha256={sha}"
        source = resolve_weights(url)
        assert source.layout == "diffusers" and (source.path / "model_index.json").is_file()
        ranges = [r for _, r in store.requests]
        assert ranges[0] == "bytes=0-262143" and "bytes=100000-262143" in ranges  # chunk 0 resumed where it broke
        count = store.count()
        again = resolve_weights(url)
        assert again.path == source.path and store.count() == count  # served from the cache
    finally:
        store.stop()


def test_url_with_wrong_checksum_is_refused(weights_tar: Path, tmp_path: Path, monkeypatch) -> None:
    from tests.fixtures.object_store import Faults, serve

    monkeypatch.setenv("WEIGHTS_CACHE", str(tmp_path / "cache"))
    store = serve(weights_tar.parent, Faults(rate=0, ttfb=0))
    try:
        with pytest.raises(WeightsError) as caught:
            resolve_weights(f"{store.url}/sdxl.tar#sha256={'0' * 64}")
    finally:
        store.stop()
    message = str(caught.value)
    assert "sdxl.tar" in message and "expected sha256 000" in message and "SDXL_WEIGHTS" in message
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_unreachable_url_names_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIGHTS_CACHE", str(tmp_path))
    monkeypatch.setenv("WEIGHTS_FETCH_TIMEOUT_S", "3")
    with socket_closed_port() as port:
        with pytest.raises(WeightsError, match=f"127.0.0.1:{port}/w.safetensors"):
            resolve_weights(f"http://127.0.0.1:{port}/w.safetensors")


class socket_closed_port:
    def __enter__(self) -> int:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass
