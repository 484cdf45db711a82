"""ControlNet requests (plugin_blender.request: ControlInput, resolving ControlNets from the
server's models, the depth map as a control image) and the job history (plugin_blender.jobs:
received / applied / kept / failed / cancelled / lost), driven with real protocol messages."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from plugin_blender.clientkit.events import Submitted
from plugin_blender.depth import normalise_depth
from plugin_blender.jobs import Ended, Finished, JobBook, JobKind, Status
from plugin_blender.pixels import unit_to_grey8
from plugin_blender.request import ControlInput, GenerationRequest, RequestError, base_model, pick_controlnet
from protocol import (
    ControlUnit, ImageFormat, ImagePayload, JobCancelled, JobFinished, JobResult, JobStarted, ModelInfo, SubmitJob,
    Task, image_info,
)
from protocol.transport import Disconnected, JobLost

SIZE = 64


def model(id: str, kind: str, family: str, tasks=(), control_type: str = "") -> ModelInfo:
    return ModelInfo(id, id, kind, family, tasks=tuple(tasks), control_type=control_type)


MODELS = (
    model("sd15", "base", "sd15", ("txt2img", "img2img")),
    model("sd2-depth", "depth", "sd2", ("depth2img",)),
    model("xl", "base", "sdxl", ("txt2img",)),
    model("canny15", "controlnet", "sd15", control_type="canny"),
    model("depth-xl", "controlnet", "sdxl", control_type="depth"),
    model("depth15", "controlnet", "sd15", control_type="depth"),
    model("lineart15", "controlnet", "sd15", control_type="lineart"),
)


def depth_grey8() -> ImagePayload:
    """A wall receding to the right with sky in the bottom quarter (Blender's rows: bottom-up)."""
    xx = np.mgrid[0:SIZE, 0:SIZE][1]
    depth = 5.0 + xx / SIZE * 5.0
    depth[: SIZE // 4] = 1e10
    return ImagePayload.build(ImageFormat.GREY8, SIZE, SIZE, unit_to_grey8(normalise_depth(depth)))


def lines_rgba8() -> ImagePayload:
    return ImagePayload.build(ImageFormat.RGBA8, SIZE, SIZE, bytes(range(256)) * (SIZE * SIZE * 4 // 256))


def controlnet_request(*, lines: bool = False, **overrides) -> GenerationRequest:
    controls = [ControlInput("depth", depth_grey8(), weight=0.8)]
    if lines:
        controls.append(ControlInput("canny", lines_rgba8(), weight=0.4, preprocessor="canny"))
    values = dict(task=Task.TXT2IMG, width=SIZE, height=SIZE, prompt="mossy stones", seed=5, steps=3,
                  controls=tuple(controls))
    values.update(overrides)
    return GenerationRequest(**values)


# -- the depth map as a control image


def test_the_depth_control_image_is_grey8_near_bright_rows_top_down():
    image = depth_grey8()
    rows = np.frombuffer(image.data, np.uint8).reshape(SIZE, SIZE)
    assert image.format is ImageFormat.GREY8
    assert (rows[-SIZE // 4:] == 0).all()            # the sky (Blender's bottom rows) is black, at the bottom
    wall = rows[: SIZE - SIZE // 4]
    assert (wall[:, 0] == 255).all() and (wall > 0).all()  # the nearest column is white, nothing on the wall is black
    assert (np.diff(wall.astype(int), axis=1) <= 0).all()  # receding to the right: darker
    # inverse mapping, rounded to 256 levels: nearest / depth
    expected = np.round(5.0 / (5.0 + np.arange(SIZE) / SIZE * 5.0) * 255)
    assert np.array_equal(wall[0], expected.astype(np.uint8))


def test_unit_to_grey8_clips_and_rejects_non_2d():
    assert unit_to_grey8(np.array([[-1.0, 0.5, 2.0]])) == bytes([0, 128, 255])
    with pytest.raises(ValueError, match="2-D"):
        unit_to_grey8(np.zeros(3))


# -- resolving and sending ControlNet units


def test_an_unnamed_depth_control_gets_the_servers_depth_controlnet_of_the_base_family():
    request = controlnet_request(model="sd15")
    with pytest.raises(RequestError, match="resolve"):
        request.job("j")  # no ControlNet picked yet: nothing half-made goes out
    resolved = request.resolved(MODELS, preprocessors=("canny",))
    job = resolved.job("j")
    assert job.task == "txt2img" and job.images == {}
    depth = request.controls[0].image
    assert job.params.controls == (ControlUnit("depth15", depth.id, 0.8, 0.0, 1.0, ""),)
    assert resolved.payloads() == [depth]
    # The other family's depth ControlNet when the base model is SDXL.
    assert controlnet_request(model="xl").resolved(MODELS).job("j").params.controls[0].model == "depth-xl"
    # No model named: the server's default for txt2img (its first model that runs it), here sd15.
    assert base_model(MODELS, "", Task.TXT2IMG).id == "sd15"
    assert controlnet_request().resolved(MODELS).controls[0].model == "depth15"


def test_a_line_guide_is_a_second_unit_with_the_servers_preprocessor():
    request = controlnet_request(lines=True, model="sd15").resolved(MODELS, preprocessors=("canny", "shuffle"))
    units = request.job("j").params.controls
    assert [(u.model, u.weight, u.preprocessor) for u in units] == [("depth15", 0.8, ""), ("canny15", 0.4, "canny")]
    assert [p.format for p in request.payloads()] == [ImageFormat.GREY8, ImageFormat.RGBA8]
    assert units[1].image == lines_rgba8().id


def test_a_controlnet_request_round_trips_through_msgpack():
    request = controlnet_request(lines=True).resolved(MODELS)
    again = GenerationRequest.from_dict(msgpack.unpackb(msgpack.packb(request.to_dict())))
    assert again == request and again.job("x") == request.job("x")
    unresolved = controlnet_request(lines=True)
    assert GenerationRequest.from_dict(msgpack.unpackb(msgpack.packb(unresolved.to_dict()))) == unresolved


@pytest.mark.parametrize("models, request_args, message", [
    (MODELS[:5], dict(model="sd15"), "a depth ControlNet only for sdxl models, and the chosen model is sd15"),
    ((MODELS[0],), dict(), "no depth ControlNet for sd15 models; start it with --controlnet depth=PATH"),
    (MODELS, dict(model="sd2-depth"), "'sd2-depth' is a depth model and cannot run txt2img"),
    (MODELS, dict(model="nope"), "no model 'nope'"),
    ((MODELS[1],), dict(), "no model that runs txt2img"),
])
def test_a_server_without_a_fitting_controlnet_is_a_sentence(models, request_args, message):
    with pytest.raises(RequestError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")):
        controlnet_request(**request_args).resolved(models)


def test_a_named_controlnet_is_checked():
    assert pick_controlnet(MODELS, "depth", "sd15", "depth15").id == "depth15"
    with pytest.raises(RequestError, match="'canny15' is for canny, not depth"):
        pick_controlnet(MODELS, "depth", "sd15", "canny15")
    with pytest.raises(RequestError, match="'depth-xl' is for sdxl models, the base model is sd15"):
        pick_controlnet(MODELS, "depth", "sd15", "depth-xl")
    with pytest.raises(RequestError, match="no ControlNet 'gone'"):
        pick_controlnet(MODELS, "depth", "sd15", "gone")


def test_a_preprocessor_the_server_lacks_is_refused_before_sending():
    with pytest.raises(RequestError, match="does not offer the 'canny' preprocessor"):
        controlnet_request(lines=True).resolved(MODELS, preprocessors=("shuffle",))
    assert controlnet_request(lines=True).resolved(MODELS, preprocessors=None).resolved_controls  # unknown: not checked


@pytest.mark.parametrize("overrides, message", [
    (dict(task=Task.DEPTH2IMG, images={"depth": ImagePayload.build(ImageFormat.DEPTH32F, SIZE, SIZE, bytes(SIZE * SIZE * 4))}),
     "depth2img request takes no ControlNet"),
    (dict(controls=(ControlInput("depth", ImagePayload.build(ImageFormat.GREY8, 32, 32, bytes(32 * 32))),)), "must match"),
    (dict(controls=(ControlInput("depth", ImagePayload.build(ImageFormat.DEPTH32F, SIZE, SIZE, bytes(SIZE * SIZE * 4))),)),
     "grey8 or rgba8"),
    (dict(controls=(ControlInput("depth", depth_grey8(), weight=2.5),)), "weight must be 0 to 2"),
    (dict(controls=(ControlInput("depth", depth_grey8(), start=0.6, end=0.5),)), "start before it ends"),
    (dict(controls=(ControlInput("", depth_grey8()),)), "control type"),
    (dict(controls=(ControlInput("depth", depth_grey8()),) * 5), "at most 4"),
])
def test_bad_controls_say_what_to_change(overrides, message):
    with pytest.raises(RequestError, match=message):
        controlnet_request(**overrides)


# -- the history


def result(job_id: str, seed: int = 21, fill: int = 0) -> JobResult:
    image = ImagePayload.build(ImageFormat.RGBA8, SIZE, SIZE, bytes([fill]) * (SIZE * SIZE * 4))
    return JobResult(JobFinished(job_id, (image_info(image),), seed), (image,))


def test_a_result_is_recorded_before_it_is_applied_and_settled_after():
    book = JobBook()
    job = book.open(JobKind.TEXTURE, controlnet_request())
    sent = controlnet_request().resolved(MODELS).job(job.job_id)
    book.handle([Submitted(job.job_id, sent), JobStarted(job.job_id, "sd15", 5, 3, SIZE, SIZE)])
    done = book.handle([result(job.job_id)])[0]
    assert isinstance(done, Finished)
    entry = book.entry(job.job_id)
    assert entry.status is Status.RECEIVED and entry.job.sent is sent  # what went to the server, ControlNets named
    book.settle(job.job_id, Status.APPLIED, "textured 2 object(s)")
    assert entry.label == "texture 21: applied — textured 2 object(s)" and book.status == "textured 2 object(s)"
    assert not entry.can_apply and book.kept() == []
    other = book.open(JobKind.REFINE, controlnet_request())
    book.handle([result(other.job_id, seed=22)])
    book.settle(other.job_id, Status.KEPT, "another file was opened while it ran")
    assert [e.job_id for e in book.kept()] == [other.job_id] and book.entry(other.job_id).can_apply
    assert "another file" in book.status and book.entry(other.job_id).label.startswith("refine 22: kept")


def test_a_result_that_arrived_before_the_connection_closed_for_good_is_not_lost():
    book = JobBook()
    done, waiting = book.open(JobKind.TEXTURE, controlnet_request()), book.open(JobKind.REFINE, controlnet_request())
    outcomes = book.handle([result(done.job_id), Disconnected("the server went away", will_retry=False)])
    assert [type(o) for o in outcomes] == [Finished, Ended]
    assert outcomes[0].job is done and outcomes[1].job is waiting and outcomes[1].lost
    assert book.entry(done.job_id).status is Status.RECEIVED and book.entry(done.job_id).images
    assert book.entry(waiting.job_id).status is Status.LOST


def test_jobs_wait_through_a_drop_and_the_server_decides_which_survived():
    book = JobBook()
    resumed, lost = book.open(JobKind.TEXTURE, controlnet_request()), book.open(JobKind.REFINE, controlnet_request())
    book.handle([JobStarted(resumed.job_id, "sd15", 5, 3, SIZE, SIZE)])
    assert book.handle([Disconnected("dropped", will_retry=True)]) == [] and book.reconnecting
    assert book.status == "connection lost; reconnecting (2 job(s) wait for their results)"
    assert resumed.job_id in book.jobs and lost.job_id in book.jobs  # their contexts are kept
    ended = book.handle([JobLost(lost.job_id), result(resumed.job_id)])
    assert ended[0].lost and isinstance(ended[1], Finished) and ended[1].job is resumed
    assert [(e.job_id, e.status) for e in book.history] == [(lost.job_id, Status.LOST), (resumed.job_id, Status.RECEIVED)]


def test_a_job_the_server_cancelled_for_a_disconnect_is_lost_not_cancelled():
    book = JobBook()
    job = book.open(JobKind.TEXTURE, controlnet_request())
    ended = book.handle([JobCancelled(job.job_id, "disconnected")])
    assert ended[0].lost and book.entry(job.job_id).status is Status.LOST and "run it again" in book.status


def test_the_history_is_bounded_and_gives_up_kept_results_last():
    image_bytes = SIZE * SIZE * 4
    book = JobBook(history=4, history_bytes=3 * image_bytes)
    ids = []
    for index in range(5):
        job = book.open(JobKind.TEXTURE, controlnet_request())
        book.handle([result(job.job_id, seed=index)])
        book.settle(job.job_id, Status.KEPT if index == 0 else Status.APPLIED, "")
        ids.append(job.job_id)
    # Five entries, room for four: an applied one goes; the kept one stays although it is the oldest.
    assert [e.job_id for e in book.history] == [ids[0], ids[2], ids[3], ids[4]]
    # Room for three results' bytes: the oldest applied one (its image is in the .blend) drops them.
    assert [bool(e.images) for e in book.history] == [True, False, True, True]
    assert book.entry(ids[0]).can_apply and sum(e.result_bytes for e in book.history) == 3 * image_bytes


def test_a_cancelled_job_is_in_the_history_without_an_error():
    book = JobBook()
    job = book.open(JobKind.TEXTURE, controlnet_request())
    book.cancel(job.job_id)
    assert book.entry(job.job_id).status is Status.CANCELLED and book.entry(job.job_id).label == "texture: cancelled"
    assert not book.last_error


def test_submitted_records_the_job_as_sent():
    book = JobBook()
    job = book.open(JobKind.TEXTURE, controlnet_request())
    sent = SubmitJob(job.job_id, "txt2img")
    assert book.handle([Submitted(job.job_id, sent), Submitted("someone-else", sent)]) == []
    assert book.jobs[job.job_id].sent is sent
