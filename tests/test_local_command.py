"""The Docker-free equivalent of `cog predict -i ...`, run as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def test_local_predict_writes_images_and_prints_their_paths(tiny_weights: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "scripts/predict_local.py", "-i", "prompt=a small boat", "-i", "width=64",
         "-i", "height=64", "-i", "num_inference_steps=2", "-i", "num_outputs=2", "-i", "seed=3",
         "--weights", str(tiny_weights), "-o", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, STARTUP_TIMINGS_PATH=str(tmp_path / "t.json")),
    )
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.split()]
    assert len(paths) == 2
    for path in paths:
        assert path.parent == tmp_path.resolve() and path.suffix == ".webp"
        with Image.open(path) as image:
            assert image.size == (64, 64)
    assert "[Timer: load]" in result.stdout + result.stderr


def test_local_predict_reports_bad_input_by_name(tiny_weights: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "scripts/predict_local.py", "-i", "prompt=x", "-i", "num_outputs=99",
         "--weights", str(tiny_weights), "-o", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, STARTUP_TIMINGS_PATH=str(tmp_path / "t.json")),
    )
    assert result.returncode != 0
    assert "num_outputs=99" in result.stderr and "from 1 to 4" in result.stderr
