"""Writing frames to a websocket, image chunks without joining them into one buffer first.

websockets' ``send`` takes one bytes-like message: an ``image_chunk`` frame would be the codec's
join of its msgpack head and the image slice (a copy of 4 MiB), then websockets' frame (header
and payload into a new buffer: another copy; a client also masks it into a third buffer). Here a
chunk comes as a :class:`~.codec.SplitFrame` (``data_to_send(split=True)``) and is framed at the
socket: the websocket header and the msgpack head go out as one small write, and the slice
itself (a server) or its masked copy (a client, masked in one pass straight from the image) as
the next. The frame on the wire is the one websockets would have built, byte for byte where
there is no mask (RFC 6455 section 5.2; a client's mask key is random either way).

It all happens inside websockets' ``send_context()``, as ``send`` does it: the connection's state
is checked on entry, and on exit websockets writes anything it queued meanwhile, waits while the
transport's buffer is over its high-water mark (flow control) and turns a failed write into
``ConnectionClosed``. Nothing awaits between a frame's first byte and its last, so no other frame
(a pong websockets answers on its own, another writer's message) can land inside it. Before a big
chunk the writer waits until the transport's buffer is empty (:func:`_until_written`), so the
socket takes the data straight from the image instead of the transport copying it behind a few
bytes still queued.

Where that is not possible (a websockets without these internals, an extension such as
permessage-deflate that rewrites payloads), :func:`send_frames` sends each frame with ``send``,
a chunk joined first, as before.
"""
from __future__ import annotations

import asyncio
import secrets
import struct
from typing import Any, Sequence

from websockets.exceptions import ProtocolError
from websockets.protocol import Side

from .codec import SplitFrame


def mask_lanes(data: Any, mask: bytes) -> bytes | bytearray:
    """``data`` XOR the 4-byte ``mask`` repeated (RFC 6455 section 5.3), in the standard library:
    each of the four byte lanes (``data[i::4]``) through a 256-byte translation table. What
    websockets' ``apply_mask`` gives, for where its C extension is missing (the Krita plugin
    bundles websockets' Python files only): a 2048² layer's chunks take ~45 ms here, where
    websockets' pure-Python fallback (a big-integer XOR) takes ~80 ms."""
    data = bytes(data)  # one copy of a view: a memoryview's strided slices are slow, bytes' are not
    out = bytearray(len(data))
    for lane in range(4):
        out[lane::4] = data[lane::4].translate(bytes(b ^ mask[lane] for b in range(256)))
    return out


try:  # websockets' C masking where it was built
    from websockets.speedups import apply_mask
except ImportError:
    apply_mask = mask_lanes

__all__ = ["send_frames", "frames_writable"]

#: A piece smaller than this goes out joined with what is written before it (a copy of that much
#: costs less than a socket write of its own); larger ones are written as they are.
JOIN_BELOW = 64 * 1024
#: The first byte of an unfragmented binary frame: FIN and opcode 2 (RFC 6455 section 5.2).
_FIN_BINARY = 0x82
_MASKED = 0x80


def frames_writable(ws: Any) -> bool:
    """Whether ``ws`` (a websockets asyncio connection) has what :func:`send_frames` writes
    through, and sends payloads as they are (no extension such as permessage-deflate)."""
    protocol = getattr(ws, "protocol", None)
    return (callable(getattr(ws, "send_context", None)) and getattr(ws, "transport", None) is not None
            and _send_waiter_name(ws) is not None and protocol is not None
            and not getattr(protocol, "extensions", True)
            and callable(getattr(ws, "drain", None))
            and hasattr(protocol, "expect_continuation_frame") and hasattr(protocol, "side")
            and callable(getattr(protocol, "send_binary", None)) and callable(getattr(protocol, "data_to_send", None)))


def _send_waiter_name(ws: Any) -> str | None:
    """The attribute that holds a fragmented message's send in progress (websockets ≥ 16:
    ``send_in_progress``; 14 and 15: ``fragmented_send_waiter``)."""
    for name in ("send_in_progress", "fragmented_send_waiter"):
        if hasattr(ws, name):
            return name
    return None


async def send_frames(ws: Any, frames: Sequence[bytes | SplitFrame]) -> None:
    """Send ``frames`` (bytes, or :class:`~.codec.SplitFrame` image chunks) as binary messages on
    ``ws``, in order. Frames and pieces under :data:`JOIN_BELOW` are written together, so a few
    small frames are one socket write; a chunk's data is written as it is (a server) or masked
    once into its own buffer (a client). Raises what ``ws.send`` raises (``ConnectionClosed``)."""
    if len(frames) == 1 and type(frames[0]) is not SplitFrame:
        await ws.send(frames[0])
        return
    if not frames_writable(ws):
        for frame in frames:
            await ws.send(frame if type(frame) is not SplitFrame else bytes(frame))
        return
    if any(type(frame) is SplitFrame and len(frame.data) >= JOIN_BELOW for frame in frames):
        await _until_written(ws)
    waiter_name = _send_waiter_name(ws)
    while (waiter := getattr(ws, waiter_name)) is not None:  # another task's fragmented message
        await asyncio.shield(waiter)
    async with ws.send_context():
        protocol, transport = ws.protocol, ws.transport
        masked = protocol.side is Side.CLIENT
        joined: list[Any] = []  # pieces of the next write
        for frame in frames:
            if type(frame) is not SplitFrame:
                protocol.send_binary(frame)  # framed by websockets, written with what follows
                continue
            if protocol.expect_continuation_frame:  # as protocol.send_binary checks
                raise ProtocolError("expected a continuation frame")
            joined.extend(protocol.data_to_send())  # frames websockets framed before this one
            head, payload = _pieces(frame, masked)
            if getattr(protocol, "debug", False):
                protocol.logger.debug("> BINARY [%d bytes, written in pieces]", len(frame))
            joined.append(head)
            if len(payload) < JOIN_BELOW:
                joined.append(payload)
            else:
                transport.write(b"".join(joined))
                joined.clear()
                transport.write(payload)
        joined.extend(protocol.data_to_send())
        if joined:
            transport.write(b"".join(joined))


async def _until_written(ws: Any) -> None:
    """Wait until the transport's buffer is empty. websockets' flow control lets a send return
    once the buffer is under its low-water mark (8 KiB by default): a big frame written then goes
    behind those bytes, all of it into the buffer (a copy of 4 MiB on Python 3.11), where on an
    empty buffer the transport hands it to the socket at once, which takes most of it. The
    transport's own flow control does the waiting: with its limits at zero it pauses the
    connection (``pause_writing``) and resumes it once everything is written, which websockets'
    ``drain`` waits for; then the limits are put back."""
    transport = ws.transport
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        await ws.drain()
    except Exception:  # noqa: BLE001 - the connection failed; send_context, entered next, raises ConnectionClosed
        pass
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


def _pieces(frame: SplitFrame, masked: bool) -> tuple[bytes, Any]:
    """The frame's bytes on the wire as two pieces: the websocket header with the (masked) msgpack
    head, and the (masked) data. A client's mask is a fresh random key per frame (RFC 6455 section
    5.3); the data's key is rotated by the head's length, so head and data are masked as the one
    payload they are."""
    size = len(frame)
    if size < 126:
        header = struct.pack("!BB", _FIN_BINARY, (_MASKED if masked else 0) | size)
    elif size < 65536:
        header = struct.pack("!BBH", _FIN_BINARY, (_MASKED if masked else 0) | 126, size)
    else:
        header = struct.pack("!BBQ", _FIN_BINARY, (_MASKED if masked else 0) | 127, size)
    if not masked:
        return header + frame.head, frame.data
    key = secrets.token_bytes(4)
    shift = len(frame.head) % 4
    return header + key + apply_mask(frame.head, key), apply_mask(frame.data, key[shift:] + key[:shift])
