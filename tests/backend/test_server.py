"""The server end to end: a real websocket on loopback, the real Engine with tiny random models
(built by backend.demo), real ClientSessions. HF_HUB_OFFLINE=1; no GPU.

Waits have generous bounds so a hang fails instead of blocking; nothing here asserts a duration.
"""
from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from protocol import (
    decode, encode, ErrorCode, ErrorEvent, ImageFormat, JobAccepted, JobCancelled, JobFailed, JobParams, JobResult,
    JobStarted, Margins, ModelList, QueuePosition, StepPreview, SubmitJob,
)

sys.path.insert(0, str(Path(__file__).parent))  # the harness module sits next to this file (any import mode)
from test_server_harness import (  # noqa: E402,F401 - engine, server, tiny_models are fixtures
    Client, GatedEngine, ServerThread, engine, grey_mask, rgba, server, tiny_config, tiny_models,
    txt2img,
)


def result_of(events) -> JobResult:
    last = events[-1]
    assert isinstance(last, JobResult), f"the job did not finish: {last!r}"
    return last


# --------------------------------------------------------------------------- every task


def test_welcome_lists_the_models_and_limits(server):
    with Client(server.url) as client:
        welcome = client.welcome
        assert welcome.server_name == "easel" and welcome.client_id and not welcome.demo
        assert {m.id for m in welcome.capabilities.models} == {"tiny", "tiny-inpaint"}
        assert welcome.limits.max_queued_jobs == 4
        assert welcome.limits.max_frame_bytes >= welcome.limits.max_chunk_bytes
        client.session.list_models()
        client.flush()
        listing = client.until(lambda e: isinstance(e, ModelList))[-1]
        assert [m.id for m in listing.models] == [m.id for m in welcome.capabilities.models]


def test_txt2img_end_to_end_with_a_preview_for_every_step(server):
    seen_by_server: list[int] = []
    original = server.server.job_preview

    def counting(job, step, total, width, height, jpeg):  # the server's own hand-off to the session
        seen_by_server.append(step)
        original(job, step, total, width, height, jpeg)

    server.server.job_preview = counting
    with Client(server.url) as client:
        events = client.run(txt2img("t1", steps=5, seed=42, width=64, height=96))
    kinds = [type(e) for e in events]
    assert kinds[0] is JobAccepted and JobStarted in kinds
    started = next(e for e in events if isinstance(e, JobStarted))
    assert (started.model, started.seed, started.steps, started.width, started.height) == ("tiny", 42, 5, 64, 96)
    previews = [e for e in events if isinstance(e, StepPreview)]
    assert seen_by_server == [1, 2, 3, 4, 5]
    # A fast reader normally gets all five; the outbox may merge previews the socket has not taken
    # yet, but what arrives is in order and always ends with the last step.
    steps = [p.step for p in previews]
    assert steps == sorted(set(steps)) and steps[-1] == 5 and all(p.total == 5 for p in previews)
    assert all(p.jpeg[:3] == b"\xff\xd8\xff" for p in previews)
    result = result_of(events)
    image = result.images[0]
    assert (image.format, image.width, image.height) == (ImageFormat.RGBA8, 64, 96)
    assert result.finished.seeds == (42,)
    assert {"queued", "worker"} <= set(result.finished.timings)


def test_same_request_same_pixels_other_seed_other_pixels(server):
    with Client(server.url) as client:
        a = result_of(client.run(txt2img("a", seed=7))).images[0]
        b = result_of(client.run(txt2img("b", seed=7))).images[0]
        c = result_of(client.run(txt2img("c", seed=8))).images[0]
    assert a.data == b.data
    assert a.data != c.data


def test_random_seed_is_reported_and_reproduces(server):
    with Client(server.url) as client:
        first = result_of(client.run(txt2img("r1", seed=None)))
        again = result_of(client.run(txt2img("r2", seed=first.finished.seed)))
    assert first.images[0].data == again.images[0].data


def test_img2img_end_to_end_and_a_reused_result_is_not_uploaded(server):
    source = rgba(64, 64)
    with Client(server.url) as client:
        job = SubmitJob("i1", "img2img", JobParams(model="tiny", prompt="x", strength=0.5, steps=4, seed=3, width=64, height=64),
                        {"image": source.id})
        result = result_of(client.run(job, [source]))
        assert (result.images[0].width, result.images[0].height) == (64, 64)
        assert client.session.bytes_uploaded == len(source.data)
        # The result lives in this client's store on the server: feeding it back costs no upload.
        again = SubmitJob("i2", "img2img", JobParams(model="tiny", prompt="x", strength=0.5, steps=4, seed=3, width=64, height=64),
                          {"image": result.images[0].id})
        result_of(client.run(again, [result.images[0]]))
        assert client.session.bytes_uploaded == len(source.data)


@pytest.mark.parametrize("model", ["tiny", "tiny-inpaint"])
def test_inpaint_end_to_end_keeps_every_pixel_outside_the_mask(server, model):
    source = rgba(64, 64, seed=5)
    mask = grey_mask(64, 64, (16, 16, 40, 40))
    job = SubmitJob(f"p-{model}", "inpaint", JobParams(model=model, prompt="x", steps=3, seed=1, width=64, height=64),
                    {"image": source.id, "mask": mask.id})
    with Client(server.url) as client:
        out = result_of(client.run(job, [source, mask])).images[0]
    assert (out.width, out.height) == (64, 64)
    assert out.data != source.data, "nothing was repainted"
    for i in range(0, len(out.data), 4):
        if mask.data[i // 4] == 0:
            assert out.data[i:i + 4] == source.data[i:i + 4], f"pixel {i // 4 % 64},{i // 4 // 64} outside the mask changed"


def test_outpaint_end_to_end_grows_the_canvas(server):
    source = rgba(64, 64, seed=9)
    job = SubmitJob("o1", "outpaint", JobParams(model="tiny", prompt="x", steps=3, seed=1, width=64, height=64,
                                                 margins=Margins(left=16, top=0, right=0, bottom=8)),
                    {"image": source.id})
    with Client(server.url) as client:
        out = result_of(client.run(job, [source])).images[0]
    assert (out.width, out.height) == (80, 72)
    # Far from the seam, the original region is intact: check its right half, top rows.
    for y in range(0, 32):
        for x in range(40, 64):
            o = ((y * 80) + x + 16) * 4
            s = (y * 64 + x) * 4
            assert out.data[o:o + 4] == source.data[s:s + 4]


# --------------------------------------------------------------------------- cancellation


def test_cancel_mid_job_stops_it_and_the_worker_moves_on(server, caplog):
    caplog.set_level(logging.INFO, logger="easel")
    with Client(server.url) as client:
        client.submit(txt2img("long", steps=150))
        client.until(lambda e: isinstance(e, StepPreview))
        client.cancel("long")
        events = client.until_done("long")
        assert isinstance(events[-1], JobCancelled) and events[-1].reason == "requested"
        assert len([e for e in client.log if isinstance(e, StepPreview)]) < 150
        result_of(client.run(txt2img("next", steps=2)))
    assert any("long cancelled after" in r.getMessage() for r in caplog.records)


@pytest.fixture
def server_without_grace(engine, tiny_models, tmp_path):
    """A server that forgets a client as soon as its connection drops (``reconnect_grace_s`` 0)."""
    with ServerThread(tiny_config(tiny_models, tmp_path, reconnect_grace_s=0.0), engine) as running:
        yield running


def test_disconnect_mid_job_cancels_it_on_the_server(server_without_grace, caplog):
    server = server_without_grace
    caplog.set_level(logging.INFO, logger="easel")
    leaving = Client(server.url)
    leaving.submit(txt2img("gone", steps=150))
    leaving.until(lambda e: isinstance(e, StepPreview))
    gone_id = leaving.welcome.client_id
    leaving.close()
    with Client(server.url) as other:
        result_of(other.run(txt2img("after", steps=2)))
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"job {gone_id}/gone cancelled after" in m and "disconnected" in m for m in messages), messages
    assert not any(f"job {gone_id}/gone finished" in m for m in messages)
    assert server.call(lambda: gone_id not in server.server.clients)


def test_cancel_a_queued_job_and_positions_move(engine, tiny_models, tmp_path):
    # Deterministic concurrency test: the first job holds the device behind a gate (GatedEngine)
    # until the test has cancelled the queued one; the pipelines themselves are real.
    gated = GatedEngine(engine)
    with ServerThread(tiny_config(tiny_models, tmp_path), gated) as server, Client(server.url) as client:
        client.submit(txt2img("a", prompt="A"))
        client.until(lambda e: isinstance(e, JobStarted) and e.job_id == "a")
        client.submit(txt2img("b", prompt="B"))
        client.submit(txt2img("c", prompt="C"))
        accepted = client.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "c")
        positions = {e.job_id: e.queue_position for e in accepted if isinstance(e, JobAccepted)}
        assert positions == {"b": 0, "c": 1}
        client.cancel("b")
        events = client.until(lambda e: isinstance(e, QueuePosition) and e.job_id == "c")
        assert any(isinstance(e, JobCancelled) and e.job_id == "b" for e in events)
        assert events[-1].queue_position == 0
        gated.gate("A").set()
        gated.gate("C").set()
        result_of(client.until_done("a"))
        result_of(client.until_done("c"))
        assert gated.started == ["A", "C"]  # b never reached the device


def test_queue_full_is_busy_with_the_queue_length(engine, tiny_models, tmp_path):
    # Deterministic concurrency test (GatedEngine holds the device; see test_server_harness).
    gated = GatedEngine(engine)
    config = tiny_config(tiny_models, tmp_path, queue_size=2)
    with ServerThread(config, gated) as server, Client(server.url) as one, Client(server.url) as two:
        one.submit(txt2img("a", prompt="A"))
        one.until(lambda e: isinstance(e, JobStarted))
        one.submit(txt2img("b", prompt="B"))
        one.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "b")
        two.submit(txt2img("c", prompt="C"))
        two.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "c")
        two.submit(txt2img("d", prompt="D"))
        failed = two.until_done("d")[-1]
        assert isinstance(failed, JobFailed) and failed.code is ErrorCode.BUSY
        assert failed.details == {"queue_length": 2, "max_queued_jobs": 2}
        assert "busy" in failed.message and "2 jobs" in failed.message
        for key in "ABC":
            gated.gate(key).set()
        for client, job_id in ((one, "a"), (one, "b"), (two, "c")):
            result_of(client.until_done(job_id))


def test_reconnect_within_the_grace_period_resumes_the_job(engine, tiny_models, tmp_path):
    config = tiny_config(tiny_models, tmp_path, reconnect_grace_s=60.0)
    with ServerThread(config, engine) as server:
        first = Client(server.url)
        first.submit(txt2img("kept", steps=40))  # long enough to still run after the reconnect
        first.until(lambda e: isinstance(e, StepPreview))
        client_id = first.welcome.client_id
        first.ws.socket.shutdown(socket.SHUT_RDWR)  # a drop: a clean close (1000) would end the session
        first.close()
        with Client(server.url, client_id=client_id) as again:
            assert again.welcome.client_id == client_id and again.welcome.open_jobs == ("kept",)
            result = result_of(again.until_done("kept"))
            assert result.finished.seed == 1


def test_without_a_grace_period_a_reconnect_is_a_new_client(server_without_grace):
    server = server_without_grace
    first = Client(server.url)
    client_id = first.welcome.client_id
    first.submit(txt2img("dropped", steps=150))
    first.until(lambda e: isinstance(e, StepPreview))
    first.close()
    with Client(server.url, client_id=client_id) as again:
        assert again.welcome.client_id != client_id and again.welcome.open_jobs == ()


# --------------------------------------------------------------------------- several clients


def test_two_clients_at_once_each_see_only_their_own_jobs(server):
    with Client(server.url) as one, Client(server.url) as two:
        assert one.welcome.client_id != two.welcome.client_id
        # The same job id on both connections: each must get its own job's events only.
        one.submit(txt2img("same", seed=11, steps=3))
        two.submit(txt2img("same", seed=12, steps=3))
        r1 = result_of(one.until_done("same"))
        r2 = result_of(two.until_done("same"))
    assert r1.finished.seed == 11 and r2.finished.seed == 12
    assert r1.images[0].data != r2.images[0].data
    for client in (one, two):
        starts = [e for e in client.log if isinstance(e, JobStarted)]
        assert len(starts) == 1


BAD_JOBS = [
    ("bad size", lambda: (txt2img("x", width=70), []), ErrorCode.INVALID_PARAMETER, "multiple of 8"),
    ("strength", lambda: (_img2img(strength=1.4), [rgba(64, 64)]), ErrorCode.INVALID_PARAMETER, "strength"),
    ("unknown model", lambda: (txt2img("x", model="nope"), []), ErrorCode.UNKNOWN_MODEL, "nope"),
    ("unknown sampler", lambda: (txt2img("x", sampler="warp-drive"), []), ErrorCode.INVALID_PARAMETER, "warp-drive"),
    ("mask size", lambda: _inpaint_mismatch(), ErrorCode.INVALID_PARAMETER, "the mask is 32x32 but the image is 64x64"),
]


def _img2img(**params):
    image = rgba(64, 64)
    return SubmitJob("x", "img2img", JobParams(model="tiny", prompt="x", steps=2, width=64, height=64, **params), {"image": image.id})


def _inpaint_mismatch():
    image, mask = rgba(64, 64), grey_mask(32, 32, (0, 0, 16, 16))
    return SubmitJob("x", "inpaint", JobParams(model="tiny", steps=2), {"image": image.id, "mask": mask.id}), [image, mask]


def test_each_bad_input_gets_its_typed_error_while_another_clients_job_completes(server):
    with Client(server.url) as good, Client(server.url) as bad:
        good.submit(txt2img("good", steps=20))
        good.until(lambda e: isinstance(e, StepPreview))
        for n, (what, build, code, words) in enumerate(BAD_JOBS):
            job, images = build()
            job = SubmitJob(f"bad{n}", job.task, job.params, job.images)
            failed = bad.run(job, images)[-1]
            assert isinstance(failed, JobFailed), what
            assert failed.code is code, (what, failed)
            assert words in failed.message, (what, failed.message)
        bad.send_raw(b"\xc1 not msgpack")
        error = bad.until(lambda e: isinstance(e, ErrorEvent))[-1]
        assert error.code is ErrorCode.MALFORMED_FRAME and error.log_id
        bad.send_raw(msgpack.packb({"type": "frobnicate", "x": 1}))
        error = bad.until(lambda e: isinstance(e, ErrorEvent))[-1]
        assert error.code is ErrorCode.UNKNOWN_MESSAGE and "frobnicate" in error.message
        bad.send_raw("a text frame")
        error = bad.until(lambda e: isinstance(e, ErrorEvent))[-1]
        assert error.code is ErrorCode.MALFORMED_FRAME and "binary" in error.message
        # The bad client's connection still works, and so does the good client's job.
        result_of(bad.run(txt2img("fine", steps=2)))
        result_of(good.until_done("good"))
        assert len([e for e in good.log if isinstance(e, StepPreview)]) >= 1


def test_submit_with_an_image_the_server_lacks_is_unknown_image(server):
    image = rgba(64, 64)
    with Client(server.url) as client:
        # Skip the offer and upload: a hand-made submit frame naming an image never sent, and the
        # answer read raw (the ClientSession would never let a job out without its images).
        job = SubmitJob("ghost", "img2img", JobParams(model="tiny", strength=0.5), {"image": image.id})
        client.send_raw(encode(job))
        failed = decode(client.ws.recv(60))
    assert isinstance(failed, JobFailed) and failed.code is ErrorCode.UNKNOWN_IMAGE and "offer" in failed.message


def test_oversized_frame_closes_with_1009_and_others_keep_going(server):
    with Client(server.url) as other:
        flood = Client(server.url)
        flood.send_raw(b"\x00" * (server.server.limits.max_frame_bytes + 1))
        with pytest.raises(ConnectionClosed) as closed:
            flood.until(lambda e: False, timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        result_of(other.run(txt2img("ok", steps=2)))


# --------------------------------------------------------------------------- closing


def test_close_cancels_running_and_queued_jobs_and_says_going_away(engine, tiny_models, tmp_path):
    server = ServerThread(tiny_config(tiny_models, tmp_path), engine).__enter__()
    try:
        client = Client(server.url)
        client.submit(txt2img("a", steps=150))
        client.until(lambda e: isinstance(e, StepPreview))
        client.submit(txt2img("b", steps=2))
        client.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "b")
    finally:
        server.close()
    events = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            events += client.next_events(30)
    cancelled = {e.job_id: e.reason for e in events if isinstance(e, JobCancelled)}
    assert cancelled == {"a": "shutdown", "b": "shutdown"}
    assert closed.value.rcvd.code == 1001


# --------------------------------------------------------------------------- who may connect


def test_browser_origins_are_refused_unless_allowed_and_a_token_is_checked(engine, tiny_models, tmp_path):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from protocol import Refused

    config = tiny_config(tiny_models, tmp_path, token="s3cret", allowed_origins=("https://ok.example",))
    with ServerThread(config, engine) as server:
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url, compression=None, origin="https://evil.example", open_timeout=30)
        assert refused.value.response.status_code == 403
        connect(server.url, compression=None, origin="https://ok.example", open_timeout=30).close()
        with Client(server.url, token="wrong") as stranger:
            assert isinstance(stranger.welcome, Refused) and stranger.welcome.code is ErrorCode.UNAUTHORIZED
            assert "s3cret" not in stranger.welcome.message
        with Client(server.url, token="s3cret") as friend:
            result_of(friend.run(txt2img("ok", steps=2)))
