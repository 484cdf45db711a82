"""The server's connection class: big client frames read past websockets' copies
(:mod:`protocol.transport_frames`), unmasked in place with numpy."""
from __future__ import annotations

import numpy as np

from protocol.transport_frames import ReceivingServerConnection


def unmask_numpy(view: memoryview, mask: bytes) -> None:
    """XOR ``view`` (whose first byte is at a multiple of 4 in its payload) with the 4-byte
    ``mask`` in place: one pass over memory, where websockets' ``apply_mask`` writes a new copy."""
    whole = len(view) & ~3
    if whole:
        words = np.frombuffer(view[:whole], dtype=np.uint32)
        np.bitwise_xor(words, np.frombuffer(mask, dtype=np.uint32)[0], out=words)
    for i in range(whole, len(view)):
        view[i] ^= mask[i & 3]


class EaselServerConnection(ReceivingServerConnection):
    """``serve(..., compression=None, create_connection=EaselServerConnection)`` (compression would
    leave every frame to websockets)."""

    unmask = staticmethod(unmask_numpy)
