"""The service's generation path is plain diffusers' algorithm: same weights, seed and settings give
the same pixels. Checked through the generation benchmark's own equivalence measure."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_service_matches_plain_diffusers_pixel_for_pixel(tiny_weights: Path, flux_weights: dict, tmp_path: Path) -> None:
    for model, weights, case in (("sdxl", tiny_weights, "128x128x3"), ("flux-dev", flux_weights["flux-dev"], "64x64x3")):
        result = subprocess.run(
            [sys.executable, "bench/bench_generation.py", "--model", model, "--weights", str(weights),
             "--cases", case, "--runs", "1", "--out", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (row,) = json.loads((tmp_path / f"generation-{model}.json").read_text())["rows"]
        assert row["max_abs_pixel_diff"] == 0, row
        assert "| " + model + " |" in (tmp_path / f"generation-{model}.md").read_text()


def test_each_speed_switch_measured_alone_keeps_the_image(tiny_weights: Path, tmp_path: Path) -> None:
    """The benchmark's ablation on the CPU: every switch turned on alone. The exact ones (fused QKV,
    channels-last, graph replay, kernel order) keep the pixels up to summation order; the bf16 decode
    deviates a little, and the table says by how much."""
    result = subprocess.run(
        [sys.executable, "bench/bench_generation.py", "--model", "sdxl", "--weights", str(tiny_weights),
         "--cases", "64x64x2", "--runs", "1", "--ablate", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["variant"]: row for row in json.loads((tmp_path / "generation-sdxl.json").read_text())["rows"]}
    assert set(rows) == {"defaults", "SPEED_FUSE_QKV=1", "SPEED_CHANNELS_LAST=1", "SPEED_CUDA_GRAPHS=1",
                         "SPEED_VAE_DECODE=bfloat16", "SPEED_ATTENTION=cudnn", "SPEED_ATTENTION=flash",
                         "SPEED_ATTENTION=efficient"}
    for variant, row in rows.items():
        assert "error" not in row, row
        assert row["max_abs_pixel_diff"] <= (16 if "VAE_DECODE" in variant else 1), row
    assert "fuse_qkv True" in rows["SPEED_FUSE_QKV=1"]["speed"]
    assert "cuda_graphs False" in rows["SPEED_CUDA_GRAPHS=1"]["speed"]  # never without CUDA


def test_a_failing_variant_is_its_own_row_and_the_run_goes_on(tiny_weights: Path, tmp_path: Path) -> None:
    """On a device a switch may fail; its row says why, the other rows stay, and the exit says so."""
    result = subprocess.run(
        [sys.executable, "bench/bench_generation.py", "--model", "sdxl", "--weights", str(tiny_weights),
         "--cases", "64x64x1", "--runs", "1", "--variant", "SPEED_ATTENTION=bogus", "--variant", "SPEED_FUSE_QKV=1",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1 and "FAILED variants (their rows say why): SPEED_ATTENTION=bogus" in result.stderr
    rows = {row["variant"]: row for row in json.loads((tmp_path / "generation-sdxl.json").read_text())["rows"]}
    assert list(rows) == ["defaults", "SPEED_ATTENTION=bogus", "SPEED_FUSE_QKV=1"]
    assert "$SPEED_ATTENTION='bogus': allowed auto, cudnn, flash, efficient" in rows["SPEED_ATTENTION=bogus"]["error"]
    assert rows["SPEED_FUSE_QKV=1"]["max_abs_pixel_diff"] <= 1
    assert "| sdxl | SPEED_ATTENTION=bogus | failed: SettingError" in (tmp_path / "generation-sdxl.md").read_text()
