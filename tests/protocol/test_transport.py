"""The websocket transport (``AsyncClient``, ``ThreadedClient``) against a real server on loopback.

The server is ``protocol_support.LoopbackServer``: websockets' own server (``compression=None``,
explicit ``max_size``) driving a real ``ServerSession``, on a thread of its own. Timeouts here are
hang guards, not performance claims.
"""
from __future__ import annotations

import asyncio
import queue
import socket
import sys
from typing import Any, Awaitable, Callable

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve

from protocol import (
    MAX_CHUNK_BYTES, ErrorCode, ErrorEvent, ImagesWanted, ImageStored, JobAccepted, JobCancelled, JobFailed,
    JobResult, JobStarted, ModelList, Pong, Refused, StepPreview, SubmitJob, Welcome,
)
from protocol.transport import AsyncClient, Connected, Disconnected, JobLost, NotConnected, ThreadedClient
from protocol_support import FAIL, FORGET, HOLD, LoopbackServer, invert, rgba

GUARD = 60  # seconds; only ever reached when something hangs


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, GUARD))


async def events_until(client: AsyncClient, done: Callable[[Any], bool], limit: int = 100) -> list[Any]:
    """Events from ``client`` up to and including the first one for which ``done`` is true."""
    out = []
    for _ in range(limit):
        event = await client.next_event(timeout=GUARD)
        out.append(event)
        if done(event):
            return out
    raise AssertionError(f"no matching event in {out}")


def new_client(server: LoopbackServer, **options: Any) -> AsyncClient:
    return AsyncClient(server.url, client_name="test", client_version="1.0", **options)


async def start(client: AsyncClient) -> Welcome:
    """Connect, and take the ``Connected`` event every (re)connection hands out first."""
    welcome = await client.start()
    connected = await client.next_event(GUARD)
    assert isinstance(connected, Connected) and connected.welcome == welcome
    return welcome


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- compression

@pytest.mark.parametrize("server_compression", [None, "deflate"])
def test_compression_is_off_on_both_ends(server_compression: str | None) -> None:
    # Even a server willing to deflate gets no offer from our client, so nothing is negotiated.
    with LoopbackServer(compression=server_compression) as server:
        async def main() -> None:
            client = new_client(server)
            welcome = await start(client)
            assert isinstance(welcome, Welcome) and client.connected
            await client.close()
        run(main())
    assert server.request_extensions == [None]
    assert server.response_extensions == [None]
    assert server.negotiated == [[]]


def test_the_extension_check_would_see_deflate() -> None:
    # The control for the test above: websockets' defaults on both ends do negotiate deflate.
    with LoopbackServer(compression="deflate") as server:
        async def main() -> None:
            async with ws_connect(server.url) as ws:  # websockets' default: compression="deflate"
                assert [ext.name for ext in ws.protocol.extensions] == ["permessage-deflate"]
        run(main())
    assert server.request_extensions[0] and "permessage-deflate" in server.request_extensions[0]
    assert [ext.name for ext in server.negotiated[0]] == ["permessage-deflate"]


# --------------------------------------------------------------------------- uploads and results

def test_16_mib_image_uploads_in_chunks_and_the_result_comes_back() -> None:
    image = rgba(2048, 2048, seed=11)
    assert len(image.data) == 16 * 1024 * 1024
    with LoopbackServer() as server:
        async def main() -> list[Any]:
            client = new_client(server)
            await start(client)
            job = SubmitJob("big", "img2img", images={"image": image.id})
            await client.submit_hashed(job, [image])
            events = await events_until(client, lambda e: isinstance(e, JobResult))
            assert client.session is not None and client.session.bytes_uploaded == len(image.data)
            # The same layer again: the server has it, so not one chunk travels.
            client.submit(SubmitJob("again", "img2img", images={"image": image.id}), [image])
            events += await events_until(client, lambda e: isinstance(e, JobResult))
            assert client.session.bytes_uploaded == len(image.data)
            await client.close()
            return events
        events = run(main())
        uploads, chunk_sizes = server.uploads, server.chunk_sizes
    assert len(uploads) == 1 and uploads[0].data == image.data and uploads[0].id == image.id  # byte-identical
    assert chunk_sizes == [MAX_CHUNK_BYTES] * 3 + [MAX_CHUNK_BYTES // 2, MAX_CHUNK_BYTES // 4] + [MAX_CHUNK_BYTES // 8] * 2
    kinds = [type(e) for e in events]
    assert kinds[:4] == [ImagesWanted, ImageStored, JobAccepted, JobStarted]
    assert StepPreview in kinds
    results = [e for e in events if isinstance(e, JobResult)]
    assert [r.job_id for r in results] == ["big", "again"]
    assert results[0].images[0].data == invert(image).data and results[0].images == (invert(image),)
    assert results[0].finished.timings == {"total": 0.01}


def test_ping_models_and_a_failed_job() -> None:
    with LoopbackServer() as server:
        async def main() -> None:
            client = new_client(server)
            await start(client)
            client.ping(41)
            assert await client.next_event(GUARD) == Pong(41)
            client.list_models()
            (models,) = await events_until(client, lambda e: True)
            assert models.models[0].id == "demo"
            client.submit(SubmitJob("bad", FAIL))
            (failed,) = await events_until(client, lambda e: isinstance(e, JobFailed))
            assert failed.code is ErrorCode.INVALID_PARAMETER and failed.details == {"field": "strength", "value": 1.4}
            await client.close()
        run(main())


def test_cancel_over_the_wire() -> None:
    with LoopbackServer() as server:
        async def main() -> None:
            client = new_client(server)
            await start(client)
            client.submit(SubmitJob("long", HOLD))
            await events_until(client, lambda e: isinstance(e, JobAccepted))
            client.cancel("long")
            (cancelled,) = await events_until(client, lambda e: isinstance(e, JobCancelled))
            assert cancelled.reason == "requested" and client.session.open_jobs == {}
            await client.close()
        run(main())


def test_junk_from_the_server_becomes_an_error_event() -> None:
    with LoopbackServer() as server:
        async def main() -> None:
            client = new_client(server)
            await start(client)
            await asyncio.to_thread(server.inject, b"\xc1 not msgpack")
            await asyncio.to_thread(server.inject, "a text frame")
            first, second = await client.next_event(GUARD), await client.next_event(GUARD)
            assert isinstance(first, ErrorEvent) and first.code is ErrorCode.MALFORMED_FRAME
            assert isinstance(second, ErrorEvent) and second.code is ErrorCode.MALFORMED_FRAME
            client.ping(2)  # the connection goes on
            assert await client.next_event(GUARD) == Pong(2)
            await client.close()
        run(main())


# --------------------------------------------------------------------------- connection life cycle

def test_reconnect_after_the_server_drops_the_connection() -> None:
    with LoopbackServer() as server:
        async def main() -> None:
            client = new_client(server, backoff=(0.05, 0.2))
            await start(client)
            first_id = client.client_id
            client.submit(SubmitJob("kept", HOLD))      # the server keeps it across the drop
            client.submit(SubmitJob("dropped", FORGET))  # the server forgets it
            await events_until(client, lambda e: isinstance(e, JobAccepted) and e.job_id == "dropped")
            await asyncio.to_thread(server.drop)
            events = await events_until(client, lambda e: isinstance(e, Connected))
            disconnected = [e for e in events if isinstance(e, Disconnected)]
            assert disconnected and all(e.will_retry for e in disconnected)
            assert [e.job_id for e in events if isinstance(e, JobLost)] == ["dropped"]
            assert events[-1].welcome.open_jobs == ("kept",)
            assert client.client_id == first_id and client.connected
            await asyncio.to_thread(server.finish, first_id, "kept")
            (result,) = [e for e in await events_until(client, lambda e: isinstance(e, JobResult))
                         if isinstance(e, JobResult)]
            assert result.job_id == "kept" and client.session.open_jobs == {}
            await client.close()
        run(main())
        assert len(server.negotiated) == 2


def test_requests_while_the_server_is_down_raise_not_connected() -> None:
    server = LoopbackServer().__enter__()
    async def main() -> None:
        client = new_client(server, backoff=(0.05, 0.1))
        await start(client)
        await asyncio.to_thread(server.__exit__, None, None, None)
        disconnected = await client.next_event(GUARD)
        assert isinstance(disconnected, Disconnected) and disconnected.will_retry
        with pytest.raises(NotConnected) as caught:
            client.submit(SubmitJob("j", "txt2img"))
        assert "not connected" in caught.value.message
        again = await client.next_event(GUARD)  # it keeps trying, with backoff
        assert isinstance(again, Disconnected) and "cannot reach" in again.reason
        await client.close()
    run(main())


def test_clean_close() -> None:
    with LoopbackServer() as server:
        async def main() -> None:
            client = new_client(server)
            await start(client)
            await client.close()
            assert not client.connected
            (last,) = client.pending_events()
            assert isinstance(last, Disconnected) and not last.will_retry
            await client.close()  # twice is fine
            with pytest.raises(NotConnected):
                client.ping()
        run(main())
        for _ in range(200):
            if server.handlers_done:
                break
            run(asyncio.sleep(0.01))
        assert server.close_codes == [1000]


def test_a_refused_handshake_is_not_retried() -> None:
    with LoopbackServer(token="right") as server:
        async def main() -> None:
            client = new_client(server, token="wrong", backoff=(0.01, 0.01))
            with pytest.raises(ConnectionError) as caught:
                await client.start()
            assert "refused" in str(caught.value) and "token" in str(caught.value)
            refused = await client.next_event(GUARD)
            assert isinstance(refused, Refused) and refused.code is ErrorCode.UNAUTHORIZED
            final = await client.next_event(GUARD)
            assert isinstance(final, Disconnected) and not final.will_retry
            await asyncio.sleep(0.1)
            assert client.pending_events() == []
            await client.close()
        run(main())
        assert len(server.negotiated) == 1


def test_an_unreachable_server_fails_start() -> None:
    async def main() -> None:
        client = AsyncClient(f"ws://127.0.0.1:{closed_port()}", client_name="t", client_version="1")
        with pytest.raises(ConnectionError) as caught:
            await client.start()
        assert "cannot reach" in str(caught.value)
        await client.close()
    run(main())


def test_a_server_that_never_answers_hello_fails_start() -> None:
    async def silent(ws: Any) -> None:
        await ws.wait_closed()

    async def main() -> None:
        async with serve(silent, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            client = AsyncClient(f"ws://127.0.0.1:{port}", client_name="t", client_version="1", open_timeout=0.3)
            with pytest.raises(ConnectionError) as caught:
                await client.start()
            assert "handshake" in str(caught.value)
            await client.close()
    run(main())


# --------------------------------------------------------------------------- the threaded client

def test_threaded_client_for_hosts_without_a_loop() -> None:
    image = rgba(700, 700, seed=2)  # 1.9 MB: one chunk
    with LoopbackServer() as server:
        client = ThreadedClient(server.url, client_name="blender", client_version="4.2")
        welcome = client.start()
        try:
            assert isinstance(welcome, Welcome) and client.connected and client.welcome == welcome
            client.submit(SubmitJob("t1", "img2img", images={"image": image.id}), [image])
            events = []
            while not any(isinstance(e, JobResult) for e in events):
                events.append(client.wait_event(timeout=GUARD))
            assert events[-1].images == (invert(image),)
            client.submit(SubmitJob("t2", HOLD))
            while not isinstance(client.wait_event(timeout=GUARD), JobAccepted):
                pass
            client.cancel("t2")
            while not isinstance(event := client.wait_event(timeout=GUARD), JobCancelled):
                pass
            assert event.job_id == "t2"
            client.ping(8)
            assert client.wait_event(timeout=GUARD) == Pong(8)
            assert client.poll() == []
            client.list_models()
            assert isinstance(client.wait_event(timeout=GUARD), ModelList)
            with pytest.raises(queue.Empty):
                client.wait_event(timeout=0.05)
        finally:
            client.close()
        assert not client._thread.is_alive()
        client.close()  # twice is fine
        assert uploads_of(server) == [image.id]


def uploads_of(server: LoopbackServer) -> list[str]:
    return [image.id for image in server.uploads]


def test_next_event_with_a_timeout_waits_without_a_task_of_its_own_and_times_out() -> None:
    """``next_event(timeout=...)`` on Python 3.11+ puts its deadline on the caller's task (no task
    per wait, as ``wait_for`` made): while it waits, the loop's tasks are the ones it had; the event
    that arrives meanwhile is returned; with nothing coming it raises ``TimeoutError``."""
    with LoopbackServer() as server:
        async def main() -> None:
            client = new_client(server)
            await start(client)
            before = set(asyncio.all_tasks())
            seen: list[set[asyncio.Task]] = []
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, lambda: seen.append(set(asyncio.all_tasks())))
            loop.call_later(0.1, client.ping, 7)
            assert await client.next_event(timeout=GUARD) == Pong(7)
            if sys.version_info >= (3, 11):
                assert seen == [before], "next_event made a task for its wait"
            with pytest.raises(TimeoutError):
                await client.next_event(timeout=0.05)
            client.ping(8)  # the timed-out wait took nothing from the queue
            assert await client.next_event(timeout=GUARD) == Pong(8)
            await client.close()
        run(main())
