"""The server process's malloc policy: one arena and fixed thresholds, set once at start.

Why: glibc gives each thread that calls malloc an arena of its own (up to 8 per core), mmaps every
block above a threshold (128 KiB, adapting upward to what was freed last) and hands free memory at
the top of the heap back to the kernel. torch on a CPU allocates and frees buffers the size of a
layer's weights on every call (oneDNN reorders conv weights per call): with glibc's defaults each
of those is a fresh mapping that the kernel faults in page by page. One call of an SD-1.5-shaped
UNet at an 8×8 latent took ~464,000 minor page faults (1.8 GB of fresh pages) and ~2× the time it
takes when they are reused (benchmarks/RESULTS.md, "Latency round"), on the device worker thread
and on the main thread alike; issue 20 measured the worker thread worst.

The policy, applied through ``mallopt`` (ctypes, glibc only):

* ``M_ARENA_MAX`` = 1: every thread allocates from the main arena, so memory freed by one thread is
  reused by the next allocation of any thread. The server's threads take turns anyway (the GIL; one
  device worker), so one arena costs no parallelism here.
* ``M_MMAP_THRESHOLD`` fixed at 1 GiB: blocks below it come from the heap and are reused after a
  free instead of being unmapped; setting it also turns off glibc's adaptive thresholds.
* ``M_TRIM_THRESHOLD`` at 2 GiB: free memory at the top of the heap up to this much stays with the
  process instead of being given back and faulted in again by the next job. The cost: the server's
  resident size keeps its largest per-job scratch (≤ 2 GiB) between jobs.

Elsewhere (macOS, Windows, musl) there is no ``mallopt`` with these knobs: :func:`apply_policy`
changes nothing and says so in its report. The policy is process-wide and cannot be undone, so it
is applied by the server (``EaselServer.start``), not on import.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from dataclasses import dataclass

log = logging.getLogger("easel.allocator")

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


@dataclass(frozen=True)
class AllocatorPolicy:
    """What :func:`apply_policy` sets. Sizes in bytes."""

    arena_max: int = 1
    mmap_threshold: int = 1024 * 1024 * 1024
    trim_threshold: int = 2 ** 31 - 1  # mallopt takes an int: 2 GiB is the most it can say


@dataclass(frozen=True)
class AllocatorReport:
    """What happened: ``applied`` is True only when every ``mallopt`` call succeeded."""

    applied: bool
    libc: str
    policy: AllocatorPolicy
    detail: str

    def __str__(self) -> str:
        if not self.applied:
            return f"malloc policy not applied ({self.detail})"
        p = self.policy
        return (f"malloc policy: {self.libc}, arenas {p.arena_max}, mmap threshold {p.mmap_threshold >> 20} MiB, "
                f"trim threshold {(p.trim_threshold + 1) >> 20} MiB")


def _glibc() -> tuple[ctypes.CDLL | None, str]:
    """The running glibc and its version, or (None, why not)."""
    if not sys.platform.startswith("linux"):
        return None, f"not glibc: {sys.platform}"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None, "not glibc: no gnu_get_libc_version (musl or another C library)"
    version.restype = ctypes.c_char_p
    return libc, f"glibc {version().decode('ascii', 'replace')}"


def apply_policy(policy: AllocatorPolicy = AllocatorPolicy()) -> AllocatorReport:
    """Set ``policy`` on this process's malloc (see the module docstring). Never raises: where it
    cannot be applied the report says why and nothing changed. Call once, before the worker starts."""
    libc, name = _glibc()
    if libc is None:
        return AllocatorReport(False, name, policy, name)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    failed = [label for label, param, value in (("M_ARENA_MAX", M_ARENA_MAX, policy.arena_max),
                                                ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, policy.mmap_threshold),
                                                ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, policy.trim_threshold))
              if libc.mallopt(param, value) != 1]
    if failed:
        return AllocatorReport(False, name, policy, f"{name} refused {', '.join(failed)}")
    return AllocatorReport(True, name, policy, "")
