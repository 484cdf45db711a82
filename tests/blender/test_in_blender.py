"""Runs the in-Blender tests (``tests/blender/in_blender``) in Blender's own venv, from the main
test run, so one ``pytest`` covers everything.

Blender as a Python module needs Python 3.11 and numpy<2, so it lives in ``.venv-blender``
(made by ``tests/blender/setup_venv.sh``). This test builds the extension zip, then runs pytest
in that venv against it; the in-Blender tests start ``easel serve`` from this (the main) venv.
A second Blender, ``.venv-blender45`` (bpy 4.5 LTS), is tested too when present (``tests/run_all.sh`` makes it),
and so is ``.venv-blender42`` (bpy 4.2 LTS, the manifest's floor) when present.

The run must exit with 0: a Blender that crashes at exit after every test passed (the bpy 4.2 module
build did, see docs/blender.md) fails here, with the signal named.

Without ``.venv-blender`` the test is skipped with the command to make it — except under CI
(``CI`` set), where a missing Blender venv is a failure.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_blender import build

ROOT = Path(__file__).resolve().parents[2]
#: A bound so that a hang fails; the suite takes well under a minute here.
TIMEOUT_S = 900


@pytest.mark.blender
@pytest.mark.parametrize("venv, required", [(".venv-blender", True), (".venv-blender45", False),
                                             (".venv-blender42", False)])
def test_extension_in_blender(venv, required, tmp_path):
    python = ROOT / venv / "bin" / "python"
    if not python.exists():
        if required and os.environ.get("CI"):
            pytest.fail(f"{venv} is missing; CI must run tests/blender/setup_venv.sh first")
        pytest.skip(f"{venv} is missing; make it with: bash tests/blender/setup_venv.sh")
    archive = build.build(tmp_path / "easel-blender.zip", ROOT / "build" / "blender-wheels")
    env = dict(os.environ, EASEL_BLENDER_ZIP=str(archive), EASEL_BACKEND_PYTHON=sys.executable,
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [str(python), "-m", "pytest", "tests/blender/in_blender", "-q", "-p", "no:cacheprovider",
         "--confcutdir=tests/blender/in_blender", "-o", "addopts=", f"--basetemp={tmp_path / 'in_blender'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    tail = (run.stdout + run.stderr)[-6000:]
    if run.returncode < 0:  # killed by a signal, e.g. a crash at interpreter exit after every test passed
        pytest.fail(f"Blender in {venv} was killed by signal {-run.returncode} "
                    f"({signal.Signals(-run.returncode).name}):\n{tail}")
    assert run.returncode == 0, f"the in-Blender tests failed in {venv}:\n{tail}"
    summary = [line for line in run.stdout.splitlines() if " passed" in line]
    assert summary and "failed" not in summary[-1] and "skipped" not in summary[-1], tail
    print(f"{venv}: {summary[-1]}")
