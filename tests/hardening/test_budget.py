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
