import hashlib
import http.server
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Iterator

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


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves one file with HTTP Range support; can drop the first response part-way."""

    def __init__(self, payload: bytes, cut_first_at: int | None = None) -> None:
        self.payload = payload
        self.cut_first_at = cut_first_at
        self.requests: list[str | None] = []
        super().__init__(("127.0.0.1", 0), RangeHandler)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    server: RangeServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        payload = self.server.payload
        header = self.headers.get("Range")
        self.server.requests.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        body = payload[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        self.end_headers()
        if self.server.cut_first_at is not None and len(self.server.requests) == 1:
            self.wfile.write(body[: self.server.cut_first_at])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection dies mid-transfer
            return
        self.wfile.write(body)


@pytest.fixture
def weights_tar(tiny_weights: Path, tmp_path: Path) -> bytes:
    archive = tmp_path / "sdxl.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tiny_weights, arcname="sdxl-tiny")
    return archive.read_bytes()


def serve(payload: bytes, cut_first_at: int | None = None) -> Iterator[RangeServer]:
    server = RangeServer(payload, cut_first_at)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_url_download_resumes_verifies_unpacks_and_caches(weights_tar: bytes, tmp_path: Path) -> None:
    sha = hashlib.sha256(weights_tar).hexdigest()
    for server in serve(weights_tar, cut_first_at=len(weights_tar) // 3):
        url = f"http://127.0.0.1:{server.server_port}/sdxl.tar#sha256={sha}"
        source = resolve_weights(url, cache_dir=tmp_path / "cache")
        assert source.layout == "diffusers" and (source.path / "model_index.json").is_file()
        assert server.requests[0] is None and server.requests[1] == f"bytes={len(weights_tar) // 3}-"
        again = resolve_weights(url, cache_dir=tmp_path / "cache")
        assert again.path == source.path and len(server.requests) == 2  # served from the cache


def test_url_with_wrong_checksum_is_refused(weights_tar: bytes, tmp_path: Path) -> None:
    for server in serve(weights_tar):
        url = f"http://127.0.0.1:{server.server_port}/sdxl.tar#sha256={'0' * 64}"
        with pytest.raises(WeightsError) as caught:
            resolve_weights(url, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "sdxl.tar" in message and "expected sha256 000" in message
    assert not list((tmp_path / "cache").glob("*.part"))


def test_unreachable_url_names_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.loading.fetch.ATTEMPTS", 1)
    with socket_closed_port() as port:
        with pytest.raises(WeightsError, match=f"127.0.0.1:{port}/w.safetensors"):
            resolve_weights(f"http://127.0.0.1:{port}/w.safetensors", cache_dir=tmp_path)


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
