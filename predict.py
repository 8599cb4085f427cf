"""Cog entry point. Thin on purpose: inputs are declared from ``pipeline.request.FIELDS`` and each
request flows predict.py -> presets -> pipeline -> outputs."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path as _LocalPath
from typing import Any, Optional

from cog import BasePredictor, Input, Path

from pipeline.generate import generate
from pipeline.outputs import save_images
from pipeline.request import FIELDS, parse_request
from presets import resolve
from startup.chain import ReadyService, run_startup

# predict()/BasePredictor keep this predictor working on every Cog version Replicate runs,
# including those that predate run()/BaseRunner; cog 0.23 warns about both on every start.
warnings.filterwarnings("ignore", message=r".*predict\(\) is deprecated", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=r"BasePredictor is deprecated", category=DeprecationWarning)

log = logging.getLogger("predict")


def field(name: str) -> Any:
    """A cog ``Input`` built from the same bounds the validator enforces."""
    spec = FIELDS[name]
    return Input(
        default=spec.default,
        description=spec.description,
        ge=spec.minimum,
        le=spec.maximum,
        choices=list(spec.choices) if spec.choices else None,
        max_length=spec.max_length,
    )


class Predictor(BasePredictor):
    def setup(self, weights: Optional[Any] = None) -> None:
        """Run the timed start-up chain; ``weights`` (Cog's COG_WEIGHTS) overrides $SDXL_WEIGHTS."""
        self.service: ReadyService = run_startup(str(weights) if weights else None)
        self.output_root = _LocalPath(tempfile.mkdtemp(prefix="predictions-"))
        self.count = 0

    def predict(
        self,
        prompt: str = field("prompt"),
        negative_prompt: str = field("negative_prompt"),
        preset: str = field("preset"),
        num_inference_steps: Optional[int] = field("num_inference_steps"),
        guidance_scale: Optional[float] = field("guidance_scale"),
        aspect_ratio: str = field("aspect_ratio"),
        width: Optional[int] = field("width"),
        height: Optional[int] = field("height"),
        num_outputs: int = field("num_outputs"),
        seed: Optional[int] = field("seed"),
        scheduler: str = field("scheduler"),
        output_format: str = field("output_format"),
        output_quality: int = field("output_quality"),
    ) -> list[Path]:
        # locals() is exactly the inputs here: it must stay the first statement.
        raw = {name: value for name, value in locals().items() if name != "self"}
        started = time.perf_counter()
        request = parse_request(raw)
        settings = resolve("sdxl", request.preset, request.num_inference_steps, request.guidance_scale)
        result = generate(self.service.model, request, settings)
        paths = save_images(result.images, self._fresh_output_dir(), request.output_format, request.output_quality)
        self.record_metric("seed", result.seed)
        self.record_metric("steps", result.steps)
        self.record_metric("generation_seconds", round(result.seconds, 4))
        self.record_metric("steps_per_second", round(result.steps_per_second, 3))
        log.info("prediction done in %.2f s: %s", time.perf_counter() - started, ", ".join(map(str, paths)))
        return [Path(path) for path in paths]

    def _fresh_output_dir(self) -> _LocalPath:
        """Cog uploads a prediction's files before starting the next, so the previous one's can go."""
        if self.count:
            shutil.rmtree(self.output_root / str(self.count - 1), ignore_errors=True)
        out = self.output_root / str(self.count)
        self.count += 1
        return out
