"""Results a job would make are checked against ``limits.max_image_pixels`` before any work: the
probe's 8x8 upload with margins of 4092 asked for an 8192² outpaint (the server's memory went from
0.86 to 6.29 GB). Real engine (tiny models); ``prepare`` is the check the server makes at submit."""
from __future__ import annotations

import pytest

from backend.errors import JobError
from protocol import ErrorCode, ImageFormat, ImagePayload, JobParams, Limits, Margins, SubmitJob
from test_server_harness import Client, rgba

MAX_PIXELS = Limits(max_frame_bytes=1).max_image_pixels  # what welcome announces: 4096²


@pytest.mark.parametrize("margins", [Margins(4092, 4092, 4092, 4092), Margins(left=4089, top=4088), Margins(right=4096, bottom=4089)])
def test_an_outpaint_result_past_max_image_pixels_is_refused_before_any_work(engine, margins):
    image = rgba(8, 8)
    width, height = 8 + margins.left + margins.right, 8 + margins.top + margins.bottom
    submit = SubmitJob("o", "outpaint", JobParams(model="tiny", margins=margins), images={"image": image.id})
    with pytest.raises(JobError) as caught:
        engine.prepare(submit, {"image": image})
    assert caught.value.code is ErrorCode.INVALID_PARAMETER and caught.value.details["field"] == "margins"
    assert f"{width}x{height}" in caught.value.message and str(MAX_PIXELS) in caught.value.message


def test_an_outpaint_result_within_the_limit_is_accepted(engine):
    image = rgba(8, 8)
    submit = SubmitJob("o", "outpaint", JobParams(model="tiny", margins=Margins(right=4088, bottom=4088)),
                       images={"image": image.id})
    prepared = engine.prepare(submit, {"image": image})
    assert (prepared.width, prepared.height) == (4096, 4096)


def test_an_upscale_result_past_max_image_pixels_is_refused_before_any_work(engine):
    big = ImagePayload(ImageFormat.RGBA8, 2100, 2100, bytes(2100 * 2100 * 4))
    submit = SubmitJob("u", "upscale", JobParams(model="tiny", upscale_factor=2.0), images={"image": big.id})
    with pytest.raises(JobError) as caught:
        engine.prepare(submit, {"image": big})
    assert caught.value.details["field"] == "upscale_factor" and "4200x4200" in caught.value.message


def test_the_server_answers_the_probes_outpaint_with_a_typed_error_and_keeps_serving(serve):
    image = rgba(8, 8)
    with serve() as server, Client(server.url) as client:
        end = client.run(SubmitJob("big", "outpaint", JobParams(model="tiny", margins=Margins(4092, 4092, 4092, 4092)),
                                   images={"image": image.id}), [image])[-1]
        assert end.code is ErrorCode.INVALID_PARAMETER and "8192x8192" in end.message
        assert client.run(SubmitJob("ok", "txt2img", JobParams(model="tiny", steps=1, width=64, height=64)))[-1].images
