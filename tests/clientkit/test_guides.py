"""clientkit.guides: reference adapters picked by family, coverage masks and painted bounds, sizes,
counts against the limits a welcome announced, and jobs carrying references and regions."""
from __future__ import annotations

import pytest

from clientkit.controls import PickError
from clientkit.guides import (
    GuideError, check_counts, coverage_mask, fit_within, is_empty, opaque_bounds, pick_reference_model, with_guides,
)
from clientkit.limits import UNKNOWN, ServerLimits
from protocol import (
    Capabilities, ImageFormat, ImagePayload, JobParams, Limits, ModelInfo, ReferenceImage, Region, SubmitJob, Task,
    Welcome,
)

IPA = ModelInfo("ip-adapter-sd15", "IP-Adapter", "reference", "sd15")
FACE = ModelInfo("ip-adapter-face-sd15", "IP-Adapter face", "reference", "sd15", control_type="face")
PLUS_XL = ModelInfo("ipa_plus_sdxl", "IP-Adapter plus XL", "reference", "sdxl")
BASE = ModelInfo("sd15", "SD", "base", "sd15", ("txt2img",))
MODELS = (BASE, IPA, FACE, PLUS_XL)


def _rgba(width: int, height: int, boxes: list[tuple[int, int, int, int, int]]) -> bytes:
    """Transparent pixels, with (x, y, w, h, alpha) boxes painted red at that alpha."""
    data = bytearray(width * height * 4)
    for x0, y0, w, h, alpha in boxes:
        for y in range(y0, y0 + h):
            for x in range(x0, x0 + w):
                data[(y * width + x) * 4:(y * width + x) * 4 + 4] = bytes((255, 0, 0, alpha))
    return bytes(data)


def test_the_plain_reference_leaves_the_adapter_to_the_server_and_a_variant_is_picked_by_family():
    assert pick_reference_model(MODELS, "sd15") == ""
    assert pick_reference_model(MODELS, "flux") == ""
    assert pick_reference_model(MODELS, "sd15", "face") == FACE.id      # by control_type
    assert pick_reference_model(MODELS, "sdxl", "plus") == PLUS_XL.id   # by a word of its id
    # the reference server's variants read ip_adapter, ip_adapter_plus, ip_adapter_face, redux
    served = (ModelInfo("faceid-a", "face adapter", "reference", "sdxl", control_type="ip_adapter_face"),
              ModelInfo("general", "adapter", "reference", "sdxl", control_type="ip_adapter"))
    assert pick_reference_model(served, "sdxl", "face") == "faceid-a"
    with pytest.raises(PickError, match=r"no plus reference adapter for sd15 models \(it has: face, ip-adapter-sd15\)"):
        pick_reference_model(MODELS, "sd15", "plus")
    with pytest.raises(PickError, match="no face reference adapter for flux models; pick the plain reference type"):
        pick_reference_model(MODELS, "flux", "face")


def test_coverage_is_the_alpha_and_bounds_hold_every_painted_pixel():
    data = _rgba(10, 6, [(2, 1, 3, 2, 255), (7, 4, 1, 1, 9)])
    mask = coverage_mask(data, 10, 6)
    assert len(mask) == 60 and mask[1 * 10 + 2] == 255 and mask[4 * 10 + 7] == 9 and mask[0] == 0
    assert sum(1 for v in mask if v) == 7
    assert opaque_bounds(data, 10, 6) == (2, 1, 6, 4)
    assert opaque_bounds(_rgba(10, 6, []), 10, 6) is None
    assert is_empty(coverage_mask(_rgba(10, 6, []), 10, 6)) and not is_empty(mask)
    with pytest.raises(ValueError, match="a 10x5 RGBA buffer holds 200 bytes, got 240"):
        coverage_mask(data, 10, 5)


def test_fit_within_keeps_the_aspect_and_small_sizes():
    assert fit_within(300, 200) == (300, 200)
    assert fit_within(4096, 1024) == (1024, 256)
    assert fit_within(5000, 3, 1000) == (1000, 1)


def test_counts_are_held_to_the_limits_the_welcome_announced():
    welcome = Welcome(1, "easel", "0", "c1", Capabilities(("txt2img",), (), ()),
                      Limits(max_frame_bytes=1 << 20, max_references=2, max_regions=3))
    limits = ServerLimits.from_welcome(welcome)
    assert (limits.max_references, limits.max_regions) == (2, 3)
    check_counts(2, 3, limits)
    with pytest.raises(GuideError, match="3 reference images are in use, the server takes at most 2 in one job"):
        check_counts(3, 0, limits)
    with pytest.raises(GuideError, match="4 regions are marked, the server takes at most 3 in one job; unmark some"):
        check_counts(0, 4, limits)
    # before a welcome: the protocol's documented defaults
    assert (UNKNOWN.max_references, UNKNOWN.max_regions) == (Limits(0).max_references, Limits(0).max_regions)


def test_a_job_carries_guides_and_uploads_each_image_once():
    image = ImagePayload.build(ImageFormat.RGBA8, 2, 2, bytes(16))
    ref = ImagePayload.build(ImageFormat.RGBA8, 1, 1, b"\x01\x02\x03\xff")
    mask = ImagePayload.build(ImageFormat.GREY8, 2, 2, b"\xff\x00\x00\xff")
    job = SubmitJob("j", Task.IMG2IMG, JobParams(prompt="a garden"), {"image": image.id})
    same, images = with_guides(job, [image], (), (), ())
    assert same is job and images == [image]
    references = (ReferenceImage(ref.id, 0.5),)
    regions = (Region(mask.id, "a door"), Region(mask.id, "a cat"))
    out, images = with_guides(job, [image], references, regions, [ref, mask, mask, image])
    assert out.params.references == references and out.params.regions == regions
    assert out.params.prompt == "a garden" and out.images == job.images
    assert [i.id for i in images] == [image.id, ref.id, mask.id]
