"""How the server's writer puts a job's frames on the socket (issue 20, fixed cost): frames that
wait together and are small in all go out in one socket write (``job_accepted`` + ``job_started``,
a small result's chunk + ``job_finished``), in protocol order; a big frame (a result chunk over
``_TOGETHER_BYTES``) still goes out alone, one frame at a time, as backpressure needs, its data
written as a view of the result (``protocol/transport_send.py``).

A real server on loopback with the real Engine and tiny random models; the connection's transport
is wrapped only to record the bytes of each ``write`` call, which are then split into websocket
frames and decoded with the protocol's codec. Nothing here asserts a duration.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from protocol import ImageChunk, JobAccepted, JobFinished, JobResult, JobStarted, StepPreview, codec

sys.path.insert(0, str(Path(__file__).parent))
from test_server_harness import Client, ServerThread, engine, tiny_config, tiny_models, txt2img  # noqa: E402,F401


def _frames(writes: list[Any]) -> list[list[bytes]]:
    """The payloads of the unmasked websocket frames in ``writes`` (the server's socket writes, in
    order), grouped as they were written: one list per write, except that a frame written in
    pieces (a big image chunk: its header and head, then its data) joins the writes it spans into
    one group. Every group holds whole frames."""
    data = b"".join(writes)
    ends, end = [], 0
    for write in writes:
        end += len(write)
        ends.append(end)
    groups: list[list[bytes]] = []
    i = w = 0
    while i < len(data):
        assert data[i] & 0x80, "a fragment: the server sends every message in one frame"
        while ends[w] <= i:  # the write this frame starts in
            w += 1
        if w and ends[w - 1] == i or not groups:
            groups.append([])  # a frame that starts a write starts a group
        size, j = data[i + 1] & 0x7F, i + 2
        if size == 126:
            size, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif size == 127:
            size, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        groups[-1].append(data[j:j + size])
        i = j + size
        assert i <= len(data), "a write that ends inside a frame"
    return groups


def _record_writes(server: ServerThread) -> list[Any]:
    """From now on, what each socket write to every connection open now is given, in order."""
    writes: list[Any] = []

    def wrap() -> None:
        for conn in server.server.connections:
            transport = conn.ws.transport
            original = transport.write

            def write(data: Any, original: Any = original) -> None:
                writes.append(data)
                original(data)
            transport.write = write
    server.call(wrap)
    return writes


def _messages(write: list[bytes]) -> list[Any]:
    return [codec.decode(frame) for frame in write]


def test_a_small_jobs_frames_go_out_in_two_socket_writes_in_protocol_order(engine, tiny_models, tmp_path):
    from backend.server import _TOGETHER_BYTES

    with ServerThread(tiny_config(tiny_models, tmp_path), engine) as server, \
            Client(server.url) as client:
        assert isinstance(client.run(txt2img("warm", previews=False))[-1], JobResult)  # the model's first load
        recorded = _record_writes(server)
        events = client.run(txt2img("small", previews=False))
        writes = _frames(recorded)
        assert [type(e) for e in events] == [JobAccepted, JobStarted, JobResult]
        # What the client read: every frame of the job, in order; what the server wrote: two writes.
        kinds = [[type(m).__name__ for m in _messages(w)] for w in writes]
        assert kinds == [["JobAccepted", "JobStarted"], ["ImageChunk", "JobFinished"]], kinds
        assert all(sum(len(f) for f in w) <= _TOGETHER_BYTES + 64 for w in writes)


def test_previews_still_precede_the_result_and_a_big_result_chunk_is_written_alone(engine, tiny_models, tmp_path):
    from backend.server import _TOGETHER_BYTES

    with ServerThread(tiny_config(tiny_models, tmp_path), engine) as server, \
            Client(server.url) as client:
        assert isinstance(client.run(txt2img("warm", previews=False))[-1], JobResult)
        recorded = _record_writes(server)
        # 256²: a 256 KiB RGBA result, more than _TOGETHER_BYTES in one chunk frame.
        events = client.run(txt2img("big", width=256, height=256, steps=3, previews=True))
        assert isinstance(events[0], JobAccepted) and isinstance(events[-1], JobResult)
        assert any(isinstance(e, StepPreview) for e in events)
        writes = _frames(recorded)
        assert max(i for i, e in enumerate(events) if isinstance(e, StepPreview)) < len(events) - 1
        sent = [m for w in writes for m in _messages(w)]
        names = [type(m).__name__ for m in sent]
        assert names[0] == "JobAccepted" and names[-1] == "JobFinished"
        assert names.index("ImageChunk") > max(i for i, n in enumerate(names) if n == "StepPreview")
        big = [w for w in writes if any(len(f) > _TOGETHER_BYTES for f in w)]
        assert big and all(len(w) == 1 for w in big), [[len(f) for f in w] for w in writes]
        assert all(isinstance(_messages(w)[0], ImageChunk) for w in big)
        # The big chunk's data went to the socket as a view of the result, not copied into a frame.
        (data,) = [w for w in recorded if len(w) > _TOGETHER_BYTES]
        assert type(data) is memoryview and bytes(data) == _messages(big[0])[0].data
        assert isinstance(sent[-1], JobFinished)

