"""The server's malloc policy (backend/allocator.py): applied at start, reported, and in effect.

The effect is observed, not assumed: in a fresh interpreter a thread other than the main one
mallocs an 8 MiB and a 256 KiB block. Under glibc's defaults the thread gets an arena of its own
(an mmapped heap far above the program break) and the 8 MiB block is mmapped; with the policy both
come from the main heap, below the program break, where freed memory is reused instead of faulted
in again.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backend.allocator import AllocatorPolicy, AllocatorReport, _glibc, apply_policy

from test_server_harness import ServerThread, engine, tiny_config, tiny_models  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]
glibc_only = pytest.mark.skipif(_glibc()[0] is None, reason="the malloc policy is a no-op without glibc")

PROBE = textwrap.dedent("""
    import ctypes, json, sys, threading
    from backend.allocator import apply_policy
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, (ctypes.c_ssize_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    report = apply_policy() if sys.argv[1] == "on" else None
    out = {"applied": bool(report and report.applied)}
    def probe():
        blocks = {"big": libc.malloc(8 << 20), "small": libc.malloc(256 << 10)}
        brk = libc.sbrk(0)
        out.update({name: address < brk for name, address in blocks.items()})  # below the break: main heap
        for address in blocks.values():
            libc.free(address)
    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    print(json.dumps(out))
""")


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@glibc_only
def test_with_the_policy_a_worker_threads_blocks_come_from_the_main_heap():
    assert _probe("off") == {"applied": False, "big": False, "small": False}  # glibc's defaults, for contrast
    assert _probe("on") == {"applied": True, "big": True, "small": True}


def test_without_glibc_nothing_changes_and_the_report_says_why(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    report = apply_policy()
    assert report == AllocatorReport(False, "not glibc: darwin", AllocatorPolicy(), "not glibc: darwin")
    assert str(report) == "malloc policy not applied (not glibc: darwin)"


@glibc_only
def test_the_server_applies_the_policy_at_start_and_logs_it(engine, tiny_models, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="easel.server")
    with ServerThread(tiny_config(tiny_models, tmp_path), engine) as running:
        report = running.server.allocator
    assert report.applied and report.policy == AllocatorPolicy()
    assert any(r.getMessage().startswith("malloc policy: glibc") and "arenas 1" in r.getMessage() for r in caplog.records)
