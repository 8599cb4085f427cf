"""Fold one finished step of ``bench/gpu_check.sh`` into the part's report, the moment it ends.

The device returns at most 8 files and kills a command at its limit, so each part keeps exactly
three files under ``$OUT`` and rewrites two of them after every step: ``PART.json`` (every step's
status, seconds and the benchmark's own JSON) and ``PART.md`` (the benchmarks' tables, then the
targets with met / missed / not measured). A run cut off mid-way still returns every finished step.

Usage (from gpu_check.sh): python bench/gpu_check_report.py OUT PART STEP STATUS SECONDS [RESULT_DIR]
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Callable, Optional

# The targets from the GPU issue, as data: (part, label, step, how to read the figure, limit).
Reader = Callable[[dict[str, Any]], Optional[float]]


def generation_row(width: int, height: int, steps: int, field: str, variant: str = "defaults") -> Reader:
    def read(result: dict[str, Any]) -> Optional[float]:
        for row in result.get("rows", []):
            if (row.get("width"), row.get("height"), row.get("steps"), row["variant"]) == (width, height, steps, variant):
                return row[field]
        return None

    return read


def ready_over_floor(result: dict[str, Any]) -> Optional[float]:
    for cache in result.get("results", []):
        if cache["cache"] == "warm":
            medians = cache["medians"]
            return medians["service_ready_s"] - medians["import_torch_s"]
    return None


def url_ready_over_cap_time(result: dict[str, Any]) -> Optional[float]:
    """READY from the loopback URL over the time the harness's total cap alone allows (issue #24)."""
    ready = result.get("ready")
    if not ready or not result.get("total_mb_s"):
        return None
    return ready["url_ready_s"] / (result["tar_bytes"] / (result["total_mb_s"] * 1e6))


GO_FAST = "go_fast=auto"


def throughput_row(callers: int, field: str, window_ms: float = 10.0) -> Reader:
    def read(result: dict[str, Any]) -> Optional[float]:
        for row in result.get("rows", []):
            if (row["callers"], row["kind"], row["window_ms"]) == (callers, "closed", window_ms):
                return row[field]
        return None

    return read


def throughput_gain(result: dict[str, Any]) -> Optional[float]:
    """Images/s with 4 callers over 1, with batching (bench_throughput.py's window-10 rows)."""
    four, one = throughput_row(4, "images_per_second")(result), throughput_row(1, "images_per_second")(result)
    return four / one if four and one else None


def p95_over_solo(result: dict[str, Any]) -> Optional[float]:
    """p95 latency with 4 callers over one caller's median."""
    four, one = throughput_row(4, "p95_s")(result), throughput_row(1, "p50_s")(result)
    return four / one if four and one else None

TARGETS: list[tuple[str, str, str, Reader, str, float]] = [
    ("sdxl", "SDXL READY − `import torch` (warm cache)", "coldstart", ready_over_floor, "<=", 2.0),
    ("sdxl", "SDXL READY from a URL ÷ (size ÷ the harness's cap)", "url_coldstart", url_ready_over_cap_time, "<=", 1.2),
    ("sdxl", "SDXL 1024²/20 s per image", "generation", generation_row(1024, 1024, 20, "service_median_s"), "<=", 0.75),
    ("sdxl", "SDXL 1024²/20 speed-up over plain diffusers", "generation", generation_row(1024, 1024, 20, "speedup"), ">=", 2.0),
    ("sdxl", "SDXL 768²/15 s per image", "generation", generation_row(768, 768, 15, "service_median_s"), "<=", 0.45),
    ("flux", "Flux-dev 1024²/28 s per image", "generation", generation_row(1024, 1024, 28, "service_median_s"), "<=", 2.5),
    ("flux", "Flux-schnell 1024²/4 s per image", "schnell", generation_row(1024, 1024, 4, "service_median_s"), "<=", 0.5),
    ("flux", "Flux-dev READY − `import torch` (warm cache)", "coldstart", ready_over_floor, "<=", 5.0),
    # issue #26, go_fast (the rows of bench_generation.py --go-fast: "defaults" is go_fast=false)
    ("fast", "Flux-dev 1024²/28 go_fast s per image", "flux_dev", generation_row(1024, 1024, 28, "service_median_s", GO_FAST), "<=", 2.3),
    ("fast", "Flux-dev 1024²/28 go_fast speed-up over plain", "flux_dev", generation_row(1024, 1024, 28, "speedup", GO_FAST), ">=", 2.2),
    ("fast", "Flux-dev 1024²/28 go_fast peak GB", "flux_dev", generation_row(1024, 1024, 28, "service_peak_gb", GO_FAST), "<=", 24.0),
    ("fast", "Flux-dev 1024²/28 lossless s per image", "flux_dev", generation_row(1024, 1024, 28, "service_median_s"), "<=", 3.9),
    ("fast", "Flux-schnell 1024²/4 go_fast s per image", "schnell", generation_row(1024, 1024, 4, "service_median_s", GO_FAST), "<=", 0.40),
    ("fast", "Flux-schnell 1024²/4 lossless s per image", "schnell", generation_row(1024, 1024, 4, "service_median_s"), "<=", 0.65),
    ("fast", "SDXL 1024²/20 go_fast s per image", "sdxl", generation_row(1024, 1024, 20, "service_median_s", GO_FAST), "<=", 0.60),
    ("fast", "SDXL 1024²/20 lossless s per image", "sdxl", generation_row(1024, 1024, 20, "service_median_s"), "<=", 0.80),
    # issue #27, throughput (bench_throughput.py: 4 slots, batching window 10 ms)
    ("throughput", "SDXL 1024²/20 images/s, 4 callers ÷ 1", "sdxl", throughput_gain, ">=", 1.8),
    ("throughput", "SDXL 1024²/20 p95 latency, 4 callers ÷ solo", "sdxl", p95_over_solo, "<=", 2.5),
    ("throughput", "SDXL 1024²/20 failed or lost, 4 callers", "sdxl",
     lambda r: (throughput_row(4, "failed")(r) or 0) + (throughput_row(4, "lost")(r) or 0)
     if throughput_row(4, "failed")(r) is not None else None, "<=", 0),
]


def pytest_summary(junit: Path) -> dict[str, Any]:
    """Counts and the first lines of every failure, from pytest's JUnit XML."""
    root = ElementTree.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failures = []
    for case in suite.iter("testcase"):
        for problem in list(case.findall("failure")) + list(case.findall("error")):
            text = (problem.get("message") or "") + "\n" + (problem.text or "")
            failures.append({"test": f"{case.get('classname')}::{case.get('name')}", "message": text.strip()[:3000]})
    skipped = [f"{case.get('name')}: {skip.get('message')}" for case in suite.iter("testcase") for skip in case.findall("skipped")]
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")} | {
        "failed": failures, "skipped_why": skipped}


def step_result(result_dir: Optional[Path]) -> tuple[dict[str, Any], str]:
    """The step's own JSON and markdown table (benchmarks write one of each; pytest writes XML)."""
    if result_dir is None or not result_dir.is_dir():
        return {}, ""
    data: dict[str, Any] = {}
    tables = []
    for path in sorted(result_dir.iterdir()):
        if path.suffix == ".json":
            data[path.stem] = json.loads(path.read_text())
        elif path.suffix == ".md":
            tables.append(path.read_text())
        elif path.suffix == ".xml":
            summary = pytest_summary(path)
            data["pytest"] = summary
            lines = [f"pytest: {summary['tests']} tests, {summary['failures']} failed, {summary['errors']} errors, "
                     f"{summary['skipped']} skipped"]
            lines += [f"- FAILED `{f['test']}`: {f['message'].splitlines()[0][:300] if f['message'] else ''}"
                      for f in summary["failed"]]
            lines += [f"- skipped {why}" for why in summary["skipped_why"]]
            tables.append("\n".join(lines) + "\n")
    if not tables and data:
        # benchmarks that write JSON only (identity, ADetailer): the start of it here, all of it in PART.json
        lines = [f"- `{key}`: {json.dumps(value)[:400]}" for key, value in data.items()]
        tables.append("\n".join(lines) + "\n")
    if len(data) == 1:
        (data,) = data.values()
    return data, "\n".join(tables)


def targets_table(part: str, steps: dict[str, Any]) -> str:
    lines = ["| target | figure | limit | verdict |", "| --- | --- | --- | --- |"]
    for target_part, label, step, read, relation, limit in TARGETS:
        if target_part != part:
            continue
        # a step that failed part-way (one ablation row, say) still counts the figures it wrote
        figure = read(steps[step]["result"]) if step in steps and steps[step]["result"] else None
        if figure is None:
            verdict, shown = "not measured", "–"
        else:
            met = figure <= limit if relation == "<=" else figure >= limit
            verdict, shown = ("met" if met else "missed"), f"{figure:.3f}"
        lines.append(f"| {label} | {shown} | {relation} {limit} | {verdict} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    out, part, step, status, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    result_dir = Path(sys.argv[6]) if len(sys.argv) > 6 else None
    report_path = out / f"{part}.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"part": part, "steps": {}}
    result, table = step_result(result_dir)
    if step == "environment" and result_dir is not None and (result_dir / "environment.txt").is_file():
        table = "```\n" + (result_dir / "environment.txt").read_text() + "```\n"
    report["steps"][step] = {"status": status, "seconds": round(seconds, 1), "result": result, "table": table}
    report_path.write_text(json.dumps(report, indent=1, default=str))

    sections = [f"# GPU check: {part}", ""]
    sections += ["| step | exit | seconds |", "| --- | --- | --- |"]
    sections += [f"| {name} | {s['status']} | {s['seconds']} |" for name, s in report["steps"].items()]
    for name, s in report["steps"].items():
        if s["table"]:
            sections += ["", f"## {name}", "", s["table"]]
    if any(t[0] == part for t in TARGETS):
        sections += ["", "## Targets", "", targets_table(part, report["steps"])]
    (out / f"{part}.md").write_text("\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
