"""The safety checker (pipeline/safety_checker.py) over the real Cog HTTP server, with tiny random
checkers in the real architectures (tests/fixtures/make_safety_checker.py). Their verdicts are set through
their own parameters from the very pictures the tests make: the tiny SDXL's images for seeds 99,
100, 200 and 300. The checker flags 100 and 300; the second opinion calls 100 nsfw and 300 normal."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CogServer, predict_inputs, serve
from tests.fixtures.make_safety_checker import compvis, falconsai
from tests.test_http_server import decode

SEEDS = (99, 100, 200, 300)


def picture(predictor, **overrides: object) -> Image.Image:
    return Image.open(predictor.predict_sync(**predict_inputs(**{"output_format": "png", **overrides}))[0]).convert("RGB")


def save(model_and_processor: tuple, folder: Path) -> Path:
    model, processor = model_and_processor
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def checkers(predictor, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checker folders made from the pictures a default request makes with each seed."""
    images = {seed: picture(predictor, seed=seed, disable_safety_checker=True) for seed in SEEDS}
    folder = tmp_path_factory.mktemp("checkers")
    return {
        "compvis": save(compvis("images", [images[100], images[300]], [images[99], images[200]]), folder / "compvis"),
        "falconsai": save(falconsai("images", [images[100]], [images[300], images[99], images[200]]), folder / "falconsai"),
        "all": save(compvis("all"), folder / "all"),
    }


@pytest.fixture(scope="session")
def safety_server(tiny_weights: Path, checkers: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CogServer]:
    workdir = tmp_path_factory.mktemp("safety-server")
    env = dict(SAFETY_CHECKER_WEIGHTS=str(checkers["compvis"]), NSFW_CLASSIFIER_WEIGHTS=str(checkers["falconsai"]))
    with serve(tiny_weights, workdir, env) as server:
        yield server


def request(seed: int, **extra: object) -> dict:
    """A default request, as the pictures above were made."""
    inputs = predict_inputs(seed=seed, output_format="png")
    inputs.update(extra)
    return {name: value for name, value in inputs.items() if value is not None}


def test_nothing_flagged_returns_everything(safety_server) -> None:
    response = safety_server.predict(**request(200))
    assert response["status"] == "succeeded", response
    assert len(response["output"]) == 1 and response["metrics"]["nsfw_dropped"] == 0
    assert "safety checker: 1 of 1 image(s) passed" in response["logs"]


def test_one_of_two_flagged_returns_the_other(safety_server) -> None:
    response = safety_server.predict(**request(99, num_outputs=2))  # seeds 99 and 100
    assert response["status"] == "succeeded", response
    assert len(response["output"]) == 1 and response["metrics"]["nsfw_dropped"] == 1
    assert "image 2 withheld: flagged by the safety checker and the NSFW classifier" in response["logs"]


def test_all_flagged_fails_with_one_clear_message(safety_server) -> None:
    response = safety_server.predict(**request(100))
    assert response["status"] == "failed"
    assert "flagged as NSFW by the safety checker and withheld" in response["error"]
    assert "Try again with another seed or prompt" in response["error"]
    assert safety_server.predict(**request(200))["status"] == "succeeded"  # and the server serves on


def test_the_second_opinion_overrules_the_first(safety_server) -> None:
    response = safety_server.predict(**request(300))
    assert response["status"] == "succeeded" and len(response["output"]) == 1, response
    assert response["metrics"]["nsfw_dropped"] == 0
    assert "image 1 flagged, overruled by the NSFW classifier (normal)" in response["logs"]


def test_disabling_returns_what_the_checker_would_withhold(safety_server, predictor) -> None:
    response = safety_server.predict(**request(100, disable_safety_checker=True))
    assert response["status"] == "succeeded" and "nsfw_dropped" not in response["metrics"]
    expected = np.asarray(picture(predictor, seed=100, disable_safety_checker=True))
    assert np.array_equal(np.asarray(decode(response["output"][0]).convert("RGB")), expected)


def test_the_checker_never_loads_when_disabled_and_loads_lazily_otherwise(predictor, checkers, monkeypatch, caplog) -> None:
    from pipeline.loading.cache import MODEL_CACHE

    monkeypatch.setenv("SAFETY_CHECKER_WEIGHTS", str(checkers["all"]))
    monkeypatch.delenv("NSFW_CLASSIFIER_WEIGHTS", raising=False)
    key = next((i for i in MODEL_CACHE.ids() if i.startswith(f"safety_checker:{checkers['all'].resolve()}")), None)
    if key:
        MODEL_CACHE.evict(key)
    picture(predictor, seed=5, disable_safety_checker=True)
    assert not any(i.startswith("safety_checker:") and str(checkers["all"].resolve()) in i for i in MODEL_CACHE.ids())
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError, match="withheld"):
        picture(predictor, seed=5)
    assert "safety checker loaded in" in caplog.text


def test_a_storyboard_sheet_holds_only_the_scenes_that_passed(predictor, tmp_path, monkeypatch) -> None:
    story = dict(prompt="", scenes="a harbour\na market\na ship", num_inference_steps=2, seed=8)
    monkeypatch.setenv("SAFETY_CHECKER_WEIGHTS", str(tmp_path / "none-yet"))
    unchecked = predictor.predict_sync(**predict_inputs(output_format="png", **story))
    scenes = [Image.open(path).convert("RGB") for path in unchecked[:3]]
    full_size = Image.open(unchecked[-1]).size  # the next prediction clears this one's folder
    save(compvis("images", [scenes[1]], [scenes[0], scenes[2]]), tmp_path / "checker")
    monkeypatch.setenv("SAFETY_CHECKER_WEIGHTS", str(tmp_path / "checker"))
    checked = predictor.predict_sync(**predict_inputs(output_format="png", **story))
    assert [path.name for path in checked] == ["scene-01.png", "scene-03.png", "contact-sheet.png"]
    assert Image.open(checked[-1]).size != full_size  # built from two scenes, not three


def test_preload_loads_it_after_ready_with_its_own_timer(predictor, checkers, monkeypatch, capsys) -> None:
    from startup.optional_parts import start_preload

    monkeypatch.setenv("SAFETY_CHECKER_WEIGHTS", str(checkers["compvis"]))
    thread = start_preload(predictor.service.model, ["safety_checker"])
    thread.join(timeout=120)
    assert "[Timer: optional:safety_checker]: " in capsys.readouterr().err


def test_without_weights_setup_says_so_and_a_request_is_served_unchecked(cog_server) -> None:
    log = cog_server.log_path.read_text()
    assert "safety checker: none configured" in log and "images are returned unchecked" in log
    response = cog_server.predict(prompt="x", width=64, height=64, num_inference_steps=2)
    assert response["status"] == "succeeded" and "returned unchecked" in response["logs"]


def test_require_safety_checker_fails_setup_naming_the_folder(tiny_weights, tmp_path) -> None:
    from tests.conftest import http_json

    missing = tmp_path / "no-checker-here"
    with serve(tiny_weights, tmp_path, dict(REQUIRE_SAFETY_CHECKER="1", SAFETY_CHECKER_WEIGHTS=str(missing)),
               ready=False) as server:
        health = http_json(f"{server.url}/health-check")
    assert health["status"] == "SETUP_FAILED"
    assert f"REQUIRE_SAFETY_CHECKER=1, but no safety checker weights at {missing}" in health["setup"]["logs"]
