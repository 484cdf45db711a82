"""Shared settings for the protocol tests.

``MSGPACK_PUREPYTHON=1`` must be set before msgpack is first imported; ``test_purepython.py``
re-runs these tests in a subprocess with it set. Here we make sure the mode asked for is the mode
in use, so a fallback run can never silently test the C extension instead.
"""
from __future__ import annotations

import os

import msgpack
import pytest

PURE_PYTHON = os.environ.get("MSGPACK_PUREPYTHON", "") not in ("", "0")


def msgpack_mode() -> str:
    return msgpack.Packer.__module__


def pytest_report_header(config: pytest.Config) -> str:
    return f"msgpack: {msgpack_mode()} ({'pure-Python fallback' if PURE_PYTHON else 'C extension'})"


def pytest_configure(config: pytest.Config) -> None:
    # Only the fallback run is stopped outright: if it silently used the C extension it would
    # prove nothing. A normal run without the extension fails one test instead
    # (test_codec.py::test_msgpack_mode_is_the_one_asked_for), not everyone's session.
    if PURE_PYTHON and msgpack_mode() != "msgpack.fallback":
        raise pytest.UsageError(f"MSGPACK_PUREPYTHON is set but msgpack's {msgpack_mode()} is in use; "
                                "it must be set before msgpack is first imported")
