"""Cog entry point: the adapter between Cog and the service, and nothing else.

Every input is declared once, as a field of the request models (``request.generation``,
``request.adetailer``); ``field`` builds Cog's ``Input()`` from that declaration, and a test pins this
signature to the models. A request then runs as the numbered steps of ``service.job.run_request``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path as _LocalPath
from typing import Any, Optional

from cog import BasePredictor, Input, Path

from request.inputs import INPUTS
from service.job import run_request
from startup.chain import ReadyService, run_startup

# predict()/BasePredictor keep this predictor working on every Cog version Replicate runs,
# including those that predate run()/BaseRunner; cog 0.23 warns about both on every start.
warnings.filterwarnings("ignore", message=r".*predict\(\) is deprecated", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=r"BasePredictor is deprecated", category=DeprecationWarning)

log = logging.getLogger("predict")


def field(name: str) -> Any:
    """Cog's ``Input`` for request field ``name``: its default, description and bounds as declared."""
    spec = INPUTS[name]
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
        """Run the timed start-up chain; ``weights`` (Cog's COG_WEIGHTS) are the default model's, over its env var."""
        self.service: ReadyService = run_startup(str(weights) if weights else None)
        self.output_root = _LocalPath(tempfile.mkdtemp(prefix="predictions-"))
        self.count = 0

    def predict(
        self,
        prompt: str = field("prompt"),
        model: Optional[str] = field("model"),
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
        face_image: Optional[Path] = field("face_image"),
        ip_adapter_scale: Optional[float] = field("ip_adapter_scale"),
        scenes: str = field("scenes"),
        character: str = field("character"),
        adetailer: bool = field("adetailer"),
        adetailer_face: bool = field("adetailer_face"),
        adetailer_hands: bool = field("adetailer_hands"),
        ad_confidence: float = field("ad_confidence"),
        ad_mask_k_largest: int = field("ad_mask_k_largest"),
        ad_mask_min_ratio: float = field("ad_mask_min_ratio"),
        ad_mask_max_ratio: float = field("ad_mask_max_ratio"),
        ad_dilate_erode: int = field("ad_dilate_erode"),
        ad_mask_blur: int = field("ad_mask_blur"),
        ad_denoising_strength: float = field("ad_denoising_strength"),
        ad_inpaint_only_masked_padding: int = field("ad_inpaint_only_masked_padding"),
        ad_prompt: str = field("ad_prompt"),
        ad_negative_prompt: str = field("ad_negative_prompt"),
        ad_steps: Optional[int] = field("ad_steps"),
        ad_cfg_scale: Optional[float] = field("ad_cfg_scale"),
    ) -> list[Path]:
        # locals() is exactly the inputs here: it must stay the first statement.
        raw = {name: value for name, value in locals().items() if name != "self"}
        started = time.perf_counter()
        service = self.service
        result = run_request(raw, service.backend, service.default_source, service.available, self._fresh_output_dir())
        for name, value in result.metrics().items():
            self.record_metric(name, value)
        log.info("prediction done in %.2f s: %s", time.perf_counter() - started, ", ".join(map(str, result.paths)))
        return [Path(path) for path in result.paths]

    def _fresh_output_dir(self) -> _LocalPath:
        """Cog uploads a prediction's files before starting the next, so the previous one's can go."""
        if self.count:
            shutil.rmtree(self.output_root / str(self.count - 1), ignore_errors=True)
        out = self.output_root / str(self.count)
        self.count += 1
        return out
