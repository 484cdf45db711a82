"""Tests of the Blender extension.

* The files here run in the main venv: the host-free modules of ``plugin_blender`` (numpy only),
  the zip build, and ``test_in_blender.py``, which runs ``in_blender/`` in Blender's own venv.
* ``in_blender/`` runs only in ``.venv-blender`` (the ``bpy`` module from PyPI, numpy<2); the main
  venv does not collect it.

``plugin_blender/__init__.py`` registers Blender classes and so imports ``bpy``; the unit tests
import the host-free modules without running it, by putting a bare package for ``plugin_blender``
into ``sys.modules``. The built extension vendors ``protocol/`` as ``plugin_blender/protocol``;
here the source tree's ``protocol`` package stands in for it (same files, see ``build.py``).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

collect_ignore = ["in_blender"]

if importlib.util.find_spec("bpy") is None and "plugin_blender" not in sys.modules:
    package = types.ModuleType("plugin_blender")
    package.__path__ = [str(ROOT / "plugin_blender")]
    sys.modules["plugin_blender"] = package
    sys.modules["plugin_blender.protocol"] = importlib.import_module("protocol")
    sys.modules["plugin_blender.protocol.transport"] = importlib.import_module("protocol.transport")
    sys.modules["plugin_blender.clientkit"] = importlib.import_module("clientkit")
    for module in pkgutil.iter_modules(sys.modules["plugin_blender.clientkit"].__path__):
        sys.modules[f"plugin_blender.clientkit.{module.name}"] = importlib.import_module(f"clientkit.{module.name}")
