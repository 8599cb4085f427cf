"""A model family is one module behind one registry (pipeline/families): a new one is a few lines
and a catalog entry, and the rest of the code serves it by asking the family."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from hardware.backend import Backend
from pipeline.families import FAMILIES, family_for
from pipeline.families.sdxl import SDXL, SDXLFamily
from request.catalog import MODELS

ROOT = Path(__file__).resolve().parent.parent
CPU = Backend(device="cpu", dtype_name="float32", tf32=False, bitsandbytes="-")


def test_a_new_family_is_served_through_the_registry(tiny_weights, monkeypatch) -> None:
    from pipeline.generate import Batch, generate
    from pipeline.loading.weights import resolve_weights
    from pipeline.select import select_model
    from presets import resolve
    from request.generation import parse_request

    loaded = []

    class SketchFamily(SDXLFamily):  # a new family: SDXL's loader, with a marker of its own
        def load(self, source, backend, stream=None):  # type: ignore[no-untyped-def]
            model = super().load(source, backend, stream)
            loaded.append(source.model)
            return model

    sketch = SketchFamily(name="sketch", denoiser_name="unet", lora_components=("unet",),
                          ip_adapter_setting="IP_ADAPTER_WEIGHTS", quantized={}, fp8_scope=SDXL.fp8_scope, cfg_batch=True,
                          activation_bytes_1mp=SDXL.activation_bytes_1mp)
    monkeypatch.setitem(FAMILIES, "sketch", sketch)
    monkeypatch.setitem(MODELS, "sketch-xl", dataclasses.replace(MODELS["sdxl"], name="sketch-xl", family="sketch"))
    monkeypatch.setenv("SDXL_WEIGHTS", str(tiny_weights))

    from pipeline.loading.cache import MODEL_CACHE

    default = resolve_weights(str(tiny_weights), model="sdxl")
    model = select_model("sketch-xl", default, CPU)
    try:
        assert loaded == ["sketch-xl"] and family_for(model.spec) is sketch
        request = parse_request({"prompt": "a kite", "width": 64, "height": 64, "seed": 2})
        images = generate(model, Batch(["a kite"], 1, 2), request, resolve("sdxl", "fast", num_inference_steps=2)).images
        assert images[0].size == (64, 64)
    finally:
        MODEL_CACHE.evict(model.source.model_id)  # the catalog entry goes with the test: so does the model


def test_every_catalog_model_has_a_family() -> None:
    for spec in MODELS.values():
        assert family_for(spec).name == spec.family


def test_no_code_outside_the_families_and_the_catalog_compares_model_or_pipeline_names() -> None:
    """What varies by family is asked of the family: no ``== "FluxPipeline"``, ``.startswith("flux")``."""
    names = {spec.pipeline_class for spec in MODELS.values()} | set(MODELS) | set(FAMILIES)
    offenders = []
    for package in ("pipeline", "service", "startup", "adetailer", "request", "hardware", "presets"):
        for path in (ROOT / package).rglob("*.py"):
            if "families" in path.parts or path.name == "catalog.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in names
                                                         for c in (node.left, *node.comparators)):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith"
                        and any(isinstance(a, ast.Constant) and any(str(a.value).startswith(n[:4]) for n in names)
                                for a in node.args)):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
