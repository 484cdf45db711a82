"""Big frames read past websockets' copies (``protocol/transport_frames.py``, ``backend/receiving.py``)
end to end: a real ``EaselServer`` on tiny random models and the plugins' ``AsyncClient`` on
loopback. An upload's chunk frame and a result's chunk frame (256 KiB each, over the 64 KiB
threshold) must be taken by the interceptor on each side and arrive whole: the result equals the one
a plain websockets client gets for the same job. Nothing here asserts a duration.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from protocol import ImageStored, JobParams, JobResult, SubmitJob
from protocol.transport import AsyncClient

sys.path.insert(0, str(Path(__file__).parent))
from test_server_harness import WAIT_S, Client, ServerThread, engine, rgba, tiny_config, tiny_models  # noqa: E402,F401


def test_numpy_unmask_matches_rfc_masking() -> None:
    from backend.receiving import unmask_numpy

    for n in (0, 1, 2, 3, 4, 7, 4096, 65539):
        payload, key = os.urandom(n), os.urandom(4)
        buffer = bytearray(b ^ key[i % 4] for i, b in enumerate(payload))
        unmask_numpy(memoryview(buffer), key)
        assert buffer == payload, n


def _job(job_id: str, source_id: str) -> SubmitJob:
    return SubmitJob(job_id, "img2img", JobParams(model="tiny", prompt="x", strength=0.5, steps=2, seed=3, width=256, height=256),
                     {"image": source_id})


def test_an_upload_and_a_result_are_read_past_websockets_and_arrive_whole(engine, tiny_models, tmp_path) -> None:
    source = rgba(256, 256)  # 256 KiB: one chunk frame over the threshold, up and back
    with ServerThread(tiny_config(tiny_models, tmp_path), engine) as server:
        async def main() -> tuple[JobResult, bool, int, list[int]]:
            client = AsyncClient(server.url, client_name="t", client_version="1")
            await client.start()
            client.submit(_job("taken", source.id), [source])
            stored = False
            while not isinstance(event := await client.next_event(WAIT_S), JobResult):
                stored |= isinstance(event, ImageStored)
            taken = client._ws.frames_taken
            on_server = await asyncio.to_thread(server.call, lambda: [c.ws.frames_taken for c in server.server.connections])
            await client.close()
            return event, stored, taken, on_server
        result, stored, client_taken, server_taken = asyncio.run(asyncio.wait_for(main(), WAIT_S))
        with Client(server.url) as plain:  # websockets' own client: frames through its copies
            expected = plain.run(_job("plain", source.id), [source])[-1]
    assert stored and server_taken == [1]  # the upload's one chunk frame, checked against its id on arrival
    assert client_taken == 1  # the result's one chunk frame
    assert isinstance(expected, JobResult) and result.images == expected.images
    assert [(i.width, i.height) for i in result.images] == [(256, 256)]
