"""Spec conformance found by a third-party client: every msgpack extension type (the timestamp
included, which msgpack decodes by itself) is ``malformed_frame`` wherever it appears (sections 2
and 8), and a role typo is answered with the typo as ``details.value`` (section 11.1's example)."""
from __future__ import annotations

import datetime

import msgpack
import pytest

from backend.errors import JobError
from protocol import ErrorCode, ErrorEvent, JobParams, RemoteProtocolError, SubmitJob, decode
from soak import RawClient
from test_server_harness import Client, rgba

STAMP = msgpack.Timestamp(1_700_000_000, 0)
EXT = msgpack.ExtType(5, b"x")


@pytest.mark.parametrize("frame", [
    {"type": "ping", "nonce": STAMP},                        # a known field (was invalid_message)
    {"type": "ping", "nonce": 1, "when": STAMP},             # an unknown field (was silently accepted)
    {"type": "ping", "nonce": 1, "extra": [1, {"at": STAMP}]},  # nested in an unknown field
    {"type": "ping", "nonce": 1, "when": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},
    {"type": "ping", "nonce": 1, "extra": EXT},
    {"type": "ping", "nonce": EXT},
], ids=["known-field", "unknown-field", "nested", "datetime", "ext-unknown", "ext-known"])
def test_every_extension_type_is_malformed_frame(frame):
    packed = msgpack.packb(frame, datetime=True)
    with pytest.raises(RemoteProtocolError) as caught:
        decode(packed)
    assert caught.value.code is ErrorCode.MALFORMED_FRAME and "extension" in caught.value.message


def test_a_bare_timestamp_frame_is_malformed_frame():
    with pytest.raises(RemoteProtocolError) as caught:
        decode(msgpack.packb(STAMP))
    assert caught.value.code is ErrorCode.MALFORMED_FRAME


def test_the_server_answers_a_timestamp_with_malformed_frame_and_keeps_the_connection(serve):
    with serve() as server, RawClient(server.url) as client:
        client.send(msgpack.packb({"type": "ping", "nonce": 1, "sent_at": STAMP}))
        assert client.error().code is ErrorCode.MALFORMED_FRAME
        client.send(msgpack.packb({"type": "ping", "nonce": 2}))
        assert client.until(lambda m: getattr(m, "nonce", None) == 2)


def test_a_role_typo_is_answered_with_the_typo_as_value(engine):
    image = rgba(64, 64)
    submit = SubmitJob("t", "img2img", JobParams(model="tiny"), images={"imgae": image.id})
    with pytest.raises(JobError) as caught:
        engine.prepare(submit, {"imgae": image})
    assert caught.value.code is ErrorCode.INVALID_PARAMETER
    assert caught.value.details == {"field": "images", "value": "imgae"}
    assert "'imgae'" in caught.value.message and "'image'" in caught.value.message


def test_the_server_answers_a_role_typo_with_the_typo_as_value(serve):
    image = rgba(64, 64)
    with serve() as server, Client(server.url) as client:
        end = client.run(SubmitJob("t", "img2img", JobParams(model="tiny", steps=1), images={"imgae": image.id}), [image])[-1]
        assert end.code is ErrorCode.INVALID_PARAMETER and end.details == {"field": "images", "value": "imgae"}
