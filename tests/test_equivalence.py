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
            [sys.executable, "scripts/bench_generation.py", "--model", model, "--weights", str(weights),
             "--cases", case, "--runs", "1", "--out", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (row,) = json.loads((tmp_path / f"generation-{model}.json").read_text())["rows"]
        assert row["max_abs_pixel_diff"] == 0, row
        assert "| " + model + " |" in (tmp_path / f"generation-{model}.md").read_text()
