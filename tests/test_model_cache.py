import logging

import pytest

from pipeline.loading.cache import ModelCache


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


def test_least_recently_used_models_are_evicted_with_what_is_built_on_them(caplog: pytest.LogCaptureFixture) -> None:
    cache = ModelCache()
    budget = 100
    free = lambda: budget - cache.resident_bytes()  # noqa: E731
    cache.get_or_load("sdxl:/a", object, size_bytes=40)
    cache.get_or_load("inpaint:sdxl:/a", object)  # built on sdxl:/a, no size of its own
    cache.get_or_load("flux-dev:/b", object, size_bytes=40)
    cache.get_or_load("sdxl:/a", object)  # touch: flux-dev is now the least recently used
    with caplog.at_level(logging.INFO, logger="pipeline"):
        cache.make_room(30, free, keep="flux-schnell:/c")
        cache.get_or_load("flux-schnell:/c", object, size_bytes=30)
    assert cache.ids() == ["inpaint:sdxl:/a", "sdxl:/a", "flux-schnell:/c"]
    assert "evicted flux-dev:/b (least recently used) to make room for flux-schnell:/c" in caplog.text
    with caplog.at_level(logging.INFO, logger="pipeline"):
        cache.make_room(60, free, keep="flux-dev:/b")
        assert cache.ids() == ["flux-schnell:/c"]  # sdxl and its inpaint pipeline went together
        cache.make_room(1000, free, keep="x")  # nothing left to evict: warns, does not loop
    assert cache.ids() == [] and "nothing left to evict" in caplog.text


def test_room_is_not_made_when_it_fits() -> None:
    cache = ModelCache()
    cache.get_or_load("sdxl:/a", object, size_bytes=10)
    cache.make_room(10, lambda: 50, keep="flux-dev:/b")
    assert cache.ids() == ["sdxl:/a"]


def test_a_slow_load_blocks_only_its_own_id() -> None:
    import threading
    import time

    cache = ModelCache()
    release = threading.Event()
    calls = []

    def slow() -> str:
        calls.append("slow")
        release.wait(5)
        return "slow model"

    first = threading.Thread(target=cache.get_or_load, args=("detector:x", slow))
    second = threading.Thread(target=cache.get_or_load, args=("detector:x", slow))
    first.start()
    time.sleep(0.05)
    second.start()
    assert cache.get_or_load("sdxl:/a", lambda: "fast model") == "fast model"
    assert first.is_alive() and "detector:x" not in cache  # the slow load is still going: we did not wait for it
    release.set()
    first.join(5)
    second.join(5)
    assert calls == ["slow"] and cache.get_or_load("detector:x", slow) == "slow model"


def test_concurrent_requests_for_one_model_size_it_and_make_room_once(predictor, monkeypatch) -> None:
    """Check-then-load is atomic: two requests for a model that is not loaded yet size it (a walk of
    its files), make room for it and load it once between them."""
    import threading
    import time

    import pipeline.select as loading
    from pipeline.loading.cache import MODEL_CACHE

    source, backend = predictor.service.default_source, predictor.service.backend
    MODEL_CACHE.evict(source.model_id)
    sized = []
    real_size = loading.weight_bytes

    def slow_size(src):  # type: ignore[no-untyped-def]
        sized.append(src.model_id)
        time.sleep(0.3)
        return real_size(src)

    monkeypatch.setattr(loading, "weight_bytes", slow_size)
    models: list = []
    threads = [threading.Thread(target=lambda: models.append(loading.load_source(source, backend))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(models) == 2 and models[0] is models[1]
    assert sized == [source.model_id]


def test_a_model_in_use_is_evicted_only_when_its_request_lets_go() -> None:
    """Predictions run concurrently: evicting a model another request is generating with would free
    nothing until that request ends, so the eviction waits for it; the thread's own use does not
    hold up its own load."""
    import threading
    import time
    from pathlib import Path

    from pipeline.models import LoadedModel, WeightsSource

    cache = ModelCache()
    busy = cache.get_or_load("sdxl:/a", lambda: LoadedModel(None, {}, WeightsSource(Path("/a"), "diffusers", "/a")),
                             size_bytes=60)
    free = lambda: 100 - cache.resident_bytes()  # noqa: E731
    released = threading.Event()

    def request() -> None:
        with busy.in_use():
            time.sleep(0.5)
            released.set()

    worker = threading.Thread(target=request)
    worker.start()
    time.sleep(0.1)  # the other request holds the model now
    cache.make_room(60, free, keep="flux-dev:/b")
    assert released.is_set() and cache.ids() == []
    worker.join()

    mine = cache.get_or_load("sdxl:/a", lambda: LoadedModel(None, {}, WeightsSource(Path("/a"), "diffusers", "/a")),
                             size_bytes=60)
    started = time.perf_counter()
    with mine.in_use():  # this thread's own request, loading another model (a video step, say)
        cache.make_room(60, free, keep="svd:/c")
    assert cache.ids() == [] and time.perf_counter() - started < 1


def test_two_loads_at_once_do_not_both_count_the_same_free_memory() -> None:
    """With predictions concurrent, two models may load at once: the first load's size counts as
    used until it has loaded, so the second makes room for both."""
    import threading

    cache = ModelCache()
    cache.get_or_load("old:/a", object, size_bytes=50)
    free = lambda: 100 - cache.resident_bytes()  # noqa: E731
    first_loading, release_first = threading.Event(), threading.Event()

    def slow() -> object:
        first_loading.set()
        release_first.wait(5)
        return object()

    worker = threading.Thread(target=lambda: cache.get_or_load("first:/b", slow, size_bytes=40, free=free))
    worker.start()
    first_loading.wait(5)
    cache.get_or_load("second:/c", object, size_bytes=40, free=free)  # 50 + 40 + 40 > 100: "old" goes
    release_first.set()
    worker.join()
    assert "old:/a" not in cache and {"first:/b", "second:/c"} <= set(cache.ids())


def test_an_idle_model_is_evicted_before_a_held_one() -> None:
    import threading
    import time
    from pathlib import Path

    from pipeline.models import LoadedModel, WeightsSource

    cache = ModelCache()
    make = lambda name: lambda: LoadedModel(None, {}, WeightsSource(Path(name), "diffusers", name))  # noqa: E731
    held = cache.get_or_load("sdxl:/a", make("/a"), size_bytes=40)  # the least recently used, but held
    cache.get_or_load("flux-dev:/b", make("/b"), size_bytes=40)
    free = lambda: 100 - cache.resident_bytes()  # noqa: E731
    holding, done = threading.Event(), threading.Event()

    def request() -> None:
        with held.in_use():
            holding.set()
            done.wait(5)

    worker = threading.Thread(target=request)
    worker.start()
    holding.wait(5)
    started = time.perf_counter()
    cache.make_room(40, free, keep="flux-schnell:/c")
    assert cache.ids() == ["sdxl:/a"] and time.perf_counter() - started < 1
    done.set()
    worker.join()


def test_a_model_evicted_as_it_is_selected_is_selected_again(monkeypatch) -> None:
    import threading
    from pathlib import Path

    from pipeline import select
    from pipeline.loading.cache import MODEL_CACHE
    from pipeline.models import LoadedModel, WeightsSource

    source = WeightsSource(Path("/evicted-then-loaded"), "diffusers", "/x")
    gone, fresh = LoadedModel(None, {}, source), LoadedModel(None, {}, source)
    picks = iter([gone, fresh])
    monkeypatch.setattr(select, "select_model", lambda name, default, backend: next(picks))
    MODEL_CACHE.get_or_load(source.model_id, lambda: fresh)  # the cache holds the second one only
    try:
        with select.model_in_use("sdxl", source, None) as model:
            seen: dict[str, bool] = {}
            other = threading.Thread(target=lambda: seen.update(gone=gone.holders.idle(), fresh=fresh.holders.idle()))
            other.start()
            other.join()
            assert model is fresh and seen == {"gone": True, "fresh": False}  # held: the fresh one only
    finally:
        MODEL_CACHE.evict(source.model_id)
