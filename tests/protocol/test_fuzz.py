"""Fuzzing: junk in, only ``RemoteProtocolError`` out.

``decode`` and both sessions' ``receive_frame`` (after a handshake) get random bytes, mutated
valid frames (bit flips, truncation, splices, inserted bytes, field values swapped for values of
another type, huge and deeply nested containers) and plausible-but-wrong message sequences. Any
other exception escaping is a bug; so is a session that stops working after the junk.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import event as event_note, given, strategies as st

from protocol import (
    MESSAGES, CancelJob, ErrorCode, ErrorEvent, ImagesWanted, ImageStored, ImageUploaded, JobAccepted,
    JobCancelled, JobFinished, JobParams, JobResult, OfferImages, Ping, Pong, ProtocolError, QueuePosition,
    RemoteProtocolError, StepPreview, SubmitJob, chunk_image, decode, encode, image_info,
)
from protocol.session import ClientSession, ConnectionState, ServerSession
from protocol_support import (
    CLIENT_MESSAGE, FUZZ, MSGPACK_VALUES, SERVER_MESSAGE, any_message, connect, limits, rgba,
)


def _well_formed(error: ProtocolError) -> None:
    """An error a peer may see: typed, one plain sentence, no traceback, bounded."""
    assert isinstance(error.code, ErrorCode)
    assert isinstance(error.message, str) and error.message
    assert "Traceback" not in error.message and len(error.message) < 600
    assert isinstance(error.ref, str) and len(error.ref) <= 128


def decode_or_reject(frame: bytes) -> Any:
    try:
        return decode(frame)
    except RemoteProtocolError as exc:
        _well_formed(exc)
        return exc


# --------------------------------------------------------------------------- mutations


def _flip_bits(frame: bytes, positions: list[int]) -> bytes:
    data = bytearray(frame)
    for pos in positions:
        data[pos // 8 % len(data)] ^= 1 << (pos % 8)
    return bytes(data)


def _swap_field(body: Any, path: list[int], value: Any) -> Any:
    """``body`` with the value at ``path`` (indices into nested maps/arrays) replaced by ``value``."""
    if not path or not isinstance(body, (dict, list)) or not body:
        return value
    if isinstance(body, dict):
        keys = sorted(body, key=str)
        key = keys[path[0] % len(keys)]
        if key == "type" and len(keys) > 1:  # keep the tag most of the time: fields are the target
            key = keys[(path[0] + 1) % len(keys)]
        return {**body, key: _swap_field(body[key], path[1:], value)}
    index = path[0] % len(body)
    return body[:index] + [_swap_field(body[index], path[1:], value)] + body[index + 1:]


@st.composite
def mutated_frames(draw: st.DrawFn, messages: st.SearchStrategy = any_message()) -> bytes:
    frame = encode(draw(messages))
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "swap", "swap", "huge"]))
    if kind == "flip":
        return _flip_bits(frame, draw(st.lists(st.integers(0, 8 * len(frame)), min_size=1, max_size=8)))
    if kind == "truncate":
        return frame[:draw(st.integers(0, len(frame) - 1))]
    if kind == "splice":
        other = encode(draw(messages))
        return frame[:draw(st.integers(0, len(frame)))] + other[draw(st.integers(0, len(other))):]
    if kind == "insert":
        at = draw(st.integers(0, len(frame)))
        return frame[:at] + draw(st.binary(min_size=1, max_size=16)) + frame[at:]
    body = msgpack.unpackb(frame, raw=False)
    path = draw(st.lists(st.integers(0, 50), min_size=1, max_size=4))
    if kind == "swap":
        return msgpack.packb(_swap_field(body, path, draw(MSGPACK_VALUES)), use_bin_type=True)
    huge = draw(st.sampled_from([
        list(range(20_000)), {str(i): i for i in range(5_000)}, [[[[[[[[[[[]]]]]]]]]]],
        "x" * 200_000, b"\x00" * 200_000,
    ]))
    return msgpack.packb(_swap_field(body, path, huge), use_bin_type=True)


#: Hand-made frames that lie about their sizes or nest absurdly deep.
NASTY_FRAMES = [
    b"",
    b"\xc1",                                           # the one byte msgpack never uses
    b"\xdd\xff\xff\xff\xff",                           # array32 of 4 billion items, then nothing
    b"\xdf\xff\xff\xff\xff\xa4type",                   # map32 of 4 billion pairs
    b"\xdb\xff\xff\xff\xff" + b"x" * 10,               # str32 of 4 GB
    b"\xc6\x7f\xff\xff\xff",                           # bin32 of 2 GB
    b"\x81\xa4type\xa4ping" + b"\x00",                 # trailing data
    b"\x81\xa4type\xa4ping\x81\xa4type\xa4ping",       # two frames in one
    b"\x91" * 100_000 + b"\xc0",                       # nested 100 000 deep
    b"\x82\xa4type\xa4ping\xa5nonce" + b"\x91" * 1000 + b"\xc0",   # as deep as the C unpacker goes
    b"\x82\xa4type\xa4ping\xa5nonce" + b"\x81\xa1k" * 1000 + b"\xc0",
    b"\x81\xc4\x04type\xa4ping",                       # a bin key
    b"\x81\x01\xa4ping",                               # an int key
    b"\x82\xa4type\xa4ping\xa5nonce\xd4\x01\x02",      # an ext type
    b"\x82\xa4type\xa4ping\xa5nonce\xd6\xff\x00\x00\x00\x00",  # a msgpack timestamp
    b"\x81\xa4type\xa3\xed\xa0\x80",                   # a surrogate in a str (invalid UTF-8)
    b"\x81\xa4type\xc4\x04ping",                       # the tag as bin, not str
    b"\x81\xa4type\xc0",
    b"\x90",
    b"\xa4ping",
    msgpack.packb({"type": "submit_job", "job_id": "j", "task": "t", "params": {"controls": [{}] * 3}}),
    msgpack.packb({"type": "submit_job", "job_id": "j", "task": "t", "images": {"image": None}}),
    msgpack.packb({"type": "image_chunk", "id": "i", "format": "webp", "width": 1, "height": 1, "size": 4,
                   "index": 0, "count": 1, "data": b"1234"}),
    struct.pack(">B", 0x81) + msgpack.packb("type") + msgpack.packb("x" * 100_000),
]


# --------------------------------------------------------------------------- decode

#: Every field name any message uses, so random maps often hit real fields with wrong values.
FIELD_NAMES = sorted({f.name for cls in MESSAGES.values() for f in dataclasses.fields(cls)})


@FUZZ
@given(st.binary(max_size=512))
def test_decode_random_bytes(frame: bytes) -> None:
    decode_or_reject(frame)


@FUZZ
@given(mutated_frames())
def test_decode_mutated_frames(frame: bytes) -> None:
    decode_or_reject(frame)


@pytest.mark.parametrize("frame", NASTY_FRAMES, ids=range(len(NASTY_FRAMES)))
def test_decode_nasty_frames(frame: bytes) -> None:
    assert isinstance(decode_or_reject(frame), RemoteProtocolError)


@FUZZ
@given(MSGPACK_VALUES)
def test_decode_any_msgpack_value(value: Any) -> None:
    decode_or_reject(msgpack.packb(value, use_bin_type=True))


@FUZZ
@given(st.sampled_from(sorted(MESSAGES)),
       st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), MSGPACK_VALUES, max_size=8))
def test_decode_known_tags_with_random_fields(tag: str, fields: dict) -> None:
    decode_or_reject(msgpack.packb({**fields, "type": tag}, use_bin_type=True))


def test_decode_accepts_the_extreme_integers() -> None:
    assert decode(msgpack.packb({"type": "ping", "nonce": 2 ** 64 - 1})) == Ping(2 ** 64 - 1)
    assert decode(msgpack.packb({"type": "ping", "nonce": -(2 ** 63)})) == Ping(-(2 ** 63))


def test_decode_rejects_text_and_non_bytes() -> None:
    for frame in ("{}", None, 42, ["type"]):
        with pytest.raises(RemoteProtocolError) as caught:
            decode(frame)  # type: ignore[arg-type]
        assert caught.value.code is ErrorCode.MALFORMED_FRAME


def test_decode_accepts_bytearray_and_memoryview() -> None:
    frame = encode(Ping(5))
    assert decode(bytearray(frame)) == decode(memoryview(frame)) == Ping(5)


# --------------------------------------------------------------------------- sessions


@st.composite
def interleaved(draw: st.DrawFn, script: list[bytes], junk: st.SearchStrategy, perturb: bool = True) -> list[bytes]:
    """``script`` (a valid exchange) with junk frames between its frames and, if ``perturb``,
    one frame dropped, duplicated or swapped with its neighbour."""
    frames = list(script)
    if perturb:
        op, at = draw(st.sampled_from(["keep", "drop", "dup", "swap"])), draw(st.integers(0, len(frames) - 2))
        if op == "drop":
            del frames[at]
        elif op == "dup":
            frames.insert(at, frames[at])
        elif op == "swap":
            frames[at], frames[at + 1] = frames[at + 1], frames[at]
    out: list[bytes] = []
    for frame in frames:
        out += draw(st.lists(junk, max_size=2))
        out.append(frame)
    return out + draw(st.lists(junk, max_size=2))


def undecodable(frames: list[bytes]) -> st.SearchStrategy:
    """Frames that never decode: cut-off valid frames, and random bytes that fail to decode."""
    def fails(frame: bytes) -> bool:
        return isinstance(decode_or_reject(frame), RemoteProtocolError)
    cut = st.sampled_from(frames).flatmap(lambda f: st.integers(0, len(f) - 1).map(lambda n: f[:n]))
    return cut | st.binary(max_size=32).filter(fails)


# --------------------------------------------------------------------------- server session

IMAGE = rgba(256, 200, seed=3)                         # 200 KiB: four chunks of 64 KiB
OTHER = rgba(64, 64, seed=9)
#: A valid client side of an exchange: offer two images, upload them, submit, cancel, submit.
CLIENT_SCRIPT = [
    encode(OfferImages((image_info(IMAGE), image_info(OTHER)))),
    *(encode(c) for c in chunk_image(IMAGE, 64 * 1024)), *(encode(c) for c in chunk_image(OTHER)),
    encode(SubmitJob("j1", "img2img", images={"image": IMAGE.id})), encode(CancelJob("j1")),
    encode(SubmitJob("j2", "txt2img")), encode(Ping(1)), encode(CancelJob("j1")),
]
CLIENT_JUNK = st.one_of(st.binary(max_size=64), mutated_frames(CLIENT_MESSAGE), CLIENT_MESSAGE.map(encode),
                        mutated_frames(SERVER_MESSAGE), st.sampled_from(CLIENT_SCRIPT))


def _serve(session: ServerSession, frame: bytes) -> list[Any]:
    """Feed one frame and act on its events the way a server application would."""
    try:
        events = session.receive_frame(frame)
    except RemoteProtocolError as exc:
        _well_formed(exc)
        event_note(exc.code.value)
        session.error(exc.code, exc.message)
        return [exc.code]
    for event in events:
        event_note(type(event).__name__)
        if isinstance(event, OfferImages):
            session.images_wanted(event, have=())
        elif isinstance(event, ImageUploaded):
            assert event.image in (IMAGE, OTHER)  # only a verified, whole image gets out
            session.image_stored(event.image.id)
        elif isinstance(event, SubmitJob):
            session.job_accepted(event.job_id, 0)
        elif isinstance(event, CancelJob):
            session.job_cancelled(event.job_id)
    return events


def _server_still_works(session: ServerSession) -> None:
    session.data_to_send()
    assert session.state is ConnectionState.READY
    assert session.upload_bytes_held <= session.limits.max_upload_bytes
    assert session.receive_frame(encode(Ping(77))) == []
    assert decode(session.data_to_send()[-1]) == Pong(77)


@FUZZ
@given(interleaved(CLIENT_SCRIPT, CLIENT_JUNK))
def test_server_session_survives_junk(frames: list[bytes]) -> None:
    link = connect()
    for frame in frames:
        _serve(link.server, frame)
    _server_still_works(link.server)


@FUZZ
@given(interleaved(CLIENT_SCRIPT, undecodable(CLIENT_SCRIPT), perturb=False))
def test_undecodable_frames_do_not_disturb_the_server(frames: list[bytes]) -> None:
    clean, fuzzed = connect(), connect()
    expected = [event for frame in CLIENT_SCRIPT for event in _serve(clean.server, frame)]
    got = [event for frame in frames for event in _serve(fuzzed.server, frame)]
    assert [e for e in got if not isinstance(e, ErrorCode)] == expected
    assert [decode(f) for f in fuzzed.server.data_to_send() if type(decode(f)) is not ErrorEvent] \
        == [decode(f) for f in clean.server.data_to_send()]


@pytest.mark.parametrize("frame", NASTY_FRAMES, ids=range(len(NASTY_FRAMES)))
def test_server_session_nasty_frames(frame: bytes) -> None:
    link = connect()
    with pytest.raises(RemoteProtocolError):
        link.server.receive_frame(frame)
    _server_still_works(link.server)


def test_server_session_refuses_oversized_frames_before_decoding() -> None:
    link = connect(server=ServerSession(limits=limits()))
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(b"\x00" * (link.server.limits.max_frame_bytes + 1))
    assert caught.value.code is ErrorCode.LIMIT_EXCEEDED


# --------------------------------------------------------------------------- client session

RESULT = rgba(300, 250, seed=5)   # 293 KiB: a result in five 64 KiB chunks
#: A valid server side, after the client below submitted j1 (running) and j2 (offer outstanding).
SERVER_SCRIPT = [
    encode(StepPreview("j1", 1, 2, 8, 8, b"jpeg")), encode(ImagesWanted((IMAGE.id,))),
    *(encode(c) for c in chunk_image(RESULT, 64 * 1024)), encode(JobFinished("j1", (image_info(RESULT),), 1)),
    encode(ImageStored(IMAGE.id)), encode(JobAccepted("j2", 0)), encode(QueuePosition("j2", 0)),
    encode(JobCancelled("j2")), encode(Pong(2)),
    encode(ErrorEvent(ErrorCode.BUSY, "no", ref="j1")), encode(ErrorEvent(ErrorCode.LIMIT_EXCEEDED, "no", ref="offer_images")),
]
SERVER_JUNK = st.one_of(st.binary(max_size=64), mutated_frames(SERVER_MESSAGE), SERVER_MESSAGE.map(encode),
                        mutated_frames(CLIENT_MESSAGE), st.sampled_from(SERVER_SCRIPT))


def _client_with_jobs() -> ClientSession:
    """A client after its handshake with one job running (j1) and one waiting for its offer's answer (j2)."""
    link = connect()
    link.client.submit(SubmitJob("j1", "txt2img"))
    link.to_server()
    link.server.job_accepted("j1", 0)
    link.server.job_started("j1", model="demo", seed=1, steps=2, width=RESULT.width, height=RESULT.height)
    link.to_client()
    link.client.submit(SubmitJob("j2", "img2img", images={"image": IMAGE.id}), [IMAGE])
    link.to_server()
    return link.client


def _feed(client: ClientSession, frame: bytes) -> list[Any]:
    try:
        events = client.receive_frame(frame)
    except RemoteProtocolError as exc:
        _well_formed(exc)
        event_note(exc.code.value)
        return [exc.code]
    for event in events:
        event_note(type(event).__name__)
        if isinstance(event, JobResult):
            assert event.images == (RESULT,)  # only verified results are handed out
    return events


@FUZZ
@given(interleaved(SERVER_SCRIPT, SERVER_JUNK))
def test_client_session_survives_junk(frames: list[bytes]) -> None:
    client = _client_with_jobs()
    for frame in frames:
        _feed(client, frame)
        client.data_to_send()
    assert client.state is ConnectionState.READY
    client.ping(3)  # still usable
    assert decode(client.data_to_send()[-1]) == Ping(3)


@FUZZ
@given(interleaved(SERVER_SCRIPT, undecodable(SERVER_SCRIPT), perturb=False))
def test_undecodable_frames_do_not_disturb_the_client(frames: list[bytes]) -> None:
    clean, fuzzed = _client_with_jobs(), _client_with_jobs()
    expected = [event for frame in SERVER_SCRIPT for event in _feed(clean, frame)]
    got = [event for frame in frames for event in _feed(fuzzed, frame)]
    assert [e for e in got if not isinstance(e, ErrorCode)] == expected
    assert any(isinstance(e, JobResult) for e in expected)
    assert fuzzed.data_to_send() == clean.data_to_send()


@pytest.mark.parametrize("frame", NASTY_FRAMES, ids=range(len(NASTY_FRAMES)))
def test_client_session_nasty_frames(frame: bytes) -> None:
    client = _client_with_jobs()
    with pytest.raises(RemoteProtocolError):
        client.receive_frame(frame)


def test_client_session_refuses_results_beyond_its_budget() -> None:
    link = connect(max_result_bytes=100_000)
    link.client.submit(SubmitJob("j1", "txt2img", JobParams(width=300, height=250)))
    link.to_server()
    link.server.job_accepted("j1", 0)
    link.server.job_started("j1", model="demo", seed=1, steps=2, width=300, height=250)
    link.server.job_finished("j1", [RESULT], seed=1)
    with pytest.raises(RemoteProtocolError) as caught:
        link.to_client()
    assert caught.value.code is ErrorCode.LIMIT_EXCEEDED
