#!/usr/bin/env bash
# Create .venv and install the pinned requirements (and the checks' requirements-dev.txt) once;
# later runs reuse it. Sourced by demo.sh and test.sh so both work on a fresh clone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setting up $VENV (first run installs ~7 GB of pinned packages; a few minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
PYTHON="$VENV/bin/python"
