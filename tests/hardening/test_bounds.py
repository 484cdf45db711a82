"""Bounded everything: bombs refused before allocation, and every bound answered with a typed error
while other clients carry on. Real server and engine (tiny models), real websocket clients.
"""
from __future__ import annotations

import base64
import io
import os
import secrets
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import msgpack
import pytest
from PIL import Image, ImageFile

from protocol import (
    ControlUnit, ErrorCode, ErrorEvent, Hello, ImageChunk, ImageFormat, ImageInfo, ImagePayload, ImagesWanted, ImageStored,
    JobAccepted, JobFailed, JobParams, JobResult, JobStarted, OfferImages, StepPreview, SubmitJob, decode, encode,
)
from soak import RawClient, resources
from test_server_harness import WAIT_S, Client, GatedEngine, rgba, txt2img

MiB = 1024 * 1024


def _rss_mib() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def _error(client: Client | RawClient) -> ErrorEvent:
    return client.until(lambda e: isinstance(e, ErrorEvent))[-1]


# --------------------------------------------------------------------------- bombs


def test_dimension_and_header_bombs_are_refused_before_allocation(serve):
    """Frames that claim 65535x65535 images, millions of chunks, or msgpack containers of 2^32
    items: each gets a typed error, and the process's memory does not move (a naive server would
    allocate gigabytes)."""
    huge = 65535 * 65535 * 4
    fake_id = "ab" * 32
    with serve() as server, RawClient(server.url) as attacker, Client(server.url) as bystander:
        bystander.submit(txt2img("b", steps=40))
        bystander.until(lambda e: isinstance(e, JobStarted))
        before = _rss_mib()
        cases = [
            (OfferImages((ImageInfo(fake_id, ImageFormat.RGBA8, 65535, 65535, huge),)), ErrorCode.LIMIT_EXCEEDED),
            (OfferImages((ImageInfo(fake_id, ImageFormat.PNG, 65535, 65535, 100),)), ErrorCode.LIMIT_EXCEEDED),
            (OfferImages((ImageInfo(fake_id, ImageFormat.DEPTH32F, 8192, 8192, 8192 * 8192 * 4),)), ErrorCode.LIMIT_EXCEEDED),
            (ImageChunk(fake_id, ImageFormat.RGBA8, 65535, 65535, huge, 0, 1, b"\x00" * 16), ErrorCode.UNKNOWN_IMAGE),
        ]
        for message, code in cases:
            attacker.send(message)
            assert _error(attacker).code is code, message
        # An offer the server accepts, then chunks that lie about it. Each lie drops the upload
        # (docs/protocol.md 6.4), so the image is offered again before the next one.
        small = ImageInfo(fake_id, ImageFormat.RGBA8, 1024, 1024, 4 * MiB)
        lies = [
            ImageChunk(fake_id, ImageFormat.RGBA8, 65535, 65535, huge, 0, 2, b"\x00" * 65536),     # a bigger image
            ImageChunk(fake_id, ImageFormat.RGBA8, 1024, 1024, 4 * MiB, 0, 3_000_000, b"\x00" * 65536),  # millions of chunks
            ImageChunk(fake_id, ImageFormat.RGBA8, 1024, 1024, 4 * MiB, 2_999_999, 3_000_000, b"\x00"),  # starting at the end
            ImageChunk(fake_id, ImageFormat.GREY8, 2048, 2048, 4 * MiB, 0, 64, b"\x00" * 65536),       # another format
        ]
        for lie in lies:
            attacker.send(OfferImages((small,)))
            assert attacker.until(lambda e: isinstance(e, ImagesWanted))[-1].ids == (fake_id,)
            attacker.send(lie)
            error = _error(attacker)
            assert error.code in (ErrorCode.INVALID_IMAGE, ErrorCode.LIMIT_EXCEEDED) and error.ref == fake_id, (lie.count, error)
        # msgpack headers that claim billions of items or bytes, and a frame of ~5 million empty arrays.
        headers = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff\xa4type", b"\xdb\xff\xff\xff\xffxx", b"\xc6\xff\xff\xff\xff",
                   b"\x81\xa4type\xdd\xff\xff\xff\xff", b"\x81\xa4type\xdc\x00\x50" + (b"\xdc\xff\xff" + b"\x90" * 65535) * 79]
        for frame in headers:
            attacker.send(frame)
            assert _error(attacker).code in (ErrorCode.MALFORMED_FRAME, ErrorCode.LIMIT_EXCEEDED)
        grown = _rss_mib() - before
        assert isinstance(bystander.until_done("b")[-1], JobResult)
        assert attacker.job("fine").TAG == "job_finished"  # the attacker's connection still works
    assert grown < 100, f"memory grew by {grown:.0f} MiB while refusing the bombs"


def _png_with_second_header(width: int, height: int, claimed: int) -> bytes:
    """A valid ``width`` x ``height`` PNG with a second IHDR chunk claiming ``claimed`` x ``claimed``."""
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (10, 20, 30, 255)).save(out, "PNG")
    png = out.getvalue()
    body = b"IHDR" + struct.pack(">IIBBBBB", claimed, claimed, 8, 6, 0, 0, 0)
    chunk = struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]


def _jpeg_with_second_header(width: int, height: int, claimed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(out, "JPEG")
    jpeg = out.getvalue()
    at = jpeg.index(b"\xff\xc0")
    end = at + 2 + struct.unpack(">H", jpeg[at + 2:at + 4])[0]
    second = bytearray(jpeg[at:end])
    second[5:9] = struct.pack(">HH", claimed, claimed)
    return jpeg[:end] + bytes(second) + jpeg[end:]


@pytest.mark.parametrize("fmt, build", [(ImageFormat.PNG, _png_with_second_header), (ImageFormat.JPEG, _jpeg_with_second_header)])
def test_an_image_whose_second_header_claims_a_huge_size_is_refused_before_decoding(serve, monkeypatch, fmt, build):
    """A 64x64 file whose decoder would believe a second header of 9000x9000 (81 M pixels: under
    Pillow's own bomb limit, so Pillow alone would allocate ~570 MB)."""
    loaded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy(self):  # Pillow's decoder entry: record the size it decodes at
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    image = ImagePayload(fmt, 64, 64, build(64, 64, 9000))
    job = SubmitJob("bomb", "img2img", JobParams(model="tiny", strength=0.5, steps=2, width=64, height=64), {"image": image.id})
    with serve() as server, Client(server.url) as client:
        failed = client.run(job, [image])[-1]
        assert isinstance(failed, JobFailed) and failed.code is ErrorCode.INVALID_PARAMETER, failed
        assert "9000x9000" in failed.message and "64x64" in failed.message
        assert isinstance(client.run(txt2img("after", steps=1))[-1], JobResult)
    assert all(w * h <= 4096 * 4096 for w, h in loaded), loaded


# --------------------------------------------------------------------------- bounds


def test_images_per_job_and_per_offer_are_bounded(serve):
    with serve() as server, Client(server.url) as client:
        limit = client.welcome.limits.max_images_per_job
        infos = tuple(ImageInfo(f"{i:064x}", ImageFormat.RGBA8, 8, 8, 256) for i in range(limit + 1))
        client.send_raw(encode(OfferImages(infos)))
        error = _error(client)
        assert error.code is ErrorCode.LIMIT_EXCEEDED and error.ref == "offer_images"
        controls = tuple(ControlUnit("tiny", info.id) for info in infos)
        client.send_raw(encode(SubmitJob("many", "txt2img", JobParams(controls=controls))))
        error = _error(client)
        assert error.code is ErrorCode.LIMIT_EXCEEDED and error.ref == "many" and str(limit) in error.message
        assert isinstance(client.run(txt2img("fine", steps=1))[-1], JobResult)


def test_uploads_in_flight_are_bounded_per_connection(serve):
    """Announced sizes count as soon as an upload starts: eight 64 MiB uploads begun with one 4 MiB
    chunk each fill the 512 MiB allowance, and a ninth is refused — 36 MiB sent, not 576."""
    with serve() as server, RawClient(server.url) as uploader, Client(server.url) as bystander:
        limits = uploader.welcome.limits
        size = 4096 * 4096 * 4
        infos = [ImageInfo(secrets.token_hex(32), ImageFormat.RGBA8, 4096, 4096, size) for _ in range(9)]
        count = size // limits.max_chunk_bytes
        for group in (infos[:4], infos[4:8], infos[8:]):
            uploader.send(OfferImages(tuple(group)))
            assert set(uploader.until(lambda e: isinstance(e, ImagesWanted))[-1].ids) == {i.id for i in group}
            for info in group:
                uploader.send(ImageChunk(info.id, info.format, 4096, 4096, size, 0, count, b"\x00" * limits.max_chunk_bytes))
        uploader.send(OfferImages(()))  # a barrier: answered after every chunk before it
        replies = uploader.until(lambda e: isinstance(e, ImagesWanted) and e.ids == ())
        errors = [e for e in replies if isinstance(e, ErrorEvent)]
        assert [(e.code, e.ref) for e in errors] == [(ErrorCode.LIMIT_EXCEEDED, infos[8].id)]
        assert str(limits.max_upload_bytes) in errors[0].message
        assert isinstance(bystander.run(txt2img("b", steps=1))[-1], JobResult)
        held = server.call(lambda: max(c.session.upload_bytes_held for c in server.server.connections))
        assert held == 8 * limits.max_chunk_bytes


def test_a_clients_images_are_bounded_by_its_store(serve):
    store = 16 * MiB
    images = [rgba(1024, 1024, seed=i) for i in range(5)]  # 4 MiB each: the store keeps the newest four
    with serve(store_bytes=store) as server, Client(server.url) as client:
        for n, image in enumerate(images):
            job = SubmitJob(f"u{n}", "img2img", JobParams(model="tiny", strength=1.0, steps=1, width=64, height=64),
                            {"image": image.id})
            assert isinstance(client.run(job, [image])[-1], JobResult)
        held = server.call(lambda: [c.store.bytes for c in server.server.clients.values()])
        assert held and max(held) <= store
        # An offer bigger than the whole store is refused outright.
        client.send_raw(encode(OfferImages(tuple(ImageInfo(f"{i:064x}", ImageFormat.RGBA8, 2048, 2048, 16 * MiB)
                                                 for i in range(2)))))
        error = _error(client)
        assert error.code is ErrorCode.LIMIT_EXCEEDED and error.ref == "offer_images"


def test_jobs_are_bounded_per_client_and_in_total(serve, engine):
    """Deterministic: the first job holds the device behind a gate (GatedEngine) until the test opens it."""
    gated = GatedEngine(engine)
    with serve(engine_=gated, queue_size=6, max_client_jobs=3) as server, \
            Client(server.url) as a, Client(server.url) as b, Client(server.url) as c:
        assert a.welcome.limits.max_client_jobs == 3
        for n in range(3):
            a.submit(txt2img(f"a{n}", prompt="A"))
        a.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "a2")
        a.submit(txt2img("a3", prompt="A"))
        over = a.until_done("a3")[-1]
        assert isinstance(over, JobFailed) and over.code is ErrorCode.BUSY  # one client cannot take the whole queue
        for n in range(3):
            b.submit(txt2img(f"b{n}", prompt="B"))
        b.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "b2")
        c.submit(txt2img("c0", prompt="C"))
        c.until(lambda e: isinstance(e, JobAccepted))  # 6 waiting now (a0 runs)
        c.submit(txt2img("c1", prompt="C"))
        full = c.until_done("c1")[-1]
        assert isinstance(full, JobFailed) and full.code is ErrorCode.BUSY
        assert full.details == {"queue_length": 6, "max_queued_jobs": 6}
        for key in "ABC":
            gated.gate(key).set()
        for client, job_id in ((a, "a2"), (b, "b2"), (c, "c0")):
            assert isinstance(client.until_done(job_id)[-1], JobResult)


class _StalledSend:
    """FAULT INJECTED: the socket of one connection takes no frame until ``open`` is set (made on
    the server's loop)."""

    def __init__(self, ws) -> None:
        import asyncio

        self.real = ws.send
        self.open = asyncio.Event()

    async def __call__(self, frame):
        await self.open.wait()
        await self.real(frame)


def test_a_slow_reader_gets_the_latest_preview_not_a_backlog(serve):
    with serve() as server, Client(server.url) as client:
        conn = server.call(lambda: next(iter(server.server.connections)))
        stalled = server.call(lambda: _StalledSend(conn.ws))
        server.call(lambda: setattr(conn.ws, "send", stalled))
        produced: list[int] = []
        real_preview = server.server.job_preview
        server.server.job_preview = lambda job, step, *rest: (produced.append(step), real_preview(job, step, *rest))
        client.submit(txt2img("slow", steps=20))
        deadline = time.monotonic() + WAIT_S
        while len(produced) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        backlog = server.call(lambda: conn.backlog)
        server.call(lambda: stalled.open.set())
        events = client.until_done("slow")
    previews = [e.step for e in events if isinstance(e, StepPreview)]
    assert produced == list(range(1, 21))
    assert len(previews) <= 3 and previews[-1] == 20, previews  # what was queued when the socket stalled, then the latest
    assert backlog < 64 * 1024, backlog
    assert isinstance(events[-1], JobResult)


class _RawSocketClient:
    """A websocket client on a plain socket that sends and never reads (a small receive buffer), so
    that what the server answers piles up on the server's side."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        assert response.startswith(b"HTTP/1.1 101"), response

    def send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
                                else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # also wakes a thread blocked sending on it
        except OSError:
            pass
        self.sock.close()


def test_a_client_that_sends_without_reading_is_held_back_not_buffered(serve, monkeypatch):
    """Bounds lowered for the test (BACKLOG_HIGH 256 KiB): answers the client does not read pile up
    to the bound, then the server stops reading that client; other clients are not affected."""
    import backend.server

    monkeypatch.setattr(backend.server, "BACKLOG_HIGH", 256 * 1024)
    monkeypatch.setattr(backend.server, "BACKLOG_LOW", 64 * 1024)
    infos = tuple(ImageInfo(f"{i:064x}", ImageFormat.RGBA8, 8, 8, 256) for i in range(16))
    offer = encode(OfferImages(infos))  # answered with images_wanted of 16 ids, ~1 KiB
    with serve() as server, Client(server.url) as bystander:
        raw = _RawSocketClient(server.port)
        raw.send(encode(Hello(1, "raw", "1")))
        sent = 0
        stop = threading.Event()

        def flood() -> None:
            nonlocal sent
            try:
                while not stop.is_set():
                    raw.send(offer)
                    sent += 1
            except OSError:
                pass
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        samples = []
        for _ in range(40):
            time.sleep(0.1)
            samples.append(server.call(lambda: max((c.backlog for c in server.server.connections if c.client
                                                    and c.client.name == "raw"), default=0)))
        assert isinstance(bystander.run(txt2img("b", steps=1))[-1], JobResult)
        stop.set()
        raw.close()
        thread.join(WAIT_S)
    assert max(samples) <= 256 * 1024 + 2048, samples  # the bound, plus at most the answer in hand
    assert max(samples) > 64 * 1024, samples  # and the backlog did reach it: the reader was held back
    assert sent * 1024 > 2 * 256 * 1024, sent  # its answers, had they all been kept, would be far over the bound


def test_resources_come_back_after_bounds_were_hit(serve):
    def upload_and_leave() -> None:
        with RawClient(server.url) as client:
            client.send(OfferImages((ImageInfo("ab" * 32, ImageFormat.RGBA8, 1024, 1024, 4 * MiB),)))
            client.until(lambda e: isinstance(e, ImagesWanted))
            client.send(ImageChunk("ab" * 32, ImageFormat.RGBA8, 1024, 1024, 4 * MiB, 0, 4, b"\x00" * MiB))

    with serve(reconnect_grace_s=0.0) as server:
        with Client(server.url) as client:
            assert isinstance(client.run(txt2img("warm", steps=1))[-1], JobResult)
        upload_and_leave()  # warm-up: the loop's thread pool starts its thread for chunks
        server.settle()
        before = resources(server)
        for n in range(5):
            upload_and_leave()
        server.settle()
        after = resources(server)
    assert after["tasks"] == before["tasks"] and after["threads"] <= before["threads"] and after["fds"] <= before["fds"]
