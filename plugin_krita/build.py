"""Build the Krita plugin zip: ``python plugin_krita/build.py`` → ``dist/easel-krita.zip``.

The zip installs with Krita's *Tools ▸ Scripts ▸ Import Python Plugin from File…*. It holds::

    easel_krita.desktop              the plugin's entry for Krita
    easel_krita.action               default shortcuts
    easel_krita/                     the package
    easel_krita/protocol/            this repository's protocol package, copied
    easel_krita/clientkit/           this repository's client core, copied (its ``from protocol``
                                     imports made relative: ``clientkit/vendoring.py``)
    easel_krita/_vendor/msgpack/     msgpack's pure-Python files (no C extension: Krita's Python may differ)
    easel_krita/_vendor/websockets/  websockets' Python files (no speedups extension)

Everything lives inside the package, so nothing clashes with another plugin's msgpack or
websockets: the copied protocol's absolute ``import msgpack`` / ``websockets`` lines are rewritten
to import the vendored copies, and the build fails if any other non-standard-library import is
left. Krita's importer only finds a plugin in a zip with explicit directory entries; this zip has
them, and fixed timestamps so the same sources give the same bytes.

Needs only the standard library, plus msgpack and websockets installed in the Python that runs it
(their files are copied, never imported).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = Path(__file__).resolve().parent
PACKAGE = "easel_krita"
DEFAULT_OUTPUT = ROOT / "dist" / "easel-krita.zip"
#: Vendored distributions: (import name, files to skip, relative to the package).
VENDORED = {
    "msgpack": (),
    "websockets": ("trio/", "speedups"),
}
_STAMP = (2020, 1, 1, 0, 0, 0)
_REWRITES = [
    (re.compile(r"^([ \t]*)import (msgpack|websockets)[ \t]*$", re.M), r"\1from .._vendor import \2"),
    (re.compile(r"^([ \t]*)from (msgpack|websockets)((?:\.\w+)*) import ", re.M), r"\1from .._vendor.\2\3 import "),
]


class BuildError(Exception):
    """The sources cannot make a correct zip; the message says which file and why."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"{name} is not installed in {sys.executable}; install it (pip install {name}) to vendor it")
    return Path(next(iter(spec.submodule_search_locations)))


def _python_files(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    out = []
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).as_posix()
        if "__pycache__" in rel or any(rel.startswith(s) or Path(rel).stem == s for s in skip):
            continue
        out.append(path)
    return out


def rewrite_protocol_source(text: str, filename: str) -> str:
    """``protocol/`` source with its msgpack/websockets imports pointed at ``.._vendor``."""
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
    _check_imports(text, filename, allowed=set())
    return text


def _check_imports(text: str, filename: str, allowed: set[str]) -> None:
    """Raise unless every absolute import in ``text`` is the standard library (or ``allowed``)."""
    tree = ast.parse(text, filename)
    stdlib = set(sys.stdlib_module_names)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top not in stdlib and top not in allowed and not _conditional(tree, node):
                raise BuildError(f"{filename}:{node.lineno}: imports {name!r} at module level, which the plugin "
                                 "zip does not carry; vendor it or import it relatively")


def _conditional(tree: ast.AST, target: ast.AST) -> bool:
    """Imports inside functions, ``try`` or ``if`` blocks are optional paths (websockets' proxy
    support, msgpack's PyPy branch), not needed to import the package."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try, ast.If)):
            if any(child is target for child in ast.walk(node)):
                return True
    return False


def collect(root: Path = ROOT) -> dict[str, bytes]:
    """Every file of the zip by its path inside the zip (directories excluded)."""
    files: dict[str, bytes] = {}
    plugin = root / "plugin_krita"
    for name in (f"{PACKAGE}.desktop", f"{PACKAGE}.action"):
        files[name] = (plugin / name).read_bytes()
    package = plugin / PACKAGE
    for path in _python_files(package):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(("protocol/", "clientkit/", "_vendor/")):
            raise BuildError(f"{path} is a build output inside the source tree; delete it")
        files[f"{PACKAGE}/{rel}"] = path.read_bytes()
    for path in sorted(package.glob("*.html")):
        files[f"{PACKAGE}/{path.name}"] = path.read_bytes()
    for path in _python_files(root / "protocol"):
        rel = path.relative_to(root / "protocol").as_posix()
        text = rewrite_protocol_source(path.read_text(encoding="utf-8"), f"protocol/{rel}")
        files[f"{PACKAGE}/protocol/{rel}"] = text.encode("utf-8")
    vendoring = _load_vendoring(root)
    for path in vendoring.shipped_files(root):
        try:
            text = vendoring.vendored_source(path.read_text(encoding="utf-8"), f"clientkit/{path.name}")
        except ValueError as exc:
            raise BuildError(str(exc)) from None
        _check_imports(text, f"clientkit/{path.name}", allowed=set())
        files[f"{PACKAGE}/clientkit/{path.name}"] = text.encode("utf-8")
    files[f"{PACKAGE}/_vendor/__init__.py"] = (
        b'"""Third-party pure-Python packages vendored by plugin_krita/build.py; see their LICENSE files."""\n')
    for name, skip in VENDORED.items():
        source = _package_dir(name)
        for path in _python_files(source, skip):
            rel = path.relative_to(source).as_posix()
            text = path.read_text(encoding="utf-8")
            _check_imports(text, f"{name}/{rel}", allowed=set())
            files[f"{PACKAGE}/_vendor/{name}/{rel}"] = path.read_bytes()
        for license_file in sorted(source.parent.glob(f"{name}-*.dist-info/licenses/*")):
            files[f"{PACKAGE}/_vendor/{name}/{license_file.name}"] = license_file.read_bytes()
    return files


def _load_vendoring(root: Path):
    spec = importlib.util.spec_from_file_location("clientkit_vendoring", root / "clientkit" / "vendoring.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def write_zip(files: dict[str, bytes], output: Path) -> Path:
    """Write ``files`` with an explicit entry for every directory, sorted, with fixed timestamps."""
    dirs = set()
    for name in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]) + "/")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(dirs | set(files)):
            info = zipfile.ZipInfo(name, _STAMP)
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, files[name])
    tmp.replace(output)
    return output


def build(output: Path = DEFAULT_OUTPUT, root: Path = ROOT) -> Path:
    """Build the zip at ``output``; returns its path. Raises :class:`BuildError`."""
    return write_zip(collect(root), output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Easel Krita plugin zip.")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help=f"zip to write (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    try:
        path = build(args.output)
    except (BuildError, OSError) as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
