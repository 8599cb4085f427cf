"""Run one prediction in-process, like ``cog predict -i prompt=...`` but without Docker.

Runs the same ``Predictor.setup()`` and ``predict()`` the server runs, copies the images to
``--output-dir`` and prints their paths, one per line.

Usage: python scripts/predict_local.py -i prompt="a lighthouse at dusk" -i seed=42 [--weights PATH_OR_URL]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``name=value`` strings typed by the request schema, as ``cog predict -i`` types them."""
    from request.inputs import INPUTS

    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"-i expects name=value, got {pair!r}")
        kind = INPUTS[name].kind if name in INPUTS else str
        try:
            if kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                inputs[name] = text.lower() == "true"
            elif kind is Path:  # a local file (``@photo.png`` as cog predict writes it, or a bare path), or a URL
                inputs[name] = text if text.startswith(("http://", "https://", "data:")) else Path(text.removeprefix("@"))
            else:
                inputs[name] = kind(text) if kind in (int, float) else text
        except ValueError:
            raise SystemExit(f"-i {name}: {text!r} is not a valid {kind.__name__}") from None
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", action="append", default=[], help="name=value, repeatable")
    parser.add_argument("--weights", help="weights path or URL (default: $SDXL_WEIGHTS)")
    parser.add_argument("-o", "--output-dir", type=Path, default=ROOT / "outputs")
    args = parser.parse_args()
    inputs = parse_inputs(args.input)
    sys.argv = sys.argv[:1]  # our flags are parsed; libraries must not see them

    from predict import Predictor
    from request.errors import InputError
    from request.inputs import INPUTS

    predictor = Predictor()
    predictor.setup(args.weights)
    defaults = {name: spec.default for name, spec in INPUTS.items()}
    try:
        outputs = predictor.predict_sync(**{**defaults, **inputs})
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for output in outputs:
        target = args.output_dir / Path(output).name
        shutil.copyfile(output, target)
        print(target.resolve())


if __name__ == "__main__":
    main()
