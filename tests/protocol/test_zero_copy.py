"""Image bytes copied as few times as the wire allows, with frames and results unchanged.

A sender's chunks are views into the image (``chunk_image``), copied once into their frames when
the writer takes them; a receiver's chunks are views into their frames (``decode(borrow=True)``,
which the sessions use), copied once when the image is joined. These tests prove both the sharing
(``memoryview.obj``) and that every result is what the copying path gave: the same frames, the
same messages, the same errors for frames laid out in unusual ways.
"""
from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest
from hypothesis import given, strategies as st

from protocol import (
    ImageChunk, ImageFormat, ImageUploaded, JobResult, RemoteProtocolError, SubmitJob, chunk_image, decode, encode,
)
from protocol import session as session_module
from protocol.session import MIN_CHUNK_BYTES
from protocol_support import PROPERTY, LoopbackServer, connect, rgba
from test_transport import events_until, new_client, run, start


def _outcome(frame: bytes, borrow: bool) -> Any:
    try:
        message = decode(frame, borrow=borrow)
    except RemoteProtocolError as exc:
        return ("error", exc.code, exc.message, exc.ref)
    if isinstance(message, ImageChunk):
        return message, bytes(message.data)
    return message


def test_chunks_are_views_of_the_image_and_encode_as_copies_did() -> None:
    image = rgba(300, 200, seed=3)
    chunks = chunk_image(image, MIN_CHUNK_BYTES)
    assert len(chunks) > 2
    for i, chunk in enumerate(chunks):
        assert isinstance(chunk.data, memoryview) and chunk.data.obj is image.data and chunk.data.readonly
        copied = ImageChunk(chunk.id, chunk.format, chunk.width, chunk.height, chunk.size, chunk.index, chunk.count,
                            bytes(chunk.data))
        assert encode(chunk) == encode(copied)
        assert bytes(chunk.data) == image.data[i * MIN_CHUNK_BYTES:(i + 1) * MIN_CHUNK_BYTES]


def test_a_borrowed_chunk_is_a_view_of_its_frame() -> None:
    image = rgba(256, 256, seed=4)
    frame = encode(chunk_image(image)[0])
    borrowed = decode(frame, borrow=True)
    assert isinstance(borrowed.data, memoryview) and borrowed.data.obj is frame and borrowed.data.readonly
    assert borrowed == decode(frame) and type(decode(frame).data) is bytes  # without borrow: a copy, as ever


def test_small_frames_and_other_buffers_are_not_borrowed() -> None:
    small = encode(chunk_image(rgba(16, 16))[0])  # under 64 KiB: the copy is cheap
    assert type(decode(small, borrow=True).data) is bytes
    big = encode(chunk_image(rgba(256, 256))[0])
    assert type(decode(memoryview(big), borrow=True).data) is bytes


def test_a_bytearray_frame_is_borrowed_read_only() -> None:
    # The transport's own frame buffers (protocol/transport_frames.py), which nothing changes once received.
    chunk = chunk_image(rgba(256, 256))[0]
    frame = bytearray(encode(chunk))
    data = decode(frame, borrow=True).data
    assert type(data) is memoryview and data.readonly and data == chunk.data
    assert data.obj is frame  # a view into the frame, not a copy


_FIELDS = {"type": "image_chunk", "id": "f" * 64, "format": "rgba8", "width": 128, "height": 128, "size": 65536,
           "index": 0, "count": 1}


@PROPERTY
@given(order=st.permutations(list(_FIELDS)), data_at=st.integers(0, 8), extra=st.dictionaries(
    st.sampled_from(["data", "x", "size", "\u00a4data"]), st.one_of(st.binary(max_size=8), st.integers(-2 ** 63, 2 ** 64 - 1), st.text(max_size=8)),
    max_size=3), size=st.sampled_from([65535, 65536, 70000]), tail=st.sampled_from([b"", b"\x00", b"\xc0"]))
def test_borrowing_decodes_every_layout_as_the_copying_path(order: list[str], data_at: int, extra: dict, size: int,
                                                            tail: bytes) -> None:
    # Our encoder puts "data" last; other peers may not, may repeat keys or append junk.
    items = [(key, _FIELDS[key]) for key in order] + list(extra.items())
    items.insert(min(data_at, len(items)), ("data", bytes(range(256)) * (size // 256) + b"\xa4data\xc6" * 3))
    # The pairs written by hand, so that repeated keys stay in the frame.
    frame = bytes((0x80 + len(items),)) if len(items) < 16 else b"\xde" + len(items).to_bytes(2, "big")
    frame += b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in items) + tail
    assert _outcome(frame, borrow=True) == _outcome(frame, borrow=False)


def _offer_answered(image, chunk_bytes: int):
    """A link whose client submitted a job on ``image`` and got the server's request for it."""
    link = connect()
    link.client.chunk_bytes = chunk_bytes
    link.client.submit(SubmitJob("j", "img2img", images={"image": image.id}), [image])
    (offer,) = link.to_server()
    link.server.images_wanted(offer, have=())
    link.to_client()
    return link


def test_an_upload_is_joined_once_from_views_of_its_frames() -> None:
    image = rgba(1024, 1024, seed=5)  # 4 MiB: tapered chunks of 2, 1, ½ and ½ MiB
    link = _offer_answered(image, 2 * 1024 * 1024)
    first, *middle, last, job = link.client.data_to_send()
    assert link.server.receive_frame(first) == []
    (held,) = link.server._uploads.values()  # the upload in progress holds a view of the frame, not a copy
    assert isinstance(held.parts[0], memoryview) and held.parts[0].obj is first
    assert [link.server.receive_frame(frame) for frame in middle] == [[]] * len(middle)
    (uploaded,) = link.server.receive_frame(last)
    assert isinstance(uploaded, ImageUploaded) and uploaded.image == image and type(uploaded.image.data) is bytes
    assert uploaded.image.id == image.id and link.server.receive_frame(job)[0].job_id == "j"


def test_a_one_chunk_image_is_copied_out_of_its_frame() -> None:
    image = rgba(256, 256, seed=6)  # 256 KiB: one chunk
    link = _offer_answered(image, 4 * 1024 * 1024)
    uploaded = [e for e in link.to_server() if isinstance(e, ImageUploaded)]
    assert uploaded[0].image == image and type(uploaded[0].image.data) is bytes


def test_the_sessions_send_tapered_chunks_both_ways() -> None:
    # The client's upload and the server's result both end in small pieces (section 6.4), and each
    # side still gets the image and its id.
    image, result = rgba(1024, 1024, seed=10), rgba(1024, 1024, seed=11)  # 4 MiB each
    link = _offer_answered(image, 4 * 1024 * 1024)
    *chunks, job = link.client.data_to_send()
    assert [len(decode(frame).data) // 1024 for frame in chunks] == [2048, 1024, 512, 512]
    (uploaded,) = [e for frame in chunks for e in link.server.receive_frame(frame)]
    assert uploaded.image == image and link.server.receive_frame(job)[0].job_id == "j"
    link.server.job_accepted("j", 0)
    link.server.job_started("j", model="m", seed=1, steps=1, width=1024, height=1024)
    link.to_client()
    link.server.job_finished("j", [result], seed=1)
    *result_chunks, finished = link.server.data_to_send()
    assert [len(decode(frame).data) // 1024 for frame in result_chunks] == [2048, 1024, 512, 512]
    events = [e for frame in [*result_chunks, finished] for e in link.client.receive_frame(frame)]
    (done,) = events
    assert isinstance(done, JobResult) and done.images == (result,) and done.images[0].id == result.id


def test_chunks_are_encoded_when_taken_and_frames_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    # A writer taking one frame at a time has the first chunk's frame before any other chunk is
    # copied into a frame; the frames are those of encoding every chunk at once.
    image = rgba(1024, 1024, seed=12)
    link = _offer_answered(image, 4 * 1024 * 1024)
    expected = [encode(chunk) for chunk in chunk_image(image, taper=True)]
    encoded: list[str] = []
    real_encode = session_module.codec.encode

    def counting(message: Any) -> bytes:
        encoded.append(message.TAG)
        return real_encode(message)
    monkeypatch.setattr(session_module.codec, "encode", counting)
    waiting = link.client.bytes_to_send
    assert waiting >= sum(len(frame) for frame in expected) and encoded == []  # nothing encoded yet
    taken = []
    while frames := link.client.data_to_send(1):
        assert len(frames) == 1 and encoded.count("image_chunk") == len(taken) + (len(taken) < len(expected))
        taken.append(frames[0])
    assert taken[:-1] == expected and decode(taken[-1]).TAG == "submit_job" and link.client.bytes_to_send == 0


def test_the_async_client_receives_big_result_chunks_on_one_thread_of_its_own() -> None:
    # Off the loop (the host's UI thread), and always on the same thread, whose heap keeps the
    # pages of the last result for the next one (see AsyncClient._chained).
    image, second = rgba(1024, 1024, seed=7), rgba(1024, 1024, seed=8)
    threads: list[tuple[bool, int, str]] = []
    with LoopbackServer() as server:
        async def main() -> tuple[list[Any], int]:
            client = new_client(server)
            await start(client)
            session = client.session
            receive = session.receive_frame

            def spy(frame: bytes) -> Any:  # records on which thread each frame was handled, then handles it
                current = threading.current_thread()
                threads.append((b"\xa4type\xabimage_chunk" in bytes(frame[:32]), current.ident, current.name))
                return receive(frame)
            session.receive_frame = spy  # type: ignore[method-assign]
            results = []
            for job_id, layer in (("big", image), ("next", second)):
                await client.submit_hashed(SubmitJob(job_id, "img2img", images={"image": layer.id}), [layer])
                results.append((await events_until(client, lambda e: isinstance(e, JobResult)))[-1])
            receiver = client._receiver
            await client.close()
            assert receiver is not None and client._receiver is None  # closing ends the thread
            return results, threading.get_ident()
        results, loop_thread = run(main())
    for result, layer in zip(results, (image, second)):
        assert result.images[0].format is ImageFormat.RGBA8 and len(result.images[0].data) == len(layer.data)
        assert type(result.images[0].data) is bytes  # a client's results are joined into bytes, not views
    chunk_threads = {(ident, name) for is_chunk, ident, name in threads if is_chunk}
    other_threads = {ident for is_chunk, ident, _name in threads if not is_chunk}
    assert len(chunk_threads) == 1 and loop_thread not in {ident for ident, _name in chunk_threads}
    assert next(iter(chunk_threads))[1].startswith("easel-receive")
    assert other_threads == {loop_thread}
