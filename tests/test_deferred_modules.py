"""The stand-ins of startup/deferred_modules.py.

The mechanism on a package made here (each answer kind, the replay, a submodule imported while
deferred running once), then on torch itself in a fresh interpreter, where neither torch's compiler
nor flex attention has been imported yet: what the libraries bind at import, what building a model
asks, and compiling afterwards with diffusers' registrations replayed.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from startup.deferred_modules import Deferral, deferred

ROOT = Path(__file__).resolve().parent.parent

PACKAGE = {
    "__init__.py": "",
    "heavy/__init__.py": (
        "import dietprobe\n"
        "dietprobe.RUNS.append('heavy')\n"
        "SIZE = 64\n"
        "registered = []\n"
        "def register(fn):\n    registered.append(fn)\n    return fn\n"
        "def double(x):\n    return 2 * x\n"
        "class Thing:\n    kind = 'real'\n"
        "from . import parts\n"
    ),
    "heavy/parts.py": "import dietprobe\ndietprobe.RUNS.append('parts')\ndef triple(x):\n    return 3 * x\n",
    "heavy/extra.py": "import dietprobe\ndietprobe.RUNS.append('extra')\nfrom dietprobe.heavy import double\nVALUE = double(5)\n",
}
PROBE = Deferral("dietprobe.heavy", "a test package", {
    "dietprobe.heavy": {"SIZE": "constant", "register": "decorator", "double": "function", "Thing": "class"},
    "dietprobe.heavy.parts": {"triple": "function"},
})


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name, text in PACKAGE.items():
        (tmp_path / "dietprobe" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dietprobe" / name).write_text(text)
    (tmp_path / "dietprobe" / "__init__.py").write_text("RUNS = []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import dietprobe

    yield dietprobe
    for name in [n for n in sys.modules if n.startswith("dietprobe")]:
        del sys.modules[name]
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not any(name.startswith("dietprobe") for name in getattr(f, "standins", ()))]


def test_the_answers_need_nothing_imported_until_used(probe) -> None:
    with deferred((PROBE,)) as names:
        assert names == ["dietprobe.heavy"]
        from dietprobe.heavy import SIZE, Thing, double, register
        from dietprobe.heavy.parts import triple

        @register
        def hook() -> None: ...

        assert SIZE == 64  # read from the source
        assert not isinstance(object(), Thing)
        assert probe.RUNS == []
    assert probe.RUNS == [] and "dietprobe.heavy.parts" not in sys.modules  # the submodule stand-in left
    assert double(4) == 8  # the first call imports the package, once
    assert probe.RUNS == ["heavy", "parts"]
    heavy = sys.modules["dietprobe.heavy"]
    assert heavy.registered == [hook]  # the recorded decoration, replayed
    assert isinstance(heavy.Thing(), Thing) and Thing.kind == "real" and triple(2) == 6
    assert probe.heavy is heavy  # the parent's attribute is the real module now


def test_a_submodule_imported_while_deferred_runs_once(probe) -> None:
    with deferred((PROBE,)):
        pass
    importlib.import_module("dietprobe.heavy.extra")  # imports the package first, which runs parts
    parts = importlib.import_module("dietprobe.heavy.parts")  # was imported by the package: the same one
    assert probe.RUNS == ["heavy", "parts", "extra"]
    assert sys.modules["dietprobe.heavy.extra"].VALUE == 10
    assert parts.__spec__.name == "dietprobe.heavy.parts" and parts.__spec__.origin.endswith("parts.py")


def test_any_other_attribute_imports_the_real_package(probe) -> None:
    with deferred((PROBE,)):
        import dietprobe.heavy as standin
    assert probe.RUNS == []
    assert standin.parts.triple(1) == 3  # not one of the answers: the real package is imported
    assert probe.RUNS == ["heavy", "parts"]


def test_an_imported_package_is_left_alone(probe) -> None:
    import dietprobe.heavy

    with deferred((PROBE,)) as names:
        assert names == []
        assert sys.modules["dietprobe.heavy"] is dietprobe.heavy


# A fresh interpreter: the imports stage's diet, then what the service and a compiling caller do.
TORCH_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from hardware.profiles import load_profiles
from startup.deferred_modules import recorded_count, still_deferred
from startup.import_diet import diet
with diet(next(p for p in load_profiles() if p.name == "h200-h100")):
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl
    import diffusers.pipelines.flux.pipeline_flux
    import transformers.models.clip.modeling_clip
report = {"after_imports": still_deferred(), "recorded": recorded_count()}
from diffusers.utils.torch_utils import is_compiled_module
from transformers import masking_utils
with torch.device("meta"):
    torch.nn.Embedding(10, 4)  # torch's meta kernels wrap themselves with dynamo's disable
layer = torch.nn.Linear(4, 4)
report["compiled_before"] = is_compiled_module(layer)
report["block_mask_before"] = isinstance(object(), masking_utils.BlockMask)
report["after_building"] = still_deferred()
from diffusers.models.attention import BasicTransformerBlock
compiled = torch.compile(layer, backend="eager")
report["output_equal"] = torch.equal(compiled(torch.ones(2, 4)), layer(torch.ones(2, 4)))
report["compiled_after"] = is_compiled_module(compiled)
from torch._dynamo import trace_rules
report["allowed_in_graph"] = id(BasicTransformerBlock) in trace_rules._allowed_callable_ids
report["recorded_after"] = recorded_count()
with torch.device("meta"):
    torch.nn.Embedding(10, 4)
import torch.nn.attention.flex_attention as flex
report["block_mask_after"] = masking_utils.BlockMask is flex.BlockMask or issubclass(flex.BlockMask, masking_utils.BlockMask)
report["after_all"] = still_deferred()
report["one_dynamo"] = sys.modules["torch._dynamo"] is torch._dynamo
print("REPORT" + json.dumps(report))
"""


def test_torch_compiler_and_flex_attention_wait_until_used() -> None:
    result = subprocess.run([sys.executable, "-c", TORCH_SCRIPT, str(ROOT)], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, LAZY_IMPORTS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    report = json.loads(line[len("REPORT"):])
    deferred_both = ["torch._dynamo", "torch.nn.attention.flex_attention"]
    assert report["after_imports"] == deferred_both and report["recorded"] > 10
    assert report["after_building"] == deferred_both
    assert not report["compiled_before"] and not report["block_mask_before"]
    assert report["output_equal"] and report["compiled_after"]
    assert report["allowed_in_graph"] and report["recorded_after"] == 0
    assert report["block_mask_after"] and report["after_all"] == [] and report["one_dynamo"]
