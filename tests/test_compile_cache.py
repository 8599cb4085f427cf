"""Regional compilation: armed at load without compiling, and its artifacts saved by the build script
and restored by a fresh process as inductor cache hits, with the same pixels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_compile_is_armed_at_load_and_nothing_compiles_there(tiny_weights: Path, monkeypatch, tmp_path: Path, caplog) -> None:
    import logging

    from torch._dynamo.utils import counters

    from hardware.backend import Backend
    from pipeline.loading.sdxl import load_sdxl
    from pipeline.loading.weights import resolve_weights
    from pipeline.select import with_speedups

    cpu = Backend(device="cpu", dtype_name="float32", tf32=False, bitsandbytes="-")
    monkeypatch.setenv("SPEED_COMPILE", "regional")
    monkeypatch.setenv("COMPILE_CACHE_DIR", str(tmp_path))
    frames_before = counters["stats"]["unique_graphs"]
    with caplog.at_level(logging.INFO):
        model = with_speedups(load_sdxl(resolve_weights(str(tiny_weights), model="sdxl"), cpu), cpu)
    blocks = [m for m in model.pipe.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    assert counters["stats"]["unique_graphs"] == frames_before  # nothing traced or compiled yet
    assert "compile cache: none at" in caplog.text and "compile regional" in caplog.text


def test_artifacts_built_once_are_restored_by_a_fresh_process(tiny_weights: Path, tmp_path: Path) -> None:
    env = dict(os.environ, COMPILE_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "bench/build_compile_cache.py", "--model", "sdxl", "--weights", str(tiny_weights),
         "--cases", "64x64x2", "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "compile-cache-sdxl.json").read_text())
    assert Path(report["cache_file"]).is_file() and Path(report["cache_file"]).parent == tmp_path / "cache"
    (row,) = report["rows"]
    assert row["cold_cache_misses"] >= 1
    assert row["restored_cache_hits"] >= 1 and row["restored_cache_misses"] == 0
    assert row["max_abs_pixel_diff"] == 0
