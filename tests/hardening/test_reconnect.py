"""Jobs survive a reconnect: within the grace period a client that comes back with its client id
gets its running job's events and its result — also a result that finished while it was away, or
one that was written to the old socket but never read. After the grace period everything is
cancelled and freed. Client ids are unguessable; a second connection with the same id takes over.

Real server and engine (tiny models); the plugins' own transport (``AsyncClient``) where the
client side is under test, real ``ClientSession``s elsewhere.
"""
from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from typing import Any

import pytest
from websockets.sync.client import connect

from protocol import (
    ClientSession, ErrorCode, ImagePayload, JobAccepted, JobFailed, JobParams, JobResult, JobStarted, Limits, Ping,
    ServerSession, StepPreview, SubmitJob, Welcome, Capabilities, JobPhase,
)
from protocol.transport import AsyncClient, Connected, Disconnected, JobLost
from soak import ClientLoop
from test_server_harness import WAIT_S, Client, txt2img


class ResumingClient(Client):
    """The harness client, reconnecting with a client id and the jobs it still waits for."""

    def __init__(self, url: str, client_id: str, resume: tuple[str, ...] = ()) -> None:
        self.ws = connect(url, compression=None, max_size=8 * 1024 * 1024, open_timeout=WAIT_S, max_queue=None)
        self.session = ClientSession("test", "1.0", client_id=client_id, resume=resume)
        self.flush()
        self.welcome = self.next_events()[0]
        self.log: list[Any] = []


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _abort_connection_of(server, client_id: str) -> None:
    """Drop a client's connection from the server's side without a close handshake (a network cut)."""
    def cut() -> None:
        for conn in server.server.connections:
            if conn.client is not None and conn.client.client_id == client_id:
                conn.ws.transport.abort()
    server.call(cut)


async def _events_until(client: AsyncClient, predicate, seen: list) -> Any:
    while True:
        event = await client.next_event(WAIT_S)
        seen.append(event)
        if predicate(event):
            return event


def test_a_running_job_survives_a_dropped_connection_through_the_plugins_transport(serve):
    with serve() as server, ClientLoop() as loop:
        async def main() -> list:
            client = AsyncClient(server.url, client_name="plugin", client_version="1", backoff=(0.05, 0.2))
            await client.start()
            seen: list = []
            client.submit(txt2img("long", steps=30, seed=5))
            await _events_until(client, lambda e: isinstance(e, StepPreview), seen)
            first_id = client.client_id
            await asyncio.to_thread(_abort_connection_of, server, first_id)
            connected = await _events_until(client, lambda e: isinstance(e, Connected), seen)
            assert connected.welcome.client_id == first_id and connected.welcome.open_jobs == ("long",)
            await _events_until(client, lambda e: isinstance(e, (JobResult, JobFailed, JobLost)), seen)
            await client.close()
            return seen
        seen = loop.run(main(), WAIT_S * 2)
    assert any(isinstance(e, Disconnected) and e.will_retry for e in seen)
    assert not any(isinstance(e, JobLost) for e in seen)
    result = seen[-1]
    assert isinstance(result, JobResult) and result.job_id == "long" and result.finished.seed == 5
    assert [(i.width, i.height) for i in result.images] == [(64, 64)]


def test_a_result_that_finished_while_the_client_was_away_comes_right_after_welcome(serve):
    with serve() as server:
        with Client(server.url) as reference:  # the same job on a connection that stays: the expected pixels
            expected = reference.run(txt2img("ref", steps=3, seed=9))[-1].images
        away = Client(server.url)
        client_id = away.welcome.client_id
        away.submit(txt2img("j", steps=3, seed=9))
        away.until(lambda e: isinstance(e, JobStarted))
        _drop(away)  # a clean close would end the session
        _wait(lambda: server.call(lambda: "j" in server.server.clients[client_id].ended), "the job to end")
        # Back, as a minimal client would come back: the id only. The end was never written to a
        # socket, so the server sends it anyway.
        with Client(server.url, client_id=client_id) as back:
            assert back.welcome.client_id == client_id and back.welcome.open_jobs == ("j",)
            first = back.next_events()  # right after welcome: the result (its chunks, then job_finished)
            while not first:
                first = back.next_events()
            assert isinstance(first[0], JobResult) and first[0].job_id == "j"
            assert first[0].images == expected
            assert back.session.open_jobs == {}


def test_a_result_written_to_a_socket_that_died_is_sent_again_when_the_client_names_it(serve):
    """The server wrote job_finished, but the client never read it (a cut connection loses what is
    in the kernel's buffers). The client names the job in hello.open_jobs; the server sends it again."""
    with serve() as server:
        first = Client(server.url)
        client_id = first.welcome.client_id
        result = first.run(txt2img("j", steps=2, seed=4))[-1]  # we read it here: to the server it was delivered
        assert isinstance(result, JobResult)
        _drop(first)
        with ResumingClient(server.url, client_id, resume=("j", "never-submitted")) as back:
            assert back.welcome.open_jobs == ("j",)
            again = back.until(lambda e: isinstance(e, JobResult))[-1]
            assert again.images == result.images and again.finished.seed == 4
        # Without naming it, a delivered result is not sent again.
        with Client(server.url, client_id=client_id) as plain:
            assert plain.welcome.open_jobs == ()


def test_after_the_grace_period_jobs_are_cancelled_memory_freed_and_the_job_reported_lost(serve, caplog):
    caplog.set_level(logging.INFO, logger="easel")
    with serve(reconnect_grace_s=0.5) as server, ClientLoop() as loop:
        async def main() -> list:
            # Reconnects only after 3 s: longer than the grace period.
            client = AsyncClient(server.url, client_name="plugin", client_version="1", backoff=(3.0, 3.0))
            await client.start()
            seen: list = []
            client.submit(txt2img("gone", steps=150))
            await _events_until(client, lambda e: isinstance(e, StepPreview), seen)
            old_id = client.client_id
            await asyncio.to_thread(_abort_connection_of, server, old_id)
            await _events_until(client, lambda e: isinstance(e, Connected), seen)  # JobLost comes just before it
            assert client.client_id != old_id  # a new client: the old one was forgotten
            await client.close()
            return [old_id, *seen]
        old_id, *seen = loop.run(main(), WAIT_S * 2)
        state = server.settle()
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"client {old_id} did not come back" in m for m in messages)
    assert any(f"job {old_id}/gone cancelled" in m and "disconnected" in m for m in messages)
    assert [e.job_id for e in seen if isinstance(e, JobLost)] == ["gone"]
    assert state["clients"] == 0 and state["store_bytes"] == 0


def test_client_ids_are_unguessable_and_a_wrong_id_gets_nothing(serve):
    with serve() as server:
        owner = Client(server.url)
        owner.submit(txt2img("mine", steps=20))
        owner.until(lambda e: isinstance(e, StepPreview))
        ids = {owner.welcome.client_id}
        for _ in range(10):
            with Client(server.url) as other:
                ids.add(other.welcome.client_id)
        assert len(ids) == 11 and all(re.fullmatch(r"c[0-9a-f]{32}", i) for i in ids)  # 128 random bits each
        real = owner.welcome.client_id
        for guess in (real[:-1] + ("0" if real[-1] != "0" else "1"), real.upper(), real + " ", "c" + "0" * 32, real[:9]):
            with ResumingClient(server.url, guess, resume=("mine",)) as stranger:
                assert isinstance(stranger.welcome, Welcome)
                assert stranger.welcome.client_id not in (real, guess) and stranger.welcome.open_jobs == ()
        assert isinstance(owner.until_done("mine")[-1], JobResult)  # still the owner's
        owner.close()


def test_a_second_connection_with_the_same_id_takes_over_and_the_first_stops_reconnecting(serve, caplog):
    caplog.set_level(logging.INFO, logger="easel")
    with serve() as server, ClientLoop() as loop:
        async def start() -> tuple[AsyncClient, list]:
            client = AsyncClient(server.url, client_name="plugin", client_version="1", backoff=(0.05, 0.2))
            await client.start()
            seen: list = []
            client.submit(txt2img("shared", steps=25, seed=2))
            await _events_until(client, lambda e: isinstance(e, StepPreview), seen)
            return client, seen
        first, seen = loop.run(start(), WAIT_S)
        with ResumingClient(server.url, first.client_id) as second:
            assert second.welcome.client_id == first.client_id and second.welcome.open_jobs == ("shared",)

            async def after() -> Any:
                event = await _events_until(first, lambda e: isinstance(e, Disconnected), seen)
                await asyncio.sleep(0.5)  # would it reconnect (and take the client back)?
                return event
            dropped = loop.run(after(), WAIT_S)
            assert not dropped.will_retry and "took over" in dropped.reason
            assert isinstance(second.until_done("shared")[-1], JobResult)
            _wait(lambda: server.call(lambda: len(server.server.connections)) == 1, "the old connection to end")
        loop.run(first.close(), WAIT_S)
    assert any("takes over" in r.getMessage() for r in caplog.records)


def test_kept_results_are_bounded_by_the_clients_image_store(serve):
    """White-box: the disconnected client's store is shrunk to one result's bytes, so the second
    result pushes the first out; only the second can be sent on the reconnect."""
    with serve() as server:
        away = Client(server.url)
        client_id = away.welcome.client_id
        away.submit(txt2img("j1", steps=20, seed=1))
        away.submit(txt2img("j2", steps=8, seed=2))
        away.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "j2")
        _drop(away)
        server.call(lambda: setattr(server.server.clients[client_id].store, "max_bytes", 64 * 64 * 4))
        _wait(lambda: server.call(lambda: {"j1", "j2"} <= set(server.server.clients[client_id].ended)), "both jobs to end")
        with ResumingClient(server.url, client_id, resume=("j1", "j2")) as back:
            assert back.welcome.open_jobs == ("j2",)
            assert back.until(lambda e: isinstance(e, JobResult))[-1].job_id == "j2"


def test_the_session_takes_results_of_resumed_jobs_that_ended_while_away():
    """Sans-I/O: a reconnecting ClientSession and a ServerSession joined by a list."""
    from protocol import ImageFormat

    server = ServerSession(limits=Limits(5 * 1024 * 1024))
    client = ClientSession("c", "1", client_id="c1", resume=("done", "running"))
    for frame in client.data_to_send():
        (hello,) = server.receive_frame(frame)
    assert hello.open_jobs == ("done", "running")
    server.welcome(server_name="easel", server_version="1", client_id="c1",
                   capabilities=Capabilities(("txt2img",), ("euler",), ()),
                   resumed={"done": JobPhase.RUNNING, "running": JobPhase.RUNNING})
    image = ImagePayload(ImageFormat.RGBA8, 512, 512, bytes(512 * 512 * 4))
    server.job_finished("done", [image], seed=3)
    server.step_preview("running", 5, 10, 8, 8, b"\xff\xd8\xff\xe0")
    events = [e for frame in server.data_to_send() for e in client.receive_frame(frame)]
    assert isinstance(events[0], Welcome) and events[0].open_jobs == ("done", "running")
    (result,) = [e for e in events if isinstance(e, JobResult)]
    assert result.images == (image,) and result.finished.seed == 3
    assert client.open_jobs == {"running": JobPhase.RUNNING}


def test_a_clean_close_ends_the_session_and_cancels_its_jobs_at_once(serve):
    """Close 1000 is the client saying goodbye: its running job gives the device up now, not after
    the grace period (here 10 minutes, so before the fix the other client's job waited on it)."""
    with serve(reconnect_grace_s=600) as server:
        leaving = Client(server.url)
        leaving_id = leaving.welcome.client_id
        leaving.submit(txt2img("long", steps=150))
        leaving.until(lambda e: isinstance(e, JobStarted))
        leaving.close()  # 1000
        _wait(lambda: server.state()["clients"] == 0 and server.state()["running"] == 0, "the job to be cancelled")
        with Client(server.url) as other:
            assert isinstance(other.run(txt2img("short", steps=1))[-1], JobResult)
        with Client(server.url, client_id=leaving_id) as back:  # the session is over: a new id, no jobs
            assert back.welcome.client_id != leaving_id and back.welcome.open_jobs == ()


def test_a_connection_that_drops_keeps_its_session_for_the_grace_period(serve):
    with serve(reconnect_grace_s=600) as server:
        away = Client(server.url)
        client_id = away.welcome.client_id
        away.submit(txt2img("j", steps=150))
        away.until(lambda e: isinstance(e, JobStarted))
        _drop(away)
        _wait(lambda: server.state()["connections"] == 0, "the server to see the drop")
        assert server.state()["clients"] == 1 and server.state()["running"] == 1
        with ResumingClient(server.url, client_id, resume=("j",)) as back:
            assert back.welcome.open_jobs == ("j",)
            back.cancel("j")
            back.until_done("j")


def _drop(client: Client) -> None:
    """Cut the client's socket without a close handshake (what a network failure looks like)."""
    client.ws.socket.shutdown(socket.SHUT_RDWR)
    client.ws.close()
