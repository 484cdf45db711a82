"""The request model (plugin_blender.request) and the job book (plugin_blender.jobs), driven with
real protocol messages."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from plugin_blender.clientkit.events import ConnectFailed, SubmitFailed
from plugin_blender.jobs import BusyError, Ended, Finished, JobBook, JobKind, Preview, Status
from plugin_blender.request import ControlInput, GenerationRequest, RequestError, fit_size
from protocol import (
    Capabilities, ErrorCode, ErrorEvent, ImageFormat, ImagePayload, JobAccepted, JobCancelled, JobFailed,
    JobFinished, JobResult, JobStarted, Limits, ModelInfo, StepPreview, SubmitJob, Task, Welcome, image_info,
)
from protocol.transport import Connected, Disconnected, JobLost


def depth_payload(width=64, height=64) -> ImagePayload:
    data = np.linspace(0, 1, width * height, dtype="<f4").tobytes()
    return ImagePayload.build(ImageFormat.DEPTH32F, width, height, data)


def texture_request(**overrides) -> GenerationRequest:
    values = dict(task=Task.DEPTH2IMG, width=64, height=64, prompt="a brick wall", negative_prompt="blurry",
                  model="demo-depth", seed=7, steps=4, cfg_scale=5.5, images={"depth": depth_payload()})
    values.update(overrides)
    return GenerationRequest(**values)


# -- request


def test_request_becomes_one_submit_job_with_content_addressed_images():
    request = texture_request()
    job = request.job("job-1")
    assert isinstance(job, SubmitJob) and job.task == "depth2img"
    assert job.images == {"depth": request.images["depth"].id}
    assert (job.params.prompt, job.params.seed, job.params.steps, job.params.cfg_scale) == ("a brick wall", 7, 4, 5.5)
    assert (job.params.width, job.params.height, job.params.model) == (64, 64, "demo-depth")
    assert request.payloads() == [request.images["depth"]]


def test_request_round_trips_through_msgpack():
    request = texture_request(seed=None, strength=0.4)
    again = GenerationRequest.from_dict(msgpack.unpackb(msgpack.packb(request.to_dict())))
    assert again == request
    assert again.job("x") == request.job("x")


@pytest.mark.parametrize("overrides, message", [
    (dict(task="outpaint"), "not 'outpaint'"),
    (dict(width=65), "multiple of 8"),
    (dict(width=32), "64 to 4096"),
    (dict(images={}), "needs the image role"),
    (dict(images={"depth": depth_payload(), "mask": depth_payload()}), "takes no image role"),
    (dict(images={"depth": depth_payload(64, 72)}), "must match"),
    (dict(images={"depth": ImagePayload.build(ImageFormat.GREY8, 64, 64, bytes(64 * 64))}), "must be depth32f"),
])
def test_bad_requests_say_what_to_change(overrides, message):
    with pytest.raises(RequestError, match=message):
        texture_request(**overrides)


def test_img2img_needs_an_image():
    image = ImagePayload.build(ImageFormat.RGBA8, 64, 64, bytes(64 * 64 * 4))
    assert GenerationRequest(task=Task.IMG2IMG, width=64, height=64, images={"image": image}).job("j").images
    with pytest.raises(RequestError, match="image"):
        GenerationRequest(task=Task.IMG2IMG, width=64, height=64)


def test_inpaint_needs_an_image_and_a_grey8_mask_and_takes_controlnets():
    image = ImagePayload.build(ImageFormat.RGBA8, 64, 64, bytes(64 * 64 * 4))
    mask = ImagePayload.build(ImageFormat.GREY8, 64, 64, bytes(64 * 64))
    depth = ImagePayload.build(ImageFormat.GREY8, 64, 64, bytes(range(64)) * 64)
    request = GenerationRequest(task=Task.INPAINT, width=64, height=64, images={"image": image, "mask": mask},
                                controls=(ControlInput("depth", depth, model="demo-depth-control"),))
    job = request.job("j")
    assert job.task == "inpaint" and job.images == {"image": image.id, "mask": mask.id}
    assert job.params.controls[0].image == depth.id and len(request.payloads()) == 3
    with pytest.raises(RequestError, match="mask"):
        GenerationRequest(task=Task.INPAINT, width=64, height=64, images={"image": image})
    with pytest.raises(RequestError, match="mask must be grey8"):
        GenerationRequest(task=Task.INPAINT, width=64, height=64, images={"image": image, "mask": image})


def test_sampler_batch_and_loras_reach_the_job_and_round_trip():
    request = texture_request(sampler="euler_a", batch_size=3, loras=(("demo-lora", 0.7), ("other", -0.5)))
    params = request.job("j").params
    assert (params.sampler, params.batch_size) == ("euler_a", 3)
    assert [(lora.id, lora.weight) for lora in params.loras] == [("demo-lora", 0.7), ("other", -0.5)]
    again = GenerationRequest.from_dict(msgpack.unpackb(msgpack.packb(request.to_dict())))
    assert again == request
    with pytest.raises(RequestError, match="batch size must be 1 to 8"):
        texture_request(batch_size=9)
    with pytest.raises(RequestError, match="LoRA needs its id"):
        texture_request(loras=(("", 1.0),))


def test_fit_size_rounds_down_to_multiples_of_eight():
    assert fit_size(1920, 1080) == (1920, 1080)
    assert fit_size(250, 131) == (248, 128)
    with pytest.raises(RequestError, match="width is 0"):
        fit_size(7, 100)


def test_a_damaged_stored_request_is_refused():
    data = texture_request().to_dict()
    data["images"]["depth"]["data"] = b"short"
    with pytest.raises(RequestError, match="damaged"):
        GenerationRequest.from_dict(data)


# -- job book


def welcome() -> Welcome:
    model = ModelInfo("demo-depth", "Demo depth", "depth", "demo", tasks=("depth2img",))
    return Welcome(1, "easel", "0.1", "client-1", Capabilities(("depth2img",), ("euler",), (model,)),
                   Limits(max_frame_bytes=8 << 20), demo=True)


def result_for(job_id: str, seed: int = 11) -> JobResult:
    image = ImagePayload.build(ImageFormat.RGBA8, 64, 64, bytes(64 * 64 * 4))
    return JobResult(JobFinished(job_id, (image_info(image),), seed), (image,))


def test_a_job_runs_from_accepted_to_finished():
    book = JobBook()
    book.handle([Connected(welcome())])
    assert book.status.startswith("connected to easel") and "demo" in book.status
    assert [m.id for m in book.models] == ["demo-depth"]
    job = book.open(JobKind.TEXTURE, texture_request(), {"objects": ["Cube"]})
    assert book.busy(JobKind.TEXTURE) and not book.busy(JobKind.REFINE)
    assert book.handle([JobAccepted(job.job_id, 2)]) == [] and book.status == "queued, 2 ahead"
    book.handle([JobStarted(job.job_id, "demo-depth", 7, 4, 64, 64)])
    assert book.status == "step 0 of 4"
    previews = book.handle([StepPreview(job.job_id, s, 4, 8, 8, b"jpeg%d" % s) for s in (1, 2, 3)])
    assert [type(p) for p in previews] == [Preview] and previews[0].jpeg == b"jpeg3"  # only the newest
    assert book.status == "step 3 of 4"
    done = book.handle([result_for(job.job_id)])
    assert isinstance(done[0], Finished) and done[0].seed == 11 and done[0].job.context == {"objects": ["Cube"]}
    entry = book.last(JobKind.TEXTURE)
    assert not book.busy() and entry.job is done[0].job and entry.images == done[0].images
    assert entry.status is Status.RECEIVED  # recorded before the host applies it: never dropped
    assert entry.job.request.images["depth"] == texture_request().images["depth"]


def test_failures_reach_the_user_and_late_events_are_ignored():
    book = JobBook()
    job = book.open(JobKind.TEXTURE, texture_request())
    ended = book.handle([JobFailed(job.job_id, ErrorCode.INVALID_PARAMETER, "steps must be 1 to 150", log_id="ab12")])
    assert isinstance(ended[0], Ended) and not ended[0].cancelled
    assert book.status == "steps must be 1 to 150 (log id ab12)"
    assert book.handle([StepPreview(job.job_id, 1, 4, 8, 8, b"x"), result_for(job.job_id)]) == []


def test_cancel_ends_at_once_and_the_server_echo_is_ignored():
    book = JobBook()
    job = book.open(JobKind.REFINE, texture_request())
    ended = book.cancel(job.job_id)
    assert ended[0].cancelled and not book.busy()
    assert book.handle([JobCancelled(job.job_id)]) == []
    assert "cancelled" not in book.status  # a cancel is not an error


@pytest.mark.parametrize("event, text", [
    (Disconnected("the server closed the connection", will_retry=False), "the connection to the server closed"),
    (ConnectFailed("ws://x", "cannot connect to the Easel server at ws://x: refused"), "cannot connect"),
])
def test_losing_the_server_fails_every_open_job(event, text):
    book = JobBook()
    jobs = [book.open(JobKind.TEXTURE, texture_request()), book.open(JobKind.REFINE, texture_request())]
    ended = book.handle([event])
    assert {e.job.job_id for e in ended} == {j.job_id for j in jobs}
    assert all(text in e.message for e in ended) and not book.busy()
    # A connection gone for good loses the jobs it carried; a connect that never worked failed them.
    expected = Status.LOST if isinstance(event, Disconnected) else Status.FAILED
    assert [e.status for e in book.history] == [expected, expected]


def test_a_reconnecting_drop_keeps_jobs_and_a_lost_job_fails_alone():
    book = JobBook()
    a, b = book.open(JobKind.TEXTURE, texture_request()), book.open(JobKind.REFINE, texture_request())
    assert book.handle([Disconnected("dropped", will_retry=True)]) == []
    assert book.busy(JobKind.TEXTURE)
    assert book.status.startswith("connection lost; reconnecting (2 job(s)")
    ended = book.handle([JobLost(a.job_id), SubmitFailed(b.job_id, "too many requests")])
    assert [e.job.job_id for e in ended] == [a.job_id, b.job_id]
    assert ended[0].lost and not ended[1].lost
    assert [(e.job_id, e.status) for e in book.history] == [(a.job_id, Status.LOST), (b.job_id, Status.FAILED)]
    assert "run it again" in book.entry(a.job_id).label


def test_a_server_error_about_a_job_ends_it():
    book = JobBook()
    job = book.open(JobKind.TEXTURE, texture_request())
    ended = book.handle([ErrorEvent(ErrorCode.INVALID_IMAGE, "bad chunk", ref=job.job_id)])
    assert "bad chunk" in ended[0].message
    assert book.handle([ErrorEvent(ErrorCode.INVALID_MESSAGE, "odd frame")]) == []
    assert book.status == "server error: odd frame"


def test_open_jobs_are_bounded():
    book = JobBook(max_open=2)
    book.open(JobKind.TEXTURE, texture_request())
    book.open(JobKind.TEXTURE, texture_request())
    with pytest.raises(BusyError, match="wait or cancel"):
        book.open(JobKind.TEXTURE, texture_request())
