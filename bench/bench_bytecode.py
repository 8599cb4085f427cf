"""Plain diffusers' import with and without compiled bytecode.

Does an install without ``.pyc`` files (``pip install --no-compile``, as the device check installs
its wheels, or an image whose build never compiled them) pay for compiling diffusers and
transformers at first import? Issue #18 asks to settle whether the H100 anchor of 11-27 s for
``from diffusers import StableDiffusionXLPipeline`` included that. In fresh processes, --runs times
each, after one untimed run of each:
  * compiled: ``import torch``, then ``from diffusers import StableDiffusionXLPipeline``, timed apart,
    with the packages as installed (compiled by cog.yaml's step, or by ``gpu_check.sh``'s compileall);
  * from source: the same with copies of diffusers and transformers that have no ``__pycache__``, first
    on ``sys.path``, and ``PYTHONDONTWRITEBYTECODE=1``: every run compiles both, as the first import
    after a ``--no-compile`` install does.
Prints a markdown table of medians and the ratio, writes JSON and the table to --out.

    python bench/bench_bytecode.py --runs 3 --out bench_results
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

PACKAGES = ("diffusers", "transformers")
CHILD = (
    "import json, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "t1 = time.perf_counter()\n"
    "from diffusers import StableDiffusionXLPipeline\n"
    "t2 = time.perf_counter()\n"
    "import diffusers, transformers\n"
    "print('TIMES' + json.dumps({'torch': t1 - t0, 'diffusers': t2 - t1, 'files': [diffusers.__file__, transformers.__file__]}))\n"
)


def source_copies(folder: Path) -> Path:
    """Copies of the packages without their bytecode, in ``folder``; returns it."""
    for name in PACKAGES:
        origin = Path(importlib.util.find_spec(name).origin).parent
        shutil.copytree(origin, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder


def one_run(site: Optional[Path]) -> dict:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("TIMES")]
    times = json.loads(line[len("TIMES"):])
    from_copies = all(path.startswith(str(site)) for path in times.pop("files")) if site else None
    if site is not None and not from_copies:
        raise RuntimeError("the source copies were not the ones imported")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bytecode-") as tmp:
        site = source_copies(Path(tmp))
        ways = {"compiled": None, "from source": site}
        for way in ways.values():
            one_run(way)  # untimed: the page cache holds every file from here on
        runs: dict[str, list[dict]] = {name: [] for name in ways}
        for _ in range(args.runs):
            for name, way in ways.items():
                runs[name].append(one_run(way))
    medians = {name: {key: statistics.median(r[key] for r in rows) for key in ("torch", "diffusers")}
               for name, rows in runs.items()}
    ratio = medians["from source"]["diffusers"] / medians["compiled"]["diffusers"]
    lines = [f"Median of {args.runs} fresh processes each; seconds. Python {sys.version.split()[0]}.", "",
             "| bytecode of diffusers and transformers | `import torch` | then `from diffusers import StableDiffusionXLPipeline` |",
             "| --- | --- | --- |"]
    lines += [f"| {name} | {m['torch']:.2f} | {m['diffusers']:.2f} |" for name, m in medians.items()]
    lines += ["", f"from source / compiled (the diffusers import): {ratio:.2f}"]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bytecode.json").write_text(json.dumps({"runs": runs, "medians": medians, "ratio": ratio}, indent=2))
    (args.out / "bytecode.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
