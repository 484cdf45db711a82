"""The receive half of the transport: big binary frames read straight into their own buffers.

websockets' asyncio connection reads the socket in pieces of at most 256 KiB into new ``bytes``,
appends each to its read buffer, slices every frame out of that buffer, unmasks it into another
copy (on a server) and joins the message into ``bytes`` once more: four copies of every 4 MiB image
chunk on the event loop's thread before our codec sees it, with the loop, the sender and the
receiver's hash thread sharing the CPU (benchmarks/RESULTS.md, issue 20).

:class:`FrameReceiver` is a mixin for websockets' connection classes that makes them an
:class:`asyncio.BufferedProtocol`: the transport then ``recv_into``\\ s our buffers. It follows
every frame header in the byte stream (RFC 6455, section 5.2) and takes for itself only a frame
that is a whole binary message of :attr:`FrameReceiver.take_from` bytes or more (FIN set, RSV bits
clear, masked exactly when it comes from a client, within websockets' ``max_size``) arriving while
the connection is open and no fragmented message is in progress. Such a frame's payload is read
into a ``bytearray`` of its own, unmasked in place, and queued for ``recv()`` with websockets' other
messages, in order, without the join (so ``recv()`` returns that ``bytearray``; nothing writes to it
after it is queued). Every other byte — the handshake, control frames, small and fragmented
messages, close, anything malformed or oversized — goes to websockets unchanged and in order, so it
answers pings, closes with its own codes and pauses reading when its queue is full, as before.

If websockets lacks an internal this relies on (another version), or the stream cannot be followed
from the end of the HTTP handshake, a connection passes every byte to websockets (its plain path).
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.messages import Assembler
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode, apply_mask
from websockets.protocol import CONNECTING, OPEN, SERVER

#: Frames below this size go through websockets: their copies cost little.
TAKE_FROM = 64 * 1024
#: The buffer every read lands in between big frames (asyncio's own read size).
_SCRATCH_BYTES = 256 * 1024
#: The first header byte of a frame that may be taken: FIN, RSV bits clear, opcode binary.
_FIN_BINARY = 0x80 | Opcode.BINARY.value
#: What the interceptor reads from websockets' objects (``Protocol`` and ``Assembler``); present in
#: websockets 15 to 17. Without any of them, connections take the plain path.
REQUIRED_PROTOCOL = ("state", "side", "reader", "current_size", "max_message_size", "max_fragment_size", "extensions")
REQUIRED_ASSEMBLER = ("frames", "get_in_progress", "closed", "maybe_resume")


def unmask_copy(view: memoryview, mask: bytes) -> None:
    """XOR ``view`` (whose first byte is at a multiple of 4 in its payload) with ``mask`` in place,
    through websockets' ``apply_mask`` (C where built) and one copy back."""
    view[:] = apply_mask(view, mask)


class _TakenFrame(Frame):
    """A whole binary message the interceptor read itself; its ``data`` is its own bytearray."""


class _Messages(Assembler):
    """websockets' Assembler, except that a message taken by :class:`FrameReceiver` is handed out
    as its buffer instead of being joined into a new ``bytes``."""

    async def get(self, decode: bool | None = None) -> Any:
        if self.get_in_progress:
            return await super().get(decode)  # raises ConcurrencyError as it always did
        self.get_in_progress = True
        try:
            frame = await self.frames.get(not self.closed)
        finally:
            self.get_in_progress = False
        if type(frame) is not _TakenFrame:
            # No await between taking it and putting it back: the order and the flow control stay.
            self.frames.put_back([frame])
            return await super().get(decode)
        self.maybe_resume()
        return frame.data.decode() if decode else frame.data


class FrameReceiver:
    """Mixin placed before websockets' ``ServerConnection`` or ``ClientConnection``, with
    :class:`asyncio.BufferedProtocol` last among the bases (so the transport asks for buffers, and
    ``eof_received`` still reaches websockets): :class:`ReceivingServerConnection`,
    :class:`ReceivingClientConnection`.

    ``frames_taken`` counts the frames read past websockets; ``unmask`` XORs a masked payload in
    place (a subclass may give a faster one: the server's uses numpy)."""

    take_from: int = TAKE_FROM
    unmask: Callable[[memoryview, bytes], None] = staticmethod(unmask_copy)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.frames_taken = 0
        self._scratch = bytearray(_SCRATCH_BYTES)
        self._view = memoryview(self._scratch)
        self._filled = 0        # bytes in the scratch buffer not yet handled
        self._skip = 0          # bytes of the current frame (websockets') still to come
        self._synced = False    # the HTTP handshake has been passed on: frames follow
        self._payload: bytearray | None = None  # the frame being read into its own buffer
        self._got = 0
        self._unmasked = 0
        self._mask = b""
        self._masked = False
        protocol, messages = getattr(self, "protocol", None), getattr(self, "recv_messages", None)
        self._on = (all(hasattr(protocol, name) for name in REQUIRED_PROTOCOL)
                    and all(hasattr(messages, name) for name in REQUIRED_ASSEMBLER)
                    and type(messages) is Assembler and hasattr(messages.frames, "put_back"))
        if self._on:
            self._masked = protocol.side is SERVER  # type: ignore[union-attr]
            # The same object, its queue and its flow-control state, with the one override of get().
            messages.__class__ = _Messages  # type: ignore[union-attr]

    # -- asyncio.BufferedProtocol

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._payload is not None:
            return memoryview(self._payload)[self._got:]
        return self._view[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._payload is not None:
            self._got += nbytes
            if self._mask:
                self._unmask_upto(self._got & ~3)
            if self._got == len(self._payload):
                self._deliver()
            return
        self._filled += nbytes
        self._handle()

    def eof_received(self) -> bool | None:
        self._pass(0, self._filled)
        self._filled = 0
        self._payload = None  # a frame cut short: websockets sees the stream end between frames (1006)
        return super().eof_received()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._payload = None
        super().connection_lost(exc)  # type: ignore[misc]

    # -- following the stream

    def _pass(self, start: int, end: int) -> None:
        """Hand scratch bytes ``start:end`` to websockets, as its own reads would have."""
        if end > start:
            super().data_received(bytes(self._view[start:end]))  # type: ignore[misc]

    def _handle(self) -> None:
        end, pos = self._filled, 0
        if not self._on:
            self._pass(0, end)
            self._filled = 0
            return
        if not self._synced:
            head = self._scratch.find(b"\r\n\r\n", 0, end)
            if head < 0:  # keep 3 bytes: the blank line may be split across reads
                self._pass(0, max(0, end - 3))
                self._keep(max(0, end - 3), end)
                return
            pos = head + 4
            self._pass(0, pos)
            protocol = self.protocol  # type: ignore[attr-defined]
            wanted = (CONNECTING, OPEN) if self._masked else (OPEN,)
            if protocol.reader.buffer or protocol.state not in wanted:
                self._on = False  # websockets did not stop where the head ended: follow it no further
                self._pass(pos, end)
                self._filled = 0
                return
            self._synced = True
        start = pos  # scratch[start:pos] is websockets', not yet handed over
        view = self._scratch
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                continue
            if end - pos < 2:
                break
            first, second = view[pos], view[pos + 1]
            length = second & 0x7F
            size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)
            if end - pos < size:
                break
            if length >= 126:
                length = int.from_bytes(view[pos + 2:pos + (4 if length == 126 else 10)], "big")
            if first == _FIN_BINARY and bool(second & 0x80) == self._masked and length >= self.take_from:
                self._pass(start, pos)  # everything before it first: websockets' messages keep their place
                start = pos
                if self._can_take(length):
                    pos = start = self._take(pos + size, length, end, bytes(view[pos + size - 4:pos + size]) if self._masked else b"")
                    if self._payload is not None:  # the rest arrives straight into it
                        self._filled = 0
                        return
                    continue
            self._skip = size + length
        self._pass(start, pos)
        self._keep(pos, end)

    def _keep(self, start: int, end: int) -> None:
        """Move the unhandled bytes (a frame header cut by the read) to the front of the scratch buffer."""
        self._scratch[:end - start] = self._view[start:end]
        self._filled = end - start

    def _can_take(self, length: int) -> bool:
        """Whether websockets, having been handed every byte before this frame, would take it as a
        whole message now: open, no fragmented message under way, nothing buffered, within its limits."""
        protocol = self.protocol  # type: ignore[attr-defined]
        limits = [limit for limit in (protocol.max_message_size, protocol.max_fragment_size) if limit is not None]
        return (protocol.state is OPEN and protocol.current_size is None and not protocol.reader.buffer
                and not protocol.extensions and bool(limits) and length <= min(limits)
                and not self.recv_messages.closed)  # type: ignore[attr-defined]

    def _take(self, start: int, length: int, end: int, mask: bytes) -> int:
        """Start reading a frame's payload (scratch[start:end] holds its first bytes) into a buffer of
        its own; returns where the next frame starts in the scratch buffer."""
        have = min(length, end - start)
        payload = bytearray(length)
        payload[:have] = self._view[start:start + have]
        self._payload, self._got, self._unmasked, self._mask = payload, have, 0, mask
        if mask:
            self._unmask_upto(have & ~3)
        if have == length:
            self._deliver()
        return start + have

    def _unmask_upto(self, upto: int) -> None:
        # Whole multiples of 4 from the payload's start, so the mask always lines up at its first byte.
        if upto > self._unmasked:
            self.unmask(memoryview(self._payload)[self._unmasked:upto], self._mask)  # type: ignore[arg-type]
            self._unmasked = upto

    def _deliver(self) -> None:
        payload = self._payload
        assert payload is not None
        if self._mask:
            self._unmask_upto(len(payload))  # the last 1-3 bytes
        self._payload = None
        self.frames_taken += 1
        self.process_event(_TakenFrame(Opcode.BINARY, payload))  # type: ignore[attr-defined]


class ReceivingServerConnection(FrameReceiver, ServerConnection, asyncio.BufferedProtocol):
    """``serve(..., compression=None, create_connection=ReceivingServerConnection)``: big client frames read
    past websockets."""


class ReceivingClientConnection(FrameReceiver, ClientConnection, asyncio.BufferedProtocol):
    """``connect(..., compression=None, create_connection=ReceivingClientConnection)``: big server frames
    read past websockets."""
