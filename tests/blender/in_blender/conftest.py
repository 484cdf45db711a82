"""Blender as a Python module (PyPI's ``bpy``), headless, in its own venv (.venv-blender).

Run from the main venv by ``tests/blender/test_in_blender.py``, or by hand::

    .venv-blender/bin/python -m pytest tests/blender/in_blender --confcutdir=tests/blender/in_blender

``EASEL_BLENDER_ZIP`` names the extension zip to install (default: built here with
``plugin_blender/build.py``); ``EASEL_BACKEND_PYTHON`` the Python that runs ``easel serve`` (default
the main venv's). The backend runs as a subprocess on a free loopback port with its demo models
(tiny random UNets, a 5-channel depth one among them), built into a temporary folder.

Blender user resources (where extensions install) go to a temporary folder: ``BLENDER_USER_RESOURCES``
must be set before ``bpy`` is first imported, so it is set here, at import time.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/blender: tcp_proxy (stdlib only)
RESOURCES = tempfile.mkdtemp(prefix="easel-blender-user-")
os.environ["BLENDER_USER_RESOURCES"] = RESOURCES

import bpy  # noqa: E402  (after BLENDER_USER_RESOURCES, on purpose)

#: The id in blender_manifest.toml, installed into the "user_default" repository.
MODULE = "bl_ext.user_default.easel"
#: A bound so that a hang fails instead of blocking the suite; not a timing claim.
WAIT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory) -> Path:
    given = os.environ.get("EASEL_BLENDER_ZIP")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("dist") / "easel-blender.zip"
    subprocess.run([sys.executable, str(ROOT / "plugin_blender" / "build.py"), "--output", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def extension(extension_zip):
    """The extension installed from its zip with Blender's own operator, enabled; its module."""
    result = bpy.ops.extensions.package_install_files(filepath=str(extension_zip), repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}
    module = sys.modules[MODULE]
    yield module
    # Disabling unregisters the dispatcher's timer: one left registered hangs Blender 4.5 at exit.
    bpy.ops.preferences.addon_disable(module=MODULE)
    assert not bpy.app.timers.is_registered(module.runtime.dispatch)
    shutil.rmtree(RESOURCES, ignore_errors=True)


@contextlib.contextmanager
def serve(cache: Path, log: Path, *args: str, env: dict[str, str] | None = None):
    """``easel serve`` (demo models built in ``cache``; more flags in ``args``, more environment in
    ``env``) as a subprocess of the main venv's Python, on a free port, logging to ``log``; yields
    (url, port, log)."""
    python = os.environ.get("EASEL_BACKEND_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error",
               **(env or {}))
    env.pop("BLENDER_USER_RESOURCES", None)
    with open(log, "wb") as out:
        server = subprocess.Popen([python, "-m", "backend", "serve", "--port", str(port), "--cache-dir", str(cache),
                                   "--threads", "1", "--log-level", "info", *args],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"easel serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"easel serve did not listen on port {port}:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield types.SimpleNamespace(url=f"ws://127.0.0.1:{port}", port=port, log=log)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        print(f"--- easel serve log (tail) ---\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def backend_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("easel-cache")


@pytest.fixture(scope="session")
def backend(backend_cache, tmp_path_factory):
    """The test session's server: ``.url``, ``.port`` and ``.log`` (its log file, for what it received)."""
    with serve(backend_cache, tmp_path_factory.mktemp("easel-log") / "serve.log") as server:
        yield server


@pytest.fixture(scope="session")
def backend_url(backend) -> str:
    return backend.url
