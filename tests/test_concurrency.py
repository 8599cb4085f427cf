"""Concurrent predictions: compatible requests share a denoising batch, each caller keeps its own
images, progress lines, metrics and cancellation, over the real Cog server with several slots."""

from __future__ import annotations

import contextvars
import http.server
import json
import logging
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.conftest import AtCapacity, http_json, predict_inputs, serve

STEPS = 3


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def decode(data_url: str) -> np.ndarray:
    import base64
    import io

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")).astype(int)


def assert_same_picture(batched: np.ndarray, alone: np.ndarray, others: list[np.ndarray]) -> None:
    """The batched image is the one its own prompt and seed make alone: equal, or at most one level
    apart on a few pixels (the CPU's matrix kernels add in another order for another batch size,
    docs/throughput.md), and unlike every other caller's."""
    gap = np.abs(batched - alone)
    assert gap.max() <= 1 and (gap > 0).mean() < 0.01, (gap.max(), (gap > 0).mean())
    for other in others:
        assert np.abs(batched - other).mean() > 5


def run_threads(count: int, target) -> list:
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = target(index)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_concurrent_requests_share_one_batch_each_with_its_own_prompt_and_seed(
        predictor, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses

    from pipeline.coalesce import arrivals
    from pipeline.select import select_model

    monkeypatch.setenv("BATCH_WINDOW_MS", "10000")  # an upper bound: the batch starts once it holds three
    service = predictor.service
    model = select_model("sdxl", service.default_source, service.backend)
    monkeypatch.setattr(model, "profile", dataclasses.replace(model.profile or service.backend.settings,
                                                              max_batch_images=3))
    prompts = ["a red bicycle", "a green lake", "a yellow house"]
    on_the_way = [arrivals.arrive(), arrivals.arrive()]  # the threads start one by one: none may go alone
    try:
        with caplog.at_level(logging.INFO, logger="pipeline.coalesce"):
            batched = run_threads(3, lambda i: pixels(predictor.predict_sync(**predict_inputs(
                prompt=prompts[i], seed=70 + i, output_format="png", num_inference_steps=STEPS))[0]))
    finally:
        for arrival in on_the_way:
            arrival.leave()
    assert "batching 3 requests: 3 images together" in caplog.text
    monkeypatch.setenv("BATCH_WINDOW_MS", "0")
    alone = [pixels(predictor.predict_sync(**predict_inputs(prompt=prompts[i], seed=70 + i, output_format="png",
                                                            num_inference_steps=STEPS))[0]) for i in range(3)]
    for i in range(3):
        assert_same_picture(batched[i], alone[i], [alone[j] for j in range(3) if j != i])


def test_incompatible_requests_and_full_batches_run_apart(predictor, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses

    from pipeline.select import select_model

    monkeypatch.setenv("BATCH_WINDOW_MS", "1500")  # how long the last, lone ones wait for companions
    steps = [STEPS, STEPS, STEPS, STEPS + 1]  # the last one cannot share
    service = predictor.service
    model = select_model("sdxl", service.default_source, service.backend)
    budget = dataclasses.replace(model.profile or service.backend.settings, max_batch_images=2)
    monkeypatch.setattr(model, "profile", budget)  # the profile's budget: two images a batch
    from pipeline.coalesce import arrivals

    on_the_way = [arrivals.arrive() for _ in range(3)]  # the threads start one by one: none may go alone
    try:
        with caplog.at_level(logging.INFO, logger="pipeline.coalesce"):
            run_threads(4, lambda i: predictor.predict_sync(**predict_inputs(seed=80 + i, num_inference_steps=steps[i])))
    finally:
        for arrival in on_the_way:
            arrival.leave()
    sizes = [int(line.split(": ")[1].split()[0]) for line in caplog.messages if line.startswith("batching ")]
    assert sizes and max(sizes) <= 2


def test_a_request_that_found_the_gpu_busy_waits_for_the_freed_slots(predictor, monkeypatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """When the lock frees, the predictions that fill the freed slots have not started yet: the
    waiting request gives them one more window, and they share its batch."""
    from pipeline.select import select_model

    monkeypatch.setenv("BATCH_WINDOW_MS", "800")
    monkeypatch.setenv("COG_MAX_CONCURRENCY", "4")
    service = predictor.service
    model = select_model("sdxl", service.default_source, service.backend)
    results: dict[str, list] = {}

    def call(name: str, seed: int) -> None:
        results[name] = predictor.predict_sync(**predict_inputs(seed=seed))

    with caplog.at_level(logging.INFO, logger="pipeline.coalesce"):
        model.lock.acquire()  # a batch running
        first = threading.Thread(target=call, args=("first", 90))
        first.start()
        time.sleep(0.5)  # it is waiting for the lock, alone
        model.lock.release()
        second = threading.Thread(target=call, args=("second", 91))  # sent as the slot freed
        second.start()
        first.join()
        second.join()
    assert "batching 2 requests: 2 images together" in caplog.text
    assert set(results) == {"first", "second"}


class FakeDenoiser:
    """Stands in for ``pipeline.generate.generate`` in the coalescer's own tests: records each
    batch's seeds and returns one string per image, or runs out of memory on batches of several."""

    def __init__(self, oom_above: int = 0, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.oom_above = oom_above
        self.delay = delay

    def __call__(self, model, batch, request, settings, go_fast=False, listeners=None):  # noqa: ANN001
        from pipeline.generate import GenerationResult

        time.sleep(self.delay)
        if self.oom_above and batch.size > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(batch.image_seeds())
        return GenerationResult([f"image {seed}" for seed in batch.image_seeds()], 0.01, 4)


def coalesce_threads(monkeypatch, fake: FakeDenoiser, members: list, capacity: int, stagger: float = 0.05) -> list:
    """Run each member through one coalescer on its own thread (each after the previous by
    ``stagger`` seconds, while more are on their way); the result or error of each."""
    from pathlib import Path as P

    from pipeline import coalesce
    from pipeline.models import LoadedModel, WeightsSource
    from presets import resolve
    from request.generation import parse_request
    from request.inputs import split_inputs

    monkeypatch.setattr(coalesce, "generate", fake)
    model = LoadedModel(None, {}, WeightsSource(P("/fake"), "diffusers", "/fake"))
    coalescer = coalesce.Coalescer(model)
    request = parse_request(split_inputs(predict_inputs())[0])
    settings = resolve("sdxl", request.preset, 3, None, None)
    arrivals = [coalesce.arrivals.arrive() for _ in members]  # all on their way from the start

    def run(index: int):
        time.sleep(stagger * index)
        try:
            return coalescer.run(members[index], request, settings, False, 1.0, capacity, 8, arrivals[index])
        except BaseException as error:  # noqa: BLE001 - returned for the test to look at
            return error

    try:
        return run_threads(len(members), run)
    finally:
        for arrival in arrivals:
            arrival.leave()


def test_a_request_as_large_as_a_batch_never_cuts_off_a_forming_one(monkeypatch) -> None:
    from pipeline.coalesce import Member

    fake = FakeDenoiser()
    members = [Member("a", "", 1, 10), Member("b", "", 4, 20), Member("c", "", 1, 30)]
    results = coalesce_threads(monkeypatch, fake, members, capacity=2)
    assert sorted(fake.batches) == [[10, 30], [20, 21, 22, 23]]
    assert results[0].images == ["image 10"] and results[2].images == ["image 30"]
    assert results[1].images == ["image 20", "image 21", "image 22", "image 23"]


def test_a_batch_out_of_memory_runs_each_member_alone_and_spares_the_others_a_cancel(monkeypatch) -> None:
    from pipeline.coalesce import Member
    from pipeline.progress import Canceled

    fake = FakeDenoiser(oom_above=1, delay=0.2)
    members = [Member("a", "", 1, 10), Member("b", "", 1, 20), Member("c", "", 1, 30)]
    threading.Timer(0.3, members[1].listener.cancelled.set).start()  # b cancels while the batch runs
    results = coalesce_threads(monkeypatch, fake, members, capacity=4, stagger=0.01)
    assert isinstance(results[1], Canceled)
    assert results[0].images == ["image 10"] and results[2].images == ["image 30"]
    assert sorted(fake.batches) == [[10], [30]]


def test_each_listener_gets_its_own_progress_lines_and_may_cancel(predictor) -> None:
    """A batch's progress line goes to each caller in its own context (where Cog files it); a
    cancelled caller gets no more lines, and the run stops once every caller has cancelled."""
    from pipeline.generate import Batch, generate
    from pipeline.progress import Canceled, Listener
    from pipeline.select import select_model
    from presets import resolve
    from request.generation import parse_request
    from request.inputs import split_inputs

    caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="nobody")
    heard: list[tuple[str, str]] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append((caller.get(), record.getMessage()))

    def listener_for(name: str) -> Listener:
        def make() -> Listener:
            caller.set(name)
            return Listener()
        return contextvars.copy_context().run(make)

    service = predictor.service
    model = select_model("sdxl", service.default_source, service.backend)
    request = parse_request(split_inputs(predict_inputs(num_inference_steps=4))[0])
    settings = resolve("sdxl", request.preset, 4, None, None)
    handler = Record()
    progress_log = logging.getLogger("pipeline.progress")
    progress_log.addHandler(handler)
    level = progress_log.level
    progress_log.setLevel(logging.INFO)
    try:
        alice, bob = listener_for("alice"), listener_for("bob")
        bob.cancelled.set()
        batch = Batch(["one", "two"], 1, 5, seeds=[5, 6])
        with model.lock:
            result = generate(model, batch, request, settings, listeners=[alice, bob])
        assert len(result.images) == 2 and result.steps == 4
        assert [who for who, _ in heard] == ["alice"] * 4
        assert all("step" in line for _, line in heard)
        alice.cancelled.set()
        with model.lock, pytest.raises(Canceled):
            generate(model, batch, request, settings, listeners=[alice, bob])
    finally:
        progress_log.removeHandler(handler)
        progress_log.setLevel(level)


def test_a_lone_caller_does_not_wait_for_the_window(predictor, monkeypatch) -> None:
    from service.job import run_request

    monkeypatch.setenv("BATCH_WINDOW_MS", "3000")
    service = predictor.service
    started = time.perf_counter()
    result = run_request(predict_inputs(seed=3), service.backend, service.default_source, service.available,
                         predictor.outputs.root / "lone")
    assert result.timings["batch_window_seconds"] < 0.5 and time.perf_counter() - started < 3
    assert result.metrics()["batch_callers"] == 1


def test_output_folders_outlive_the_predictions_cog_may_still_be_reading(tmp_path, monkeypatch) -> None:
    """A folder stays until 4 x COG_MAX_CONCURRENCY later predictions have finished (and, in
    service, ten minutes have passed); a failed prediction's goes at once."""
    from service.outputs import OutputFolders

    monkeypatch.setenv("COG_MAX_CONCURRENCY", "2")
    recent = OutputFolders(tmp_path / "recent")
    for _ in range(12):
        with recent.fresh() as folder:
            folder.mkdir(parents=True)
    assert len(list(recent.root.iterdir())) == 12  # all finished within the last ten minutes
    folders = OutputFolders(tmp_path, min_age_s=0)
    made = []
    for _ in range(9):
        with folders.fresh() as folder:
            folder.mkdir()
            made.append(folder)
    assert [folder.exists() for folder in made] == [False] + [True] * 8
    with pytest.raises(RuntimeError), folders.fresh() as failed:
        failed.mkdir()
        raise RuntimeError("the prediction failed")
    assert not failed.exists()


class Webhooks(http.server.ThreadingHTTPServer):
    """A loopback receiver for Cog's webhooks: the last event of each prediction, by id."""

    def __init__(self) -> None:
        self.events: dict[str, dict] = {}
        received = self.events

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received[body["id"]] = body
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture(scope="module")
def concurrent_server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    workdir = tmp_path_factory.mktemp("concurrent-server")
    env = dict(COG_MAX_CONCURRENCY="4", BATCH_WINDOW_MS="100", SAFETY_CHECKER_WEIGHTS=str(workdir / "none"))
    with serve(tiny_weights, workdir, env) as server:
        yield server


def test_eight_callers_on_four_slots_all_get_their_own_images(concurrent_server) -> None:
    """8 callers at once on concurrency.max 4: those over capacity get 409 and retry, as Replicate's
    queue does; none fails or is lost, each gets its own progress lines and metrics, and its image
    is the one its prompt and seed make alone."""
    url = concurrent_server.url
    inputs = dict(width=64, height=64, num_inference_steps=STEPS, output_format="png")
    rejected = [0] * 8

    def call(index: int) -> dict:
        body = {"input": {**inputs, "prompt": f"a city at night, {index}", "seed": 200 + index}}
        for _ in range(600):
            try:
                return http_json(f"{url}/predictions", body)
            except AtCapacity:
                rejected[index] += 1
                time.sleep(0.05)
        raise TimeoutError("at capacity for 30 s")

    answers = run_threads(8, call)
    assert [answer["status"] for answer in answers] == ["succeeded"] * 8
    assert sum(rejected) > 0  # 8 callers on 4 slots: the back-pressure is Cog's 409
    for answer in answers:
        steps = [line for line in answer["logs"].splitlines() if f"/{STEPS} [" in line and "step " in line]
        assert len(steps) == STEPS, answer["logs"]
        assert answer["metrics"]["steps"] == STEPS and answer["metrics"]["batch_callers"] >= 1
    assert max(answer["metrics"]["batch_callers"] for answer in answers) > 1
    alone = [decode(http_json(f"{url}/predictions", {"input": {**inputs, "prompt": f"a city at night, {i}",
                                                               "seed": 200 + i}})["output"][0]) for i in range(8)]
    for i, answer in enumerate(answers):
        assert_same_picture(decode(answer["output"][0]), alone[i], [alone[j] for j in (i - 1, (i + 1) % 8)])


def test_cancel_stops_only_that_prediction(concurrent_server) -> None:
    """A cancelled prediction ends as canceled and its thread stops within a step: a prediction sent
    after it is not held behind the steps it would have run."""
    import re
    import statistics

    url = concurrent_server.url
    hooks = Webhooks()

    def step_lines(prediction: str) -> list[str]:
        return [line for line in hooks.events.get(prediction, {}).get("logs", "").splitlines() if "/100 [" in line]

    try:
        slow = {"webhook": hooks.url, "webhook_events_filter": ["start", "logs", "completed"],
                "input": {"prompt": "a slow one", "width": 512, "height": 512, "num_inference_steps": 100, "seed": 1}}
        request = urllib.request.Request(f"{url}/predictions", data=json.dumps(slow).encode(),
                                         headers={"Content-Type": "application/json", "Prefer": "respond-async"})
        with urllib.request.urlopen(request, timeout=30) as response:
            prediction = json.loads(response.read())["id"]
        deadline = time.monotonic() + 60
        while len(step_lines(prediction)) < 3:  # running: its first steps are in the logs
            assert time.monotonic() < deadline and hooks.events.get(prediction, {}).get("status") != "failed", hooks.events
            time.sleep(0.05)
        http_json(f"{url}/predictions/{prediction}/cancel", {})
        started = time.perf_counter()
        quick = http_json(f"{url}/predictions", {"input": {"prompt": "a quick one", "width": 64, "height": 64,
                                                         "num_inference_steps": 2, "seed": 2}})
        quick_wall = time.perf_counter() - started
        while hooks.events.get(prediction, {}).get("status") not in ("canceled", "succeeded", "failed"):
            assert time.monotonic() < deadline, hooks.events
            time.sleep(0.1)
        assert hooks.events[prediction]["status"] == "canceled"
        assert quick["status"] == "succeeded"
        done = step_lines(prediction)
        per_step = statistics.median(float(re.search(r"step \d+/100 ([0-9.]+) s", line).group(1)) for line in done)
        assert len(done) < 100
        assert quick_wall < per_step * (100 - len(done)) / 2, (quick_wall, per_step, len(done))
    finally:
        hooks.shutdown()
