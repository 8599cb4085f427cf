"""Shared fixtures: tiny random-weight SDXL built once per run, an in-process predictor, and the
real Cog HTTP server on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.make_weights import build_sdxl

    return build_sdxl("tiny", tmp_path_factory.mktemp("weights") / "sdxl-tiny")


@pytest.fixture(scope="session")
def ip_adapter_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random IP-Adapter files (both variants, both encoders) in h94's folder layout."""
    from tests.fixtures.make_ip_adapter import build_ip_adapter

    return build_ip_adapter(tmp_path_factory.mktemp("weights") / "ip-adapter", "tiny")


@pytest.fixture(scope="session")
def svd_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random Stable Video Diffusion in a diffusers folder (frames of 64x32)."""
    from tests.fixtures.make_svd import build

    folder = tmp_path_factory.mktemp("weights") / "svd-tiny"
    build("tiny").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def flux_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Flux, dev-like and schnell-like, in diffusers folders."""
    from tests.fixtures.make_flux import build_flux

    root = tmp_path_factory.mktemp("weights")
    return {
        "flux-dev": build_flux("tiny", root / "flux-dev-tiny", "float32"),
        "flux-schnell": build_flux("tiny-schnell", root / "flux-schnell-tiny", "float32"),
    }


@pytest.fixture(scope="session")
def predictor(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    os.environ["STARTUP_TIMINGS_PATH"] = str(tmp_path_factory.mktemp("timings") / "startup.json")
    from predict import Predictor

    instance = Predictor()
    instance.setup(str(tiny_weights))
    return instance


def predict_inputs(**overrides: object) -> dict:
    """Every input at its declared default, as Cog passes them, with ``overrides`` applied."""
    from request.inputs import INPUTS

    inputs = {name: spec.default for name, spec in INPUTS.items()}
    inputs.update(prompt="a red bicycle", width=64, height=64, seed=1, num_inference_steps=3)
    inputs.update(overrides)
    return inputs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, body: dict | None = None, timeout: float = 300.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()[:20000]
        if error.code == 409 and b"At capacity" in body:
            raise AtCapacity(body.decode(errors="replace")) from None
        if error.code == 422:
            raise Refused(json.loads(body)) from None
        raise AssertionError(f"HTTP {error.code} from {url}: {body!r}") from None


class AtCapacity(Exception):
    """The server's one prediction slot is still busy."""


class Refused(Exception):
    """422: the server refused the input against the schema, before predict() ran."""

    def __init__(self, body: dict) -> None:
        super().__init__(body)
        self.body = body


class CogServer:
    def __init__(self, url: str, log_path: Path, timings_path: Path) -> None:
        self.url = url
        self.log_path = log_path
        self.timings_path = timings_path

    def predict(self, **inputs: object) -> dict:
        """POST a prediction, retrying briefly on 409: coglet 0.23 answers a synchronous prediction
        a moment before it frees the slot, so a client that fires the next request at once can be
        told "At capacity". Replicate's own queue retries the same way. A 422 (the schema refused
        the input, as a built image does) comes back as ``{"status": "refused", "detail": [...]}``."""
        for _ in range(50):
            try:
                return http_json(f"{self.url}/predictions", {"input": inputs})
            except AtCapacity:
                time.sleep(0.1)
            except Refused as refused:
                return {"status": "refused", "detail": refused.body["detail"]}
        raise TimeoutError("server stayed at capacity for 5 s")


@contextlib.contextmanager
def serve(weights: Path, workdir: Path, env: dict[str, str], ready: bool = True) -> Iterator[CogServer]:
    """The real coglet server, started as a user would (scripts/serve.py), with the flags the hosted
    server passes, which the predictor must filter. ``ready=False``: yield once setup has finished,
    however it ended."""
    port = free_port()
    env = dict(os.environ, STARTUP_TIMINGS_PATH=str(workdir / "startup.json"), **env)
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "serve.py"), "--port", str(port),
             "--weights", str(weights), "--await-explicit-shutdown", "true"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                health = http_json(f"{url}/health-check", timeout=5)
                if health["status"] == "READY" or (not ready and health["status"] == "SETUP_FAILED"):
                    break
                if health["status"] == "SETUP_FAILED":
                    raise RuntimeError(f"setup failed:\n{health}")
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not READY in 240 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield CogServer(url, log_path, workdir / "startup.json")
    finally:
        # --await-explicit-shutdown makes the server ignore SIGTERM, as in production.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def cog_server(
    tiny_weights: Path, ip_adapter_weights: Path, flux_weights: dict[str, Path], svd_weights: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CogServer]:
    """The real server with SDXL (default), Flux-schnell and SVD, the IP-Adapter, and no safety checker."""
    workdir = tmp_path_factory.mktemp("server")
    env = dict(
        IP_ADAPTER_WEIGHTS=str(ip_adapter_weights), FLUX_SCHNELL_WEIGHTS=str(flux_weights["flux-schnell"]),
        LORA_ALLOW_PRIVATE_URLS="1", LORA_CACHE=str(workdir / "lora-cache"),  # the tests' LoRA server is on loopback
        SAFETY_CHECKER_WEIGHTS=str(workdir / "no-safety-checker"), SVD_WEIGHTS=str(svd_weights),
    )
    with serve(tiny_weights, workdir, env) as server:
        yield server


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """No model loaded before or after the test: it loads its own with its own settings."""
    from pipeline.loading.cache import MODEL_CACHE, release_memory

    def clear() -> None:
        for model_id in MODEL_CACHE.ids():
            MODEL_CACHE.evict(model_id)
        release_memory()

    clear()
    yield
    clear()
