import logging

import pytest

from pipeline.model_cache import ModelCache


def test_a_loaded_model_is_never_loaded_twice(caplog: pytest.LogCaptureFixture) -> None:
    cache = ModelCache()
    calls = []

    def load() -> object:
        calls.append(1)
        return object()

    with caplog.at_level(logging.INFO, logger="pipeline"):
        first = cache.get_or_load("sdxl:/w", load)
        second = cache.get_or_load("sdxl:/w", load)
    assert first is second and len(calls) == 1
    assert "model sdxl:/w already loaded" in caplog.text
    cache.evict("sdxl:/w")
    assert "sdxl:/w" not in cache
