"""Build the Blender extension zip: ``python plugin_blender/build.py`` → ``dist/easel-blender.zip``.

The zip holds this folder's modules and ``blender_manifest.toml`` at its root, the project's
``protocol/`` package vendored as the subpackage ``protocol``, the client core ``clientkit/`` as
the subpackage ``clientkit`` (its ``from protocol`` imports made relative, ``clientkit/vendoring.py``), and the pure-Python wheels the
manifest lists under ``wheels/`` (Blender installs those itself). Wheels are fetched once with pip
into a cache folder (``build/blender-wheels`` by default; PyPI the first time, offline after): a
``py3-none-any`` wheel when PyPI has one, else built from the sdist with the package's pure-Python
switch (msgpack: ``MSGPACK_PUREPYTHON=1``). The zip is deterministic: same inputs, same bytes.

Blender 4.2+'s own ``blender --command extension build`` is not in the ``bpy`` module, hence this.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Modules of the add-on that must not ship.
EXCLUDE = {"build.py"}
#: Environment switches that make a package build without its C extension.
PURE_BUILD_ENV = {"MSGPACK_PUREPYTHON": "1"}
_WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-py3-none-any\.whl$")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def manifest_wheels(manifest: Path) -> list[str]:
    """Wheel file names the manifest lists; raises ``ValueError`` unless each is ``./wheels/<pure wheel>``."""
    data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    names = []
    for entry in data.get("wheels", []):
        name = entry.removeprefix("./wheels/")
        if name == entry or not _WHEEL.match(name):
            raise ValueError(f"manifest wheel {entry!r} must be ./wheels/<name>-<version>-py3-none-any.whl")
        names.append(name)
    return names


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True,
                   env={**os.environ, **(env or {})})


def fetch_wheel(filename: str, cache: Path) -> Path:
    """``cache/filename``, fetched or built with pip when missing. Raises ``RuntimeError`` when pip
    produced some other file (a version the index does not have as a pure wheel)."""
    target = cache / filename
    if target.exists():
        return target
    match = _WHEEL.match(filename)
    assert match, filename
    requirement = f"{match['name']}=={match['version']}"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        _pip("download", requirement, "--no-deps", "--only-binary", ":all:", "--platform", "any",
             "--python-version", "3.11", "--dest", str(cache))
    except subprocess.CalledProcessError:
        with tempfile.TemporaryDirectory() as tmp:
            _pip("download", requirement, "--no-deps", "--no-binary", ":all:", "--dest", tmp)
            sdist = next(Path(tmp).iterdir())
            _pip("wheel", "--no-deps", "--wheel-dir", str(cache), str(sdist), env=PURE_BUILD_ENV)
    if not target.exists():
        raise RuntimeError(f"pip did not produce {filename}; found {sorted(p.name for p in cache.iterdir())}")
    return target


def _add(archive: zipfile.ZipFile, source: Path | bytes, name: str) -> None:
    info = zipfile.ZipInfo(name, _EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, source if isinstance(source, bytes) else source.read_bytes())


def clientkit_files() -> list[tuple[bytes, str]]:
    """``clientkit/`` as the zip's ``clientkit`` subpackage, its protocol imports made relative."""
    spec = importlib.util.spec_from_file_location("clientkit_vendoring", ROOT / "clientkit" / "vendoring.py")
    vendoring = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendoring)  # type: ignore[union-attr]
    return [(vendoring.vendored_source(p.read_text(encoding="utf-8"), p.name).encode("utf-8"), f"clientkit/{p.name}")
            for p in vendoring.shipped_files(ROOT)]


def build(output: Path, cache: Path) -> Path:
    manifest = HERE / "blender_manifest.toml"
    wheels = [fetch_wheel(name, cache) for name in manifest_wheels(manifest)]
    files: list[tuple[Path | bytes, str]] = [(manifest, "blender_manifest.toml")]
    files += [(p, p.name) for p in sorted(HERE.glob("*.py")) if p.name not in EXCLUDE]
    files += [(p, f"protocol/{p.name}") for p in sorted((ROOT / "protocol").glob("*.py"))]
    files += clientkit_files()
    files += [(p, f"wheels/{p.name}") for p in wheels]
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for path, name in files:
            _add(archive, path, name)
    partial.replace(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "easel-blender.zip")
    parser.add_argument("--wheel-cache", type=Path, default=ROOT / "build" / "blender-wheels")
    args = parser.parse_args(argv)
    path = build(args.output, args.wheel_cache)
    print(f"built {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
