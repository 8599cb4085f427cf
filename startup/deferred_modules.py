"""Modules imported when something uses them, not when diffusers and transformers are imported or a
model is built.

The libraries bind names from these at import, or torch asks them while a model is built, in ways
that need nothing real until something compiles, runs flex attention or loads a LoRA:

- **torch's compiler front end** (``torch._dynamo``, about a second on the CPU: sympy, FX symbolic
  shapes, triton's probe).
  - At import, ``diffusers.utils.torch_utils`` decorates its attention and block classes with
    ``allow_in_graph``, ``transformers.integrations.deepgemm`` with ``assume_constant_result`` and
    ``transformers.integrations.flex_attention`` with ``torch.compiler.disable``;
    ``transformers.masking_utils`` binds ``TransformGetItemToIndex`` (entered only for vmap-built
    masks), ``torchvision.ops.roi_align`` binds ``is_compile_supported``.
  - While a model is built, torch's meta kernels (``torch._refs``, e.g. ``normal_`` for the
    ``nn.Embedding`` that transformers builds on the meta device) wrap themselves with
    ``torch._dynamo.disable`` on first call.
  - Whenever a pipeline registers a module, diffusers' ``is_compiled_module`` asks for
    ``torch._dynamo.eval_frame.OptimizedModule``.
- **flex attention** (``torch.nn.attention.flex_attention``, which imports sympy): transformers binds
  its mask class and functions at import; no model here runs it.
- **torch's symbolic shapes and sympy** (``torch.fx.experimental.symbolic_shapes``, about 0.3 s on the
  CPU, nearly all sympy): while transformers builds a text encoder on the meta device, torch's meta
  kernels ask its helpers about sizes (``guard_or_false``, ``is_nested_int``...), and
  ``elementwise_dtypes`` and ``sym_not`` import sympy for ``isinstance(x, sympy.Basic)``. The helpers
  are answered for plain ``int``/``bool`` sizes (``startup.shape_guards``; anything symbolic asks the
  real function), and ``sympy.Basic`` is a lazy class: nothing is a sympy object before sympy exists.
- **PEFT** (``peft``, about 0.1 s): diffusers binds ``BaseTunerLayer`` at import whenever peft is
  installed, and its UNet and Flux forwards import it on every call (``scale_lora_layers``) to scale
  LoRA layers that a request without a LoRA does not have. The first LoRA request imports it.

While the imports stage runs, :func:`deferred` puts stand-in modules in ``sys.modules`` that answer
these without importing anything:
- decorators record what they decorate and return it;
- ``disable`` returns a wrapper that calls the function (nothing can be compiling without dynamo) and
  switches to the real disabled wrapper once dynamo exists;
- named functions forward to the real ones;
- named classes are lazy classes: nothing is an instance of them until their real module is
  imported, after which ``isinstance`` asks the real class, and any attribute or call imports it;
- ``eval_frame.OptimizedModule`` is such a class; a named constant is read from the module's source;
- "plain" helpers answer plain sizes and ask the real function about anything else.

Anything else imports the real module: any other attribute of a stand-in, and any import of a
submodule. A finder at the front of ``sys.meta_path`` loads the package first and hands over the
submodule that it imported, so no module runs twice. ``torch.compile`` is one such use. Once
dynamo's package has run, every recorded decorator is applied to it before anyone else sees it, so
compiled graphs are the same as without the diet. A deferred module that needs another (symbolic
shapes needs sympy) loads that one first. The stand-ins of the modules themselves stay in
``sys.modules`` after the stage until then (torch's meta kernels import dynamo at call time), and
then take on the real module's names, so code that bound a stand-in runs at full speed. Submodule
stand-ins leave with the stage, except PEFT's, which its forwards import on every call.

Written against torch 2.11 (the device image) and 2.14 (CI) on Python 3.11 and 3.12. A library
version that takes another name at import does not break anything: the name makes the real module
load. ``tests/test_deferred_modules.py`` checks each answer, the replay, compiling afterwards, and
that a start leaves both modules unimported, so such a version shows up as a failing test.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from startup import shape_guards
from startup.diet_notice import skipped

log = logging.getLogger(__name__)

DYNAMO = "torch._dynamo"
FLEX = "torch.nn.attention.flex_attention"
SHAPES = "torch.fx.experimental.symbolic_shapes"


@dataclass(frozen=True)
class Deferral:
    """One module deferred: the names that libraries take from it (and its submodules) at import."""

    package: str
    # module -> {name: kind}: "function"s forward, "class"es are lazy, "decorator"s are recorded and
    # replayed, "constant"s are read from the source without running it, "plain" helpers answer
    # plain sizes (startup.shape_guards) and forward the rest
    names: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # deferred packages the real module imports: loaded before it
    keep_submodules: bool = False  # submodule stand-ins stay after the stage, until the package loads
    # (distribution, oldest, newest major.minor) this deferral was tested with; outside it, not deferred
    tested: Optional[tuple[str, str, str]] = None


DEFERRALS: tuple[Deferral, ...] = (
    # torch's compiler front end: only torch.compile (the CUDA speed-ups) needs it
    Deferral(DYNAMO, {
        DYNAMO: {
            "allow_in_graph": "decorator",  # diffusers.utils.torch_utils.maybe_allow_in_graph
            "assume_constant_result": "decorator",  # transformers.integrations.deepgemm
        },
        f"{DYNAMO}._trace_wrapped_higher_order_op": {"TransformGetItemToIndex": "function"},  # transformers.masking_utils
        f"{DYNAMO}.utils": {"is_compile_supported": "function"},  # torchvision.ops.roi_align
    }, tested=("torch", "2.11", "2.14")),
    # flex attention: no model here runs it (SDPA and the catalog's attention backends do)
    Deferral(FLEX, {
        FLEX: {  # transformers.integrations.flex_attention and masking_utils; diffusers.models.attention_dispatch
            "BlockMask": "class", "AuxRequest": "class", "create_block_mask": "function",
            "flex_attention": "function", "_DEFAULT_SPARSE_BLOCK_SIZE": "constant",
        },
    }, tested=("torch", "2.11", "2.14")),
    # symbolic algebra: only torch's compiler and symbolic shapes use it
    Deferral("sympy", {
        "sympy": {"Basic": "class"},  # torch._prims_common.elementwise_dtypes, torch.sym_not
    }),
    # torch's symbolic shapes: a model built on the meta device asks it about plain sizes
    Deferral(SHAPES, {
        SHAPES: {name: "plain" for name in shape_guards.PLAIN_ANSWERS},  # torch._refs, torch._prims_common
    }, requires=("sympy",), tested=("torch", "2.11", "2.14")),
    # PEFT: only a LoRA request uses it
    Deferral("peft", {
        "peft": {"PeftModel": "class"},  # diffusers.pipelines.pipeline_loading_utils._unwrap_model
        "peft.tuners.tuners_utils": {"BaseTunerLayer": "class"},  # diffusers.loaders.lora_base, utils.peft_utils
        "peft.helpers": {"disable_input_dtype_casting": "function"},  # diffusers.hooks.layerwise_casting
    }, keep_submodules=True, tested=("peft", "0.21", "0.21")),
)


def _is_real(module: Any) -> bool:
    return module is not None and not isinstance(module, _Standin)


def _real(name: str) -> types.ModuleType:
    """The real module ``name``, importing the deferred module above it first if need be."""
    parts = name.split(".")
    for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
        if isinstance(sys.modules.get(prefix), _Standin):
            del sys.modules[prefix]
    return importlib.import_module(name)


def _forwarder(module: str, attribute: str) -> Callable[..., Any]:
    """A function that calls the real ``module.attribute`` (importing it on the first call)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return getattr(_real(module), attribute)(*args, **kwargs)

    forward.__name__ = attribute
    forward.__qualname__ = f"{module}.{attribute} (deferred)"
    return forward


class _LazyClass(type):
    """Metaclass of a class that stands for ``module.name`` until that module is really imported."""

    def _imported(cls) -> Optional[type]:
        module = sys.modules.get(cls._module)
        return getattr(module, cls._name, None) if _is_real(module) else None

    def __instancecheck__(cls, instance: Any) -> bool:
        real = cls._imported()
        return real is not None and isinstance(instance, real)

    def __subclasscheck__(cls, subclass: Any) -> bool:
        real = cls._imported()
        return real is not None and issubclass(subclass, real)

    def __getattr__(cls, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(getattr(_real(cls._module), cls._name), attribute)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return getattr(_real(cls._module), cls._name)(*args, **kwargs)


def _lazy_class(module: str, name: str) -> type:
    return _LazyClass(name, (), {"_module": module, "_name": name, "__module__": module, "__qualname__": name})


def _plain_answer(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` answered for plain sizes; any other argument is the real function's to answer."""
    plain = shape_guards.PLAIN_ANSWERS[name]

    def answer(*args: Any, **kwargs: Any) -> Any:
        result = plain(*args, **kwargs)
        if result is shape_guards.NOT_PLAIN:
            return getattr(_real(module), name)(*args, **kwargs)
        return result

    answer.__name__ = name
    answer.__qualname__ = f"{module}.{name} (plain sizes)"
    return answer


class _Standin(types.ModuleType):
    """A module until something needs the real one: a few names answered, the rest imported."""

    def __init__(self, name: str, answers: Mapping[str, Any]) -> None:
        super().__init__(name)
        self.__dict__.update(answers)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(_real(self.__name__), attribute)

    def __repr__(self) -> str:
        return f"<deferred module {self.__name__!r}: a stand-in until first use (startup.deferred_modules)>"


def _lazily_disabled(fn: Any, recursive: bool, kwargs: dict[str, Any]) -> Any:
    """``torch._dynamo.disable(fn)`` without dynamo: calls ``fn`` until dynamo exists, then its real wrapper."""
    real_wrapper: list[Any] = []

    @functools.wraps(fn)
    def call(*args: Any, **call_kwargs: Any) -> Any:
        if not real_wrapper:
            dynamo = sys.modules.get(DYNAMO)
            if not _is_real(dynamo):
                return fn(*args, **call_kwargs)
            real_wrapper.append(dynamo.disable(fn, recursive, **kwargs))
        return real_wrapper[0](*args, **call_kwargs)

    return call


class _Package(_Standin):
    """A deferred package's stand-in: importing a submodule reaches :class:`_Finder`."""

    def __init__(self, deferral: Deferral, answers: dict[str, Any], spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(deferral.package, answers)
        self.deferral = deferral
        self.recorded: list[tuple[str, Any]] = []
        for name, kind in deferral.names.get(deferral.package, {}).items():
            if kind == "decorator":
                setattr(self, name, self._recorder(name))
        self.__spec__ = spec  # importlib.util.find_spec answers from it: the libraries ask whether it is installed
        if spec.submodule_search_locations is not None:  # a package
            self.__path__ = list(spec.submodule_search_locations)

    def _recorder(self, decorator: str) -> Callable[[Any], Any]:
        def record(fn: Any) -> Any:
            real = sys.modules.get(self.__name__)
            if _is_real(real):
                return getattr(real, decorator)(fn)
            self.recorded.append((decorator, fn))
            return fn

        record.__name__ = decorator
        return record


class _Dynamo(_Package):
    def disable(self, fn: Any = None, recursive: bool = True, **kwargs: Any) -> Any:
        real = sys.modules.get(DYNAMO)
        if _is_real(real):
            return real.disable(fn, recursive, **kwargs)
        if fn is None:
            return lambda inner: self.disable(inner, recursive, **kwargs)
        return _lazily_disabled(fn, recursive, kwargs)


def _constant(module: str, name: str) -> Any:
    """The literal that ``module``'s source assigns to ``name`` at top level, read without running it."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return ast.literal_eval(node.value)
    raise LookupError(f"{module} assigns no literal {name}")


def _answers(module: str, names: Mapping[str, str]) -> dict[str, Any]:
    made = {"function": _forwarder, "class": _lazy_class, "constant": _constant, "plain": _plain_answer}
    return {name: made[kind](module, name) for name, kind in names.items() if kind in made}


def _wrapper_codes() -> list[types.CodeType]:
    """The code of the stand-ins' wrappers: once dynamo exists it must not trace into them."""
    wrappers = (_lazily_disabled, _forwarder, _plain_answer)
    return [c for f in wrappers for c in f.__code__.co_consts if isinstance(c, types.CodeType)]


def _after_dynamo(module: types.ModuleType) -> None:
    for code in _wrapper_codes():
        module.eval_frame.skip_code(code)


class _Finder(importlib.abc.MetaPathFinder):
    """Routes imports of the deferred packages while their stand-ins are in place.

    The package itself: the real spec, whose loader applies the recordings after it runs. A
    submodule: a spec whose loader imports the package (which may import that very submodule) and
    hands over the one module; finding it here first keeps the import system from running it twice.
    """

    def __init__(self, standins: dict[str, _Package]) -> None:
        self.standins = standins

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        standin = self.standins.get(fullname)
        if standin is not None:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _ReplayLoader(spec.loader, standin, self)
            return spec
        package = next((p for p in self.standins if fullname.startswith(p + ".")), None)
        if package is not None and isinstance(sys.modules.get(package), _Standin):
            return importlib.machinery.ModuleSpec(fullname, _HandOverLoader())
        return None


class _ReplayLoader(importlib.abc.Loader):
    def __init__(self, inner: Any, standin: _Package, finder: _Finder) -> None:
        self.inner, self.standin, self.finder = inner, standin, finder

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        name = self.standin.__name__
        self.finder.standins.pop(name, None)
        if not self.finder.standins and self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        for required in self.standin.deferral.requires:
            if isinstance(sys.modules.get(required), _Standin):
                _real(required)  # first, so that this module binds the real one
        for submodule in [key for key, value in sys.modules.items()
                          if key.startswith(name + ".") and isinstance(value, _Standin)]:
            del sys.modules[submodule]  # kept submodule stand-ins: the package imports the real ones
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)  # its own modules reach for it while it runs
        self.inner.exec_module(module)
        module.__spec__.loader = module.__loader__ = self.inner
        recorded, self.standin.recorded = self.standin.recorded, []
        for decorator, fn in recorded:
            getattr(module, decorator)(fn)
        if name == DYNAMO:
            _after_dynamo(module)
        self.standin.__dict__.update(module.__dict__)  # whoever bound the stand-in now reads the real names
        log.info("%s imported on first use; %d deferred registrations applied", name, len(recorded))

    def __getattr__(self, name: str) -> Any:  # get_filename, get_code, is_package ... for tools
        return getattr(self.inner, name)


class _HandOverLoader(importlib.abc.Loader):
    """Imports the package, then the submodule (the real one), and makes it the result of this import."""

    def create_module(self, spec: Any) -> Any:
        module = _real(spec.name)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["__spec__"] = self.real_spec  # the import system set ours; the module already ran


@contextlib.contextmanager
def deferred(deferrals: tuple[Deferral, ...] = DEFERRALS) -> Iterator[list[str]]:
    """The packages deferred from the block on, until something needs them; yields their names.

    Within the block the submodule stand-ins answer too (the libraries import names from them); after
    it, only the packages stay stand-ins. A package already imported is left alone.
    """
    packages: dict[str, _Package] = {}
    submodules: dict[str, _Standin] = {}
    kept: dict[str, _Standin] = {}
    for deferral in deferrals:
        parent, _, child = deferral.package.rpartition(".")
        if deferral.package in sys.modules or (parent and parent not in sys.modules):
            continue
        try:
            spec = usable_spec(deferral)
            if spec is None:
                continue
            kind = _Dynamo if deferral.package == DYNAMO else _Package
            package = kind(deferral, _answers(deferral.package, deferral.names.get(deferral.package, {})), spec)
            if deferral.package == DYNAMO:
                package.eval_frame = types.SimpleNamespace(OptimizedModule=_lazy_class(f"{DYNAMO}.eval_frame", "OptimizedModule"))
            own = {module: _Standin(module, _answers(module, names)) for module, names in deferral.names.items()
                   if module != deferral.package and module not in sys.modules}
        except Exception as error:  # noqa: BLE001 - a library that changed shape only costs the deferral
            skipped(f"deferring {deferral.package}", f"{type(error).__name__}: {error}")
            continue
        packages[deferral.package] = package
        (kept if deferral.keep_submodules else submodules).update(own)
    sys.modules.update(kept)
    if not packages:
        yield []
        return
    sys.modules.update(packages)
    sys.modules.update(submodules)
    for name, standin in packages.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, standin)
    sys.meta_path.insert(0, _Finder(dict(packages)))
    try:
        yield list(packages)
    finally:
        for name, module in submodules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def _minor(version: str) -> tuple[int, int]:
    major, minor = (version.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def usable_spec(deferral: Deferral) -> Optional[importlib.machinery.ModuleSpec]:
    """The package's spec when it may be deferred here; None (logged) when it is not installed or its
    version is outside the range the deferral was tested with."""
    if deferral.tested is not None:
        distribution, oldest, newest = deferral.tested
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            skipped(f"deferring {deferral.package}", f"{distribution} is not installed")
            return None
        if not _minor(oldest) <= _minor(version) <= _minor(newest):
            skipped(f"deferring {deferral.package}", f"{distribution} {version} is outside the tested {oldest}-{newest}")
            return None
    parent = deferral.package.rpartition(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(deferral.package, sys.modules[parent].__path__ if parent else None)
    if spec is None:
        skipped(f"deferring {deferral.package}", "the module is not found")
    return spec


def still_deferred() -> list[str]:
    """The packages whose stand-ins are still in place."""
    return [d.package for d in DEFERRALS if isinstance(sys.modules.get(d.package), _Package)]


def recorded_count(package: str = DYNAMO) -> int:
    """How many decorations wait for the real ``package`` (for tests)."""
    standin = sys.modules.get(package)
    return len(standin.recorded) if isinstance(standin, _Package) else 0
