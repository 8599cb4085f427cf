"""Write ``.cog/openapi_schema.json`` for ``predict.py``, as ``cog build`` bundles it into the image,
and keep ``predict.py``'s signature something ``cog build`` can read.

The server in a built image (coglet) validates every request against that file's ``Input`` schema
before ``predict()`` runs: types, bounds, choices. Served any other way, without the file, coglet
warns that it is "running without schema" and passes raw JSON through. ``scripts/serve.py`` writes
the file first, so local serving, the tests and Replicate take one path.

``cog build`` (Cog 0.18 and later) makes the file with a Go generator that reads ``predict.py``
statically (tree-sitter; ``pkg/schema/python`` and ``pkg/schema/openapi.go`` in replicate/cog): each
parameter's default must be a literal ``Input(...)`` call, or the build fails with "default cannot be
statically resolved". Neither the Go CLI nor Docker exists on our machines, so this is a port of
that generator, reading ``predict.py`` the same way (with ``ast``, never importing it).

Every input is still declared once, in the request models. ``predict.py``'s parameters are rendered
from those declarations (``--write-predict``), and ``tests/test_cog_schema.py`` fails when the two
differ.

    python service/cog_schema.py                  # writes .cog/openapi_schema.json
    python service/cog_schema.py --print          # prints it
    python service/cog_schema.py --write-predict  # re-renders predict.py's parameters from the models
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = Path(".cog") / "openapi_schema.json"

_JSON_TYPES = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
               "bool": {"type": "boolean"}, "Path": {"type": "string", "format": "uri"}}
BEGIN, END = "        # BEGIN inputs (service/cog_schema.py --write-predict)\n", "        # END inputs\n"


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: str  # str, int, float, bool or Path
    nullable: bool  # Optional[...]
    input: dict[str, Any]  # the literal keyword arguments of its Input(...)


def read_parameters(source: str) -> list[Parameter]:
    """``Predictor.predict``'s parameters, read statically as Cog's generator reads them."""
    tree = ast.parse(source)
    predictor = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Predictor")
    predict = next(n for n in predictor.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "predict")
    arguments = predict.args.args[1:]  # self
    defaults = predict.args.defaults
    if len(defaults) != len(arguments):
        raise ValueError("every predict() parameter needs an Input(...) default")
    parameters = []
    for argument, default in zip(arguments, defaults, strict=True):
        annotation, nullable = argument.annotation, False
        if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Optional":
            annotation, nullable = annotation.slice, True
        kind = getattr(annotation, "id", None)
        if kind not in _JSON_TYPES:
            raise ValueError(f"{argument.arg}: annotation {ast.unparse(argument.annotation)} not supported")
        if not (isinstance(default, ast.Call) and getattr(default.func, "id", "") == "Input"):
            raise ValueError(f"{argument.arg}: default `{ast.unparse(default)}` is not a literal Input(...) call")
        keywords = {keyword.arg: ast.literal_eval(keyword.value) for keyword in default.keywords}
        parameters.append(Parameter(argument.arg, kind, nullable, keywords))
    return parameters


def render_parameters(inputs: Mapping[str, Any]) -> str:
    """predict()'s parameter lines for the declared ``inputs`` (``request.inputs.INPUTS``)."""
    lines = []
    for name, field in inputs.items():
        kind = "Path" if field.kind is Path else field.kind.__name__
        annotation = f"Optional[{kind}]" if field.optional else kind
        keywords = {"default": field.default.name if isinstance(field.default, Path) else field.default,
                    "description": field.description}
        for key, value in (("ge", field.minimum), ("le", field.maximum), ("max_length", field.max_length)):
            if value is not None:
                keywords[key] = value
        if field.choices:
            keywords["choices"] = list(field.choices)
        arguments = ", ".join(f"{key}={value!r}" for key, value in keywords.items())
        lines.append(f"        {name}: {annotation} = Input({arguments}),\n")
    return "".join(lines)


def input_schema(parameters: list[Parameter]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``Input`` schema and the enum schemas of the parameters, as Cog's generator builds them."""
    properties: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    required: list[str] = []
    for order, parameter in enumerate(parameters):
        info = parameter.input
        json_type = dict(_JSON_TYPES[parameter.kind])
        prop: dict[str, Any] = {"x-order": order}
        if info.get("choices"):
            enums[parameter.name] = {"title": parameter.name, "description": "An enumeration.",
                                     "enum": list(info["choices"]), "type": json_type["type"]}
            prop["allOf"] = [{"$ref": f"#/components/schemas/{parameter.name}"}]
        else:
            prop["title"] = _title(parameter.name)
            prop.update(json_type)
        # a None default on a field that is not Optional is no default: the field is required
        has_default = "default" in info and not (info["default"] is None and not parameter.nullable)
        if has_default:
            prop["default"] = info["default"]
        else:
            required.append(parameter.name)
        if parameter.nullable:
            prop["nullable"] = True
        for attribute, key in (("description", "description"), ("ge", "minimum"), ("le", "maximum"),
                               ("min_length", "minLength"), ("max_length", "maxLength"), ("regex", "pattern")):
            if info.get(attribute) is not None:
                prop[key] = info[attribute]
        properties[parameter.name] = prop
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _title(name: str) -> str:
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


def openapi_schema(source: str) -> dict[str, Any]:
    """The whole document ``cog build`` writes for ``predict.py``'s ``source`` (returning ``list[Path]``)."""
    inputs, enums = input_schema(read_parameters(source))
    validation_ref = {"$ref": "#/components/schemas/HTTPValidationError"}
    components = {
        "Input": inputs,
        "Output": {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}},
        **enums,
        "PredictionRequest": {"title": "PredictionRequest", "type": "object", "properties": {
            "id": {"title": "Id", "type": "string"}, "input": {"$ref": "#/components/schemas/Input"}}},
        "PredictionResponse": {"title": "PredictionResponse", "type": "object", "properties": {
            "input": {"$ref": "#/components/schemas/Input"}, "output": {"$ref": "#/components/schemas/Output"},
            "id": {"title": "Id", "type": "string"}, "version": {"title": "Version", "type": "string"},
            "created_at": {"title": "Created At", "type": "string", "format": "date-time"},
            "started_at": {"title": "Started At", "type": "string", "format": "date-time"},
            "completed_at": {"title": "Completed At", "type": "string", "format": "date-time"},
            "status": {"title": "Status", "type": "string"}, "error": {"title": "Error", "type": "string"},
            "logs": {"title": "Logs", "type": "string"}, "metrics": {"title": "Metrics", "type": "object"}}},
        "Status": {"title": "Status", "description": "An enumeration.",
                   "enum": ["starting", "processing", "succeeded", "canceled", "failed"], "type": "string"},
        "HTTPValidationError": {"title": "HTTPValidationError", "type": "object", "properties": {"detail": {
            "title": "Detail", "type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}}},
        "ValidationError": {"title": "ValidationError", "required": ["loc", "msg", "type"], "type": "object",
                            "properties": {
                                "loc": {"title": "Location", "type": "array",
                                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                                "msg": {"title": "Message", "type": "string"},
                                "type": {"title": "Error Type", "type": "string"}}},
    }
    ok = {"description": "Successful Response", "content": {"application/json": {"schema": {}}}}
    invalid = {"description": "Validation Error", "content": {"application/json": {"schema": validation_ref}}}
    paths = {
        "/": {"get": {"summary": "Root", "operationId": "root__get", "responses": {"200": ok}}},
        "/health-check": {"get": {"summary": "Healthcheck", "operationId": "healthcheck_health_check_get",
                                  "responses": {"200": ok}}},
        "/predictions": {"post": {
            "summary": "Predict", "description": "Run a single prediction on the model",
            "operationId": "predict_predictions_post",
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}}},
            "responses": {"200": {"description": "Successful Response", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/PredictionResponse"}}}}, "422": invalid}}},
        "/predictions/{prediction_id}/cancel": {"post": {
            "summary": "Cancel", "operationId": "cancel_predictions__prediction_id__cancel_post",
            "parameters": [{"required": True, "schema": {"title": "Prediction Id", "type": "string"},
                            "name": "prediction_id", "in": "path"}],
            "responses": {"200": ok, "422": invalid}}},
    }
    return {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"}, "paths": paths,
            "components": {"schemas": components}}


def write_schema(root: Path = ROOT) -> Path:
    """Write the schema of ``root/predict.py`` to ``root/.cog/openapi_schema.json``."""
    path = root / SCHEMA_PATH
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(openapi_schema((root / "predict.py").read_text()), separators=(",", ":")))
    return path


def write_predict(root: Path = ROOT) -> bool:
    """Re-render predict.py's parameters from the request models; True if the file changed."""
    sys.path.insert(0, str(root))
    from request.inputs import INPUTS

    path = root / "predict.py"
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    updated = text[:start] + render_parameters(INPUTS) + text[end:]
    if updated != text:
        path.write_text(updated)
    return updated != text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the schema instead of writing it")
    parser.add_argument("--write-predict", action="store_true", help="re-render predict.py's parameters first")
    args = parser.parse_args()
    if args.write_predict:
        print("predict.py " + ("updated" if write_predict() else "already matches the request models"))
    if args.print:
        print(json.dumps(openapi_schema((ROOT / "predict.py").read_text()), indent=2))
    else:
        print(f"wrote {write_schema()}")


if __name__ == "__main__":
    main()
