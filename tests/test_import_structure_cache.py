"""transformers' model map kept in a file (startup/import_structure_cache.py).

In fresh interpreters: a start without the file builds the map and writes it, the next start reads
it, and transformers' lazy modules come out the same as with plain imports; cog.yaml's build step
writes a file that a start reads; and the file is ignored for another install, a development
version, or a damaged file, and a folder that cannot be written costs nothing but the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from startup import import_structure_cache
from startup.import_structure_cache import BUILD_COMMAND, FILE_NAME, Cache, cache_key, models_folder

ROOT = Path(__file__).resolve().parent.parent

# The imports stage's diet, then a digest of what transformers' two lazy modules map.
SCRIPT = """
import hashlib, json, logging, sys
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
import torch
from hardware.profiles import load_profiles
from startup.import_diet import diet
with diet(next(p for p in load_profiles() if p.name == "h200-h100")):
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl
    import transformers.models.clip.modeling_clip
import transformers, transformers.models
def digest(*parts):
    return hashlib.sha256(repr(parts).encode()).hexdigest()
report = {"clip": transformers.CLIPTextModel.__module__}
for name in ("transformers", "transformers.models"):
    module = sys.modules[name]
    report[name] = digest(sorted(module._class_to_module.items()), sorted(module._modules), sorted(module.__all__))
    report[name + " missing backends"] = digest(sorted((k, sorted(map(str, v))) for k, v in module._object_missing_backend.items()))
print("REPORT" + json.dumps(report))
"""


def start(env_overrides: dict[str, str]) -> tuple[dict, str]:
    env = dict(os.environ, **env_overrides)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    return json.loads(line[len("REPORT"):]), result.stderr


def test_written_on_a_miss_read_on_the_next_start_and_the_same_maps(tmp_path: Path) -> None:
    folder = tmp_path / "imports"
    plain, _ = start({"LAZY_IMPORTS": "0", "IMPORT_CACHE_DIR": str(folder)})
    assert not folder.exists()  # the switch turns it off
    missed, log = start({"LAZY_IMPORTS": "1", "IMPORT_CACHE_DIR": str(folder)})
    assert "model map written" in log and (folder / FILE_NAME).is_file()
    read, log = start({"LAZY_IMPORTS": "1", "IMPORT_CACHE_DIR": str(folder)})
    assert "model map read" in log and "model map written" not in log
    assert missed == read and read["clip"] == "transformers.models.clip.modeling_clip"
    for name in ("transformers", "transformers.models"):  # plain imports see scipy and bitsandbytes as well
        assert plain[name] == read[name]


def test_the_cog_build_step_writes_a_file_a_start_reads(tmp_path: Path) -> None:
    run = yaml.safe_load((ROOT / "cog.yaml").read_text())["build"]["run"]
    (step,) = [command for command in run if isinstance(command, str) and command.startswith(BUILD_COMMAND + " || ")]
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "IMPORT_CACHE_DIR"}  # the default, as at build
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["sh", "-c", step], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "not written" not in result.stdout, result.stderr[-2000:]
    assert (home / ".cache" / "fast-image-service" / "imports" / FILE_NAME).is_file()
    _, log = start({"LAZY_IMPORTS": "1", "HOME": str(home), "IMPORT_CACHE_DIR": ""})
    assert "model map read" in log and "model map written" not in log


def test_another_install_or_a_damaged_file_is_ignored(tmp_path: Path) -> None:
    models = models_folder()
    key = cache_key(models)
    path = tmp_path / FILE_NAME
    entries = {call: pickle.dumps({"x": 1}) for call in Cache(path, models, key).calls}
    path.write_bytes(pickle.dumps({"key": (key[0], key[1], key[2] + 1), "entries": entries}))  # reinstalled
    assert Cache(path, models, key).entries == {}
    path.write_bytes(pickle.dumps({"key": ("0.0.1", *key[1:]), "entries": entries}))  # another version
    assert Cache(path, models, key).entries == {}
    path.write_bytes(b"not a pickle")
    assert Cache(path, models, key).entries == {}
    path.write_bytes(pickle.dumps({"key": key, "entries": entries}))
    assert set(Cache(path, models, key).entries) == set(entries)


def test_a_development_install_is_never_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(import_structure_cache.importlib.metadata, "version", lambda name: "5.99.0.dev0")
    assert cache_key(models_folder()) is None


def test_an_unwritable_folder_costs_only_the_next_start(tmp_path: Path) -> None:
    models = models_folder()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = Cache(blocker / "imports" / FILE_NAME, models, cache_key(models))
    define = cache.wrap(lambda path, prefix=None: {"answer": hashlib.md5(str(path).encode()).hexdigest()})
    first = define(Path(models), "models")
    assert define(Path(models), "models") is first  # one object per call, as transformers' lru_cache
    assert define(os.path.join(models, "__init__.py"))["answer"]
    assert define(os.path.join(models, "clip", "__init__.py")) is not None  # not cached: transformers'
    assert cache.misses == 2
    cache.save()  # the folder cannot be made: logged, nothing raised
    assert not (blocker / "imports").exists()
