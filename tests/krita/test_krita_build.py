"""The plugin zip: layout, determinism, Krita's importer, and the vendored packages working in a
Python that has neither msgpack nor websockets (Debian's python3, which is Krita's)."""
from __future__ import annotations

import importlib.util
import subprocess
import zipfile
from pathlib import Path

import pytest

from krita_harness import find_importer, install_zip

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _build_module():
    spec = importlib.util.spec_from_file_location("easel_krita_build", ROOT / "plugin_krita" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return _build_module().build(tmp_path_factory.mktemp("zip") / "easel-krita.zip")


def test_zip_layout_has_directory_entries_and_only_python_sources(built):
    names = zipfile.ZipFile(built).namelist()
    assert {"easel_krita.desktop", "easel_krita.action", "easel_krita/", "easel_krita/__init__.py",
            "easel_krita/protocol/", "easel_krita/protocol/transport.py", "easel_krita/_vendor/msgpack/fallback.py",
            "easel_krita/_vendor/websockets/asyncio/client.py"} <= set(names)
    for name in names:  # Krita's importer needs an explicit entry for every folder
        parent = name.rstrip("/").rpartition("/")[0]
        assert not parent or parent + "/" in names, name
    assert not [n for n in names if n.endswith((".so", ".pyd", ".c", ".pyc")) or "__pycache__" in n]
    assert not [n for n in names if n.startswith("easel_krita/_vendor/websockets/trio")]


def test_build_is_deterministic(built, tmp_path):
    again = _build_module().build(tmp_path / "again.zip")
    assert again.read_bytes() == built.read_bytes()


def test_protocol_imports_point_at_the_vendored_copies(built):
    archive = zipfile.ZipFile(built)
    codec = archive.read("easel_krita/protocol/codec.py").decode()
    transport = archive.read("easel_krita/protocol/transport.py").decode()
    assert "from .._vendor import msgpack" in codec and "\nimport msgpack" not in codec
    assert "from .._vendor.websockets.asyncio.client import connect" in transport


def test_build_refuses_a_stray_absolute_import():
    build = _build_module()
    with pytest.raises(build.BuildError, match="imports 'numpy'"):
        build.rewrite_protocol_source("import numpy\n", "protocol/x.py")
    assert build.rewrite_protocol_source("import msgpack\n", "p.py") == "from .._vendor import msgpack\n"


@pytest.mark.skipif(find_importer() is None, reason="Krita's plugin_importer.py is not installed")
def test_krita_importer_installs_the_plugin_and_its_shortcuts(built, tmp_path):
    assert install_zip(built, tmp_path) == ["easel_krita"]
    assert (tmp_path / "pykrita" / "easel_krita.desktop").exists()
    assert (tmp_path / "pykrita" / "easel_krita" / "_vendor" / "websockets" / "__init__.py").exists()
    assert "ctrl+alt+shift+g" in (tmp_path / "actions" / "easel_krita.action").read_text()


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no /usr/bin/python3")
def test_vendored_packages_work_in_a_python_without_them(built, tmp_path):
    check = subprocess.run([str(SYSTEM_PYTHON), "-c", "import msgpack"], capture_output=True)
    if check.returncode == 0:
        pytest.skip("this python3 has msgpack installed; the test needs one without")
    with zipfile.ZipFile(built) as archive:
        archive.extractall(tmp_path)
    script = r'''
import asyncio, sys, types
sys.path.insert(0, ".")
pkg = types.ModuleType("easel_krita"); pkg.__path__ = ["easel_krita"]; sys.modules["easel_krita"] = pkg
from easel_krita.protocol import decode, encode, SubmitJob, JobParams
from easel_krita.protocol.transport import AsyncClient
from easel_krita.request import Action, GenerationSettings, plan
from easel_krita.geometry import Rect
job, _ = plan(Action.GENERATE, GenerationSettings(prompt="x", seed=1), Rect(0, 0, 64, 64), None).submit("j")
assert decode(encode(job)) == job
async def main():
    client = AsyncClient("ws://127.0.0.1:9", client_name="t", client_version="0", reconnect=False, open_timeout=2)
    try:
        await client.start()
    except ConnectionError as exc:
        return str(exc)
print(asyncio.run(main()))
print("msgpack" in sys.modules, "websockets" in sys.modules, type(sys.modules["easel_krita._vendor.msgpack"].Packer).__module__)
from easel_krita.protocol import transport_send  # no websockets C extension here: the stdlib mask
print(transport_send.apply_mask is transport_send.mask_lanes)
'''
    result = subprocess.run([str(SYSTEM_PYTHON), "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("cannot reach the Easel server at ws://127.0.0.1:9")
    assert lines[1].startswith("False False")
    assert lines[2] == "True"
