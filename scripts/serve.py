"""Start Cog's real HTTP server (coglet) on loopback with this predictor, without Docker.

Equivalent to what the container built by ``cog build`` runs, schema included: it first writes
``.cog/openapi_schema.json`` from ``predict.py`` (``service/cog_schema.py``), which the server then
enforces before ``predict()`` runs, as in a built image. Extra arguments go to the server, e.g.
``--await-explicit-shutdown true``.

Usage: python scripts/serve.py [--port 5000] [--weights PATH_OR_URL]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def server_command(host: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "cog.server.http", "--host", host, *extra]


def cog_concurrency(root: Path = ROOT) -> int:
    """``concurrency.max`` from cog.yaml, which ``cog build`` turns into the server's COG_MAX_CONCURRENCY."""
    import yaml

    config = yaml.safe_load((root / "cog.yaml").read_text())
    return int((config.get("concurrency") or {}).get("max", 1))


def server_env(port: int, weights: str | None) -> dict[str, str]:
    """The server starts its worker with ``python`` from PATH, so this interpreter's folder goes first.
    ``weights`` are the default model's ($DEFAULT_MODEL, sdxl when unset). Concurrency is cog.yaml's,
    as in a built image, unless COG_MAX_CONCURRENCY is set."""
    sys.path.insert(0, str(ROOT))
    from pipeline.loading.weights import default_model_name
    from request.catalog import MODELS

    env = dict(os.environ)
    env["COG_PREDICT_TYPE_STUB"] = "predict.py:Predictor"
    env["PORT"] = str(port)
    if not env.get("COG_MAX_CONCURRENCY"):
        env["COG_MAX_CONCURRENCY"] = str(cog_concurrency())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if weights:
        env[MODELS[default_model_name()].weights_env] = weights
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--weights", help="the default model's weights path or URL (default: $SDXL_WEIGHTS)")
    args, extra = parser.parse_known_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from service.cog_schema import write_schema

    write_schema(ROOT)
    command = server_command(args.host, extra)
    os.execve(command[0], command, server_env(args.port, args.weights))


if __name__ == "__main__":
    main()
