"""``protocol.transport_send``: image chunks framed at the socket, on real loopback connections.

websockets' own server and client (``compression=None``) on one event loop; the side under test
has its transport's ``write`` wrapped to record what it is given. The frames are read back with
websockets' own parser and by the peer's websockets, and decoded with the codec: the frames on
the wire are those websockets would have built from the joined messages (byte for byte where
there is no mask). Timeouts here are hang guards, not performance claims.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Callable

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from protocol import ImagePayload, Ping, Pong, chunk_image, codec, decode, encode
from protocol.codec import SplitFrame
from protocol.transport_send import JOIN_BELOW, frames_writable, send_frames

GUARD = 60  # seconds; only ever reached when something hangs
MAX_SIZE = 8 * 1024 * 1024


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, GUARD))


def messages() -> list[Any]:
    """A 4 MiB layer's chunks as the sessions cut them (2, 1, ½, ½ MiB), a small image's chunk
    (under JOIN_BELOW) and small frames between them."""
    layer = ImagePayload.build("rgba8", 1024, 1024, os.urandom(1024 * 1024 * 4))
    small = ImagePayload.build("rgba8", 32, 32, os.urandom(32 * 32 * 4))
    big = chunk_image(layer, taper=True)
    assert [len(c.data) for c in big] == [2 << 20, 1 << 20, 1 << 19, 1 << 19]
    return [Ping(1), big[0], big[1], *chunk_image(small), Pong(2), big[2], big[3]]


def split(items: list[Any]) -> list[Any]:
    return [codec.encode_split(m) for m in items]


def parse(data: bytes, masked: bool) -> list[Frame]:
    """The frames in ``data``, read by websockets' own parser (which unmasks them)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=masked, max_size=MAX_SIZE)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("a write that ends inside a frame")
    return frames


def mask_keys(data: bytes) -> list[bytes]:
    """The mask key of each (masked) frame in ``data``."""
    keys, i = [], 0
    while i < len(data):
        size, i = data[i + 1] & 0x7F, i + 2
        assert data[i - 1] & 0x80, "an unmasked client frame"
        if size == 126:
            size, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif size == 127:
            size, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        keys.append(data[i:i + 4])
        i += 4 + size
    return keys


def record(ws: Any) -> list[Any]:
    """From now on, what ``ws``'s transport is asked to write, call by call (as given)."""
    writes: list[Any] = []
    original = ws.transport.write

    def write(data: Any) -> None:
        writes.append(data)
        original(data)
    ws.transport.write = write
    return writes


async def pair(handler: Callable[[Any], Awaitable[None]], client: Callable[[Any], Awaitable[Any]],
               compression: str | None = None) -> Any:
    """Run ``client(ws)`` against a server running ``handler`` for its one connection."""
    async with serve(handler, "127.0.0.1", 0, compression=compression, max_size=MAX_SIZE) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=compression, max_size=MAX_SIZE) as ws:
            return await client(ws)


async def receive(ws: Any, count: int) -> list[Any]:
    return [decode(await ws.recv()) for _ in range(count)]


# --------------------------------------------------------------------------- the codec's pieces

@pytest.mark.parametrize("size", [0, 200, 255, 256, 65535, 65536, 300_000])
def test_a_split_chunk_is_the_encoded_frame_in_two_pieces(size: int) -> None:
    image = ImagePayload.build("rgba8", 1, 1, bytes(4))
    chunk = chunk_image(image)[0]
    for data in (os.urandom(size), memoryview(os.urandom(size + 10))[5:-5]):
        message = type(chunk)(chunk.id, chunk.format, chunk.width, chunk.height, chunk.size, 0, 1, data)
        frame = codec.encode_split(message)
        assert type(frame) is SplitFrame and frame.data is data  # the data itself, not a copy
        assert bytes(frame) == encode(message) and len(frame) == len(encode(message))
        assert decode(bytes(frame)) == message
    assert codec.encode_split(Ping(5)) == encode(Ping(5))  # other messages: their frame


# --------------------------------------------------------------------------- on the wire

def test_server_frames_are_byte_identical_to_websockets_and_the_data_is_written_uncopied() -> None:
    sent = messages()
    wire: dict[str, list[Any]] = {}

    async def handler(ws: Any) -> None:
        writes = record(ws)
        await send_frames(ws, split(sent))
        wire["ours"] = list(writes)
        writes.clear()
        for message in sent:
            await ws.send(encode(message))
        wire["websockets"] = list(writes)
        await ws.recv()

    async def client(ws: Any) -> list[Any]:
        got = await receive(ws, 2 * len(sent))
        await ws.send(b"done")
        return got

    got = run(pair(handler, client))
    assert got == sent + sent  # both ways, the client's websockets reads the same messages
    ours, theirs = b"".join(wire["ours"]), b"".join(wire["websockets"])
    assert ours == theirs  # unmasked: the same bytes on the wire
    frames = parse(ours, masked=False)
    assert [f.opcode for f in frames] == [Opcode.BINARY] * len(sent) and all(f.fin for f in frames)
    # Each big chunk's data went to the transport as the view of the layer the chunk holds.
    big = [m for m in sent if type(m).__name__ == "ImageChunk" and len(m.data) >= JOIN_BELOW]
    views = [w for w in wire["ours"] if type(w) is memoryview]
    assert len(views) == len(big) and all(v.obj is m.data.obj for v, m in zip(views, big))
    # Small frames and pieces went joined with the next big chunk's header: two writes per big
    # chunk (the sequence ends with one), where websockets makes one per frame.
    assert len(wire["ours"]) == 2 * len(big) and len(wire["websockets"]) == len(sent)


@pytest.mark.parametrize("mask", ["websockets C", "standard library"])
def test_client_frames_are_masked_with_a_fresh_key_each_and_read_back_identical(mask: str, monkeypatch: Any) -> None:
    import protocol.transport_send

    if mask == "standard library":  # as where websockets' C extension is missing (the Krita bundle)
        monkeypatch.setattr(protocol.transport_send, "apply_mask", protocol.transport_send.mask_lanes)
    sent = messages()
    wire: list[Any] = []

    async def handler(ws: Any) -> None:
        for message in await receive(ws, len(sent)):
            await ws.send(encode(message))  # echoed: what the server's websockets read

    async def client(ws: Any) -> list[Any]:
        writes = record(ws)
        await send_frames(ws, split(sent))
        wire.extend(writes)
        return await receive(ws, len(sent))

    assert run(pair(handler, client)) == sent
    data = b"".join(wire)
    frames = parse(data, masked=True)
    assert [f.data for f in frames] == [encode(m) for m in sent]  # unmasked: the messages' frames
    assert all(f.fin and f.opcode is Opcode.BINARY and not (f.rsv1 or f.rsv2 or f.rsv3) for f in frames)
    keys = mask_keys(data)
    assert len(set(keys)) == len(keys) == len(sent)  # fresh random keys (2**-32 to collide)
    # The big chunks' data was masked into buffers of its own, written as they are.
    big = [m for m in sent if type(m).__name__ == "ImageChunk" and len(m.data) >= JOIN_BELOW]
    assert [len(w) for w in wire if len(w) >= JOIN_BELOW] == [len(m.data) for m in big]


async def fill(ws: Any, chunk: Any) -> list[Any]:
    """Send ``chunk`` to a peer that does not read until the transport holds bytes the socket did not
    take (websockets' flow control lifted meanwhile, so ``send`` returns with them buffered)."""
    transport, sent = ws.transport, []
    limits = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=1 << 30)
    while not transport.get_write_buffer_size():
        assert len(sent) < 64, "the socket took 256 MiB from a peer that does not read"
        await ws.send(encode(chunk))
        sent.append(chunk)
    transport.set_write_buffer_limits(high=limits[1], low=limits[0])
    return sent


def test_a_big_chunk_waits_for_an_empty_buffer_and_the_limits_come_back() -> None:
    layer = ImagePayload.build("rgba8", 1024, 1024, os.urandom(1024 * 1024 * 4))
    (chunk,) = chunk_image(layer)
    reading, filled = asyncio.Event(), []

    async def handler(ws: Any) -> None:
        ws.transport.pause_reading()  # the socket buffers fill up
        await reading.wait()
        ws.transport.resume_reading()
        for message in await receive(ws, len(filled) + 1):
            await ws.send(encode(message))

    async def client(ws: Any) -> list[Any]:
        transport = ws.transport
        limits = transport.get_write_buffer_limits()
        filled.extend(await fill(ws, chunk))
        writes = record(ws)
        buffered: list[int] = []
        original = transport.write
        transport.write = lambda data: (buffered.append(transport.get_write_buffer_size()), original(data))[1]
        task = asyncio.create_task(send_frames(ws, [codec.encode_split(chunk)]))
        await asyncio.sleep(0.2)
        assert not task.done() and writes == [] and transport.get_write_buffer_limits() == (0, 0)
        reading.set()
        await task
        assert buffered[0] == 0 and len(writes) == 2  # the frame started on an empty buffer
        assert transport.get_write_buffer_limits() == limits
        return await receive(ws, len(filled) + 1)

    assert run(pair(handler, client)) == [chunk] * (len(filled) + 1)


def test_a_connection_cut_while_waiting_raises_connection_closed() -> None:
    layer = ImagePayload.build("rgba8", 1024, 1024, os.urandom(1024 * 1024 * 4))
    (chunk,) = chunk_image(layer)
    cut = asyncio.Event()

    async def handler(ws: Any) -> None:
        ws.transport.pause_reading()
        await cut.wait()
        ws.transport.abort()

    async def client(ws: Any) -> None:
        await fill(ws, chunk)
        task = asyncio.create_task(send_frames(ws, [codec.encode_split(chunk)]))
        await asyncio.sleep(0.1)
        assert not task.done()
        cut.set()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await task
        with pytest.raises(websockets.exceptions.ConnectionClosed):  # as ws.send does on a closed connection
            await send_frames(ws, [codec.encode_split(chunk), encode(Ping(1))])

    run(pair(handler, client))


# --------------------------------------------------------------------------- the fallback

class _SendOnly:
    """A connection as an other websockets might have it: ``send`` and nothing we write through."""

    def __init__(self, ws: Any) -> None:
        self.sent: list[Any] = []
        self._ws = ws

    async def send(self, message: Any) -> None:
        self.sent.append(message)
        await self._ws.send(message)


@pytest.mark.parametrize("case", ["no internals", "deflate negotiated"])
def test_without_what_raw_framing_needs_each_frame_goes_through_send_joined(case: str) -> None:
    sent = messages()

    async def handler(ws: Any) -> None:
        for message in await receive(ws, len(sent)):
            await ws.send(encode(message))

    async def client(ws: Any) -> list[Any]:
        assert frames_writable(ws) is (case == "no internals")
        target = _SendOnly(ws)
        if case == "no internals":
            assert not frames_writable(target)
            await send_frames(target, split(sent))
            assert target.sent == [encode(m) for m in sent] and all(type(f) is bytes for f in target.sent)
        else:
            assert [ext.name for ext in ws.protocol.extensions] == ["permessage-deflate"]
            await send_frames(ws, split(sent))
        return await receive(ws, len(sent))

    assert run(pair(handler, client, compression="deflate" if case != "no internals" else None)) == sent


# --------------------------------------------------------------------------- AsyncClient

def test_async_client_uploads_its_chunks_framed_at_the_socket() -> None:
    from protocol import ImageStored, SubmitJob
    from protocol.transport import AsyncClient
    from protocol_support import LoopbackServer, rgba

    image = rgba(1024, 1024, seed=5)
    with LoopbackServer() as server:
        async def main() -> list[Any]:
            client = AsyncClient(server.url, client_name="test", client_version="1.0")
            await client.start()
            writes = record(client._ws)  # the live connection's transport (private; a test's look inside)
            client.submit(SubmitJob("up", "img2img", images={"image": image.id}), [image])
            while not isinstance(await client.next_event(GUARD), ImageStored):
                pass
            await client.close()
            return writes
        writes = run(main())
        uploads, chunk_sizes = server.uploads, server.chunk_sizes
    assert uploads == [image] and uploads[0].data == image.data
    # Each chunk's masked data was written on its own, not inside a frame websockets built.
    assert [len(w) for w in writes if len(w) >= JOIN_BELOW] == chunk_sizes == [2 << 20, 1 << 20, 1 << 19, 1 << 19]


def test_with_websockets_debug_logging_the_frame_is_logged_as_websockets_logs_its_own(caplog: Any) -> None:
    import logging

    (chunk,) = chunk_image(ImagePayload.build("rgba8", 256, 256, os.urandom(256 * 256 * 4)))

    async def handler(ws: Any) -> None:
        await ws.send(await ws.recv())

    async def client(ws: Any) -> Any:
        assert ws.protocol.debug
        await send_frames(ws, [codec.encode_split(chunk)])
        return decode(await ws.recv())

    with caplog.at_level(logging.DEBUG, logger="websockets"):
        assert run(pair(handler, client)) == chunk
    assert f"> BINARY [{len(encode(chunk))} bytes, written in pieces]" in caplog.text


def test_the_standard_library_mask_is_websockets_mask() -> None:
    from websockets.utils import apply_mask as websockets_python_mask

    from protocol.transport_send import mask_lanes

    data = os.urandom((1 << 20) + 7)
    for size in (0, 1, 2, 3, 4, 5, 9, 1 << 20):
        for start in (0, 3):
            key = os.urandom(4)
            piece = memoryview(data)[start:start + size]
            assert bytes(mask_lanes(piece, key)) == websockets_python_mask(bytes(piece), key)
    assert bytes(mask_lanes(mask_lanes(data, b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04")) == data
