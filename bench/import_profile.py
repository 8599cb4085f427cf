"""Where the ``imports`` stage's time goes: ``python -X importtime`` of what start-up imports, summed by
top-level package.

On the H200 the stage took 9.4 s for SDXL and 11.6 s for Flux (README, Performance), most of the
distance from READY to the ``import torch`` floor. This runs the same imports in a fresh process
(torch, the start-up chain, the model's diffusers pipeline module on the stage's import diet, which
``LAZY_IMPORTS=0`` turns off) and reports each package's own
import time (``self``, summed over its modules, so the rows add up to the whole) and the slowest
single modules by cumulative time. Prints a markdown table, writes JSON and the table.

    python bench/import_profile.py --model sdxl --out bench_results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_importtime(stderr: str) -> list[tuple[str, int, int]]:
    """(module, self µs, cumulative µs) for each line ``-X importtime`` wrote."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|")
        rows.append((name.strip(), int(self_us), int(cumulative_us)))
    return rows


def profile(model: str) -> dict:
    import settings
    from request.catalog import MODELS

    module = MODELS[model].pipeline_module
    # the imports stage's own diet (startup.import_diet), as for a profile that does not quantize
    code = ("import torch, startup.chain\nfrom hardware.profiles import load_profiles\nfrom startup.import_diet import diet\n"
            f"with diet(next(p for p in load_profiles() if p.name == 'h200-h100')):\n    import {module}")
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{code!r} failed: {result.stderr[-2000:]}")
    rows = parse_importtime(result.stderr)
    by_package: dict[str, int] = defaultdict(int)
    for name, self_us, _ in rows:
        by_package[name.split(".")[0]] += self_us
    total = sum(by_package.values())
    return {
        "model": model, "module": module, "code": code, "total_s": total / 1e6,
        "diet": "on" if settings.get("LAZY_IMPORTS") else "off (LAZY_IMPORTS=0)",
        "packages": sorted(((name, us / 1e6) for name, us in by_package.items()), key=lambda item: -item[1]),
        "slowest_modules": [(name, cumulative / 1e6) for name, _, cumulative in sorted(rows, key=lambda r: -r[2])[:25]],
    }


def markdown(report: dict, device: str, top: int = 12) -> str:
    lines = [f"Device: {device}. `python -X importtime` of torch, the start-up chain and `{report['module']}` "
             f"(import diet {report['diet']}): {report['total_s']:.2f} s in all.", "",
             "| package | own import time (s) | share |", "| --- | --- | --- |"]
    for name, seconds in report["packages"][:top]:
        lines.append(f"| {name} | {seconds:.3f} | {seconds / report['total_s']:.0%} |")
    rest = sum(seconds for _, seconds in report["packages"][top:])
    lines.append(f"| everything else | {rest:.3f} | {rest / report['total_s']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sdxl", choices=["sdxl", "flux-dev", "flux-schnell"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = profile(args.model)
    table = markdown(report, device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"imports-{args.model}.json").write_text(json.dumps({"device": device, **report}, indent=1))
    (args.out / f"imports-{args.model}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
