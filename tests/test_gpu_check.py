"""The one-shot device checks (bench/gpu_check.sh) on the CPU: the script parses, refuses an unknown
part, and its report folds each step in as it finishes, judging the targets from the benchmarks'
own JSON, also when a step failed part-way. The full rehearsal (GPU_CHECK_REHEARSAL=1) needs the
Python 3.12 mirror of the device image, so it is run by hand before device time, not in CI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = [sys.executable, str(ROOT / "bench" / "gpu_check_report.py")]


def test_the_script_parses_and_refuses_an_unknown_part(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], check=True)
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "video"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)})
    assert result.returncode == 2 and "unknown part video: sdxl, flux, fast, extras, features or throughput" in result.stderr


def generation_row(width: int, height: int, steps: int, service_s: float, plain_s: float, variant: str = "defaults") -> dict:
    return {"model": "sdxl", "variant": variant, "width": width, "height": height, "steps": steps,
            "service_median_s": service_s, "plain_median_s": plain_s, "speedup": plain_s / service_s}


def fold(out: Path, part: str, step: str, status: int, files: dict[str, object]) -> None:
    step_dir = out.parent / "results" / step
    step_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (step_dir / name).write_text(content if isinstance(content, str) else json.dumps(content))
    subprocess.run([*REPORT, str(out), part, step, str(status), "1.5", str(step_dir)], check=True)


def test_the_report_judges_each_target_from_what_finished(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fold(out, "sdxl", "gpu_paths", 1, {"pytest.xml": (
        '<testsuites><testsuite tests="2" failures="1" errors="0" skipped="0">'
        '<testcase classname="tests.test_gpu_paths" name="test_stream"/>'
        '<testcase classname="tests.test_gpu_paths" name="test_graphs"><failure message="graph differs">trace</failure></testcase>'
        '</testsuite></testsuites>')})
    # one ablation row failed, so the step's exit is 1, but its defaults rows are measurements
    fold(out, "sdxl", "generation", 1, {"generation-sdxl.json": {"device": "GPU", "rows": [
        generation_row(1024, 1024, 20, 0.70, 1.50), generation_row(768, 768, 15, 0.50, 0.90),
        {"model": "sdxl", "variant": "SPEED_ATTENTION=flash", "error": "RuntimeError: no kernel"}]},
        "generation-sdxl.md": "| generation table |\n"})

    report = json.loads((out / "sdxl.json").read_text())
    assert report["steps"]["gpu_paths"]["result"]["failed"][0]["test"] == "tests.test_gpu_paths::test_graphs"
    markdown = (out / "sdxl.md").read_text()
    assert "FAILED `tests.test_gpu_paths::test_graphs`: graph differs" in markdown
    assert "| generation table |" in markdown
    assert "| SDXL 1024²/20 s per image | 0.700 | <= 0.75 | met |" in markdown
    assert "| SDXL 1024²/20 speed-up over plain diffusers | 2.143 | >= 2.0 | met |" in markdown
    assert "| SDXL 768²/15 s per image | 0.500 | <= 0.45 | missed |" in markdown
    assert "| SDXL READY − `import torch` (warm cache) | – | <= 2.0 | not measured |" in markdown
    assert "Flux" not in markdown

    fold(out, "sdxl", "coldstart", 0, {"coldstart.json": {"results": [
        {"cache": "warm", "medians": {"service_ready_s": 5.0, "import_torch_s": 3.5}}]}})
    markdown = (out / "sdxl.md").read_text()
    assert "| SDXL READY − `import torch` (warm cache) | 1.500 | <= 2.0 | met |" in markdown
    assert "| generation | 1 | 1.5 |" in markdown  # earlier steps stay in the report


def test_a_step_cut_off_by_the_deadline_is_reported_as_not_measured(tmp_path: Path) -> None:
    subprocess.run([*REPORT, str(tmp_path), "flux", "generation", "124", "0"], check=True)
    markdown = (tmp_path / "flux.md").read_text()
    assert "| generation | 124 | 0.0 |" in markdown
    assert "| Flux-dev 1024²/28 s per image | – | <= 2.5 | not measured |" in markdown
