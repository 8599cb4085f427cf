"""transformers' map of its models, read from a file instead of rebuilt from 2,600 files at every start.

``import transformers`` maps every public name of every model file to its module
(``define_import_structure``: it reads each file's ``__all__``), and ``transformers.models`` maps it
again for its own lazy module: 0.4-0.5 s of the imports stage on the CPU (README, Start-up). Both
maps depend only on the installed transformers' files. So while the imports stage runs, those two
calls are answered from a file keyed by transformers' version, its models folder and that folder's
modification time (which a new install changes); on a miss transformers builds them as usual and the
file is written at the end of the stage, for the next start.

A container starts from its image, so the first start of each container would miss: ``cog build``
writes the file into the image (``cog.yaml``'s ``run:`` step, :data:`BUILD_COMMAND`, which a test
runs and checks this module reads). A development install of transformers (a ``.dev`` version,
whose files change under the same version) is never cached. ``LAZY_IMPORTS=0`` turns this off with
the rest of the diet. The file is a pickle: it is written and read only by this service, in the
operator's cache folder, which is trusted as much as the installed packages are.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import settings
from startup.diet_notice import skipped

log = logging.getLogger(__name__)

MODULE = "transformers.utils.import_utils"
FILE_NAME = "transformers-import-structure.pickle"

# cog.yaml runs this at build (the service's code is not in the image yet, hence one self-contained
# line): the same key and entries as Cache below, in IMPORT_CACHE_DIR (its default at build).
BUILD_COMMAND = (
    "python -c \"import os, pickle, importlib.metadata as md, transformers.utils.import_utils as u; "
    "models = os.path.normpath(os.path.join(os.path.dirname(os.path.dirname(u.__file__)), 'models')); "
    "u.create_import_structure_from_path.cache_clear(); "
    "calls = [(models, 'models'), (os.path.join(models, '__init__.py'), None)]; "
    "entries = {call: pickle.dumps(u.define_import_structure.__wrapped__(*call)) for call in calls}; "
    "key = (md.version('transformers'), models, os.stat(models).st_mtime_ns); "
    "folder = os.path.expanduser(os.environ.get('IMPORT_CACHE_DIR') or '~/.cache/fast-image-service/imports'); "
    "os.makedirs(folder, exist_ok=True); "
    "open(os.path.join(folder, 'transformers-import-structure.pickle'), 'wb').write(pickle.dumps({'key': key, 'entries': entries}))\""
)


def models_folder() -> Optional[str]:
    """transformers' models folder, found without importing transformers (None: not installed)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(spec.origin), "models"))


def cache_key(models: str) -> Optional[tuple[str, str, int]]:
    """What the maps depend on; None for an install whose files may change under the same version."""
    version = importlib.metadata.version("transformers")
    if ".dev" in version:
        return None
    return (version, models, os.stat(models).st_mtime_ns)


class Cache:
    """The two calls' answers for one transformers install: read from the file, or recorded to write it."""

    def __init__(self, path: Path, models: str, key: tuple[str, str, int]) -> None:
        self.path, self.key = path, key
        self.calls = [(models, "models"), (os.path.join(models, "__init__.py"), None)]
        self.entries: dict[tuple[str, Optional[str]], bytes] = {}
        self.answers: dict[tuple[str, Optional[str]], Any] = {}
        self.hits = self.misses = 0
        with contextlib.suppress(OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError):
            stored = pickle.loads(path.read_bytes())
            if stored["key"] == key and set(stored["entries"]) == set(self.calls):
                self.entries = dict(stored["entries"])

    def wrap(self, define: Callable[..., Any]) -> Callable[..., Any]:
        """``define_import_structure`` answering the two calls from the file; anything else is transformers'."""

        def define_import_structure(module_path: Any, prefix: Optional[str] = None) -> Any:
            call = (os.path.normpath(str(module_path)), prefix)
            if call not in self.calls:
                return define(module_path, prefix)
            if call not in self.answers:  # one object per call, as transformers' own lru_cache gives
                if call in self.entries:
                    self.answers[call] = pickle.loads(self.entries[call])
                    self.hits += 1
                else:
                    self.answers[call] = define(module_path, prefix)
                    self.entries[call] = pickle.dumps(self.answers[call])  # before transformers adds to it
                    self.misses += 1
            return self.answers[call]

        define_import_structure.__wrapped__ = define  # type: ignore[attr-defined]
        define_import_structure.__doc__ = define.__doc__
        return define_import_structure

    def save(self) -> None:
        """Write the file after a miss (both calls answered); a read-only folder only costs the next start."""
        if not self.misses or set(self.entries) != set(self.calls):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(pickle.dumps({"key": self.key, "entries": self.entries}))
            os.replace(partial, self.path)
            log.info("imports: transformers' model map written to %s for the next start", self.path)
        except OSError as error:
            log.info("imports: transformers' model map not written (%s); each start builds it", error)


class _Finder(importlib.abc.MetaPathFinder):
    """Hands transformers' import utilities a loader that wraps ``define_import_structure`` once they run."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _WrappingLoader(spec.loader, self.cache)
        return spec


class _WrappingLoader(importlib.abc.Loader):
    def __init__(self, inner: Any, cache: Cache) -> None:
        self.inner, self.cache = inner, cache

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.inner.exec_module(module)
        module.__spec__.loader = module.__loader__ = self.inner
        define = getattr(module, "define_import_structure", None)
        why = unexpected(define)
        if why is not None:
            skipped("transformers' model map from a file", why)
            return
        module.define_import_structure = self.cache.wrap(define)

    def __getattr__(self, name: str) -> Any:  # get_filename, get_code, is_package ... for tools
        return getattr(self.inner, name)


def unexpected(define: Any) -> Optional[str]:
    """Why ``define_import_structure`` is not the function this cache was written for (transformers
    5.17-5.24: ``(module_path, prefix=None)``), or None."""
    import inspect

    if not callable(define):
        return "transformers has no define_import_structure"
    try:
        names = list(inspect.signature(define).parameters)
    except (TypeError, ValueError):
        return "define_import_structure has no readable signature"
    if names != ["module_path", "prefix"]:
        return f"define_import_structure takes ({', '.join(names)}), not (module_path, prefix)"
    return None


def cache_path() -> Path:
    return Path(settings.get("IMPORT_CACHE_DIR")).expanduser() / FILE_NAME


@contextlib.contextmanager
def cached_import_structure() -> Iterator[Optional[Cache]]:
    """Within the block, transformers' first import reads its model map from the file (or writes it after).

    Nothing happens when transformers is imported already, not installed, or a development install.
    """
    models = None if MODULE in sys.modules else models_folder()
    key = cache_key(models) if models and os.path.isdir(models) else None
    if key is None:
        yield None
        return
    cache = Cache(cache_path(), models, key)
    finder = _Finder(cache)
    sys.meta_path.insert(0, finder)
    try:
        yield cache
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        if cache.hits:
            log.info("imports: transformers' model map read from %s", cache.path)
        cache.save()
