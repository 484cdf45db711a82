#!/usr/bin/env bash
# Creates (or refreshes) .venv-blender: Blender as a Python module, for tests/blender/in_blender.
#
#   bash tests/blender/setup_venv.sh                     # .venv-blender with bpy 5.0.1
#   EASEL_BPY=4.5.* EASEL_BLENDER_VENV=.venv-blender45 bash tests/blender/setup_venv.sh
#
# PyPI's bpy 4.2-4.5 and 5.0 are built for Python 3.11 only and need numpy<2, hence a venv of its
# own (as a real Blender has its own Python). msgpack and websockets are deliberately NOT installed:
# the tests install the built extension zip, whose bundled wheels must provide them.
# Idempotent: a venv that already has the wanted bpy is left alone (~15 s and ~1 GB otherwise).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${EASEL_BLENDER_VENV:-.venv-blender}
BPY=${EASEL_BPY:-5.0.1}
PYTHON=${EASEL_BLENDER_PYTHON:-python3.11}

if ! command -v "$PYTHON" >/dev/null; then
    echo "setup_venv.sh: $PYTHON not found; PyPI's bpy needs Python 3.11 (set EASEL_BLENDER_PYTHON)" >&2
    exit 1
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$BPY" <<'PY' 2>/dev/null; then
import fnmatch, importlib.metadata as md, sys
sys.exit(0 if fnmatch.fnmatch(md.version("bpy"), sys.argv[1]) and md.version("pytest") else 1)
PY
    echo "$VENV: bpy $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("bpy"))') already installed"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "bpy==$BPY" "numpy<2" "pytest>=8" "pytest-timeout>=2"
"$VENV/bin/python" -c 'import bpy; print("'"$VENV"': Blender", bpy.app.version_string)'
