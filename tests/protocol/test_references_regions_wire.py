"""References and regions on the wire: they round-trip through the codec, a job's image ids
include every reference image and region mask (so uploads and the server's checks see them)."""
from protocol import JobParams, SubmitJob, Task, decode, encode, job_image_ids
from protocol.messages import ReferenceImage, Region


def _job() -> SubmitJob:
    params = JobParams(prompt="a garden", references=(ReferenceImage("ref-a", 0.6, 0.0, 0.8),),
                       regions=(Region("mask-1", "a red door", (ReferenceImage("ref-b", model="ipa"),)),
                                Region("mask-2", "a cat")))
    return SubmitJob("j1", Task.TXT2IMG, params, {"image": "img"})


def test_references_and_regions_round_trip() -> None:
    job = _job()
    back = decode(encode(job))
    assert back == job
    assert back.params.regions[0].references[0].model == "ipa"
    assert back.params.references[0].end == 0.8


def test_job_image_ids_name_references_and_masks_once() -> None:
    job = _job()
    assert job_image_ids(job) == ["img", "ref-a", "mask-1", "ref-b", "mask-2"]
    # a mask used twice is one upload
    twice = SubmitJob("j2", Task.TXT2IMG, JobParams(regions=(Region("m", "x"), Region("m", "y"))))
    assert job_image_ids(twice) == ["m"]

