"""The server's chunk chain (protocol/transport_chain.py in backend/server.py): a connection's image
chunks are received back to back on one IO thread while its reader reads on, and everything else a
client sees stays as it was one frame at a time — answers in order, a bad chunk answered once and
the connection served on, a connection cut or taken over in the middle of an upload put down
cleanly. Real server, engine (tiny models) and websocket clients; where a test holds a chunk at a
gate inside ``ServerSession.receive_frame`` to make frames provably wait in the chain, it says so.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable

import pytest

from protocol import (
    ErrorCode, ErrorEvent, ImageChunk, ImagePayload, ImagesWanted, ImageStored, JobAccepted, JobFailed, OfferImages, Ping, Pong,
    ServerSession, chunk_image, decode, image_info,
)
from protocol.session import ConnectionState
from protocol.transport_chain import is_chunk_frame
from soak import RawClient, img2img_job, rgba_image
from test_server_harness import WAIT_S

#: 1 MiB layers cut into 256 KiB chunks: four chunk frames, each big enough for the receive interceptor.
CHUNK = 256 * 1024


def _until(check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return value


def _upload(client: RawClient, image: ImagePayload, chunks: list[ImageChunk]) -> None:
    client.send(OfferImages((image_info(image),)))
    assert client.until(lambda m: isinstance(m, ImagesWanted))[-1].ids == (image.id,)
    for chunk in chunks:
        client.send(chunk)


class Gate:
    """Stubs in part: ``ServerSession.receive_frame`` holds chunk ``index`` of ``image`` until
    :meth:`open`, so that the frames behind it provably wait; records every chunk of that image it
    received, with the session's state before and after."""

    def __init__(self, monkeypatch: Any, image: ImagePayload, index: int) -> None:
        self.open_, self.entered = threading.Event(), threading.Event()
        self.received: list[tuple[int, ConnectionState, ConnectionState]] = []
        real = ServerSession.receive_frame

        def gated(session: ServerSession, frame: Any) -> Any:
            chunk = decode(frame) if is_chunk_frame(frame) else None
            if not isinstance(chunk, ImageChunk) or chunk.id != image.id:
                return real(session, frame)
            if chunk.index == index:
                self.entered.set()
                assert self.open_.wait(WAIT_S)
            before = session.state
            try:
                return real(session, frame)
            finally:
                self.received.append((chunk.index, before, session.state))
        monkeypatch.setattr(ServerSession, "receive_frame", gated)

    def reached(self) -> None:
        assert self.entered.wait(WAIT_S)

    def open(self) -> None:
        self.open_.set()


def test_small_frames_between_chunks_are_answered_in_order_and_a_job_after_the_last_finds_its_image(serve, monkeypatch):
    image = rgba_image(512, 512, seed=3)
    chunks = chunk_image(image, CHUNK)
    assert len(chunks) == 4
    gate = Gate(monkeypatch, image, 3)  # the last chunk waits: the ping and the job behind it must wait too
    with serve() as server, RawClient(server.url) as client:
        client.send(OfferImages((image_info(image),)))
        client.until(lambda m: isinstance(m, ImagesWanted))
        for index, chunk in enumerate(chunks):  # sent back to back: chunk, ping, chunk, ping, ...
            client.send(chunk)
            client.send(Ping(index))
        client.send(img2img_job("after-upload", image))
        gate.reached()
        time.sleep(0.2)  # time for a server that did not wait for the chain to answer ahead (no timing asserted)
        gate.open()
        seen = client.until(lambda m: isinstance(m, (JobAccepted, JobFailed)) and m.job_id == "after-upload")
        assert [type(m).__name__ for m in seen] == ["Pong", "Pong", "Pong", "ImageStored", "Pong", "JobAccepted"]
        assert [m.nonce for m in seen if isinstance(m, Pong)] == [0, 1, 2, 3]
        assert seen[3] == ImageStored(image.id)


def test_a_bad_chunk_in_the_middle_is_answered_once_and_the_connection_goes_on(serve):
    image = rgba_image(512, 512, seed=4)
    chunks = chunk_image(image, CHUNK)
    with serve() as server, RawClient(server.url) as client:
        client.send(OfferImages((image_info(image),)))
        client.until(lambda m: isinstance(m, ImagesWanted))
        for chunk in (chunks[0], chunks[2], chunks[1], chunks[3]):  # chunk 2 before chunk 1: the upload breaks there
            client.send(chunk)
        client.send(Ping(1))
        seen = client.until(lambda m: isinstance(m, Pong))
        assert [type(m).__name__ for m in seen] == ["ErrorEvent", "Pong"]  # once; its later chunks are ignored
        assert (seen[0].code, seen[0].ref) == (ErrorCode.INVALID_IMAGE, image.id)
        assert "expected chunk 1" in seen[0].message and seen[0].log_id
        assert server.call(lambda: [c.bad_frames for c in server.server.connections]) == [1]
        # The same connection uploads the image again, whole this time.
        _upload(client, image, chunks)
        assert client.until(lambda m: isinstance(m, (ImageStored, ErrorEvent)))[-1] == ImageStored(image.id)
        assert server.call(lambda: server.server._unread_and_uploads()) == 0


@pytest.mark.parametrize("how", ["cut", "taken over"])
def test_a_connection_that_ends_mid_upload_drops_the_chunks_waiting_in_its_chain(serve, monkeypatch, how):
    # Stubbed in part (Gate): chunk 1 is held, so chunks 2 and 3 are provably waiting in the chain
    # when the connection ends. The session must not be touched after the connection let go of it,
    # and the waiting chunks are never received.
    image = rgba_image(512, 512, seed=5)
    chunks = chunk_image(image, CHUNK)
    gate = Gate(monkeypatch, image, 1)

    with serve() as server:
        first = RawClient(server.url, name="first")
        client_id = first.welcome.client_id
        try:
            _upload(first, image, chunks)
            gate.reached()  # chunk 1 in hand on the chain's thread
            conn = server.call(lambda: next(iter(server.server.connections)))
            assert server.call(lambda: conn.chain.busy)
            if how == "cut":
                first.ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the TCP connection just ends
                successor = None
            else:
                successor = RawClient(server.url, name="second", client_id=client_id)
                assert successor.welcome.client_id == client_id
            _until(lambda: server.call(lambda: conn.chain.closed))  # the reader has let go of the chain
            gate.open()
            _until(lambda: server.call(lambda: conn not in server.server.connections))
            assert [index for index, _before, _after in gate.received] == [0, 1]  # 2 and 3 were dropped
            assert all(before is after is ConnectionState.READY for _index, before, after in gate.received)
            assert server.call(lambda: server.server._unread_and_uploads()) == 0
            # The server goes on: the successor (or a new client) uploads the same image whole.
            with successor or RawClient(server.url, name="next") as client:
                _upload(client, image, chunks)
                assert client.until(lambda m: isinstance(m, (ImageStored, ErrorEvent)))[-1] == ImageStored(image.id)
        finally:
            gate.open()
            try:
                first.close()
            except Exception:  # already cut or closed by the takeover
                pass
