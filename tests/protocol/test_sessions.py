"""A client session and a server session joined by an in-memory link: no sockets, no event loop.

The test plays the server application (the backend's part): it answers offers, accepts, runs,
finishes, fails and cancels jobs through the ``ServerSession`` methods, exactly as
``backend.server`` does, and checks what each side sees and what travels between them.
"""
from __future__ import annotations

import msgpack
import pytest

from protocol import (
    MAX_CHUNK_BYTES, PROTOCOL_VERSION, CancelJob, ClientSession, ConnectionState, ControlUnit, ErrorCode,
    ErrorEvent, Hello, ImageChunk, ImageInfo, ImagePayload, ImagesWanted, ImageStored, ImageUploaded, JobAccepted,
    JobCancelled, JobFailed, JobFinished, JobParams, JobPhase, JobResult, JobStarted, Limits, ListModels,
    LocalProtocolError, ModelList, OfferImages, Ping, Pong, QueuePosition, Refused, RemoteProtocolError,
    ServerSession, StepPreview, SubmitJob, Welcome, chunk_image, decode, encode, image_info,
)
from protocol import session as session_module
from protocol.session import MIN_CHUNK_BYTES
from protocol_support import CAPABILITIES, Link, connect, invert, limits, rgba, tags

#: An upload and a result larger than one chunk: 1100×1000 RGBA is 4.4 MB, two chunks.
BIG = rgba(1100, 1000, seed=1)


def run_to_started(link: Link, job: SubmitJob, images: list[ImagePayload] = (), *, position: int = 0) -> list:
    """Submit ``job`` and take it through the offer, the upload, acceptance and start."""
    link.client.submit(job, images)
    server_events = link.to_server()
    for event in server_events:
        if isinstance(event, OfferImages):
            link.server.images_wanted(event, have=())
    link.to_client()
    server_events += link.to_server()
    for event in server_events:
        if isinstance(event, ImageUploaded):
            link.server.image_stored(event.image.id)
    assert job in server_events
    link.server.job_accepted(job.job_id, position)
    link.server.job_started(job.job_id, model="demo", seed=5, steps=3, width=64, height=64)
    link.to_client()
    return server_events


# --------------------------------------------------------------------------- handshake

def test_handshake() -> None:
    client = ClientSession("krita-plugin", "1.2", token="secret")
    server = ServerSession(limits=limits(), token="secret")
    link = Link(client, server)
    assert client.state is ConnectionState.CONNECTING
    (hello,) = link.to_server()
    assert hello == Hello(PROTOCOL_VERSION, "krita-plugin", "1.2", "secret", "")
    assert server.hello == hello and server.state is ConnectionState.CONNECTING
    server.welcome(server_name="easel", server_version="0.1", client_id="c-42", capabilities=CAPABILITIES, notice="hi")
    (welcome,) = link.to_client()
    assert isinstance(welcome, Welcome)
    assert welcome.limits == server.limits and welcome.capabilities == CAPABILITIES and welcome.notice == "hi"
    assert client.state is server.state is ConnectionState.READY
    assert client.client_id == "c-42" and client.welcome == welcome


def test_version_mismatch_is_refused() -> None:
    link = Link(ClientSession("c", "1"), ServerSession(limits=limits()))
    link.client.data_to_send()  # drop the real hello; send one from the future
    assert link.server.receive_frame(encode(Hello(PROTOCOL_VERSION + 1, "c", "9"))) == []
    assert link.server.state is ConnectionState.CLOSED
    (refused,) = link.to_client()
    assert isinstance(refused, Refused) and refused.code is ErrorCode.VERSION_MISMATCH
    assert f"version {PROTOCOL_VERSION}" in refused.message and "update" in refused.message
    assert link.client.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError):
        link.client.submit(SubmitJob("j", "txt2img"))


@pytest.mark.parametrize("token", ["", "wrong", "secret-but-longer"])
def test_bad_token_is_refused(token: str) -> None:
    link = Link(ClientSession("c", "1", token=token), ServerSession(limits=limits(), token="secret"))
    assert link.to_server() == []
    (refused,) = link.to_client()
    assert refused.code is ErrorCode.UNAUTHORIZED and "token" in refused.message
    assert link.server.state is link.client.state is ConnectionState.CLOSED


def test_requests_before_the_handshake() -> None:
    client = ClientSession("c", "1")
    for call in (lambda: client.submit(SubmitJob("j", "txt2img")), client.list_models, client.ping,
                 lambda: client.cancel("j")):
        with pytest.raises(LocalProtocolError) as caught:
            call()
        assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE and "wait for welcome" in caught.value.message
    server = ServerSession(limits=limits())
    with pytest.raises(RemoteProtocolError) as caught:
        server.receive_frame(encode(SubmitJob("j", "txt2img")))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE and "send hello" in caught.value.message
    with pytest.raises(LocalProtocolError):
        server.welcome(server_name="s", server_version="1", client_id="c", capabilities=CAPABILITIES)
    with pytest.raises(RemoteProtocolError):  # a server event before welcome
        client.receive_frame(encode(JobAccepted("j", 0)))


def test_second_hello_and_second_welcome() -> None:
    link = connect()
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(encode(Hello(PROTOCOL_VERSION, "c", "1")))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE
    with pytest.raises(LocalProtocolError):
        link.server.welcome(server_name="s", server_version="1", client_id="c", capabilities=CAPABILITIES)
    frame = encode(Welcome(PROTOCOL_VERSION, "s", "1", "c", CAPABILITIES, limits()))
    with pytest.raises(RemoteProtocolError):
        link.client.receive_frame(frame)


@pytest.mark.parametrize("hello", [
    {"type": "hello", "protocol_version": 1, "client_name": "c"},                           # a field missing
    {"type": "hello", "protocol_version": "1", "client_name": "c", "client_version": "1"},  # a wrong type
    {"type": "hello", "protocol_version": 1.0, "client_name": "c", "client_version": "1"},  # an int as a float
])
def test_a_broken_hello_is_refused_and_the_session_closes(hello: dict) -> None:
    """docs/protocol.md 3: refused invalid_message naming the field, then the server closes."""
    server = ServerSession(limits=limits())
    assert server.receive_frame(msgpack.packb(hello, use_bin_type=True)) == []
    assert server.state is ConnectionState.CLOSED and server.hello is None
    (refused,) = [decode(f) for f in server.data_to_send()]
    assert isinstance(refused, Refused) and refused.code is ErrorCode.INVALID_MESSAGE
    assert refused.message.startswith("hello: ") and "section 5.1" in refused.message


@pytest.mark.parametrize("state", ["connecting", "ready"])
@pytest.mark.parametrize("body", [{"type": "welcome"}, {"type": "job_finished", "job_id": 7}, {"type": "pong", "nonce": "x"}])
def test_a_server_message_from_a_client_is_unexpected_whatever_its_fields(state: str, body: dict) -> None:
    """docs/protocol.md 5: the direction is checked by type before the fields are read."""
    server = connect().server if state == "ready" else ServerSession(limits=limits())
    with pytest.raises(RemoteProtocolError) as caught:
        server.receive_frame(msgpack.packb(body, use_bin_type=True))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE and "a client must not send it" in caught.value.message
    assert server.state is (ConnectionState.READY if state == "ready" else ConnectionState.CONNECTING)


def test_a_request_before_the_handshake_is_unexpected_whatever_its_fields() -> None:
    server = ServerSession(limits=limits())
    with pytest.raises(RemoteProtocolError) as caught:
        server.receive_frame(msgpack.packb({"type": "submit_job", "job_id": 3}, use_bin_type=True))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE and "before the handshake" in caught.value.message
    assert server.state is ConnectionState.CONNECTING  # a good hello still works
    server.receive_frame(encode(Hello(PROTOCOL_VERSION, "c", "1")))
    assert server.hello is not None


def test_a_client_message_from_the_server_is_unexpected_whatever_its_fields() -> None:
    link = connect()
    with pytest.raises(RemoteProtocolError) as caught:
        link.client.receive_frame(msgpack.packb({"type": "submit_job"}, use_bin_type=True))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE and "a server must not send it" in caught.value.message


# --------------------------------------------------------------------------- a whole job

def test_whole_job_exchange_with_chunked_upload_and_result() -> None:
    link = connect()
    job = SubmitJob("job-1", "img2img", JobParams(prompt="a red fox", strength=0.6, seed=5), images={"image": BIG.id})
    link.client.submit(job, [BIG])
    (offer,) = link.to_server()  # nothing else leaves before the answer
    assert tags(link.sent_by_client) == ["hello", "offer_images"]
    assert offer == OfferImages((image_info(BIG),))
    assert link.server.images_wanted(offer, have=()) == (BIG.id,)
    assert link.to_client() == [ImagesWanted((BIG.id,))]

    server_events = link.to_server()
    assert tags(link.sent_by_client[-3:]) == ["image_chunk", "image_chunk", "submit_job"]
    assert [len(decode(f).data) for f in link.sent_by_client[-3:-1]] == [MAX_CHUNK_BYTES, len(BIG.data) - MAX_CHUNK_BYTES]
    assert all(len(f) <= link.server.limits.max_frame_bytes for f in link.sent_by_client)
    assert server_events == [ImageUploaded(BIG), job]
    assert server_events[0].image.data == BIG.data
    assert link.client.bytes_uploaded == len(BIG.data)
    assert link.server.open_jobs == {"job-1": JobPhase.SUBMITTED}

    link.server.image_stored(BIG.id)
    link.server.job_accepted("job-1", 1)
    link.server.queue_position("job-1", 0)
    link.server.job_started("job-1", model="demo", seed=5, steps=3, width=1100, height=1000)
    assert link.to_client() == [ImageStored(BIG.id), JobAccepted("job-1", 1), QueuePosition("job-1", 0),
                                JobStarted("job-1", "demo", 5, 3, 1100, 1000)]
    assert link.client.open_jobs == {"job-1": JobPhase.RUNNING}
    for step in (1, 2, 3):
        link.server.step_preview("job-1", step, 3, 64, 58, b"\xff\xd8\xff jpeg %d" % step)
        assert link.to_client() == [StepPreview("job-1", step, 3, 64, 58, b"\xff\xd8\xff jpeg %d" % step)]

    result = invert(BIG)
    link.server.job_finished("job-1", [result], seed=5, timings={"denoise": 1.5, "decode": 0.25})
    assert link.server.open_jobs == {}
    frames = link.server.data_to_send()
    assert tags(frames) == ["image_chunk", "image_chunk", "job_finished"]  # results travel before the event
    assert all(len(f) <= link.server.limits.max_frame_bytes for f in frames)
    events = [e for f in frames for e in link.client.receive_frame(f)]
    (done,) = events
    assert isinstance(done, JobResult) and done.job_id == "job-1"
    assert done.images == (result,) and done.images[0].data == result.data  # lossless, byte for byte
    assert done.finished == JobFinished("job-1", (image_info(result),), 5, (5,), {"denoise": 1.5, "decode": 0.25})
    assert link.client.open_jobs == {}
    with pytest.raises(LocalProtocolError):  # the job is over for the server too
        link.server.step_preview("job-1", 4, 3, 8, 8, b"late")


def test_job_without_images_is_sent_at_once() -> None:
    link = connect()
    job = SubmitJob("t1", "txt2img", JobParams(prompt="hills", width=64, height=64))
    link.client.submit(job)
    assert link.to_server() == [job]


def test_batch_with_identical_images_sends_them_once() -> None:
    link = connect()
    run_to_started(link, SubmitJob("b", "txt2img", JobParams(batch_size=3)))
    a, b = rgba(32, 32, seed=1), rgba(32, 32, seed=2)
    link.server.job_finished("b", [a, b, a], seed=10, seeds=[10, 11, 12])
    frames = link.server.data_to_send()
    assert tags(frames) == ["image_chunk", "image_chunk", "job_finished"]
    (done,) = [e for f in frames for e in link.client.receive_frame(f)]
    assert done.images == (a, b, a) and done.finished.seeds == (10, 11, 12) and done.finished.seed == 10


def test_png_results_and_control_images() -> None:
    import io
    PIL = pytest.importorskip("PIL.Image")
    out = io.BytesIO()
    PIL.new("RGBA", (48, 40), (1, 2, 3, 4)).save(out, format="PNG")
    png = ImagePayload.build("png", 48, 40, out.getvalue())
    hint = rgba(48, 40, seed=4)
    link = connect()
    job = SubmitJob("c1", "txt2img", JobParams(controls=(ControlUnit("canny-model", hint.id, 0.8),)))
    events = run_to_started(link, job, [hint])
    assert ImageUploaded(hint) in events  # control images are uploaded like role images
    link.server.job_finished("c1", [png], seed=1)
    (done,) = link.to_client()
    assert done.images == (png,)


# --------------------------------------------------------------------------- uploads

def test_only_missing_images_travel() -> None:
    link = connect()
    image, mask, depth = rgba(300, 300, seed=1), ImagePayload.build("grey8", 300, 300, bytes(90_000)), \
        ImagePayload.build("depth32f", 300, 300, bytes(360_000))
    held = {image.id: image}  # the server kept this layer from an earlier job
    job = SubmitJob("in-1", "inpaint", images={"image": image.id, "mask": mask.id, "depth": depth.id})
    link.client.submit(job, [image, mask, depth])
    (offer,) = link.to_server()
    assert [info.id for info in offer.images] == [image.id, mask.id, depth.id]
    assert link.server.images_wanted(offer, have=held) == (mask.id, depth.id)
    link.to_client()
    events = link.to_server()
    assert events == [ImageUploaded(mask), ImageUploaded(depth), job]
    sent_ids = [decode(f).id for f in link.sent_by_client if decode(f).TAG == "image_chunk"]
    assert image.id not in sent_ids and set(sent_ids) == {mask.id, depth.id}
    assert link.client.bytes_uploaded == len(mask.data) + len(depth.data)

    # The next stroke: same mask and depth, a new layer. Only the new layer travels.
    painted = rgba(300, 300, seed=2)
    job2 = SubmitJob("in-2", "inpaint", images={"image": painted.id, "mask": mask.id, "depth": depth.id})
    link.client.submit(job2, [painted, mask, depth])
    (offer2,) = link.to_server()
    assert link.server.images_wanted(offer2, have={**held, mask.id: mask, depth.id: depth}) == (painted.id,)
    before = link.client.bytes_uploaded
    link.to_client()
    assert link.to_server() == [ImageUploaded(painted), job2]
    assert link.client.bytes_uploaded - before == len(painted.data)


def test_nothing_travels_when_the_server_holds_everything() -> None:
    link = connect()
    image = rgba(64, 64)
    link.client.submit(SubmitJob("a", "img2img", images={"image": image.id}), [image])
    (offer,) = link.to_server()
    link.server.images_wanted(offer, have=[image.id])
    assert link.to_client() == [ImagesWanted(())]
    assert tags(link.client.data_to_send()) == ["submit_job"]


def test_jobs_leave_in_submission_order_behind_an_unanswered_offer() -> None:
    link = connect()
    image = rgba(64, 64)
    first = SubmitJob("1", "img2img", images={"image": image.id})
    second = SubmitJob("2", "txt2img")
    link.client.submit(first, [image])
    link.client.submit(second)
    assert tags(link.client.data_to_send()) == ["offer_images"]  # "2" waits for "1"
    link.server.receive_frame(encode(OfferImages((image_info(image),))))
    link.server.images_wanted(OfferImages((image_info(image),)), have=())
    link.to_client()
    assert tags(link.client.data_to_send()) == ["image_chunk", "submit_job", "submit_job"]


def test_uploads_use_the_chunk_size_the_server_allows() -> None:
    small_frames = ServerSession(limits=Limits(max_frame_bytes=300_000))
    link = connect(server=small_frames)
    assert link.client.upload_chunk_bytes == 300_000 - 1024
    image = rgba(400, 400)  # 640 000 bytes: three chunks at this server
    link.client.submit(SubmitJob("s", "img2img", images={"image": image.id}), [image])
    (offer,) = link.to_server()
    link.server.images_wanted(offer, have=())
    link.to_client()
    assert link.to_server()[0] == ImageUploaded(image)
    assert tags(link.sent_by_client).count("image_chunk") == 3
    assert max(len(f) for f in link.sent_by_client) <= 300_000


def test_images_over_the_server_limits_are_refused_before_upload() -> None:
    link = connect(server=ServerSession(limits=limits(max_image_side=256, max_images_per_job=2)))
    wide = rgba(300, 10)
    with pytest.raises(LocalProtocolError) as caught:
        link.client.submit(SubmitJob("w", "img2img", images={"image": wide.id}), [wide])
    assert caught.value.code is ErrorCode.LIMIT_EXCEEDED and "300x10" in caught.value.message
    three = [rgba(8, 8, seed=i) for i in range(3)]
    with pytest.raises(LocalProtocolError):
        link.client.submit(SubmitJob("m", "img2img", images={str(i): im.id for i, im in enumerate(three)}), three)
    assert link.client.data_to_send() == [] and link.client.open_jobs == {}


def test_a_refused_offer_fails_its_job_and_the_queue_moves_on() -> None:
    link = connect()
    image = rgba(64, 64)
    link.client.submit(SubmitJob("big", "img2img", images={"image": image.id}), [image])
    link.client.submit(SubmitJob("next", "txt2img"))
    (offer,) = link.to_server()
    link.server.refuse_offer(ErrorCode.LIMIT_EXCEEDED, "the image store is full; try again later", log_id="L1")
    (failed,) = link.to_client()
    assert failed == JobFailed("big", ErrorCode.LIMIT_EXCEEDED, "the image store is full; try again later", "L1")
    assert list(link.client.open_jobs) == ["next"]
    assert [type(e) for e in link.to_server()] == [SubmitJob]  # "next" was not stuck behind it


def test_an_offer_the_session_rejects_is_answered_with_its_ref() -> None:
    link = connect(server=ServerSession(limits=limits(max_image_side=128)))
    # Our client checks limits before offering; a client written from the spec might not.
    frame = encode(OfferImages((image_info(rgba(200, 10)),)))
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(frame)
    assert caught.value.ref == "offer_images" and caught.value.code is ErrorCode.LIMIT_EXCEEDED
    link.server.error(caught.value.code, caught.value.message)  # as the backend answers it
    (error,) = [decode(f) for f in link.server.data_to_send()]
    assert error.ref == "offer_images"


@pytest.mark.parametrize("mangle, message", [
    (lambda chunks: [chunks[1], chunks[0]], "starting at chunk 1"),
    (lambda chunks: [chunks[0], chunks[0]], "expected chunk 1"),
    (lambda chunks: [chunks[0].__class__(*[getattr(chunks[0], f) for f in ("id", "format", "width", "height", "size",
                                                                            "index", "count")], b"x" * len(chunks[0].data)), chunks[1]],
     "does not match its id"),
    (lambda chunks: [chunks[0].__class__(*[getattr(chunks[0], f) for f in ("id", "format", "width", "height", "size",
                                                                            "index")], 1, chunks[0].data)],
     "ended after 131072 of 160000 bytes"),
])
def test_broken_uploads_are_refused(mangle, message: str) -> None:
    link = connect()
    image = rgba(200, 200)  # 160 000 bytes: two chunks of 128 KiB at most
    offer = OfferImages((image_info(image),))
    link.server.receive_frame(encode(offer))
    link.server.images_wanted(offer, have=())
    with pytest.raises(RemoteProtocolError) as caught:
        for chunk in mangle(chunk_image(image, 128 * 1024)):
            assert link.server.receive_frame(encode(chunk)) == []
    assert caught.value.code is ErrorCode.INVALID_IMAGE and message in caught.value.message
    assert caught.value.ref == image.id
    assert link.server.upload_bytes_held == 0


@pytest.mark.parametrize("broken", [0, 1, 2, 3])
def test_a_corrupted_byte_in_any_chunk_refuses_the_upload_at_its_end(broken: int) -> None:
    # Chunks are hashed as they arrive: a bad byte in any of them, first to last, still fails the id check.
    link = connect()
    image = rgba(300, 300)  # 360 000 bytes: chunks of 128 KiB, 128 KiB and 103 KiB
    offer = OfferImages((image_info(image),))
    link.server.receive_frame(encode(offer))
    link.server.images_wanted(offer, have=())
    chunks = chunk_image(image, 128 * 1024)
    if broken < len(chunks):
        data = bytearray(chunks[broken].data)
        data[len(data) // 2] ^= 1
        chunks[broken] = ImageChunk(*[getattr(chunks[broken], f) for f in ("id", "format", "width", "height", "size",
                                                                            "index", "count")], bytes(data))
    *head, last = chunks
    for chunk in head:
        assert link.server.receive_frame(encode(chunk)) == []
    if broken == len(chunks):  # none broken: the image arrives, its id taken from the check, not hashed again
        (uploaded,) = link.server.receive_frame(encode(last))
        assert uploaded == ImageUploaded(image) and uploaded.image.id == image.id and uploaded.image._id == [image.id]
        return
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(encode(last))
    assert caught.value.code is ErrorCode.INVALID_IMAGE and "does not match its id" in caught.value.message


def test_chunks_for_images_not_asked_for_are_refused() -> None:
    link = connect()
    image = rgba(16, 16)
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(encode(chunk_image(image)[0]))
    assert caught.value.code is ErrorCode.UNKNOWN_IMAGE and "offer images first" in caught.value.message
    held = rgba(16, 16, seed=2)
    offer = OfferImages((image_info(held),))
    link.server.receive_frame(encode(offer))
    link.server.images_wanted(offer, have=[held.id])  # the server has it: the client must not send it
    with pytest.raises(RemoteProtocolError):
        link.server.receive_frame(encode(chunk_image(held)[0]))


def test_small_chunks_are_refused_except_the_last() -> None:
    link = connect()
    image = rgba(200, 200)  # 160 000 bytes
    offer = OfferImages((image_info(image),))
    link.server.receive_frame(encode(offer))
    link.server.images_wanted(offer, have=())
    first = ImageChunk(image.id, image.format, 200, 200, 160_000, 0, 2, image.data[:20_000])
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(encode(first))
    assert str(MIN_CHUNK_BYTES) in caught.value.message


def offer_and_want(link: Link, *images: ImagePayload) -> None:
    offer = OfferImages(tuple(image_info(image) for image in images))
    assert link.server.receive_frame(encode(offer)) == [offer]
    assert link.server.images_wanted(offer, have=()) == tuple(image.id for image in images)


def feed(server: ServerSession, chunks: list[ImageChunk]) -> list:
    """Each chunk's outcome: the events it gave, or ("error", code, ref) for a RemoteProtocolError."""
    outcomes = []
    for chunk in chunks:
        try:
            outcomes.append(server.receive_frame(encode(chunk)))
        except RemoteProtocolError as exc:
            outcomes.append(("error", exc.code, exc.ref))
    return outcomes


def _with(chunk: ImageChunk, **changes) -> ImageChunk:
    fields = {f: getattr(chunk, f) for f in ("id", "format", "width", "height", "size", "index", "count", "data")}
    return ImageChunk(**{**fields, **changes})


THREE = rgba(300, 300, seed=3)  # 360 000 bytes: three chunks of 128 KiB at most


@pytest.mark.parametrize("broken", [
    lambda c: [c[1], c[2], c[0]],                                # a first chunk with index 1
    lambda c: [c[0], c[0], c[1], c[2]],                          # chunk 0 twice
    lambda c: [_with(c[0], data=c[0].data[:1000]), c[1], c[2]],  # a non-last chunk 0 under 64 KiB
    lambda c: [c[0], c[1], _with(c[2], data=b"x" * len(c[2].data))],  # bytes that do not match the id
], ids=["starts-at-1", "duplicate-0", "small-0", "wrong-bytes"])
def test_a_broken_upload_is_dropped_once_and_wanted_again_only_after_an_offer(broken) -> None:
    """docs/protocol.md 6.4: one invalid_image, the rest of the upload ignored, the image no longer
    wanted (a resend from chunk 0 is ignored too); offered again, it uploads."""
    link = connect()
    offer_and_want(link, THREE)
    chunks = chunk_image(THREE, 128 * 1024)
    outcomes = feed(link.server, broken(chunks))
    errors = [o for o in outcomes if isinstance(o, tuple)]
    assert errors == [("error", ErrorCode.INVALID_IMAGE, THREE.id)]
    assert all(o == [] for o in outcomes if not isinstance(o, tuple))
    assert link.server.upload_bytes_held == 0
    assert feed(link.server, chunks) == [[], [], []]  # resent without an offer: not wanted, ignored
    offer_and_want(link, THREE)
    assert feed(link.server, chunks) == [[], [], [ImageUploaded(THREE)]]


def test_dropped_uploads_are_remembered_within_a_bound() -> None:
    from protocol.session import RECENTLY_DROPPED

    link = connect()
    images = [rgba(8, 8, seed=i) for i in range(RECENTLY_DROPPED + 1)]
    for image in images:
        offer_and_want(link, image)
        (outcome,) = feed(link.server, [_with(chunk_image(image)[0], index=1)])
        assert outcome == ("error", ErrorCode.INVALID_IMAGE, image.id)
    assert feed(link.server, [chunk_image(images[-1])[0]]) == [[]]  # remembered: ignored
    # The oldest was forgotten: its chunk is one not asked for, as if it had never been offered.
    assert feed(link.server, [chunk_image(images[0])[0]]) == [("error", ErrorCode.UNKNOWN_IMAGE, images[0].id)]


def test_chunks_of_two_images_may_interleave() -> None:
    """docs/protocol.md 6.4 rule 1: in order within each image; images may interleave."""
    link = connect()
    other = rgba(300, 300, seed=4)
    offer_and_want(link, THREE, other)
    a, b = chunk_image(THREE, 128 * 1024), chunk_image(other, 128 * 1024)
    assert feed(link.server, [a[0], b[0], b[1], a[1], a[2], b[2]]) == [[], [], [], [], [ImageUploaded(THREE)],
                                                                        [ImageUploaded(other)]]


@pytest.mark.parametrize("bad_id", [THREE.id.upper(), THREE.id[:63], THREE.id + "0", "g" * 64, ""])
def test_an_offer_naming_an_id_that_is_not_a_content_id_is_refused(bad_id: str) -> None:
    link = connect()
    info = image_info(THREE)
    frame = encode(OfferImages((info, ImageInfo(bad_id, info.format, info.width, info.height, info.size))))
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(frame)
    assert caught.value.code is ErrorCode.INVALID_IMAGE and caught.value.ref == "offer_images"
    assert "64 lowercase hex digits" in caught.value.message
    assert link.server.receive_frame(encode(OfferImages((info,)))) == [OfferImages((info,))]


def test_the_client_checks_what_the_server_asks_for() -> None:
    link = connect()
    with pytest.raises(RemoteProtocolError) as caught:
        link.client.receive_frame(encode(ImagesWanted(("abc",))))
    assert "no offer outstanding" in caught.value.message
    image = rgba(8, 8)
    link.client.submit(SubmitJob("j", "img2img", images={"image": image.id}), [image])
    link.to_server()
    with pytest.raises(RemoteProtocolError) as caught:
        link.client.receive_frame(encode(ImagesWanted(("f" * 64,))))
    assert caught.value.code is ErrorCode.UNKNOWN_IMAGE


# --------------------------------------------------------------------------- cancel and fail

def test_cancel_running_job() -> None:
    link = connect()
    run_to_started(link, SubmitJob("r", "txt2img"))
    link.server.step_preview("r", 1, 3, 8, 8, b"p")
    link.to_client()
    link.client.cancel("r")
    assert link.to_server() == [CancelJob("r")]
    assert link.client.open_jobs == {"r": JobPhase.RUNNING}  # open until the server says so
    link.server.job_cancelled("r", "requested")
    assert link.to_client() == [JobCancelled("r", "requested")]
    assert link.client.open_jobs == {} and link.server.open_jobs == {}
    with pytest.raises(LocalProtocolError):
        link.server.step_preview("r", 2, 3, 8, 8, b"late")


def test_cancel_queued_job() -> None:
    link = connect()
    job = SubmitJob("q", "txt2img")
    link.client.submit(job)
    link.to_server()
    link.server.job_accepted("q", 3)
    link.to_client()
    link.client.cancel("q")
    assert link.to_server() == [CancelJob("q")]
    link.server.job_cancelled("q")
    assert link.to_client() == [JobCancelled("q", "requested")]
    assert link.client.open_jobs == {}


def test_cancel_that_crosses_the_end_of_the_job_is_harmless() -> None:
    link = connect()
    run_to_started(link, SubmitJob("x", "txt2img"))
    link.server.job_finished("x", [rgba(8, 8)], seed=1)
    link.client.cancel("x")              # the user pressed cancel as the result was on its way
    assert link.to_server() == []         # the server ignores a cancel for a job it just ended
    (done,) = link.to_client()
    assert isinstance(done, JobResult) and link.client.open_jobs == {}
    with pytest.raises(RemoteProtocolError) as caught:  # but a cancel for a job it never had is an error
        link.server.receive_frame(encode(CancelJob("never")))
    assert caught.value.code is ErrorCode.UNKNOWN_JOB and caught.value.ref == "never"


def test_cancel_before_the_offer_is_answered_never_sends_the_job() -> None:
    link = connect()
    image = rgba(300, 300)
    link.client.submit(SubmitJob("early", "img2img", images={"image": image.id}), [image])
    (offer,) = link.to_server()
    link.client.cancel("early")
    assert link.client.data_to_send() == []
    link.server.images_wanted(offer, have=())
    assert link.to_client() == [ImagesWanted((image.id,)), JobCancelled("early", "requested")]
    assert link.client.open_jobs == {} and link.client.data_to_send() == [] and link.client.bytes_uploaded == 0


def test_failed_job_before_and_while_running() -> None:
    link = connect()
    link.client.submit(SubmitJob("v", "img2img", JobParams(strength=1.4)))
    link.to_server()
    link.server.job_failed("v", ErrorCode.INVALID_PARAMETER, "strength must be in [0, 1], got 1.4",
                           log_id="log-7", details={"field": "strength", "value": 1.4})
    (failed,) = link.to_client()
    assert failed == JobFailed("v", ErrorCode.INVALID_PARAMETER, "strength must be in [0, 1], got 1.4", "log-7",
                               {"field": "strength", "value": 1.4})
    assert link.client.open_jobs == {}

    run_to_started(link, SubmitJob("oom", "txt2img", JobParams(width=4096, height=4096)))
    link.server.job_failed("oom", ErrorCode.OUT_OF_MEMORY, "the GPU ran out of memory at 4096x4096; try 2048x2048")
    (failed,) = link.to_client()
    assert failed.code is ErrorCode.OUT_OF_MEMORY and link.client.open_jobs == {}


def test_a_submit_the_server_session_refuses_fails_on_the_client() -> None:
    link = connect(server=ServerSession(limits=limits(max_queued_jobs=1)))
    for job_id in ("a", "b", "c"):
        link.client.submit(SubmitJob(job_id, "txt2img"))
    frames = link.client.data_to_send()
    assert [type(e) for e in link.server.receive_frame(frames[0])] == [SubmitJob]
    assert [type(e) for e in link.server.receive_frame(frames[1])] == [SubmitJob]
    with pytest.raises(RemoteProtocolError) as caught:  # a bound on open jobs per connection
        link.server.receive_frame(frames[2])
    assert caught.value.code is ErrorCode.BUSY and caught.value.ref == "c"
    assert caught.value.details == {"client_jobs": 2, "max_client_jobs": 2}  # docs/protocol.md 8: the counts
    link.server.error(caught.value.code, caught.value.message)
    (failed,) = link.to_client()
    assert isinstance(failed, JobFailed) and failed.job_id == "c" and failed.code is ErrorCode.BUSY
    assert failed.details == {"client_jobs": 2, "max_client_jobs": 2}
    assert set(link.client.open_jobs) == {"a", "b"}


@pytest.mark.parametrize("job_id, ref", [("", ""), ("j" * 200, "j" * 128)])
def test_a_job_id_out_of_bounds_is_refused_with_what_ref_can_carry(job_id: str, ref: str) -> None:
    """docs/protocol.md 5.4: an empty job_id gets ref "" (it cannot name the job); a long one its first 128 characters."""
    link = connect()
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(encode(SubmitJob(job_id, "txt2img")))
    assert caught.value.code is ErrorCode.INVALID_MESSAGE and caught.value.ref == ref
    assert "job_id must be 1 to 128 characters" in caught.value.message and link.server.open_jobs == {}


def test_params_of_the_wrong_type_are_an_error_whose_ref_is_the_job() -> None:
    """docs/protocol.md 5.5/7: such a submit ends with an error whose ref is its id (not job_failed);
    an int sent as a whole float is such a wrong type."""
    link = connect()
    for params in ({"steps": "20"}, {"steps": 20.0}, {"margins": {"left": 8.0}}):
        frame = msgpack.packb({"type": "submit_job", "job_id": "typed", "task": "txt2img", "params": params},
                              use_bin_type=True)
        with pytest.raises(RemoteProtocolError) as caught:
            link.server.receive_frame(frame)
        assert caught.value.code is ErrorCode.INVALID_MESSAGE and caught.value.ref == "typed"
        assert "must be an integer" in caught.value.message
    assert link.server.open_jobs == {}


# --------------------------------------------------------------------------- previews

def test_previews_coalesce_for_a_slow_peer() -> None:
    link = connect()
    run_to_started(link, SubmitJob("p", "txt2img"))
    link.client.submit(SubmitJob("p2", "txt2img"))
    link.to_server()
    link.server.job_accepted("p2", 1)
    link.to_client()
    link.server.queue_position("p2", 0)
    link.server.job_started("p2", model="demo", seed=1, steps=20, width=8, height=8)
    for step in range(1, 21):   # the socket is slow: nothing is drained for twenty steps
        link.server.step_preview("p", step, 20, 8, 8, b"jpeg-%d" % step)
        link.server.step_preview("p2", step, 20, 8, 8, b"jpeg2-%d" % step)
    frames = link.server.data_to_send()
    assert tags(frames) == ["queue_position", "job_started", "step_preview", "step_preview"]
    assert [(m.job_id, m.step) for m in map(decode, frames[2:])] == [("p", 20), ("p2", 20)]
    # After a drain a new preview gets a new slot; the job's end goes out after its last preview.
    link.server.step_preview("p", 21, 22, 8, 8, b"a")
    link.server.step_preview("p", 22, 22, 8, 8, b"b")
    link.server.job_finished("p", [rgba(8, 8)], seed=1)
    frames = link.server.data_to_send()
    assert tags(frames) == ["step_preview", "image_chunk", "job_finished"] and decode(frames[0]).step == 22


def test_a_writer_taking_one_frame_at_a_time_still_gets_previews_coalesced() -> None:
    # The servers' writers take one frame per send: a preview that already left is not replaced,
    # one still waiting is, wherever it waits in the queue.
    link = connect()
    run_to_started(link, SubmitJob("p", "txt2img"))
    link.server.step_preview("p", 1, 9, 8, 8, b"one")
    link.server.image_stored("a" * 64)
    (first,) = link.server.data_to_send(1)
    assert decode(first).step == 1 and link.server.bytes_to_send == len(encode(ImageStored("a" * 64)))
    link.server.step_preview("p", 2, 9, 8, 8, b"two")  # step 1 is gone: a new slot, behind image_stored
    (stored,) = link.server.data_to_send(1)
    link.server.image_stored("b" * 64)
    link.server.step_preview("p", 3, 9, 8, 8, b"three")  # step 2 still waits: replaced in its place
    frames = link.server.data_to_send()
    assert tags([stored, *frames]) == ["image_stored", "step_preview", "image_stored"]
    assert decode(frames[0]).step == 3 and link.server.bytes_to_send == 0 and link.server.data_to_send(1) == []


def test_unsent_frames_are_dropped_without_encoding_the_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # A connection being cut (its client stopped reading): its result chunks are forgotten, not framed first.
    link = connect()
    run_to_started(link, SubmitJob("p", "txt2img"))
    link.server.job_finished("p", [rgba(512, 512)], seed=1)
    assert link.server.bytes_to_send > 512 * 512 * 4
    monkeypatch.setattr(session_module.codec, "encode", lambda message: pytest.fail(f"{message.TAG} encoded"))
    link.server.drop_unsent()
    assert link.server.bytes_to_send == 0 and link.server.data_to_send() == []


# --------------------------------------------------------------------------- misuse and protocol errors

def test_client_side_misuse_is_local() -> None:
    link = connect()
    image = rgba(8, 8)
    link.client.submit(SubmitJob("dup", "txt2img"))
    with pytest.raises(LocalProtocolError) as caught:
        link.client.submit(SubmitJob("dup", "txt2img"))
    assert caught.value.code is ErrorCode.DUPLICATE_JOB
    with pytest.raises(LocalProtocolError) as caught:
        link.client.submit(SubmitJob("img", "img2img", images={"image": image.id}))  # image not passed
    assert caught.value.code is ErrorCode.UNKNOWN_IMAGE
    for bad_id in ("", "x" * 129):
        with pytest.raises(LocalProtocolError):
            link.client.submit(SubmitJob(bad_id, "txt2img"))
    with pytest.raises(LocalProtocolError) as caught:
        link.client.cancel("nope")
    assert caught.value.code is ErrorCode.UNKNOWN_JOB


def test_server_side_misuse_is_local() -> None:
    link = connect()
    for call in (lambda: link.server.job_started("ghost", model="m", seed=1, steps=1, width=8, height=8),
                 lambda: link.server.job_accepted("ghost", 0),
                 lambda: link.server.job_finished("ghost", [], seed=1)):
        with pytest.raises(LocalProtocolError) as caught:
            call()
        assert caught.value.code is ErrorCode.UNKNOWN_JOB
    link.client.submit(SubmitJob("j", "txt2img"))
    link.to_server()
    with pytest.raises(LocalProtocolError) as caught:  # started before accepted
        link.server.job_started("j", model="m", seed=1, steps=1, width=8, height=8)
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE
    link.server.job_accepted("j", 0)
    with pytest.raises(LocalProtocolError):  # a preview while queued
        link.server.step_preview("j", 1, 2, 8, 8, b"")
    link.server.job_cancelled("j")
    with pytest.raises(LocalProtocolError):  # ended twice
        link.server.job_failed("j", ErrorCode.INTERNAL, "again")


@pytest.mark.parametrize("event", [
    JobAccepted("ghost", 0), JobStarted("ghost", "m", 1, 1, 8, 8), StepPreview("ghost", 1, 1, 8, 8, b""),
    JobFinished("ghost", (), 1), JobFailed("ghost", ErrorCode.INTERNAL, "x"), JobCancelled("ghost"),
    QueuePosition("ghost", 0),
], ids=lambda e: e.TAG)
def test_events_for_an_unknown_job_are_remote_errors(event) -> None:
    link = connect()
    with pytest.raises(RemoteProtocolError) as caught:
        link.client.receive_frame(encode(event))
    assert caught.value.code is ErrorCode.UNKNOWN_JOB and "ghost" in caught.value.message


def test_events_for_a_finished_job_and_out_of_order_events() -> None:
    link = connect()
    run_to_started(link, SubmitJob("f", "txt2img"))
    link.server.job_finished("f", [rgba(8, 8)], seed=1)
    link.to_client()
    for late in (StepPreview("f", 9, 9, 8, 8, b""), JobCancelled("f"), JobFinished("f", (), 1)):
        with pytest.raises(RemoteProtocolError) as caught:
            link.client.receive_frame(encode(late))
        assert caught.value.code is ErrorCode.UNKNOWN_JOB
    link.client.submit(SubmitJob("o", "txt2img"))
    link.to_server()
    for early in (JobStarted("o", "m", 1, 1, 8, 8), StepPreview("o", 1, 2, 8, 8, b""), QueuePosition("o", 1)):
        with pytest.raises(RemoteProtocolError) as caught:
            link.client.receive_frame(encode(early))
        assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert link.client.open_jobs == {"o": JobPhase.SUBMITTED}  # the junk changed nothing
    link.client.receive_frame(encode(JobAccepted("o", 0)))
    with pytest.raises(RemoteProtocolError):
        link.client.receive_frame(encode(JobFinished("o", (), 1)))  # finished while queued


def test_results_must_be_whole_and_match_their_ids() -> None:
    link = connect()
    run_to_started(link, SubmitJob("r", "txt2img"))
    image = rgba(8, 8)
    with pytest.raises(RemoteProtocolError) as caught:  # finished naming an image never sent
        link.client.receive_frame(encode(JobFinished("r", (image_info(image),), 1)))
    assert caught.value.code is ErrorCode.UNKNOWN_IMAGE
    (chunk,) = chunk_image(image)
    forged = ImageChunk(chunk.id, chunk.format, 8, 8, chunk.size, 0, 1, b"\x01" * chunk.size)
    with pytest.raises(RemoteProtocolError) as caught:
        link.client.receive_frame(encode(forged))
    assert caught.value.code is ErrorCode.INVALID_IMAGE
    assert link.client.open_jobs == {"r": JobPhase.RUNNING}


def test_messages_from_the_wrong_side_are_refused() -> None:
    link = connect()
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(encode(JobAccepted("j", 0)))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE and "server message" in caught.value.message
    with pytest.raises(RemoteProtocolError) as caught:
        link.client.receive_frame(encode(SubmitJob("j", "txt2img")))
    assert "client message" in caught.value.message


def test_unknown_tag_is_typed_and_the_sessions_go_on() -> None:
    link = connect()
    future = msgpack.packb({"type": "paint_for_me", "how": "well"})
    for session in (link.server, link.client):
        with pytest.raises(RemoteProtocolError) as caught:
            session.receive_frame(future)
        assert caught.value.code is ErrorCode.UNKNOWN_MESSAGE
    link.server.error(ErrorCode.UNKNOWN_MESSAGE, "unknown message type 'paint_for_me'")
    (error,) = link.to_client()
    assert isinstance(error, ErrorEvent) and error.ref == "paint_for_me"
    link.client.ping(1)
    link.to_server()
    assert link.to_client() == [Pong(1)]


def test_unknown_fields_are_ignored_by_both_sessions() -> None:
    link = Link(ClientSession("c", "1"), ServerSession(limits=limits()))
    hello = msgpack.unpackb(link.client.data_to_send()[0])
    assert [type(e) for e in link.server.receive_frame(msgpack.packb({**hello, "telemetry": [1, 2], "x": {}}))] == [Hello]
    link.server.welcome(server_name="s", server_version="2", client_id="c", capabilities=CAPABILITIES)
    welcome = msgpack.unpackb(link.server.data_to_send()[0])
    welcome["capabilities"]["gpus"] = ["a", "b"]   # fields a newer server adds, nested too
    welcome["limits"]["max_video_seconds"] = 10
    (event,) = link.client.receive_frame(msgpack.packb({**welcome, "motd": "new"}))
    assert isinstance(event, Welcome) and event.capabilities == CAPABILITIES
    job = msgpack.unpackb(encode(SubmitJob("n", "txt2img", JobParams(prompt="p"))))
    job["params"]["hires_fix"] = True
    (submit,) = link.server.receive_frame(msgpack.packb(job))
    assert submit == SubmitJob("n", "txt2img", JobParams(prompt="p"))


def test_ping_and_model_list() -> None:
    link = connect()
    link.client.ping(99)
    assert link.to_server() == []  # answered by the session itself
    assert link.to_client() == [Pong(99)]
    link.client.list_models()
    assert link.to_server() == [ListModels()]
    link.server.model_list(CAPABILITIES.models)
    assert link.to_client() == [ModelList(CAPABILITIES.models)]


def test_closed_sessions_refuse_to_go_on() -> None:
    link = connect()
    link.client.connection_lost()
    link.server.connection_lost()
    with pytest.raises(LocalProtocolError):
        link.client.receive_frame(encode(Pong()))
    with pytest.raises(LocalProtocolError):
        link.server.receive_frame(encode(Ping()))
    link.server.error(ErrorCode.INTERNAL, "dropped")  # answering a closed session is a no-op
    assert link.server.data_to_send() == []


# --------------------------------------------------------------------------- reconnect

def test_reconnect_resumes_open_jobs() -> None:
    link = connect(client_id="c-7")
    run_to_started(link, SubmitJob("running", "txt2img"))
    link.client.submit(SubmitJob("queued", "txt2img"))
    link.to_server()
    link.server.job_accepted("queued", 1)
    link.to_client()
    image = rgba(64, 64)
    link.client.submit(SubmitJob("unsent", "img2img", images={"image": image.id}), [image])
    link.to_server()

    # The connection drops. The server kept the running job; the others are gone.
    assert sorted(link.client.connection_lost()) == ["queued", "running", "unsent"]
    assert sorted(link.server.connection_lost()) == ["queued", "running"]

    client = ClientSession("test-client", "0.1", client_id="c-7")
    server = ServerSession(limits=limits())
    again = Link(client, server)
    (hello,) = again.to_server()
    assert hello.client_id == "c-7"
    server.welcome(server_name="s", server_version="1", client_id="c-7", capabilities=CAPABILITIES,
                   resumed={"running": JobPhase.RUNNING})
    (welcome,) = again.to_client()
    assert welcome.open_jobs == ("running",)  # "queued" and "unsent" are lost: the client resubmits them
    assert client.open_jobs == {"running": None}

    server.step_preview("running", 3, 4, 8, 8, b"p")  # the first event of a resumed job may be any
    result = rgba(32, 32, seed=8)
    server.job_finished("running", [result], seed=2)
    preview, done = again.to_client()
    assert preview.step == 3 and done.images == (result,)
    assert client.open_jobs == {} and server.open_jobs == {}


def test_a_resumed_job_is_tracked_normally_after_its_first_event() -> None:
    link = connect(resumed={"r": JobPhase.QUEUED})
    assert link.client.open_jobs == {"r": None}
    link.server.job_started("r", model="m", seed=1, steps=2, width=8, height=8)
    link.to_client()
    assert link.client.open_jobs == {"r": JobPhase.RUNNING}
    with pytest.raises(RemoteProtocolError):
        link.client.receive_frame(encode(JobAccepted("r", 0)))
    link.client.cancel("r")
    assert link.to_server() == [CancelJob("r")]
