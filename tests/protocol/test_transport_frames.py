"""The receive interceptor (``protocol/transport_frames.py``) against raw bytes on a real socket.

A websockets server (or client) with the interceptor's connection class on one end of loopback, and
on the other a raw socket that speaks RFC 6455 by hand: it writes frames built here, cut into pieces
at chosen places, and waits until the connection has read each piece before writing the next, so
every piece is one read (or more, never less) on the receiving side. What must hold: the messages
come out byte for byte and in order, the big binary ones are really read past websockets
(``frames_taken``), and everything else — pings, text, fragments, bad masking, oversize frames, a
cut connection — is websockets' business exactly as without the interceptor. Timeouts are hang
guards, not performance claims.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from typing import Any, Awaitable, Callable

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from protocol import transport_frames
from protocol.transport_frames import TAKE_FROM, ReceivingClientConnection, ReceivingServerConnection

GUARD = 30  # seconds; only ever reached when something hangs
MAX_SIZE = 1 << 20
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BINARY, TEXT, CONT, PING, CLOSE = 2, 1, 0, 9, 8


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, GUARD))


def masked(payload: bytes, mask: bytes) -> bytes:
    """RFC 6455 masking, written independently of websockets' and the interceptor's."""
    n = len(payload)
    if not n:
        return b""
    tiled = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(tiled, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False, rsv: int = 0) -> tuple[bytes, int]:
    """One frame's bytes and its header's length."""
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | rsv | opcode,))
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes((bit | n,))
    elif n < 65536:
        head += bytes((bit | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((bit | 127,)) + n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        return head + key + masked(payload, key), len(head) + 4
    return head + payload, len(head)


def read_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each frame in ``data`` (from either side)."""
    out, pos = [], 0
    while pos + 2 <= len(data):
        opcode, second = data[pos] & 0x0F, data[pos + 1]
        n, pos = second & 0x7F, pos + 2
        if n == 126:
            n, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        key = b""
        if second & 0x80:
            key, pos = data[pos:pos + 4], pos + 4
        payload = data[pos:pos + n]
        out.append((opcode, masked(payload, key) if key else payload))
        pos += n
    return out


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    codes = [int.from_bytes(payload[:2], "big") for opcode, payload in frames if opcode == CLOSE]
    return codes[0] if codes else None


async def frames_until_close(reader: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """The peer's frames up to its close frame (or the end of the stream)."""
    data = b""
    while close_code(read_frames(data)) is None:
        more = await reader.read(1 << 16)
        if not more:
            break
        data += more
    return read_frames(data)


class Stream:
    """Frames to send and what each must come out as: ``messages`` in order, ``taken`` of them big."""

    def __init__(self, mask: bool) -> None:
        self.mask = mask
        self.frames: list[tuple[bytes, int]] = []
        self.messages: list[Any] = []
        self.taken = 0

    def add(self, opcode: int, payload: bytes, *, fin: bool = True, message: Any = None, rsv: int = 0) -> None:
        self.frames.append(frame(opcode, payload, fin=fin, mask=self.mask, rsv=rsv))
        if message is not None:
            self.messages.append(message)

    def binary(self, n: int) -> None:
        data = random.Random(n).randbytes(n)
        self.add(BINARY, data, message=data)
        self.taken += n >= TAKE_FROM

    @property
    def data(self) -> bytes:
        return b"".join(data for data, _ in self.frames)

    def cuts(self, where: Callable[[int, int, int], list[int]]) -> list[bytes]:
        """The stream cut at ``where(start, header, payload)`` of every frame."""
        points, start = set(), 0
        for data, header in self.frames:
            points.update(start + p for p in where(start, header, len(data) - header) if 0 < p < len(data))
            start += len(data)
        data, out, last = self.data, [], 0
        for p in sorted(points):
            out.append(data[last:p])
            last = p
        return out + [data[last:]]


def mixed(mask: bool) -> Stream:
    """Small and big binary messages, a ping, text, a message at each side of the threshold and at
    each length encoding, and a fragmented message with big fragments (websockets' to assemble)."""
    stream = Stream(mask)
    stream.binary(10)
    stream.binary(100_000)
    stream.add(PING, b"p1")
    stream.binary(70_000)
    stream.add(TEXT, b"hello", message="hello")
    stream.binary(TAKE_FROM - 1)  # a 16-bit length, under the threshold
    stream.binary(TAKE_FROM)      # a 64-bit length, the smallest taken
    first, second = os.urandom(80_000), os.urandom(90_000)
    stream.add(BINARY, first, fin=False)
    stream.add(CONT, second, message=first + second)
    stream.binary(200_000)
    stream.add(PING, b"p2")
    stream.binary(3)
    stream.binary(300_001)  # not a multiple of 4: the mask's last bytes
    return stream


#: Where to cut each frame: (frame start, header length, payload length) -> offsets in the frame.
CUTS: dict[str, Callable[[int, int, int], list[int]]] = {
    "all in one write": lambda s, h, n: [],
    "after the first header byte": lambda s, h, n: [1],
    "in every header byte": lambda s, h, n: list(range(1, h + 1)),
    "inside the mask key or length": lambda s, h, n: [h - 2],
    "payload's first and last byte": lambda s, h, n: [h + 1, h + n - 1],
    "odd places in the payload": lambda s, h, n: [h + 3, h + 7 + n // 3, h + n // 2 + 1],
    "a big frame's end with the next frames": lambda s, h, n: [h + n - 5] if n >= TAKE_FROM else [],
    "seeded random": lambda s, h, n: random.Random(s).sample(range(1, h + n), min(6, h + n - 1)),
}


class Counting:
    """Counts the bytes a connection read, so the raw side can wait until a piece is in."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.bytes_in = 0
        super().connection_made(transport)  # type: ignore[misc]

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_in += nbytes
        super().buffer_updated(nbytes)  # type: ignore[misc]


class CountingServer(Counting, ReceivingServerConnection):
    pass


class CountingClient(Counting, ReceivingClientConnection):
    pass


async def write_pieces(writer: asyncio.StreamWriter, pieces: list[bytes], conn: Any, already: int) -> None:
    """Write each piece once the connection has read everything before it (or stopped reading)."""
    sent = already
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        sent += len(piece)
        while conn.bytes_in < sent and conn.protocol.state is websockets.protocol.OPEN and not conn.recv_messages.paused:
            await asyncio.sleep(0.001)


async def collect(ws: Any, into: list[Any]) -> None:
    try:
        async for message in ws:
            into.append(message)
    except websockets.exceptions.ConnectionClosed:
        pass


async def server_side(pieces: list[bytes], *, max_size: int = MAX_SIZE, cls: type = CountingServer,
                      eof: bool = False) -> tuple[list[Any], Any, list[tuple[int, bytes]]]:
    """A websockets server with ``cls`` receiving ``pieces`` from a raw client, then a close (or,
    with ``eof``, the socket's end). Returns the messages it got, its connection and the frames
    it sent back."""
    got: list[Any] = []
    conns: list[Any] = []
    done = asyncio.Event()

    async def handler(ws: Any) -> None:
        conns.append(ws)
        await collect(ws, got)
        done.set()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=max_size, create_connection=cls) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        request = ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        writer.write(request)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        while not conns:
            await asyncio.sleep(0.001)
        await write_pieces(writer, pieces, conns[0], len(request))
        if eof:
            writer.write_eof()
        else:
            writer.write(frame(CLOSE, (1000).to_bytes(2, "big"), mask=True)[0])
        back = await frames_until_close(reader)
        writer.close()  # the server waits for the client to end the TCP connection
        await done.wait()
        return got, conns[0], back


async def client_side(pieces: list[bytes], *, max_size: int = MAX_SIZE, cls: type = CountingClient,
                      head_cut: int | None = None) -> tuple[list[Any], Any, list[tuple[int, bytes]]]:
    """A websockets client with ``cls`` receiving ``pieces`` from a raw server, then a close.
    Returns the messages it got, its connection and the frames it sent.

    ``head_cut``: the handshake response and the frames go out as one stream, in two writes cut
    that many bytes before the response's end (0: all in one write, the frames glued to it)."""
    got: list[Any] = []
    back: list[tuple[int, bytes]] = []
    served = asyncio.Event()
    conn: list[Any] = []

    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
        response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        if head_cut is not None:
            stream = response + b"".join(pieces)
            cut = len(response) - head_cut
            writer.write(stream[:cut])
            await writer.drain()
            await asyncio.sleep(0.01)  # most likely its own read; the outcome must not depend on it
            writer.write(stream[cut:])
        else:
            writer.write(response)
        while not conn:
            await asyncio.sleep(0.001)
        if head_cut is None:
            await write_pieces(writer, pieces, conn[0], len(response))
        writer.write(frame(CLOSE, (1000).to_bytes(2, "big"))[0])
        back.extend(await frames_until_close(reader))
        writer.close()  # the client waits for the server to end the TCP connection
        served.set()

    server = await asyncio.start_server(raw, "127.0.0.1", 0)
    async with server:
        ws = await connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", compression=None,
                           max_size=max_size, create_connection=cls)
        conn.append(ws)
        await collect(ws, got)
        await ws.close()
        await served.wait()
    return got, ws, back


SIDES = {"server": (True, server_side), "client": (False, client_side)}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("cut", CUTS)
def test_messages_come_out_whole_and_in_order_however_the_reads_fall(side: str, cut: str) -> None:
    mask, receive = SIDES[side]
    stream = mixed(mask)
    got, conn, back = run(receive(stream.cuts(CUTS[cut])))
    assert got == stream.messages  # byte for byte, in order, text as text
    assert conn.frames_taken == stream.taken == 5  # the big binary frames were read past websockets
    taken = [m for m in got if isinstance(m, (bytes, bytearray)) and len(m) >= TAKE_FROM]
    assert [type(m) for m in taken] == [bytearray] * 3 + [bytes] + [bytearray] * 2  # ... the fragmented one was not
    if side == "server":
        assert [p for op, p in back if op == 10] == [b"p1", b"p2"]  # websockets answered the pings
        assert close_code(back) == 1000
    else:
        assert close_code(back) == 1000


@pytest.mark.parametrize("head_cut", [0, 1, 2, 3, 4, 30])
def test_frames_glued_to_the_handshake_response_or_its_blank_line_cut(head_cut: int) -> None:
    # Where the HTTP head ends, the interceptor starts following frames: it must find that place
    # when the blank line is cut between reads and when frames follow it in the same read.
    stream = mixed(False)
    got, conn, back = run(client_side(stream.cuts(CUTS["all in one write"]), head_cut=head_cut))
    assert got == stream.messages and conn.frames_taken == stream.taken and close_code(back) == 1000


@pytest.mark.parametrize("side", SIDES)
def test_a_big_frame_masked_the_wrong_way_is_websockets_protocol_error(side: str) -> None:
    mask, receive = SIDES[side]
    data, _ = frame(BINARY, os.urandom(100_000), mask=not mask)
    got, conn, back = run(receive([data]))
    assert got == [] and conn.frames_taken == 0
    assert close_code(back) == 1002  # websockets' "incorrect masking"


@pytest.mark.parametrize("side", SIDES)
def test_a_big_frame_with_a_reserved_bit_is_websockets_protocol_error(side: str) -> None:
    mask, receive = SIDES[side]
    data, _ = frame(BINARY, os.urandom(100_000), mask=mask, rsv=0x40)
    got, conn, back = run(receive([data]))
    assert got == [] and conn.frames_taken == 0 and close_code(back) == 1002


@pytest.mark.parametrize("side", SIDES)
def test_an_oversized_frame_is_closed_with_websockets_1009(side: str) -> None:
    mask, receive = SIDES[side]
    stream = Stream(mask)
    stream.binary(100_000)
    stream.binary(150_000)  # over max_size below
    got, conn, back = run(receive(stream.cuts(CUTS["after the first header byte"]), max_size=120_000))
    assert got == stream.messages[:1] and conn.frames_taken == 1
    assert close_code(back) == 1009


def test_a_connection_cut_mid_frame_ends_as_websockets_ends_it() -> None:
    data, header = frame(BINARY, os.urandom(200_000), mask=True)
    got, conn, _ = run(server_side([data[:header + 50_000]], eof=True))
    assert got == [] and conn.frames_taken == 0
    assert conn.close_code == 1006  # abnormal closure, as when websockets holds the partial frame


def test_without_websockets_internals_it_takes_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another websockets version without an attribute the interceptor reads: every byte goes to websockets.
    monkeypatch.setattr(transport_frames, "REQUIRED_PROTOCOL", (*transport_frames.REQUIRED_PROTOCOL, "not_in_any_websockets"))
    for side in SIDES:
        mask, receive = SIDES[side]
        stream = mixed(mask)
        got, conn, _ = run(receive(stream.cuts(CUTS["odd places in the payload"])))
        assert got == stream.messages and conn.frames_taken == 0
        assert all(type(m) is not bytearray for m in got)


def test_a_full_queue_still_pauses_reading() -> None:
    """websockets' flow control (its queue of received messages pauses the socket's reading) holds
    for taken frames too: the server's backpressure on a client that is not read relies on it."""
    frames = [frame(BINARY, bytes([i]) * 100_000, mask=True)[0] for i in range(10)]
    gate = asyncio.Event()
    got: list[Any] = []
    state: dict[str, Any] = {}

    async def handler(ws: Any) -> None:
        state["ws"] = ws
        await gate.wait()
        await collect(ws, got)

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=MAX_SIZE, max_queue=2,
                         create_connection=CountingServer) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"".join(frames))  # the socket buffers hold the rest
            while "ws" not in state or not state["ws"].recv_messages.paused:
                await asyncio.sleep(0.001)
            ws = state["ws"]
            read = ws.bytes_in
            await asyncio.sleep(0.05)
            # Reading stopped (a read that was under way when the queue filled may still add a message).
            paused = ws.recv_messages.paused and ws.bytes_in == read < sum(map(len, frames))
            gate.set()
            assert paused
            await writer.drain()
            while len(got) < len(frames):
                await asyncio.sleep(0.001)
            assert got == [bytes([i]) * 100_000 for i in range(10)] and ws.frames_taken == 10
            writer.write(frame(CLOSE, (1000).to_bytes(2, "big"), mask=True)[0])
            await frames_until_close(reader)
            writer.close()

    run(scenario())


def test_the_default_unmask_matches_rfc_masking() -> None:
    for n in (0, 1, 3, 4, 5, 4096, 4099):
        payload, key = os.urandom(n), os.urandom(4)
        buffer = bytearray(masked(payload, key))
        transport_frames.unmask_copy(memoryview(buffer), key)
        assert buffer == payload


def test_websockets_own_classes_are_what_it_builds_on() -> None:
    # The interceptor relies on these being the classes serve() and connect() use in this version.
    assert issubclass(ReceivingServerConnection, ServerConnection)
    assert issubclass(ReceivingClientConnection, websockets.asyncio.client.ClientConnection)
    assert issubclass(ReceivingServerConnection, asyncio.BufferedProtocol)
