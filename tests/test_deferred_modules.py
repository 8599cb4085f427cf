"""The stand-ins of startup/deferred_modules.py and the plain-size answers of startup/shape_guards.py.

The mechanism on a package made here (each answer kind, the replay, a submodule imported while
deferred running once, kept submodules, a required package loaded first, the stand-in taking on the
real names), then on torch itself in a fresh interpreter, where none of the deferred modules has
been imported yet: what the libraries bind at import, what building a model asks, compiling
afterwards with diffusers' registrations replayed, and PEFT on first use. Each plain-size answer is
checked against the installed torch's own function.
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
PROBE = Deferral("dietprobe.heavy", {
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


def test_kept_submodules_answer_after_the_stage_and_leave_when_the_package_loads(probe) -> None:
    kept = Deferral("dietprobe.heavy", {"dietprobe.heavy.parts": {"triple": "function"}},
                    keep_submodules=True)
    with deferred((kept,)):
        pass
    from dietprobe.heavy.parts import triple  # after the stage: still the stand-in, nothing runs

    assert probe.RUNS == [] and type(sys.modules["dietprobe.heavy.parts"]).__name__ == "_Standin"
    assert triple(3) == 9  # imports the package, which imports the real parts
    assert probe.RUNS == ["heavy", "parts"]
    assert sys.modules["dietprobe.heavy.parts"].__spec__.origin.endswith("parts.py")


def test_a_required_package_loads_first_and_stand_ins_take_on_the_real_names(probe, tmp_path: Path) -> None:
    (tmp_path / "dietprobe" / "light.py").write_text(
        "import dietprobe\ndietprobe.RUNS.append('light')\nimport dietprobe.heavy as heavy_seen\nHALF = 0.5\n")
    light = Deferral("dietprobe.light", {"dietprobe.light": {}}, requires=("dietprobe.heavy",))
    with deferred((PROBE, light)):
        heavy_standin = sys.modules["dietprobe.heavy"]
        import dietprobe.light as light_standin
    assert light_standin.HALF == 0.5  # not an answer: loads heavy first, then light
    assert probe.RUNS == ["heavy", "parts", "light"]
    assert sys.modules["dietprobe.light"].heavy_seen is sys.modules["dietprobe.heavy"]  # the real one, not the stand-in
    assert heavy_standin.double is sys.modules["dietprobe.heavy"].double  # the stand-in reads the real names now
    assert light_standin.__dict__["HALF"] == 0.5


# Arguments for each plain-size answer: plain ones, and ones only torch answers (errors included).
SAMPLES = [True, False, 0, 1, 7, -3, 2.5, None, "x", (1, 2), [1, 2], (1, True), (1, 2.0), ((1, 2), (3,))]
ARITY = {"sym_and": (1, 2, 3), "sym_or": (1, 2, 3), "sym_eq": (2,), "expect_true": (1, 2), "size_hint": (1, 2)}

GUARDS_SCRIPT = """
import itertools, json, sys
sys.path.insert(0, sys.argv[1])
import torch
import torch.fx.experimental.symbolic_shapes as real
from startup.deferred_modules import SHAPES, _plain_answer
from startup.shape_guards import NOT_PLAIN, PLAIN_ANSWERS
samples, arity = json.loads(sys.argv[2]), json.loads(sys.argv[3])
samples = [tuple(v) if isinstance(v, list) and len(v) == 2 and v[1] is True else v for v in samples]
samples += [tuple(v) for v in samples if isinstance(v, list)]
def outcome(fn, args):
    try:
        return ("value", repr(fn(*args)), type(fn(*args)).__name__)
    except Exception as error:
        return ("error", type(error).__name__)
report = {"missing": [], "checked": {}, "mismatch": []}
for name, plain in PLAIN_ANSWERS.items():
    if not hasattr(real, name):
        report["missing"].append(name)  # another torch version's helper
        continue
    checked = 0
    for count in arity.get(name, (1,)):
        for args in itertools.product(samples, repeat=count):
            try:
                answer = plain(*args)
            except TypeError:
                continue
            if answer is NOT_PLAIN:
                continue
            checked += 1
            if outcome(plain, args) != outcome(getattr(real, name), args):
                report["mismatch"].append([name, repr(args), outcome(plain, args), outcome(getattr(real, name), args)])
    report["checked"][name] = checked
env = real.ShapeEnv()
from torch._dynamo.source import ConstantSource
s = env.create_symintnode(env.create_symbol(5, source=ConstantSource("s")), hint=5)
symbolic = {"is_nested_int": (s,), "guard_or_false": (s == 5,), "sym_eq": ((s, 2), (5, 2)), "expect_true": (s > 1,)}
report["symbolic"] = {name: [str(_plain_answer(SHAPES, name)(*args)), str(getattr(real, name)(*args))]
                      for name, args in symbolic.items()}
print("REPORT" + json.dumps(report))
"""


def test_plain_size_answers_are_torchs_own() -> None:
    result = subprocess.run([sys.executable, "-c", GUARDS_SCRIPT, str(ROOT), json.dumps(SAMPLES), json.dumps(ARITY)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    report = json.loads(line[len("REPORT"):])
    assert report["mismatch"] == []
    assert all(count > 0 for count in report["checked"].values()), report["checked"]
    assert len(report["checked"]) >= 9  # at most the other version's few are missing
    for name, (answered, torchs) in report["symbolic"].items():  # symbolic sizes: torch's function answers
        assert answered == torchs, name


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
sympy_standin = sys.modules["sympy"]
from diffusers.utils.torch_utils import is_compiled_module
from transformers import CLIPTextConfig, CLIPTextModel, masking_utils
with torch.device("meta"):
    torch.nn.Embedding(10, 4)  # torch's meta kernels wrap themselves with dynamo's disable
    CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2))
report["sym_not"] = torch.sym_not(False)
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
report["after_compiling"] = still_deferred()
import sympy
report["one_sympy"] = sympy_standin.Symbol is sympy.Symbol and sys.modules["torch.fx.experimental.symbolic_shapes"].sympy is sympy
with torch.device("meta"):
    torch.nn.Embedding(10, 4)
import torch.nn.attention.flex_attention as flex
report["block_mask_after"] = masking_utils.BlockMask is flex.BlockMask or issubclass(flex.BlockMask, masking_utils.BlockMask)
from diffusers.loaders import lora_base
from diffusers.utils.peft_utils import scale_lora_layers
scale_lora_layers(layer, 0.5)  # what every UNet and Flux forward runs: no LoRA layers, nothing imported
report["after_forward"] = still_deferred()
from peft import LoraConfig  # what a LoRA request's loading asks: the real PEFT
import peft.tuners.tuners_utils as tuners_utils
report["peft_class"] = (lora_base.BaseTunerLayer is not tuners_utils.BaseTunerLayer
                        and issubclass(tuners_utils.BaseTunerLayer, lora_base.BaseTunerLayer)
                        and LoraConfig.__module__.startswith("peft."))
report["after_all"] = still_deferred()
report["one_dynamo"] = sys.modules["torch._dynamo"] is torch._dynamo
print("REPORT" + json.dumps(report))
"""


def test_deferred_parts_of_torch_and_peft_wait_until_used() -> None:
    result = subprocess.run([sys.executable, "-c", TORCH_SCRIPT, str(ROOT)], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, LAZY_IMPORTS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    report = json.loads(line[len("REPORT"):])
    every = ["torch._dynamo", "torch.nn.attention.flex_attention", "sympy", "torch.fx.experimental.symbolic_shapes", "peft"]
    assert report["after_imports"] == every and report["recorded"] > 10
    assert report["after_building"] == every and report["sym_not"] is True  # a text encoder built on meta
    assert not report["compiled_before"] and not report["block_mask_before"]
    assert report["output_equal"] and report["compiled_after"]
    assert report["allowed_in_graph"] and report["recorded_after"] == 0
    assert report["after_compiling"] == ["peft"] and report["one_sympy"]  # compiling imports flex attention too
    assert report["after_forward"] == ["peft"]
    assert report["block_mask_after"] and report["peft_class"] and report["after_all"] == [] and report["one_dynamo"]
