#!/usr/bin/env bash
# Installs everything the tests need and runs every test. The README's test command.
#   bash tests/run_all.sh            # everything
#   bash tests/run_all.sh -k inpaint # extra arguments go to pytest
# Idempotent: re-running reuses the venvs. Needs the package registries (PyPI, Debian); no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

# Host programs for the real-host tests: Krita under a virtual X server, Mesa for Blender's
# Workbench/EEVEE. Installed when missing and we may (root or passwordless sudo).
need_apt=()
command -v krita >/dev/null || need_apt+=(krita)
command -v Xvfb >/dev/null || need_apt+=(xvfb)
dpkg -s python3-pyqt5 >/dev/null 2>&1 || need_apt+=(python3-pyqt5)
for pkg in libegl-mesa0 libgl1-mesa-dri libgbm1; do dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg"); done
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    echo "== installing ${need_apt[*]} (apt)"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

echo "== project venv (.venv)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[backend,test]'
# The cluster extra (Ray Serve) for tests/cluster: ~15 s to install here, ~1.5 min of tests.
.venv/bin/python -m pip install -q -c constraints.txt -e '.[cluster]'

echo "== blender venvs (.venv-blender: bpy 5.0; .venv-blender45: bpy 4.5 LTS; .venv-blender42: bpy 4.2 LTS)"
bash tests/blender/setup_venv.sh
EASEL_BPY='4.5.*' EASEL_BLENDER_VENV=.venv-blender45 bash tests/blender/setup_venv.sh
EASEL_BPY='4.2.*' EASEL_BLENDER_VENV=.venv-blender42 bash tests/blender/setup_venv.sh

echo "== tests"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error
exec .venv/bin/python -m pytest "$@"
