"""The style reference (plugin_blender.style) and requests carrying it (plugin_blender.request,
guides.texture_request). The image here is a stand-in with ``bpy.types.Image``'s attributes; the
real datablock is read in Blender by ``in_blender/test_style_reference.py``."""
from __future__ import annotations

from types import SimpleNamespace

import msgpack
import numpy as np
import pytest

from plugin_blender.clientkit.guides import REFERENCE_MAX_SIDE
from plugin_blender.guides import texture_request
from plugin_blender.request import GenerationRequest, ReferenceInput, RequestError
from plugin_blender.style import reference_of
from protocol import ImageFormat, ImagePayload, ReferenceImage


class Pixels:
    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def foreach_get(self, out: np.ndarray) -> None:
        out[:] = self.values


def image(width: int, height: int, channels: int = 4, name: str = "Style") -> SimpleNamespace:
    """Rows bottom-up as Blender keeps them: the bottom row red, the rest blue."""
    rows = np.zeros((height, width, channels), np.float32)
    rows[..., 2 % channels] = 1.0
    rows[:1, :, :] = 0.0
    rows[:1, :, 0] = 1.0
    if channels == 4:
        rows[..., 3] = 1.0
    return SimpleNamespace(size=(width, height), channels=channels, name=name, pixels=Pixels(rows.reshape(-1)))


def settings(picture=None, weight=0.6, **extra) -> SimpleNamespace:
    values = dict(prompt="weathered stone", negative_prompt="", model="", seed=3, steps=2, cfg_scale=7.0,
                  strength=0.6, depth_mode="inverse", depth_guide="CONTROLNET", depth_weight=1.0, depth_controlnet="depth-cn",
                  line_guide="NONE", line_weight=0.5, line_controlnet="", sampler="", lora_1="", lora_1_weight=1.0,
                  lora_2="", lora_2_weight=1.0, style_reference=picture, style_weight=weight)
    values.update(extra)
    return SimpleNamespace(**values)


def test_the_reference_is_the_image_top_down_in_rgba8_and_absent_without_image_or_weight():
    reference = reference_of(settings(image(6, 4)))
    assert (reference.image.format, reference.image.width, reference.image.height) == (ImageFormat.RGBA8, 6, 4)
    rows = np.frombuffer(reference.image.data, np.uint8).reshape(4, 6, 4)
    assert (rows[-1] == (255, 0, 0, 255)).all() and (rows[0] == (0, 0, 255, 255)).all()  # Blender's bottom row last
    assert (reference.weight, reference.start, reference.end, reference.model) == (0.6, 0.0, 1.0, "")
    rgb = reference_of(settings(image(6, 4, channels=3)))
    assert rgb.image.data == reference.image.data  # three channels: alpha 255
    assert reference_of(settings(None)) is None and reference_of(settings(image(6, 4), weight=0.0)) is None
    with pytest.raises(RequestError, match="the style reference 'Gone' has no pixels"):
        reference_of(settings(image(0, 0, name="Gone")))


def test_a_big_reference_is_sent_bounded_with_its_aspect():
    reference = reference_of(settings(image(2 * REFERENCE_MAX_SIDE, 300)))
    assert (reference.image.width, reference.image.height) == (REFERENCE_MAX_SIDE, 150)
    rows = np.frombuffer(reference.image.data, np.uint8).reshape(150, REFERENCE_MAX_SIDE, 4)
    assert (rows[-1, :, 0] == 255).all() and (rows[0, :, 2] == 255).all()


@pytest.mark.parametrize("guide", ["CONTROLNET", "DEPTH2IMG"])
def test_every_texture_request_carries_the_reference_and_uploads_it_once(guide):
    reference = reference_of(settings(image(8, 8)))
    normalised = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    first = texture_request(settings(depth_guide=guide), 64, 64, normalised, None, reference=reference)
    start, mask = np.zeros((64, 64, 4), np.float32), np.full((64, 64), 255, np.uint8)
    later = texture_request(settings(depth_guide=guide), 64, 64, normalised, None, start, mask, reference)
    for request in (first, later):
        job = request.job("j")
        assert job.params.references == (ReferenceImage(reference.image.id, 0.6, 0.0, 1.0, ""),)
        assert [p.id for p in request.payloads()].count(reference.image.id) == 1
        again = GenerationRequest.from_dict(msgpack.unpackb(msgpack.packb(request.to_dict())))
        assert again == request and again.job("j") == job
    plain = texture_request(settings(depth_guide=guide), 64, 64, normalised, None)
    assert plain.references == () and plain.job("j").params.references == ()


def test_a_bad_reference_is_refused_with_a_sentence():
    grey = ImagePayload.build(ImageFormat.GREY8, 2, 2, bytes(4))
    rgba = ImagePayload.build(ImageFormat.RGBA8, 1, 1, bytes(4))
    normalised = np.zeros((64, 64), np.float32)
    for reference, message in ((ReferenceInput(grey), "must be rgba8"), (ReferenceInput(rgba, 2.5), "weight must be 0 to 2"),
                               (ReferenceInput(rgba, 1.0, 0.5, 0.5), "must start before it ends")):
        with pytest.raises(RequestError, match=message):
            texture_request(settings(), 64, 64, normalised, None, reference=reference)
