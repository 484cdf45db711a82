"""Fixtures for the Krita plugin's tests.

Host-free modules are imported from the source tree as the ``easel_krita`` package without running
its ``__init__`` (which registers with Krita): the package is created empty and its ``protocol``
subpackage — in the zip a rewritten copy of ``protocol/`` — is this repository's ``protocol``, and
its ``clientkit`` subpackage likewise this repository's ``clientkit``.
The real-Krita tests (marker ``krita``) use the built zip instead; see ``krita_harness.py``.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_PACKAGE = ROOT / "plugin_krita" / "easel_krita"


def _alias_plugin_package() -> None:
    if "easel_krita" in sys.modules:
        return
    import clientkit
    import protocol
    import protocol.transport

    package = types.ModuleType("easel_krita")
    package.__path__ = [str(PLUGIN_PACKAGE)]  # type: ignore[attr-defined]
    package.__file__ = str(PLUGIN_PACKAGE / "__init__.py")
    sys.modules["easel_krita"] = package
    sys.modules["easel_krita.protocol"] = protocol
    sys.modules["easel_krita.protocol.transport"] = protocol.transport
    sys.modules["easel_krita.clientkit"] = clientkit
    for module in pkgutil.iter_modules(clientkit.__path__):
        sys.modules[f"easel_krita.clientkit.{module.name}"] = importlib.import_module(f"clientkit.{module.name}")


_alias_plugin_package()


import pytest  # noqa: E402  (after the alias, which must run before any test module imports easel_krita)


@pytest.fixture(scope="session")
def backend():
    """A real ``easel serve`` on the demo model, on a free port, for the whole session."""
    pytest.importorskip("diffusers")
    from krita_backend import BackendServer

    server = BackendServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def token_server():
    """A real ``easel serve --token SERVER_TOKEN`` on the demo model (the settings dialog's tests)."""
    pytest.importorskip("diffusers")
    from krita_backend import SERVER_TOKEN, BackendServer

    server = BackendServer("--token", SERVER_TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def plugin_zip(tmp_path_factory) -> Path:
    """The plugin zip, built once per session by ``plugin_krita/build.py`` as a user builds it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("easel_krita_build", ROOT / "plugin_krita" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)  # type: ignore[union-attr]
    return build.build(tmp_path_factory.mktemp("zip") / "easel-krita.zip")
