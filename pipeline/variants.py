"""The img2img and inpaint pipelines of a loaded model, built on its components with ``from_pipe``.

``from_pipe`` hands the new pipeline the very same modules, so there is never a second copy of the
weights. Each variant is built once, on first use, and kept in the model cache under an id that
embeds the model's, so evicting the model evicts its variants too. A request's image inputs and
ADetailer's passes share the one inpaint pipeline.
"""

from __future__ import annotations

from typing import Any

from pipeline.loading.cache import MODEL_CACHE
from pipeline.models import LoadedModel


def pipeline_for(model: LoadedModel, kind: str) -> Any:
    """``model``'s pipeline for ``kind``: its own for text, else the variant, built on first use."""
    if kind == "text":
        return model.pipe
    class_name = {"img2img": model.spec.img2img_pipeline_class, "inpaint": model.spec.inpaint_pipeline_class}[kind]

    def build() -> Any:
        import diffusers

        pipe = getattr(diffusers, class_name).from_pipe(model.pipe)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    with model.lock:
        return MODEL_CACHE.get_or_load(f"{kind}:{model.source.model_id}", build)


def inpaint_pipeline(model: LoadedModel) -> Any:
    return pipeline_for(model, "inpaint")
