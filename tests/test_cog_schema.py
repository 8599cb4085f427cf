"""predict.py stays something `cog build` can read, and the schema the server enforces is the one
the request models declare (service/cog_schema.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from request.inputs import INPUTS
from service.cog_schema import BEGIN, END, openapi_schema, read_parameters, render_parameters

ROOT = Path(__file__).resolve().parent.parent


def test_predict_py_parameters_are_rendered_from_the_request_models() -> None:
    text = (ROOT / "predict.py").read_text()
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    assert block == render_parameters(INPUTS), "run: python service/cog_schema.py --write-predict"


def test_every_default_is_a_literal_input_call_cog_build_can_read() -> None:
    parameters = read_parameters((ROOT / "predict.py").read_text())
    assert [p.name for p in parameters] == list(INPUTS)
    for parameter in parameters:
        spec = INPUTS[parameter.name]
        assert parameter.input["default"] == spec.default and parameter.nullable == spec.optional, parameter.name


def test_a_computed_default_is_refused_as_cog_build_refuses_it() -> None:
    source = ("from cog import BasePredictor, Input\n"
              "class Predictor(BasePredictor):\n"
              "    def predict(self, prompt: str = field('prompt')) -> str:\n        return prompt\n")
    with pytest.raises(ValueError, match="not a literal Input"):
        read_parameters(source)


def test_the_schema_carries_every_bound_choice_and_default() -> None:
    schema = openapi_schema((ROOT / "predict.py").read_text())
    components = schema["components"]["schemas"]
    properties = components["Input"]["properties"]
    assert list(properties) == list(INPUTS) and "required" not in components["Input"]
    steps = properties["num_inference_steps"]
    assert (steps["minimum"], steps["maximum"], steps["nullable"], steps["default"]) == (1, 100, True, None)
    assert properties["image"]["format"] == "uri" and properties["prompt_strength"]["maximum"] == 1.0
    assert components["megapixels"]["enum"] == ["1", "0.25"]
    assert properties["megapixels"]["allOf"] == [{"$ref": "#/components/schemas/megapixels"}]
    assert json.loads(json.dumps(schema)) == schema
