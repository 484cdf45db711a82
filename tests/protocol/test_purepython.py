"""The protocol tests again, on msgpack's pure-Python fallback.

Krita's and Blender's Pythons may lack msgpack's compiled extension, so ``protocol/`` must work on
the fallback. ``MSGPACK_PUREPYTHON=1`` only takes effect before msgpack is first imported, so the
tests run again in a subprocess with it set; ``conftest.py`` refuses to run there unless the
fallback really is the one in use.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parents[1]


@pytest.mark.skipif(bool(os.environ.get("MSGPACK_PUREPYTHON")), reason="this is already the fallback run")
@pytest.mark.timeout(1500)
def test_protocol_tests_pass_on_the_pure_python_fallback() -> None:
    files = sorted(str(path) for path in HERE.glob("test_*.py") if path.name != pathlib.Path(__file__).name)
    assert len(files) >= 5
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--tb=short", *files],
        env={**os.environ, "MSGPACK_PUREPYTHON": "1"}, cwd=ROOT, capture_output=True, text=True, timeout=1400,
    )
    tail = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    assert "msgpack: msgpack.fallback (pure-Python fallback)" in result.stdout, tail
    assert "test_msgpack_mode_is_the_one_asked_for PASSED" in result.stdout, tail
    assert " passed" in result.stdout.splitlines()[-1] and "failed" not in result.stdout.splitlines()[-1], tail
