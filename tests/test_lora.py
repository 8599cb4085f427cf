"""LoRA by URL (pipeline/lora): both file layouts for SDXL and Flux, stacking, the caches, the base model
restored exactly after every request, the safety rules, and the combinations, on tiny random LoRAs
that tests/fixtures/make_lora.py writes in each real key layout, served by a loopback HTTP server with Range."""

from __future__ import annotations

import http.server
import io
import logging
import os
import tarfile
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from request.errors import InputError
from tests.conftest import predict_inputs

SERVED: list[tuple[str, int]] = []  # (path, first byte) of every file the loopback server sent
FOLDERS: dict[str, Path] = {}  # the loopback server's URL -> the folder it serves


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` (206), 404s, and redirects to other schemes (``/redirect-to-file``, ``-ftp``)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/redirect-to-"):
            self.send_response(302)
            self.send_header("Location", {"/redirect-to-file": "file:///etc/passwd",
                                          "/redirect-to-ftp": "ftp://127.0.0.1/lora.safetensors"}[self.path])
            self.end_headers()
            return
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])
        SERVED.append((self.path, start))


@pytest.fixture(scope="session")
def lora_server(tiny_weights: Path, flux_weights: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A loopback server with the test LoRAs: sdxl-/flux- x peft/kohya, a stacked second one, a tar,
    and the bad files (truncated, a pickle named .safetensors)."""
    import torch
    from safetensors.torch import save_file

    from tests.fixtures.make_lora import make_lora

    folder = tmp_path_factory.mktemp("loras")
    for layout in ("peft", "kohya"):
        save_file(make_lora(tiny_weights, layout, 4), str(folder / f"sdxl-{layout}.safetensors"))
        save_file(make_lora(flux_weights["flux-dev"], layout, 4), str(folder / f"flux-{layout}.safetensors"))
    save_file(make_lora(tiny_weights, "peft", 4, seed=1), str(folder / "sdxl-second.safetensors"))
    good = (folder / "sdxl-peft.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    torch.save({"weight": torch.zeros(2)}, folder / "pickle.safetensors")
    with tarfile.open(folder / "trained.tar", "w") as archive:
        info = tarfile.TarInfo("output/lora.safetensors")
        info.size = len(good)
        archive.addfile(info, io.BytesIO(good))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: RangeHandler(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    FOLDERS[url] = folder
    try:
        yield url
    finally:
        server.shutdown()


@pytest.fixture
def lora_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LORA_ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("LORA_CACHE", str(tmp_path / "lora-cache"))
    return tmp_path / "lora-cache"


def pixels(predictor, **overrides: object) -> np.ndarray:
    out = predictor.predict_sync(**predict_inputs(**{"output_format": "png", **overrides}))[0]
    return np.asarray(Image.open(out)).astype(np.int16)


def test_both_layouts_change_the_image_alike_and_the_base_comes_back_exactly(predictor, lora_server, lora_env) -> None:
    base = pixels(predictor)
    peft = pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors")
    kohya = pixels(predictor, lora_weights=f"{lora_server}/sdxl-kohya.safetensors")
    assert not np.array_equal(peft, base)
    # the same random LoRA in both layouts (alpha = rank): diffusers' kohya conversion gives the same image
    assert np.abs(peft - kohya).max() <= 1
    assert np.array_equal(pixels(predictor), base)  # the base model, exactly, after a LoRA request
    assert np.array_equal(pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors", lora_scale=0.0), base)


def test_two_loras_stack_and_scales_apply(predictor, lora_server, lora_env) -> None:
    first = pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors")
    second = pixels(predictor, lora_weights=f"{lora_server}/sdxl-second.safetensors")
    both = pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors",
                  extra_lora=f"{lora_server}/sdxl-second.safetensors", extra_lora_scale=0.7)
    assert not np.array_equal(both, first) and not np.array_equal(both, second)
    stronger = pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors", lora_scale=2.5)
    assert not np.array_equal(stronger, first)


def test_a_second_call_hits_both_caches(predictor, lora_server, lora_env, caplog) -> None:
    url = f"{lora_server}/trained.tar"  # a tar holding one .safetensors, as Replicate's trainers ship it
    with caplog.at_level(logging.INFO):
        first = pixels(predictor, lora_weights=url)
    assert "LoRA lora_weights: downloaded" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = pixels(predictor, lora_weights=url)
    assert "LoRA lora_weights: cache hit" in caplog.text and "(memory hit)" in caplog.text
    assert np.array_equal(first, again)
    # the tar's member is the very LoRA served as sdxl-peft: the same image
    assert np.array_equal(pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors"), first)


def test_memory_slots_bound_the_loaded_adapters(predictor, lora_server, lora_env, monkeypatch, caplog) -> None:
    monkeypatch.setenv("LORA_MEMORY_SLOTS", "1")
    pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors")
    with caplog.at_level(logging.INFO):
        pixels(predictor, lora_weights=f"{lora_server}/sdxl-second.safetensors")
    assert "deleted: more than LORA_MEMORY_SLOTS=1 loaded" in caplog.text
    assert len(predictor.service.model.loras) == 1


def test_a_broken_download_resumes_from_the_byte_it_reached(lora_env, tmp_path) -> None:
    from pipeline.lora.download import fetch
    from tests.fixtures.object_store import Faults, serve

    whole = bytes(range(256)) * 40
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "lora.safetensors").write_bytes(whole)
    store = serve(tmp_path / "store", Faults(rate=0, ttfb=0, reset_after=1000, resets=1))
    try:
        found = fetch(f"{store.url}/lora.safetensors")
    finally:
        store.stop()
    assert found.path.read_bytes() == whole and not found.cached
    assert [r for _, r in store.requests][-1] == f"bytes=1000-{len(whole) - 1}"  # only the rest was asked for


@pytest.mark.parametrize("name, field, words", [
    ("truncated.safetensors", "lora_weights", "truncated"),
    ("pickle.safetensors", "lora_weights", "a pickle"),
    ("flux-peft.safetensors", "lora_weights", "is it a LoRA for flux?"),
    ("flux-kohya.safetensors", "extra_lora", "is it a LoRA for flux?"),
    ("missing.safetensors", "lora_weights", "HTTP 404"),
    ("redirect-to-file", "lora_weights", "only http and https URLs are fetched, not 'file'"),
    ("redirect-to-ftp", "lora_weights", "only http and https URLs are fetched, not 'ftp'"),
])
def test_bad_loras_are_refused_by_name_and_leave_the_model_untouched(
        predictor, lora_server, lora_env, name: str, field: str, words: str) -> None:
    base = pixels(predictor)
    url = f"{lora_server}/{name}"
    inputs = {"lora_weights": url} if field == "lora_weights" else {
        "lora_weights": f"{lora_server}/sdxl-peft.safetensors", "extra_lora": url}
    with pytest.raises(InputError) as error:
        pixels(predictor, **inputs)
    assert error.value.field == field and words in str(error.value), str(error.value)
    assert np.array_equal(pixels(predictor), base)


def test_size_cap_private_addresses_and_schemes(predictor, lora_server, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LORA_ALLOW_PRIVATE_URLS", raising=False)
    with pytest.raises(InputError, match="127.0.0.1, which is not a global address"):
        pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors")
    monkeypatch.setenv("LORA_ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("LORA_MAX_MB", "0.001")
    with pytest.raises(InputError, match="bytes; at most 1048 allowed"):
        pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors")
    with pytest.raises(InputError, match="an http or https URL"):
        pixels(predictor, lora_weights="file:///etc/passwd")
    with pytest.raises(InputError, match="only applies with lora_weights"):
        pixels(predictor, lora_scale=0.5)


def test_graphs_captured_without_a_lora_are_never_replayed_with_one(predictor, lora_server, lora_env, monkeypatch) -> None:
    from pipeline.speed.cuda_graphs import eager_capture, graph_runner

    model = predictor.service.model
    runner = graph_runner(model.pipe, capture=eager_capture)  # the CPU stand-in: replays by recomputing
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return runner(*args, **kwargs)

    monkeypatch.setattr(model, "graphs", counted)
    base = pixels(predictor)
    assert calls and runner.graphs
    before = len(calls)
    lora = pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors")
    assert len(calls) == before  # the LoRA request ran the denoiser eagerly
    monkeypatch.setattr(model, "graphs", None)
    assert np.array_equal(lora, pixels(predictor, lora_weights=f"{lora_server}/sdxl-peft.safetensors"))
    assert not np.array_equal(lora, base)


def test_lora_with_face_adetailer_storyboard_and_image(predictor, lora_server, lora_env, ip_adapter_weights,
                                                       monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setenv("IP_ADAPTER_WEIGHTS", str(ip_adapter_weights))
    url = f"{lora_server}/sdxl-peft.safetensors"
    face = tmp_path / "face.png"
    Image.fromarray((np.random.RandomState(2).rand(64, 64, 3) * 255).astype(np.uint8)).save(face)
    with caplog.at_level(logging.INFO):
        with_face = pixels(predictor, lora_weights=url, face_image=Path(face))
        predictor.predict_sync(**predict_inputs(lora_weights=url, adetailer=True))
        predictor.predict_sync(**predict_inputs(lora_weights=url, scenes="a harbour\na market", prompt="", num_inference_steps=2))
        predictor.predict_sync(**predict_inputs(lora_weights=url, image=Path(face), mask=Path(face), prompt_strength=0.5))
    assert not np.array_equal(with_face, pixels(predictor, face_image=Path(face)))
    assert caplog.text.count("LoRA: adapters off, base model restored") == 4
    assert "ADetailer face: " in caplog.text and "storyboard: 2 scenes" in caplog.text and "inpainting 1 image(s)" in caplog.text


@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_flux_loras_in_both_layouts(lora_server, lora_env, tiny_weights, flux_weights, layout) -> None:
    saved = dict(os.environ)
    os.environ["FLUX_DEV_WEIGHTS"] = str(flux_weights["flux-dev"])
    try:
        from predict import Predictor

        predictor = Predictor()
        predictor.setup(str(tiny_weights))
        common = dict(model="flux-dev", width=64, height=64, num_inference_steps=2)
        base = pixels(predictor, **common)
        lora = pixels(predictor, **common, lora_weights=f"{lora_server}/flux-{layout}.safetensors")
        assert not np.array_equal(lora, base)
        assert np.array_equal(pixels(predictor, **common), base)
        with pytest.raises(InputError, match="is it a LoRA for sdxl"):
            pixels(predictor, **common, lora_weights=f"{lora_server}/sdxl-{layout}.safetensors")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_loras_over_http(cog_server, lora_server) -> None:
    from tests.test_http_server import decode

    common = dict(prompt="a lighthouse", width=64, height=64, num_inference_steps=2, seed=3, output_format="png")
    base = np.asarray(decode(cog_server.predict(**common)["output"][0]))
    first = cog_server.predict(**common, lora_weights=f"{lora_server}/sdxl-kohya.safetensors",
                               extra_lora=f"{lora_server}/sdxl-second.safetensors", extra_lora_scale=0.5)
    assert first["status"] == "succeeded", first
    assert "downloaded" in first["logs"] and first["metrics"]["lora_load_seconds"] > 0
    again = cog_server.predict(**common, lora_weights=f"{lora_server}/sdxl-kohya.safetensors",
                               extra_lora=f"{lora_server}/sdxl-second.safetensors", extra_lora_scale=0.5)
    assert "cache hit" in again["logs"] and again["metrics"]["lora_load_seconds"] == 0
    assert np.array_equal(decode(first["output"][0]), decode(again["output"][0]))
    assert not np.array_equal(np.asarray(decode(first["output"][0])), base)
    assert np.array_equal(np.asarray(decode(cog_server.predict(**common)["output"][0])), base)
    flux = cog_server.predict(**common, model="flux-schnell", lora_weights=f"{lora_server}/flux-peft.safetensors")
    assert flux["status"] == "succeeded", flux
    bad = cog_server.predict(**common, lora_weights=f"{lora_server}/pickle.safetensors")
    assert bad["status"] == "failed" and "invalid input lora_weights=" in bad["error"] and "a pickle" in bad["error"]
    assert cog_server.predict(**common)["status"] == "succeeded"


# A fresh process with its own settings: sys.argv = root, tiny weights, LoRA URL; the body sets REPORT.
SCRIPT_HEAD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from PIL import Image
from predict import Predictor
from tests.conftest import predict_inputs
predictor = Predictor()
predictor.setup(sys.argv[2])
def run(**overrides):
    out = predictor.predict_sync(**predict_inputs(output_format="png", **overrides))[0]
    return np.asarray(Image.open(out)).astype(int)
"""


def run_script(body: str, tiny_weights: Path, lora_url: str, tmp_path: Path, **env: str) -> tuple[dict, str]:
    """Run SCRIPT_HEAD + ``body`` in a fresh process with ``env``; its REPORT and its log."""
    import json
    import subprocess
    import sys

    environment = dict(os.environ, LORA_ALLOW_PRIVATE_URLS="1", LORA_CACHE=str(tmp_path / "cache"),
                       STARTUP_TIMINGS_PATH=str(tmp_path / "t.json"), **env)
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", SCRIPT_HEAD + body, str(root), str(tiny_weights), lora_url],
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [line for line in result.stdout.splitlines() if line.startswith("REPORT")][0]
    return json.loads(line[len("REPORT"):]), result.stderr


FUSED_SCRIPT = """
fused_before = predictor.service.model.speed.fuse_qkv
base = run()
lora = run(lora_weights=sys.argv[3])
after = run()
print("REPORT" + json.dumps({"fused": fused_before, "changed": bool(np.abs(lora - base).max() > 0),
                             "base_diff": int(np.abs(after - base).max())}))
"""


def test_fused_qkv_is_undone_for_a_lora_and_the_base_stays(tiny_weights, lora_server, tmp_path) -> None:
    """SPEED_FUSE_QKV=1 (on by default on CUDA) fuses Q/K/V; LoRA layers attach to the separate ones."""
    report, log = run_script(FUSED_SCRIPT, tiny_weights, f"{lora_server}/sdxl-peft.safetensors", tmp_path,
                             SPEED_FUSE_QKV="1")
    assert report["fused"] and report["changed"] and report["base_diff"] <= 1
    assert "fused Q/K/V projections unfused so LoRA layers can attach" in log


GO_FAST_SCRIPT = """
model = predictor.service.model
base = run()
lora = run(lora_weights=sys.argv[3])
lora_fast = run(lora_weights=sys.argv[3], go_fast=True)  # the exact weights; go_fast is not even started
fast = model.fast
idle = fast.state == "idle"
run(go_fast=True)  # starts go_fast, now that a LoRA is loaded (switched off) on the exact model
shapes = fast.default_shapes()
ready = fast.wait(shapes, 300)
peft_in_copy = any(type(m).__module__.startswith("peft.") for m in fast.denoiser().modules())
print("REPORT" + json.dumps({
    "idle": idle, "ready": ready, "peft_in_copy": peft_in_copy,
    "lora_fast_equals_lora": bool(np.array_equal(lora_fast, lora)),
    "lora_fast_after_ready_equals_lora": bool(np.array_equal(run(lora_weights=sys.argv[3], go_fast=True), lora)),
    "base_after": bool(np.array_equal(run(), base)),
    "fast_base_diff": int(np.abs(run(go_fast=True) - base).max())}))
"""


def test_a_lora_request_with_go_fast_runs_the_exact_weights(tiny_weights, lora_server, tmp_path) -> None:
    """The rule: LoRA layers sit on the exact denoiser, so a LoRA request runs it, go_fast or not; the
    fast copy, built after a LoRA was loaded, carries none of its layers; LoRA off gives the base."""
    report, log = run_script(GO_FAST_SCRIPT, tiny_weights, f"{lora_server}/sdxl-peft.safetensors", tmp_path,
                             SPEED_GO_FAST="compile", SPEED_GO_FAST_COMPILER="aot_eager", GO_FAST_SIZES="64x64")
    assert report == {"idle": True, "ready": True, "peft_in_copy": False, "lora_fast_equals_lora": True,
                      "lora_fast_after_ready_equals_lora": True, "base_after": True, "fast_base_diff": report["fast_base_diff"]}
    assert report["fast_base_diff"] <= 2
    assert "a request with a LoRA or face_image runs the exact weights" in log
