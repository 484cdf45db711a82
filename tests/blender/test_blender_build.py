"""The extension zip (plugin_blender/build.py): what it holds and that it is reproducible."""
from __future__ import annotations

import ast
import tomllib
import zipfile
from pathlib import Path

import pytest

from plugin_blender import build

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "blender-wheels"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return build.build(tmp_path_factory.mktemp("dist") / "easel-blender.zip", CACHE)


def test_the_zip_holds_the_addon_the_vendored_protocol_and_the_wheels(archive):
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert manifest["id"] == "easel" and manifest["blender_version_min"] == "4.2.0"
        assert "network" in manifest["permissions"]
        for wheel in manifest["wheels"]:
            assert wheel.removeprefix("./") in names
            assert wheel.endswith("-py3-none-any.whl")  # one zip for every platform
        assert {"__init__.py", "operators.py", "projection.py", "protocol/__init__.py", "protocol/transport.py"} <= names
        assert "build.py" not in names and not any("__pycache__" in n for n in names)
        sources = {p.name for p in (ROOT / "protocol").glob("*.py")}
        assert {n.removeprefix("protocol/") for n in names if n.startswith("protocol/")} == sources
        for name in names:
            if name.endswith(".py"):
                tree = ast.parse(zf.read(name))  # every module compiles
                for node in ast.walk(tree):
                    # The vendored package must be imported relatively: a top-level ``protocol``
                    # module would clash between add-ons.
                    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        assert node.module.split(".")[0] != "protocol", name


def test_the_pure_msgpack_wheel_has_no_compiled_code(archive):
    with zipfile.ZipFile(archive) as zf:
        wheel_name = next(n for n in zf.namelist() if n.startswith("wheels/msgpack-"))
        with zf.open(wheel_name) as raw, zipfile.ZipFile(raw) as wheel:
            assert "msgpack/fallback.py" in wheel.namelist()
            assert not [n for n in wheel.namelist() if n.endswith((".so", ".pyd"))]


def test_the_build_is_reproducible(archive, tmp_path):
    again = build.build(tmp_path / "again.zip", CACHE)
    assert again.read_bytes() == archive.read_bytes()


def test_the_manifest_lists_only_pure_wheels(tmp_path):
    manifest = tmp_path / "blender_manifest.toml"
    manifest.write_text('wheels = ["./wheels/numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl"]\n')
    with pytest.raises(ValueError, match="py3-none-any"):
        build.manifest_wheels(manifest)
