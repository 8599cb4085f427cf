"""Pipelines built on a loaded model's very modules: its img2img and inpaint variants, and go_fast's.

``on_same_modules`` hands the new pipeline the very same modules, so there is never a second copy of
the weights, and casts nothing. diffusers' ``from_pipe`` would do the first but not the second: it
ends with ``new_pipeline.to(dtype=...)``, float32 when no dtype is given, which converts the shared
modules of the original pipeline too (a bf16 model would become fp32; fp8-stored or bitsandbytes
weights would be re-cast). Each variant is built once, on first use, and kept in the model cache
under an id that embeds the model's, so evicting the model evicts its variants too. A request's
image inputs and ADetailer's passes share the one inpaint pipeline.
"""

from __future__ import annotations

import inspect
from typing import Any

from pipeline.loading.cache import MODEL_CACHE
from pipeline.models import LoadedModel


def on_same_modules(pipeline_class: Any, source: Any, **overrides: Any) -> Any:
    """A ``pipeline_class`` on ``source``'s components (``overrides`` replace some), with ``source``'s
    non-module options (SDXL's ``force_zeros_for_empty_prompt``...) where the class takes them."""
    parameters = inspect.signature(pipeline_class.__init__).parameters
    components = {**source.components, **overrides}
    options = {name: value for name, value in source.config.items()
               if name in parameters and name not in components and not name.startswith("_")
               and not isinstance(value, (list, tuple))}  # a list in the config names a component's class
    pipe = pipeline_class(**{name: value for name, value in components.items() if name in parameters}, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def variant_class(model: LoadedModel, kind: str) -> Any:
    """The diffusers class of ``model``'s pipeline for ``kind`` (img2img or inpaint), from the catalog."""
    import diffusers

    return getattr(diffusers, {"img2img": model.spec.img2img_pipeline_class, "inpaint": model.spec.inpaint_pipeline_class}[kind])


def pipeline_for(model: LoadedModel, kind: str) -> Any:
    """``model``'s pipeline for ``kind``: its own for text, else the variant, built on first use."""
    if kind == "text":
        return model.pipe

    def build() -> Any:
        return on_same_modules(variant_class(model, kind), model.pipe)

    with model.lock:
        return MODEL_CACHE.get_or_load(f"{kind}:{model.source.model_id}", build)


def inpaint_pipeline(model: LoadedModel) -> Any:
    return pipeline_for(model, "inpaint")
