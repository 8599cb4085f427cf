"""go_fast's compile artifacts: built by the script with inductor and restored by a fresh process as
inductor cache hits with the same pixels; read from a path or a URL (through netfetch); and a
missing file only costs speed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_artifacts_built_once_are_restored_by_a_fresh_process(tiny_weights: Path, tmp_path: Path) -> None:
    env = dict(os.environ, COMPILE_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("COMPILE_CACHE", None)
    result = subprocess.run(
        [sys.executable, "bench/build_compile_cache.py", "--model", "sdxl", "--weights", str(tiny_weights),
         "--cases", "64x64x2", "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "compile-cache-sdxl.json").read_text())
    assert Path(report["cache_file"]).is_file() and Path(report["cache_file"]).parent == tmp_path / "cache"
    assert report["recipe"] == "compile"  # the CPU has no fp8 tensor cores
    assert report["cold_cache_misses"] >= 1
    assert report["restored_cache_hits"] >= 1 and report["restored_cache_misses"] == 0
    (row,) = report["rows"]
    assert row["fast_path"] == "compile" and row["max_abs_pixel_diff"] == 0
    assert 0 < report["restored_ready_s"] < report["restored_first_fast_image_s"]


def test_the_file_is_read_from_a_path_or_a_url_and_a_missing_one_is_named(tmp_path: Path, monkeypatch, caplog) -> None:
    import pytest

    from pipeline.speed.compile_cache import artifact_bytes, cache_name
    from tests.fixtures.object_store import serve

    monkeypatch.setenv("COMPILE_CACHE_DIR", str(tmp_path / "dir"))
    monkeypatch.setenv("WEIGHTS_CACHE", str(tmp_path / "weights-cache"))
    monkeypatch.delenv("COMPILE_CACHE", raising=False)
    data, origin = artifact_bytes("sdxl", "cpu")
    assert data is None and origin.endswith(cache_name("sdxl", "cpu"))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / cache_name("sdxl", "cpu")).write_bytes(b"\x80\x04artifacts")
    assert artifact_bytes("sdxl", "cpu")[0] == b"\x80\x04artifacts"
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "flux.bin").write_bytes(b"\x80\x04from-the-network" * 1000)
    store = serve(tmp_path / "served")
    try:
        monkeypatch.setenv("COMPILE_CACHE", f"{store.url}/flux.bin")
        data, origin = artifact_bytes("flux-dev", "cpu")
        assert data == b"\x80\x04from-the-network" * 1000 and origin.endswith("/flux.bin")  # a pickle: the operator's own
    finally:
        store.stop()
    monkeypatch.setenv("COMPILE_CACHE", str(tmp_path / "nowhere.bin"))
    with pytest.raises(FileNotFoundError, match="COMPILE_CACHE=.*nowhere.bin: no such file"):
        artifact_bytes("sdxl", "cpu")


def test_a_missing_artifact_file_only_costs_speed(tiny_weights: Path, tmp_path: Path, monkeypatch, caplog,
                                                 fresh_cache) -> None:
    from tests.test_go_fast import FAST_ENV, generate_once, load

    with caplog.at_level(logging.WARNING):
        model = load(monkeypatch, tiny_weights, "sdxl", **FAST_ENV, COMPILE_CACHE=str(tmp_path / "nowhere.bin"))
        assert generate_once(model, go_fast=True).fast_path == "exact"
        assert not model.fast.wait(model.fast.default_shapes(), timeout=60)
    assert "COMPILE_CACHE=" in caplog.text and "go_fast requests run the exact path" in caplog.text
    assert generate_once(model, go_fast=True).fast_path == "exact"
    from pipeline.loading.cache import MODEL_CACHE

    MODEL_CACHE.evict(model.source.model_id)
