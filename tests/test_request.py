import inspect
import math

import pytest

from request.errors import InputError
from request.generation import ASPECT_RATIOS, parse_request
from request.inputs import FILE_INPUTS, INPUTS


def raw(**overrides: object) -> dict:
    values = {"prompt": "a red bicycle"}
    values.update(overrides)
    return values


def test_defaults() -> None:
    request = parse_request(raw())
    assert (request.width, request.height) == (1024, 1024)
    assert request.preset == "balanced"
    assert request.num_inference_steps is None and request.guidance_scale is None and request.seed is None
    assert (request.num_outputs, request.scheduler, request.output_format, request.output_quality) == (1, "K_EULER", "webp", 80)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("width", 100000, "from 64 to 2048"),
        ("num_outputs", 99, "from 1 to 4"),
        ("num_outputs", 0, "from 1 to 4"),
        ("width", 1001, "multiple of 8"),
        ("num_inference_steps", 0, "from 1 to 100"),
        ("guidance_scale", 25.5, "from 0 to 20"),
        ("guidance_scale", math.nan, "from 0 to 20"),
        ("seed", -1, "from 0 to 4294967295"),
        ("output_quality", 101, "from 1 to 100"),
        ("preset", "turbo", "ultra_fast, fast, balanced, quality"),
        ("scheduler", "LMS", "K_EULER"),
        ("output_format", "gif", "webp, jpg, png"),
        ("aspect_ratio", "7:3", "1:1"),
        ("num_outputs", "2", "an integer"),
        ("num_outputs", True, "an integer"),
        ("num_outputs", 1.5, "an integer"),
        ("prompt", 5, "expected a string"),
        ("prompt", "   ", "must not be empty"),
    ],
)
def test_bad_values_name_field_value_and_rule(field: str, value: object, words: str) -> None:
    overrides = {field: value}
    if field in ("width", "height"):
        overrides.update(width=value, height=64)
    with pytest.raises(InputError) as caught:
        parse_request(raw(**overrides))
    message = str(caught.value)
    assert caught.value.field == field
    assert f"invalid input {field}=" in message
    assert words in message


def test_missing_prompt_is_required_without_scenes() -> None:
    with pytest.raises(InputError, match="prompt.*must not be empty"):
        parse_request({})
    assert parse_request({"scenes": "a harbour\n\n a market "}).scene_list == ("a harbour", "a market")


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        ({"scenes": "\n".join(f"scene {i}" for i in range(13))}, "scenes", "at most 12 scenes"),
        ({"scenes": "a", "num_outputs": 2}, "num_outputs", "must be 1 with scenes"),
        ({"character": "a tall woman"}, "character", "only applies with scenes"),
        ({"ip_adapter_scale": 0.5}, "ip_adapter_scale", "only applies with face_image"),
        ({"ip_adapter_scale": 2.0, "face_image": "https://example.com/x.png"}, "ip_adapter_scale", "from 0 to 1.5"),
        ({"face_image": 7}, "face_image", "URL of an image"),
    ],
)
def test_identity_and_storyboard_rules(overrides: dict, field: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_request(raw(**overrides))
    assert caught.value.field == field and words in str(caught.value)


def test_unknown_input_is_refused_not_ignored() -> None:
    with pytest.raises(InputError, match="num_steps.*unknown input"):
        parse_request(raw(num_steps=10))


def test_integral_floats_are_integers_json_has_no_int_type() -> None:
    request = parse_request(raw(num_outputs=2.0, guidance_scale=5))
    assert request.num_outputs == 2 and isinstance(request.num_outputs, int)
    assert request.guidance_scale == 5.0 and isinstance(request.guidance_scale, float)


def test_explicit_size_overrides_aspect_ratio() -> None:
    request = parse_request(raw(aspect_ratio="16:9", width=512, height=768))
    assert (request.width, request.height) == (512, 768)


def test_width_without_height_names_height() -> None:
    with pytest.raises(InputError) as caught:
        parse_request(raw(width=512))
    assert caught.value.field == "height"


def test_custom_aspect_ratio_needs_a_size() -> None:
    with pytest.raises(InputError, match="aspect_ratio.*custom"):
        parse_request(raw(aspect_ratio="custom"))


@pytest.mark.parametrize("ratio", sorted(ASPECT_RATIOS))
def test_aspect_ratios_are_sdxl_buckets(ratio: str) -> None:
    request = parse_request(raw(aspect_ratio=ratio))
    assert request.width % 64 == 0 and request.height % 64 == 0
    assert 0.9e6 < request.width * request.height < 1.2e6
    w, h = (int(x) for x in ratio.split(":"))
    assert abs(request.width / request.height - w / h) < 0.12


def test_cog_inputs_are_the_request_models_fields() -> None:
    """predict()'s explicit signature is pinned to the declarations: every field of the request
    models, its Python type, and Input(default, ge, le, choices, description) as declared."""
    import typing

    from predict import Predictor

    parameters = inspect.signature(Predictor.predict).parameters
    hints = typing.get_type_hints(Predictor.predict)
    assert list(parameters)[1:] == list(INPUTS)
    for name, spec in INPUTS.items():
        info = parameters[name].default
        assert (info.default, info.ge, info.le) == (spec.default, spec.minimum, spec.maximum), name
        assert info.choices == (list(spec.choices) if spec.choices else None), name
        assert info.max_length == spec.max_length and info.description == spec.description, name
        kind, optional = hints[name], False
        if typing.get_origin(kind) is typing.Union:
            kind, optional = next(arg for arg in typing.get_args(kind) if arg is not type(None)), True
        assert optional == spec.optional, name
        # file inputs are plain strings at run time (predict.py, after the class), so coglet does not fetch them
        expected = "str" if name in FILE_INPUTS else spec.kind.__name__
        assert kind.__name__ == expected, name


@pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")  # predict()/BasePredictor, kept on purpose
def test_cogs_own_inspector_accepts_the_predictor() -> None:
    """What `cog build` runs to write the schema: every input's type, default and bounds must pass it."""
    from cog._inspector import create_predictor

    info = create_predictor("predict", "Predictor")
    assert set(info.inputs) == set(INPUTS)
