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
    want = "msgpack.fallback" if PURE_PYTHON else "msgpack._cmsgpack"
    if msgpack_mode() != want:
        raise pytest.UsageError(f"expected msgpack's {want} but {msgpack_mode()} is in use "
                                f"(MSGPACK_PUREPYTHON={os.environ.get('MSGPACK_PUREPYTHON', '')!r})")
