"""Blender built as a module must be able to shut down at interpreter exit once the add-on is gone.

The ``bpy`` module build shuts Blender down (``WM_exit``) only when Python frees the ``bpy`` module
object while it finalizes. Blender 4.2's ``unregister_class`` never releases a PropertyGroup class
(4.5 does), so everything reachable from the add-on's PropertyGroup classes lives until exit; when that
reaches ``bpy`` by a path Python does not break at exit, Blender never shuts down and the process
segfaults in a C++ static destructor after Python is gone (docs/blender.md, "Blender 4.2").

Two tests: a fresh Blender that installs and uninstalls the extension must exit with 0 (it segfaults
on 4.2 when the bug is back), and — on every Blender version — no such path may exist from
the add-on's PropertyGroup classes to ``bpy``.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import types
from collections import deque

import bpy

from conftest import MODULE

#: Run in a fresh Blender: install and enable, uninstall (which disables the add-on and drops its
#: modules from sys.modules: the harder case), then let the interpreter exit. The in-Blender suite
#: itself covers the other way out: disabled, its modules left loaded.
LIFECYCLE = """
import sys
import bpy
zip_path, module = sys.argv[1], sys.argv[2]
assert bpy.ops.extensions.package_install_files(
    filepath=zip_path, repo="user_default", enable_on_install=True) == {"FINISHED"}
assert module in sys.modules
repos = [repo.module for repo in bpy.context.preferences.extensions.repos]
assert bpy.ops.extensions.package_uninstall(
    repo_index=repos.index("user_default"), pkg_id=module.rsplit(".", 1)[1]) == {"FINISHED"}
assert module not in sys.modules
print("lifecycle done")
"""


def test_blender_exits_cleanly_after_the_extension_is_uninstalled(extension_zip, tmp_path):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", BLENDER_USER_RESOURCES=str(tmp_path / "resources"))
    run = subprocess.run([sys.executable, "-c", LIFECYCLE, str(extension_zip), MODULE], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    output = (run.stdout + run.stderr)[-3000:]
    assert "lifecycle done" in run.stdout, output
    # A negative code is the signal that killed it: -11 is the segfault at exit of the 4.2 bug.
    assert run.returncode == 0, f"Blender {bpy.app.version_string} exited with {run.returncode}:\n{output}"


def owned(obj: object, package: str) -> bool:
    """Whether the walk goes into ``obj``: the add-on's own functions, classes, modules and instances,
    and the plain containers (dicts, lists, cells, Blender's deferred properties...) between them."""
    if isinstance(obj, (types.FunctionType, type)):
        return obj.__module__.startswith(package)
    if isinstance(obj, types.ModuleType):
        return obj.__name__.startswith(package)
    return type(obj).__module__ == "builtins" or type(obj).__module__.startswith(package)


def path_to_bpy(start: type, package: str) -> list[str] | None:
    """The references from ``start`` through the add-on's own objects to the ``bpy`` module, or None.

    Python clears the namespace of every module object still alive at exit, but not a namespace whose
    module object is already gone while a function still holds it as ``__globals__``; the add-on's
    module objects may be gone early too (uninstalling removes them from ``sys.modules``). So any
    path through the add-on's functions, classes, modules or data counts. The walk does not go into
    Blender's, the standard library's or the test harness's objects: they are not the add-on's to
    change, and Blender exits cleanly with them (an empty PropertyGroup leaked the same way does).
    """
    target = sys.modules["bpy"]
    seen = {id(start)}
    queue = deque([(start, [f"{type(start).__name__} {start.__qualname__}"])])
    while queue:
        obj, path = queue.popleft()
        named = {id(value): f"[{key!r}]" for key, value in obj.items()} if isinstance(obj, dict) else {}
        for ref in [vars(obj)] if isinstance(obj, types.ModuleType) else gc.get_referents(obj):
            label = named.get(id(ref), "->")
            if ref is target:
                return path + [f"{label} the bpy module"]
            if id(ref) in seen or not owned(ref, package):
                continue
            seen.add(id(ref))
            name = getattr(ref, "__qualname__", None) if isinstance(ref, (types.FunctionType, type)) else None
            queue.append((ref, path + [f"{label} {type(ref).__name__}" + (f" {name}" if name else "")]))
    return None


def test_the_property_groups_do_not_keep_bpy_alive(extension):
    groups = [cls for cls in extension.CLASSES if issubclass(cls, bpy.types.PropertyGroup)]
    assert extension.properties.EaselSettings in groups
    for cls in groups:
        path = path_to_bpy(cls, MODULE)
        assert path is None, (f"{cls.__name__} reaches the bpy module; on Blender 4.2 this keeps Blender from "
                              "shutting down and segfaults at exit (see properties.py):\n  " + "\n  ".join(path))
