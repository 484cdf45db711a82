"""One memory budget for the server's image stores: every client's store is a share of it, so four
clients cannot hold four times the per-client bound (the probe: ~520 MB each took the server from
916 to 2,987 MB). Real server and engine (tiny models), real clients uploading real images.
"""
from __future__ import annotations

import random

import pytest

from backend.config import ConfigError, ServerConfig, default_memory_budget
from protocol import ErrorCode, ErrorEvent, ImageFormat, ImagePayload, ImageStored, OfferImages, image_info
from soak import RawClient

MiB = 1024 * 1024


def _image(seed: int, side: int = 1024) -> ImagePayload:  # 4 MiB of RGBA
    return ImagePayload(ImageFormat.RGBA8, side, side, random.Random(seed).randbytes(side * side * 4))


def _upload(client: RawClient, image: ImagePayload):
    """Offer ``image``; upload it when asked. Returns the answer: ImageStored or ErrorEvent."""
    from protocol import ImagesWanted, chunk_image

    client.send(OfferImages((image_info(image),)))
    answer = client.until(lambda m: isinstance(m, (ImagesWanted, ErrorEvent)))[-1]
    if isinstance(answer, ErrorEvent):
        return answer
    for chunk in chunk_image(image, 1 * MiB):
        client.send(chunk)
    return client.until(lambda m: isinstance(m, (ImageStored, ErrorEvent)))[-1]


def test_clients_share_one_budget_and_the_one_over_it_is_told_why(serve):
    with serve(memory_budget=20 * MiB, store_bytes=16 * MiB) as server:
        assert server.server.budget.limit == 20 * MiB
        with RawClient(server.url) as a, RawClient(server.url) as b:
            for n in range(3):  # 12 MiB for a
                assert isinstance(_upload(a, _image(n)), ImageStored)
            assert isinstance(_upload(b, _image(10)), ImageStored)  # 16 MiB in all
            assert isinstance(_upload(b, _image(11)), ImageStored)  # 20 MiB: the whole budget
            # Over the budget, b's own oldest image makes room (never another client's).
            assert isinstance(_upload(b, _image(12)), ImageStored)
            assert server.call(lambda: (server.server.budget.used, sorted(c.store.bytes for c in server.server.clients.values()))) \
                == (20 * MiB, [8 * MiB, 12 * MiB])
            # a third client finds no room left: a typed error naming the budget
            with RawClient(server.url) as c:
                error = _upload(c, _image(20))
                assert isinstance(error, ErrorEvent) and error.code is ErrorCode.LIMIT_EXCEEDED
                assert "memory budget" in error.message and str(20 * MiB) in error.message
        # Clean closes end the sessions: their images leave the budget.
        server.settle()
        assert server.call(lambda: server.server.budget.used) == 0


def test_the_budget_defaults_to_a_quarter_of_the_machine_and_is_checked():
    assert default_memory_budget() >= 256 * MiB
    with pytest.raises(ConfigError):
        ServerConfig(memory_budget=MiB)


def test_uploads_in_flight_count_against_the_budget(serve):
    """The budget counts what is not stored yet: an upload half sent by one client leaves that much
    less for another's offer, which is refused naming the budget; once the upload is stored the
    bytes move to the store, and a smaller offer fits."""
    from protocol import ImagesWanted, Ping, Pong, chunk_image

    with serve(memory_budget=32 * MiB) as server:
        with RawClient(server.url) as a, RawClient(server.url) as b:
            # Each announced upload bound is the client's share of the budget when it said hello.
            assert a.welcome.limits.max_upload_bytes == 32 * MiB and b.welcome.limits.max_upload_bytes == 16 * MiB
            for n in range(3):  # 12 MiB stored by a
                assert isinstance(_upload(a, _image(10 + n)), ImageStored)
            big = _image(1, side=1448)  # ~8 MiB
            a.send(OfferImages((image_info(big),)))
            a.until(lambda m: isinstance(m, ImagesWanted))
            chunks = list(chunk_image(big, 1 * MiB))
            for chunk in chunks[:6]:
                a.send(chunk)
            a.send(Ping(1))
            a.until(lambda m: isinstance(m, Pong))  # the six chunks are held by the server now
            assert server.call(lambda: server.server.budget.held) >= 18 * MiB
            error = _upload(b, ImagePayload(ImageFormat.RGBA8, 2048, 2048, bytes(2048 * 2048 * 4)))  # 16 MiB > 32 - 18
            assert isinstance(error, ErrorEvent) and error.code is ErrorCode.LIMIT_EXCEEDED
            assert "memory budget" in error.message
            for chunk in chunks[6:]:
                a.send(chunk)
            assert isinstance(a.until(lambda m: isinstance(m, (ImageStored, ErrorEvent)))[-1], ImageStored)
            assert isinstance(_upload(b, _image(2)), ImageStored)  # 4 MiB: 20 + 4 of 32


def test_running_jobs_reserve_their_results_in_the_budget(serve):
    """A running job's results count against the budget from its start to its end."""
    from protocol import JobFailed, JobFinished, JobStarted
    from test_server_harness import txt2img

    with serve(memory_budget=16 * MiB) as server:
        with RawClient(server.url) as a:
            a.send(txt2img("r", width=512, height=512, batch_size=2, steps=30))
            started = a.until(lambda m: isinstance(m, (JobStarted, JobFailed)))
            assert isinstance(started[-1], JobStarted), started
            assert server.call(lambda: server.server.budget.held) >= 2 * MiB
            a.until(lambda m: isinstance(m, JobFinished))
            # the results are in a's store now, no longer reserved as well
            assert server.call(lambda: (len(server.server._building), server.server.budget.used)) == (0, 2 * MiB)
