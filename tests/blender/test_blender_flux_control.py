"""Texture from Depth's line guide on a model that takes its control image itself (kind ``control``,
FLUX.1 Canny), host-free: the panel's settings become a request (``guides.texture_request``)
that resolves to one unit naming the model at full strength, and a real server on the tiny Flux
Canny-shaped model (``tests/backend/tiny_flux_control.py``) runs it through the add-on's
``ThreadLink`` and job book. No Blender here (the panel's note is host-free too)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from plugin_blender.clientkit.links import ThreadLink
from plugin_blender.guides import own_control_note, texture_request
from plugin_blender.jobs import Ended, Finished, JobBook, JobKind
from plugin_blender.request import RequestError
from protocol import ModelInfo
from tests.blender.test_connection import pump

FLUX_CANNY = ModelInfo("flux-canny", "FLUX.1 Canny", "control", "flux", ("txt2img", "img2img", "inpaint", "outpaint"),
                       control_type="canny")
SIZE = 64


def settings(**overrides) -> SimpleNamespace:
    values = dict(prompt="a brick wall", negative_prompt="", model="flux-canny", seed=3, steps=2, cfg_scale=3.5,
                  strength=0.6, depth_mode="inverse", depth_guide="CONTROLNET", depth_weight=0.0, depth_controlnet="",
                  line_guide="CANNY", line_weight=0.5, line_controlnet="", sampler="", lora_1="", lora_1_weight=1.0,
                  lora_2="", lora_2_weight=1.0)
    return SimpleNamespace(**{**values, **overrides})


def request(**overrides):
    depth = np.tile(np.linspace(0.0, 1.0, SIZE, dtype=np.float32), (SIZE, 1))
    lines = np.zeros((SIZE, SIZE, 4), np.uint8)
    lines[..., 3] = 255
    lines[16:48, 16:48, :3] = 230  # a bright square: edges for canny
    return texture_request(settings(**overrides), SIZE, SIZE, depth, lines.tobytes())


def test_the_line_guide_names_the_control_model_at_full_strength_or_says_what_to_change():
    (unit,) = request().resolved((FLUX_CANNY,)).params().controls
    assert (unit.model, unit.weight, unit.start, unit.end, unit.preprocessor) == ("flux-canny", 1.0, 0.0, 1.0, "canny")
    assert own_control_note(FLUX_CANNY) == "FLUX.1 Canny takes one canny guide itself, at full strength: set Depth Weight 0"
    cases = [({"depth_weight": 1.0}, "takes no depth ControlNet, only its own canny image; set the other guides' "
                                     r"weight to 0 \(Depth Weight 0 leaves the depth ControlNet out\)"),
             ({"line_guide": "LINEART"}, "takes no lineart ControlNet"),
             ({"line_controlnet": "some-cn"}, "takes its control image itself, not through ControlNet 'some-cn'")]
    for overrides, message in cases:
        with pytest.raises(RequestError, match=message):
            request(**overrides).resolved((FLUX_CANNY,))
    with pytest.raises(RequestError, match="needs exactly one canny guide; add one"):
        texture_request(settings(), SIZE, SIZE, np.zeros((SIZE, SIZE), np.float32), None).resolved((FLUX_CANNY,))


def test_the_server_runs_the_line_guide_on_the_control_model(tmp_path):
    pytest.importorskip("diffusers")
    from backend.config import ModelEntry, ServerConfig
    from backend.demo import build_tiny_flux
    from backend.engine import Engine
    from tests.backend.test_server_harness import ServerThread
    from tests.backend.tiny_flux_control import build_tiny_flux_control

    control = build_tiny_flux_control(tmp_path / "flux-control", build_tiny_flux(tmp_path / "flux"))
    config = ServerConfig(port=0, models=(ModelEntry("flux-canny", str(control), control_type="canny"),),
                          device="cpu", cache_dir=tmp_path / "cache", queue_size=4)
    with ServerThread(config, Engine(config)) as server:
        connection = ThreadLink(server.url, client_name="blender-test")
        book = JobBook()
        try:
            connection.connect()
            pump(connection, book, lambda _out: bool(book.models))
            assert [(m.id, m.kind) for m in book.models] == [("flux-canny", "control")]
            sent = request().resolved(book.models)
            job = book.open(JobKind.TEXTURE, sent)
            connection.submit(sent.job(job.job_id), sent.payloads())
            outcomes = pump(connection, book, lambda out: any(isinstance(o, Finished | Ended) for o in out))
            finished = [o for o in outcomes if isinstance(o, Finished)]
            assert finished, [getattr(o, "message", o) for o in outcomes]
            assert (finished[0].images[0].width, finished[0].images[0].height) == (SIZE, SIZE)
        finally:
            connection.close()
