"""The import diet steps aside, logged, when a library's internals are not as it expects: what a
library upgrade can do to it. Each case changes one upstream internal in a fresh process, before
the service starts, and the service must still reach READY, make an image, and say what it skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What an upgrade could have changed, done to the installed library as the process starts.
CHANGES = {
    # transformers' cached verdict becomes a plain function with the same answer (no cache_info)
    "lru_cache replaced by a plain function": """
import functools
from transformers.utils import import_utils
cached = import_utils.is_torch_distributed_available
import_utils.is_torch_distributed_available = lambda: cached.__wrapped__()
""",
    # define_import_structure grows a parameter, as it is executed (whoever loads the module)
    "a signature changed": """
import importlib._bootstrap_external as external
real_exec = external.SourceFileLoader.exec_module
def exec_module(self, module):
    real_exec(self, module)
    if module.__name__ == "transformers.utils.import_utils":
        original = module.define_import_structure
        def define_import_structure(module_path, prefix=None, extra=None):
            return original(module_path, prefix)
        module.define_import_structure = define_import_structure
external.SourceFileLoader.exec_module = exec_module
""",
    # torch's flex attention module is not where the deferral looks for it
    "a module missing": """
import importlib.machinery, sys
real_find = importlib.machinery.PathFinder.find_spec.__func__
def find_spec(cls, fullname, path=None, target=None):
    caller = sys._getframe(1).f_code.co_filename
    if fullname == "torch.nn.attention.flex_attention" and caller.endswith("deferred_modules.py"):
        return None
    return real_find(cls, fullname, path, target)
importlib.machinery.PathFinder.find_spec = classmethod(find_spec)
""",
}

EXPECTED = {
    "lru_cache replaced by a plain function": "import diet: transformers' distributed verdict skipped",
    "a signature changed": "import diet: transformers' model map from a file skipped (define_import_structure takes "
                           "(module_path, prefix, extra)",
    "a module missing": "import diet: deferring torch.nn.attention.flex_attention skipped (the module is not found)",
}

SCRIPT = """
import json, os, sys
sys.path.insert(0, os.environ["ROOT"])
exec(os.environ["CHANGE"])
from predict import Predictor
from tests.conftest import predict_inputs
predictor = Predictor()
predictor.setup(os.environ["WEIGHTS"])
out = predictor.predict_sync(**predict_inputs(num_inference_steps=2))
print("REPORT" + json.dumps({"image": str(out[0]), "exists": os.path.exists(str(out[0]))}))
"""


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_internal_skips_that_part_and_the_service_still_serves(change: str, tiny_weights: Path,
                                                                         tmp_path: Path) -> None:
    env = dict(os.environ, ROOT=str(ROOT), WEIGHTS=str(tiny_weights), CHANGE=CHANGES[change],
               IMPORT_CACHE_DIR=str(tmp_path / "imports"), STARTUP_TIMINGS_PATH=str(tmp_path / "t.json"),
               SAFETY_CHECKER_WEIGHTS=str(tmp_path / "none"), LAZY_IMPORTS="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    report = json.loads(log.split("REPORT", 1)[1].splitlines()[0])
    assert report["exists"]
    assert EXPECTED[change] in log, log[-4000:]
    assert log.count("import diet:") >= 1 and "Traceback" not in log


def test_stand_ins_say_what_they_are() -> None:
    from startup.deferred_modules import DEFERRALS, _Standin

    assert "stand-in until first use" in repr(_Standin(DEFERRALS[0].package, {}))


def test_a_version_outside_the_tested_range_is_not_deferred(monkeypatch, caplog) -> None:
    import importlib.metadata
    import logging

    from startup import deferred_modules

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.1.0" if name == "peft" else real(name))
    peft = next(d for d in deferred_modules.DEFERRALS if d.package == "peft")
    with caplog.at_level(logging.WARNING):
        assert deferred_modules.usable_spec(peft) is None
    assert "import diet: deferring peft skipped (peft 9.1.0 is outside the tested 0.21-0.21)" in caplog.text
