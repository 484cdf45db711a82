"""How a plugin build vendors this package next to its copy of ``protocol/`` (build time only;
this module does not ship).

In the repository clientkit imports the protocol as the top-level package ``protocol``; inside a
plugin both are subpackages of the plugin's package, so each ``from protocol… import`` becomes
``from ..protocol… import``. Both plugin builds load this file by path (standard library only).
"""
from __future__ import annotations

import re
from pathlib import Path

_FROM_PROTOCOL = re.compile(r"^([ \t]*)from protocol((?:\.\w+)*) import ", re.M)
_IMPORT_PROTOCOL = re.compile(r"^[ \t]*import protocol\b", re.M)


def vendored_source(text: str, filename: str) -> str:
    """``text`` (a clientkit module) with its protocol imports made relative to the plugin package.
    Raises ``ValueError`` for an ``import protocol`` line, which cannot be rewritten."""
    if _IMPORT_PROTOCOL.search(text):
        raise ValueError(f"{filename}: write `from protocol import …`, not `import protocol`, so plugins can vendor it")
    return _FROM_PROTOCOL.sub(r"\1from ..protocol\2 import ", text)


def shipped_files(root: Path) -> list[Path]:
    """The clientkit modules a plugin ships (this one stays behind)."""
    folder = root / "clientkit"
    return sorted(p for p in folder.glob("*.py") if p.name != "vendoring.py")
