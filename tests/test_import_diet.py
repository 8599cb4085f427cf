"""The imports stage's diet (startup/import_diet.py): bitsandbytes and scipy are kept out of sight of
diffusers and transformers while they first import, each loads as usual when something asks for it
afterwards; transformers is told torch.distributed is not there, torch is not; torch's compiler,
flex attention, symbolic shapes, sympy and PEFT are still stand-ins after a start and an image, and
diffusers still sees PEFT (LoRA stays on); the image is the same; and
``LAZY_IMPORTS=0`` turns it all off. The stand-ins themselves: tests/test_deferred_modules.py."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hardware.profiles import choose_profile
from startup.import_diet import DEFERRED, LazyPackageMap, deferred_for, hidden, lazy_package_map

ROOT = Path(__file__).resolve().parent.parent

# A fresh interpreter: start the service on tiny weights, report what got imported, then ask for each
# deferred library as a later caller would, and make one image.
SCRIPT = """
import hashlib, json, os, sys
sys.path.insert(0, os.environ["ROOT"])
import numpy as np
from startup.chain import run_startup
service = run_startup(os.environ["WEIGHTS"])
report = {name: name in sys.modules for name in ("bitsandbytes", "scipy")}
from diffusers.utils import import_utils
report["diffusers_sees_scipy"] = import_utils.is_scipy_available()
from startup.deferred_modules import still_deferred
report["still_deferred"] = still_deferred()
import torch.distributed
from transformers.utils import import_utils as transformers_imports
report["transformers_sees_distributed"] = transformers_imports.is_torch_distributed_available()
report["torch_sees_distributed"] = torch.distributed.is_available()
from pipeline.generate import Batch, generate
from presets import resolve
from request.generation import parse_request
request = parse_request({"prompt": "a red bicycle", "width": 64, "height": 64, "seed": 3})
image = generate(service.model, Batch(["a red bicycle"], 1, 3), request, resolve("sdxl", "fast", num_inference_steps=2)).images[0]
report["pixels"] = hashlib.sha256(np.asarray(image).tobytes()).hexdigest()
report["still_deferred_after_image"] = still_deferred()
import importlib.metadata
report["package_map_built"] = getattr(import_utils._package_map, "built", True)
report["package_map_same"] = dict(import_utils._package_map) == importlib.metadata.packages_distributions()
from diffusers.utils import USE_PEFT_BACKEND
report["diffusers_uses_peft"] = USE_PEFT_BACKEND
import scipy.stats  # asked for later: loads as usual
report["scipy_later"] = scipy.stats.norm.cdf(0.0)
print("REPORT" + json.dumps(report))
"""


def start(tiny_weights: Path, tmp_path: Path, lazy: str) -> dict:
    env = dict(os.environ, ROOT=str(ROOT), WEIGHTS=str(tiny_weights), LAZY_IMPORTS=lazy,
               STARTUP_TIMINGS_PATH=str(tmp_path / f"timings-{lazy}.json"))
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    return json.loads(line[len("REPORT"):])


def test_deferred_libraries_stay_out_of_the_start_and_load_when_asked(tiny_weights: Path, tmp_path: Path) -> None:
    lazy, plain = start(tiny_weights, tmp_path, "1"), start(tiny_weights, tmp_path, "0")
    assert not lazy["bitsandbytes"] and not lazy["scipy"] and not lazy["diffusers_sees_scipy"]
    assert plain["scipy"] and plain["diffusers_sees_scipy"]
    if importlib.util.find_spec("bitsandbytes") is not None:
        assert plain["bitsandbytes"]
    assert lazy["scipy_later"] == plain["scipy_later"] == 0.5
    assert lazy["pixels"] == plain["pixels"]
    every = ["torch._dynamo", "torch.nn.attention.flex_attention", "sympy", "torch.fx.experimental.symbolic_shapes", "peft"]
    assert lazy["still_deferred"] == lazy["still_deferred_after_image"] == every
    assert plain["still_deferred"] == plain["still_deferred_after_image"] == []
    assert not lazy["package_map_built"] and lazy["package_map_same"] and plain["package_map_same"]
    assert lazy["diffusers_uses_peft"] == plain["diffusers_uses_peft"] == (importlib.util.find_spec("peft") is not None)
    assert not lazy["transformers_sees_distributed"] and plain["transformers_sees_distributed"]
    assert lazy["torch_sees_distributed"] == plain["torch_sees_distributed"] == plain["transformers_sees_distributed"]


def test_hidden_looks_uninstalled_inside_and_is_back_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "diet_probe.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with hidden(["diet_probe", "json"]) as hid:
        assert hid == ["diet_probe"]  # json was imported already: left alone
        assert importlib.util.find_spec("diet_probe") is None
        with pytest.raises(ImportError):
            importlib.import_module("diet_probe")
    assert importlib.import_module("diet_probe").VALUE == 7
    sys.modules.pop("diet_probe", None)


def test_a_quantizing_profile_keeps_bitsandbytes_and_the_switch_turns_it_all_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZY_IMPORTS", "1")
    for library in ("diffusers", "transformers"):  # as at start-up: not imported yet (restored after)
        monkeypatch.delitem(sys.modules, library, raising=False)
    plain = choose_profile("cpu", None, False, False, env={})
    assert deferred_for(plain) == list(DEFERRED)
    assert "bitsandbytes" not in deferred_for(replace(plain, flux_quantization="nf4"))
    assert "bitsandbytes" not in deferred_for(replace(plain, t5_quantization="int8"))
    monkeypatch.setenv("LAZY_IMPORTS", "0")
    assert deferred_for(plain) == []


def test_torchvision_stays_because_hiding_it_changes_the_image_processor() -> None:
    """Why torchvision is not deferred: transformers picks its torchvision image-processing backend
    when torchvision is there and its PIL backend when not, so the IP-Adapter's embeddings would no
    longer be plain diffusers'."""
    code = ("import sys\n{hide}from transformers import CLIPImageProcessor\n"
            "print(type(CLIPImageProcessor()).__mro__[1].__name__)")
    backends = []
    for hide in ("", "sys.modules['torchvision'] = None\n"):
        result = subprocess.run([sys.executable, "-c", code.format(hide=hide)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        backends.append(result.stdout.split()[-1])
    assert backends[0] != backends[1]
    assert "torchvision" not in DEFERRED


def test_the_collector_pauses_for_the_imports_and_freezes_only_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from startup.import_diet import CollectorPause, pause_collector, resume_collector

    monkeypatch.setenv("LAZY_IMPORTS", "0")
    assert pause_collector() is None and gc.isenabled()
    monkeypatch.setenv("LAZY_IMPORTS", "1")
    paused = pause_collector()
    try:
        assert paused is not None and not gc.isenabled()
        assert paused.freeze == ("diffusers" not in sys.modules and "transformers" not in sys.modules)
        assert pause_collector() is None  # already paused: the outer pause owns it
    finally:
        resume_collector(CollectorPause(freeze=False))  # this process's imports are not the first: no freeze
    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    gc.disable()
    resume_collector(CollectorPause(freeze=True))
    assert gc.isenabled() and gc.get_freeze_count() >= frozen_before
    gc.unfreeze()


FREEZE_SCRIPT = """
import gc, json, os, sys
sys.path.insert(0, os.environ["ROOT"])
from startup.chain import run_startup
frozen_at_start = gc.get_freeze_count()  # Python 3.12 starts with some objects frozen
run_startup(os.environ["WEIGHTS"])
print("REPORT" + json.dumps({"frozen": gc.get_freeze_count() - frozen_at_start, "tracked": len(gc.get_objects())}))
"""


def test_a_first_start_up_freezes_what_its_imports_made(tiny_weights: Path, tmp_path: Path) -> None:
    env = dict(os.environ, ROOT=str(ROOT), WEIGHTS=str(tiny_weights), LAZY_IMPORTS="1",
               STARTUP_TIMINGS_PATH=str(tmp_path / "timings.json"))
    result = subprocess.run([sys.executable, "-c", FREEZE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    report = json.loads(line[len("REPORT"):])
    assert report["frozen"] > 100_000 and report["tracked"] < report["frozen"]


def test_nothing_is_hidden_once_diffusers_was_imported_before_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script that imports diffusers before setup() (bench/bench_safety.py did) must not find bitsandbytes
    hidden later: diffusers saw it installed and imports it when asked."""
    monkeypatch.setenv("LAZY_IMPORTS", "1")
    profile = choose_profile("cpu", None, False, False, env={})
    monkeypatch.setitem(sys.modules, "diffusers", sys.modules.get("diffusers") or importlib.import_module("diffusers"))
    assert deferred_for(profile) == []


def test_the_package_map_is_built_on_its_first_look_up_once() -> None:
    import importlib.metadata

    real = importlib.metadata.packages_distributions
    with lazy_package_map():
        lazy = importlib.metadata.packages_distributions()
    assert importlib.metadata.packages_distributions is real
    assert isinstance(lazy, LazyPackageMap) and not lazy.built
    assert "torch" in lazy and lazy.built and lazy.get("no-such-package") is None
    assert dict(lazy) == real() and len(lazy) == len(real())
