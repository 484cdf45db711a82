"""protocol/transport_chain.py: a real event loop and a real one-thread executor, frames that are
plain values, and ``receive`` functions held at gates (threading events) so that frames are provably
waiting while one is in hand; then ``AsyncClient``'s chain against a raw websockets server on
loopback. The server's use of the chain: tests/hardening/test_chunk_chain.py."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from protocol import ErrorCode, ImageChunk, ImageFormat, Ping, RemoteProtocolError, encode
from protocol.transport_chain import RUN_FRAMES, ChunkChain, is_chunk_frame

WAIT_S = 10.0


class Recorder:
    """``receive`` for a chain: records each frame and the thread it ran on; frames listed in
    ``gates`` wait until the test opens their gate; ``BAD…`` frames raise; ``SPECIAL…`` give an
    event that is not plain."""

    def __init__(self, *gated: Any) -> None:
        self.received: list[tuple[Any, int]] = []
        self.gates = {frame: threading.Event() for frame in gated}
        self.entered = {frame: threading.Event() for frame in gated}

    def __call__(self, frame: Any) -> list[Any]:
        if frame in self.gates:
            self.entered[frame].set()
            assert self.gates[frame].wait(WAIT_S)
        self.received.append((frame, threading.get_ident()))
        if str(frame).startswith("BAD"):
            raise RemoteProtocolError(ErrorCode.INVALID_IMAGE, f"{frame} is broken")
        return [("special" if str(frame).startswith("SPECIAL") else "event", frame)]

    @property
    def frames(self) -> list[Any]:
        return [frame for frame, _thread in self.received]

    async def reached(self, frame: Any) -> None:
        assert await asyncio.to_thread(self.entered[frame].wait, WAIT_S)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def _yield(times: int = 20) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


def plain(events: list[Any]) -> bool:
    return all(kind == "event" for kind, _frame in events)


def test_frames_that_wait_are_received_back_to_back_in_one_run_on_one_thread_in_order() -> None:
    receive = Recorder("a")
    delivered: list[tuple[Any, Any]] = []

    async def main() -> tuple[int, int]:
        with ThreadPoolExecutor(1) as executor:
            chain = ChunkChain(receive, lambda events, error: delivered.append((events, error)), executor,
                               plain=plain, depth=8)
            await chain.put("a")
            await receive.reached("a")  # "a" in hand: the rest wait in the chain
            for frame in ("b", "c", "d", "e"):
                await chain.put(frame)
            assert chain.busy and delivered == []
            receive.gates["a"].set()
            await chain.settle()
            assert not chain.busy
            return chain.runs, threading.get_ident()
    runs, loop_thread = run(main())
    assert receive.frames == ["a", "b", "c", "d", "e"]
    assert [events for events, _error in delivered] == [[("event", f)] for f in "abcde"]  # in order, none lost
    # One executor submission for the five: the thread went from frame to frame without a trip through the loop.
    assert runs == 1
    threads = {thread for _frame, thread in receive.received}
    assert len(threads) == 1 and loop_thread not in threads


def test_a_long_run_queues_its_rest_behind_other_work_on_the_executor() -> None:
    # A shared pool (the server's IO threads) must not be held by one connection's long upload: after
    # RUN_FRAMES frames the run goes to the back of the executor's queue, behind work queued meanwhile.
    frames = [f"f{i}" for i in range(RUN_FRAMES + 2)]
    receive = Recorder(frames[0])

    async def main() -> int:
        with ThreadPoolExecutor(1) as executor:
            chain = ChunkChain(receive, lambda events, error: None, executor, plain=plain, depth=len(frames))
            for frame in frames:
                await chain.put(frame)
            await receive.reached(frames[0])
            other = executor.submit(lambda: receive.received.append(("other work", threading.get_ident())))
            receive.gates[frames[0]].set()
            await chain.settle()
            other.result()
            return chain.runs
    runs = run(main())
    assert receive.frames == [*frames[:RUN_FRAMES], "other work", *frames[RUN_FRAMES:]]
    assert runs == 2


def test_a_frame_that_raises_stops_the_chain_until_its_error_is_delivered() -> None:
    # The error is answered with the session as that frame left it: the next frame is not received
    # before the loop has handled the error (the server's session.error reads what receive_frame set).
    receive = Recorder("a")
    delivered: list[tuple[Any, str, int]] = []

    def deliver(events: list[Any], error: BaseException | None) -> None:
        delivered.append((events[0][1] if events else None, type(error).__name__, len(receive.received)))

    async def main() -> int:
        with ThreadPoolExecutor(1) as executor:
            chain = ChunkChain(receive, deliver, executor, plain=plain, depth=8)
            await chain.put("a")
            await receive.reached("a")
            for frame in ("BAD-b", "c", "d"):
                await chain.put(frame)
            receive.gates["a"].set()
            await chain.settle()
            return chain.runs
    runs = run(main())
    assert receive.frames == ["a", "BAD-b", "c", "d"]
    assert [(f, e) for f, e, _n in delivered] == [("a", "NoneType"), (None, "RemoteProtocolError"), ("c", "NoneType"),
                                                  ("d", "NoneType")]
    assert delivered[1][2] == 2  # when the error was delivered, "c" had not been received yet
    assert runs == 2  # the thread stopped at the error and a new run took the rest


def test_events_that_need_awaiting_are_finished_before_the_next_frame_is_received() -> None:
    receive = Recorder()
    order: list[str] = []

    async def main() -> None:
        release = asyncio.Event()

        async def finish(frame: Any) -> None:
            order.append(f"finishing {frame}, received {receive.frames}")
            await release.wait()
            order.append(f"finished {frame}")

        def deliver(events: list[Any], error: BaseException | None) -> Any:
            kind, frame = events[0]
            order.append(f"delivered {frame}")
            return finish(frame) if kind == "special" else None

        with ThreadPoolExecutor(1) as executor:
            chain = ChunkChain(receive, deliver, executor, plain=plain, depth=8)
            for frame in ("a", "SPECIAL-b", "c"):
                await chain.put(frame)
            while not order or order[-1] != "finishing SPECIAL-b, received ['a', 'SPECIAL-b']":
                await asyncio.sleep(0.001)
            await _yield()
            assert receive.frames == ["a", "SPECIAL-b"] and chain.busy  # "c" waits for the finish
            release.set()
            await chain.settle()
    run(main())
    assert order[-2:] == ["finished SPECIAL-b", "delivered c"]
    assert receive.frames == ["a", "SPECIAL-b", "c"]


def test_put_waits_while_depth_frames_are_in_the_chain() -> None:
    receive = Recorder("a")

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            chain = ChunkChain(receive, lambda events, error: None, executor, plain=plain, depth=2)
            await chain.put("a")
            await chain.put("b")
            third = asyncio.ensure_future(chain.put("c"))
            await receive.reached("a")
            await _yield()
            assert not third.done()  # "a" in hand and "b" waiting: no room until "a" is delivered
            receive.gates["a"].set()
            await third
            await chain.settle()
    run(main())
    assert receive.frames == ["a", "b", "c"]


def test_close_drops_the_waiting_frames_and_waits_for_the_one_in_hand() -> None:
    receive = Recorder("a")
    delivered: list[Any] = []

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            chain = ChunkChain(receive, lambda events, error: delivered.append(events), executor, plain=plain, depth=4)
            for frame in ("a", "b", "c"):
                await chain.put(frame)
            await receive.reached("a")
            closing = asyncio.ensure_future(chain.close())
            await _yield()
            assert not closing.done()  # "a" is still being received: the session is not free yet
            receive.gates["a"].set()
            await closing
            assert chain.closed
            await chain.put("d")  # dropped: nobody reads this connection any more
            await _yield()
            await chain.close()  # twice is fine
    run(main())
    assert receive.frames == ["a"] and delivered == []


def test_a_failing_delivery_ends_the_chain_and_is_raised_to_the_reader() -> None:
    receive = Recorder()

    def deliver(events: list[Any], error: BaseException | None) -> None:
        raise KeyError("a bug in deliver")

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            chain = ChunkChain(receive, deliver, executor, plain=plain)
            await chain.put("a")
            with pytest.raises(KeyError):
                await chain.settle()
            assert chain.closed
            await chain.close()
    run(main())


def test_is_chunk_frame_knows_our_codecs_image_chunks() -> None:
    chunk = ImageChunk("0" * 64, ImageFormat.RGBA8, 1, 1, 4, 0, 1, b"\x00" * 4)
    assert is_chunk_frame(encode(chunk)) and is_chunk_frame(bytearray(encode(chunk)))
    assert not is_chunk_frame(encode(Ping(1))) and not is_chunk_frame("image_chunk")


def test_the_async_client_receives_queued_result_chunks_in_one_run_and_answers_a_bad_one_in_order() -> None:
    # A raw websockets server (a real ServerSession for the handshake) sends a result's chunks and a
    # pong behind them; the client's receive is held at a gate on chunk 0 (a spy on its session), so
    # chunks 1-3 provably wait in its chain. Then a broken result: chunk 2 before chunk 1.
    from protocol import Capabilities, ImageChunk, Limits, Pong, ServerSession, chunk_image, decode
    from protocol.transport import AsyncClient, Connected
    from protocol_support import rgba
    from websockets.asyncio.server import serve

    good, bad = rgba(512, 512, seed=1), rgba(512, 512, seed=2)
    script = {1: chunk_image(good, 256 * 1024), 2: [chunk_image(bad, 256 * 1024)[i] for i in (0, 2, 1, 3)]}
    gate = threading.Event()
    received: list[tuple[str, int, str]] = []

    async def handler(ws: Any) -> None:
        server = ServerSession(limits=Limits(max_frame_bytes=1024 * 1024))
        server.receive_frame(await ws.recv())
        server.welcome(server_name="raw", server_version="0", client_id="c", capabilities=Capabilities((), (), ()))
        for frame in server.data_to_send():
            await ws.send(frame)
        async for frame in ws:
            nonce = decode(frame).nonce  # the client only pings here
            for chunk in script[nonce]:
                await ws.send(encode(chunk))
            await ws.send(encode(Pong(nonce)))

    async def main() -> tuple[list[Any], list[Any], int, int]:
        async with serve(handler, "127.0.0.1", 0, compression=None) as listening:
            port = listening.sockets[0].getsockname()[1]
            client = AsyncClient(f"ws://127.0.0.1:{port}", client_name="test", client_version="1")
            await client.start()
            assert isinstance(await client.next_event(WAIT_S), Connected)
            receive = client.session.receive_frame

            def spy(frame: Any) -> Any:
                chunk = decode(frame)
                if isinstance(chunk, ImageChunk):
                    if chunk.id == good.id and chunk.index == 0:
                        assert gate.wait(WAIT_S)
                    received.append((chunk.id, chunk.index, threading.current_thread().name))
                return receive(frame)
            client.session.receive_frame = spy  # type: ignore[method-assign]
            client.ping(1)
            while client._chain.waiting < 3:  # chunk 0 in hand, 1 to 3 waiting behind it
                await asyncio.sleep(0.001)
            gate.set()
            first = [await client.next_event(WAIT_S)]
            runs = client._chain.runs
            client.ping(2)
            second = []
            while not second or not isinstance(second[-1], Pong):
                second.append(await client.next_event(WAIT_S))
            runs_after = client._chain.runs
            await client.close()
            return first, second, runs, runs_after
    first, second, runs, runs_after = run(main())
    assert first == [Pong(1)]
    assert runs == 1  # four chunks, one hand-off to the thread
    assert [(image, index) for image, index, _thread in received[:4]] == [(good.id, i) for i in range(4)]
    assert {thread for _image, _index, thread in received} == {"easel-receive_0"}
    # The broken result: each of its frames after the break is refused in order, all before the pong.
    assert [type(e).__name__ for e in second] == ["ErrorEvent"] * 3 + ["Pong"]
    assert all(e.code is ErrorCode.INVALID_IMAGE for e in second[:3]) and "expected chunk 1" in second[0].message
    assert runs_after - runs >= 2  # the thread stopped at the first error; a later run took the frames after it


def test_frames_with_nothing_to_deliver_do_not_wake_the_loop_while_more_wait() -> None:
    # An image's chunks before its last give no events: the loop hears only of the run's last frame.
    def receive(frame: Any) -> list[Any]:
        if frame == "a":
            assert gate.wait(WAIT_S)
        return [("event", frame)] if frame == "last" else []
    gate = threading.Event()
    delivered: list[Any] = []

    async def main() -> int:
        with ThreadPoolExecutor(1) as executor:
            chain = ChunkChain(receive, lambda events, error: delivered.append(events), executor, plain=plain, depth=8)
            for frame in ("a", "b", "c", "last"):
                await chain.put(frame)
            assert chain.busy
            gate.set()
            await chain.settle()
            assert not chain.busy
            # The executor's one thread is free once the first run has returned: "alone" then needs a run of its own.
            await asyncio.wrap_future(executor.submit(lambda: None))
            await chain.put("alone")  # nothing behind it: delivered (with no events), so settle() ends
            await chain.settle()
            return chain.runs
    runs = run(main())
    # The loop heard of "last" and "alone" only: "a" to "c" were counted on the thread, never posted.
    assert delivered == [[("event", "last")], []] and runs == 2
