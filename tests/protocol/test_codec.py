"""Round trip of every wire message, with field values generated from the dataclass type hints.

A message added to ``protocol.MESSAGES`` is covered here without touching this file. These tests
also run on msgpack's pure-Python fallback (``test_purepython.py``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys

import msgpack
import pytest
from hypothesis import given, strategies as st

import protocol
from protocol import (
    MESSAGES, ErrorCode, ErrorEvent, Hello, ImageChunk, ImageFormat, JobFailed, JobFinished, JobParams,
    LocalProtocolError, Ping, RemoteProtocolError, StepPreview, SubmitJob, decode, encode,
)
from protocol.messages import CLIENT_MESSAGES, SERVER_MESSAGES, Message
from protocol_support import MSGPACK_VALUES, PROPERTY, message_strategy, strategy_for

ALL = sorted(MESSAGES.values(), key=lambda cls: cls.TAG)


def test_msgpack_mode_is_the_one_asked_for() -> None:
    # The fallback run sets MSGPACK_PUREPYTHON=1; the normal run must use the C extension.
    want = "msgpack.fallback" if os.environ.get("MSGPACK_PUREPYTHON") else "msgpack._cmsgpack"
    assert msgpack.Packer.__module__ == want
    assert msgpack.Unpacker.__module__ == want


def test_registry_holds_every_message_class() -> None:
    def subclasses(cls: type) -> set[type]:
        # slots=True makes dataclass build a second class; the first lingers in __subclasses__()
        # but is not reachable by name, so keep only classes their module actually exports.
        found = {sub for direct in cls.__subclasses__() for sub in {direct, *subclasses(direct)}}
        return {sub for sub in found if getattr(sys.modules[sub.__module__], sub.__qualname__, None) is sub}
    assert set(MESSAGES.values()) == subclasses(Message)
    assert set(MESSAGES.values()) == set(CLIENT_MESSAGES) | set(SERVER_MESSAGES)
    assert len({cls.TAG for cls in MESSAGES.values()}) == len(MESSAGES)
    for tag, cls in MESSAGES.items():
        assert cls.TAG == tag and tag.isidentifier() and tag == tag.lower()
        assert cls.__dataclass_params__.frozen and hasattr(cls, "__slots__")


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.TAG)
@PROPERTY
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    frame = encode(message)
    assert decode(frame) == message
    body = msgpack.unpackb(frame, raw=False)
    assert body["type"] == cls.TAG
    assert set(body) == {"type", *(f.name for f in dataclasses.fields(cls))}  # every field is written out


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.TAG)
@PROPERTY
@given(data=st.data())
def test_unknown_fields_are_ignored(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    extra = data.draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in {f.name for f in dataclasses.fields(cls)} and k != "type"),
                                      MSGPACK_VALUES, min_size=1, max_size=3))
    body = {**msgpack.unpackb(encode(message), raw=False), **extra}
    assert decode(msgpack.packb(body, use_bin_type=True)) == message


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.TAG)
@PROPERTY
@given(data=st.data())
def test_optional_fields_may_be_left_out(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    body = {k: v for k, v in msgpack.unpackb(encode(message), raw=False).items() if k == "type" or k in required}
    expected = cls(**{name: getattr(message, name) for name in required})
    assert decode(msgpack.packb(body, use_bin_type=True)) == expected


@PROPERTY
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_survive_bit_for_bit(value: float) -> None:
    decoded = decode(encode(JobFinished("j", (), 1, timings={"t": value})))
    back = decoded.timings["t"]
    assert (math.isnan(back) and math.isnan(value)) or back == value
    assert math.copysign(1, back) == math.copysign(1, value)


def test_a_missing_required_field_is_named() -> None:
    frame = msgpack.packb({"type": "cancel_job"})
    with pytest.raises(RemoteProtocolError) as caught:
        decode(frame)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    assert "job_id is missing" in caught.value.message


def test_a_wrongly_typed_field_is_named_with_its_path() -> None:
    frame = msgpack.packb({"type": "submit_job", "job_id": "j1", "task": "txt2img",
                           "params": {"steps": "twenty", "controls": []}})
    with pytest.raises(RemoteProtocolError) as caught:
        decode(frame)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    assert "params.steps must be an integer" in caught.value.message
    assert caught.value.ref == "j1"  # so the error answering it names the job


def test_ints_are_accepted_where_floats_are_expected() -> None:
    frame = msgpack.packb({"type": "submit_job", "job_id": "j1", "task": "img2img", "params": {"strength": 1}})
    assert decode(frame).params.strength == 1.0
    assert type(decode(frame).params.strength) is float


def test_unknown_tag_is_a_typed_error() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(msgpack.packb({"type": "teleport", "where": "mars"}))
    assert caught.value.code is ErrorCode.UNKNOWN_MESSAGE
    assert "teleport" in caught.value.message and caught.value.ref == "teleport"


def test_unknown_error_codes_read_as_internal() -> None:
    # A newer server may send codes this client does not know: they must not break decoding.
    for tag in ("error", "job_failed", "refused"):
        body = {"type": tag, "job_id": "j", "code": "quota_exceeded", "message": "over quota"}
        message = decode(msgpack.packb(body))
        assert message.code is ErrorCode.INTERNAL and message.message == "over quota"
    assert ErrorCode.parse("quota_exceeded") is ErrorCode.INTERNAL
    assert ErrorCode.parse("busy") is ErrorCode.BUSY


def test_encode_rejects_what_the_peer_could_not_decode() -> None:
    bad = [
        Ping(2 ** 64),                                  # outside msgpack's integers
        Ping("1"),                                      # type: ignore[arg-type]
        Hello(1, "\ud800", "1.0"),                      # a lone surrogate has no UTF-8 form
        JobFailed("j", "no_such_code", "m"),            # type: ignore[arg-type]  encode stays strict
        SubmitJob("j", "txt2img", JobParams(steps=2.5)),  # type: ignore[arg-type]
        StepPreview("j", 1, 2, 8, 8, "not bytes"),      # type: ignore[arg-type]
        ErrorEvent(ErrorCode.BUSY, "m", details={"k": [1]}),  # type: ignore[dict-item]
    ]
    for message in bad:
        with pytest.raises(LocalProtocolError) as caught:
            encode(message)
        assert caught.value.code is ErrorCode.INVALID_MESSAGE, message
    with pytest.raises(LocalProtocolError):
        encode(object())  # type: ignore[arg-type]


def test_encode_accepts_plain_values_for_enums_and_lists_for_tuples() -> None:
    chunk = ImageChunk("id", "png", 1, 1, 8, 0, 1, b"12345678")  # type: ignore[arg-type]
    assert decode(encode(chunk)).format is ImageFormat.PNG
    finished = JobFinished("j", [], 3, [3, 4])  # type: ignore[arg-type]
    assert decode(encode(finished)) == JobFinished("j", (), 3, (3, 4))


def test_strategies_refuse_types_they_do_not_know() -> None:
    # A new field type must be taught to strategy_for deliberately, or the round trip cannot cover it.
    with pytest.raises(TypeError):
        strategy_for(set[int])


def test_image_chunk_frame_layout_is_stable() -> None:
    """The bytes of one chunk frame, pinned: a client written from the spec produces exactly these."""
    chunk = ImageChunk("ab", ImageFormat.GREY8, 2, 1, 2, 0, 1, b"\x00\xff")
    assert msgpack.unpackb(encode(chunk), raw=False) == {
        "type": "image_chunk", "id": "ab", "format": "grey8", "width": 2, "height": 1, "size": 2,
        "index": 0, "count": 1, "data": b"\x00\xff"}
    assert protocol.encode(chunk) == msgpack.packb(msgpack.unpackb(encode(chunk), raw=False), use_bin_type=True)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536, 4 * 1024 * 1024])
def test_image_chunk_fast_path_is_byte_identical_to_plain_msgpack(size: int) -> None:
    # encode() writes chunk bytes with one copy instead of msgpack's two; the wire must not notice.
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    chunk = ImageChunk("f" * 64, ImageFormat.RGBA8, 1, 1, size, 0, 1, data)
    plain = msgpack.packb({"type": "image_chunk", "id": chunk.id, "format": "rgba8", "width": 1, "height": 1,
                           "size": size, "index": 0, "count": 1, "data": data}, use_bin_type=True)
    assert encode(chunk) == plain
    assert decode(plain) == chunk
