"""ControlNet, LoRA, upscale and preprocess end to end: a real ``EaselServer`` on loopback with the
real engine (tiny random models, a tiny ControlNet and LoRA), driven by a real ``ClientSession``
over a websocket, exactly as a plugin does. HF_HUB_OFFLINE=1; waits are bounded, never timed."""
from __future__ import annotations

import numpy as np
import pytest

from backend.config import ModelEntry
from protocol import (
    ControlUnit, ErrorCode, JobFailed, JobParams, JobResult, LoraWeight, ModelList, StepPreview, SubmitJob,
)
from test_server_harness import Client, ServerThread, make_engine, rgba, tiny_config, tiny_models  # noqa: F401


@pytest.fixture(scope="module")
def addons(tiny_models, tmp_path_factory):
    from backend import demo

    root = tmp_path_factory.mktemp("server-addons")
    canny = demo.build_tiny_controlnet(root / "canny", tiny_models["base"])
    loras = root / "loras"
    demo.build_tiny_lora(tiny_models["base"], loras / "style.safetensors", text_encoder=True)
    embeddings = root / "embeddings"
    demo.build_tiny_embedding(embeddings / "sparkle.safetensors", (32,))
    return {"canny": canny, "loras": loras, "embeddings": embeddings}


def config(tiny_models, addons, tmp_path):
    base = tiny_config(tiny_models, tmp_path)
    models = base.models + (ModelEntry("canny", str(addons["canny"]), kind="controlnet"),)
    return tiny_config(tiny_models, tmp_path, models=models, lora_dirs=(addons["loras"],),
                       embedding_dirs=(addons["embeddings"],))


@pytest.fixture(scope="module")
def engine(tiny_models, addons, tmp_path_factory):
    return make_engine(config(tiny_models, addons, tmp_path_factory.mktemp("engine")))


@pytest.fixture
def server(engine, tiny_models, addons, tmp_path):
    with ServerThread(config(tiny_models, addons, tmp_path), engine) as running:
        yield running


def pixels(result: JobResult, index: int = 0) -> np.ndarray:
    image = result.images[index]
    return np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 4)


def finished(events) -> JobResult:
    assert isinstance(events[-1], JobResult), f"the job did not finish: {events[-1]!r}"
    return events[-1]


def square(width: int, height: int):
    """A control image with strong edges (rgba8)."""
    return rgba(width, height, seed=3)


def test_the_welcome_and_model_list_show_controlnets_preprocessors_and_addons(server):
    with Client(server.url) as client:
        caps = client.welcome.capabilities
        nets = [m for m in caps.models if m.kind == "controlnet"]
        assert [(m.id, m.family, m.control_type, m.tasks) for m in nets] == [("canny", "sd15", "canny", ())]
        assert {"upscale", "preprocess"} <= set(caps.tasks)
        assert caps.preprocessors[:3] == ("canny", "lineart_standard", "shuffle")
        client.session.list_models()
        client.flush()
        listing = client.until(lambda e: isinstance(e, ModelList))[-1]
        assert [(a.id, a.kind, a.family) for a in listing.loras] == [("style", "lora", "sd15")]
        assert [(a.id, a.trigger) for a in listing.embeddings] == [("sparkle", "sparkle")]


def test_controlnet_job_with_a_server_side_preprocessor(server):
    control = square(64, 64)
    params = dict(model="tiny", prompt="a house", width=64, height=64, steps=3, seed=4)
    with Client(server.url) as client:
        plain = finished(client.run(SubmitJob("plain", "txt2img", JobParams(**params))))
        events = client.run(SubmitJob("guided", "txt2img", JobParams(
            controls=(ControlUnit("canny", control.id, weight=0.9, start=0.0, end=0.8, preprocessor="canny"),),
            **params)), [control])
        guided = finished(events)
        assert any(isinstance(e, StepPreview) for e in events)
        assert pixels(guided).shape == (64, 64, 4) and not np.array_equal(pixels(guided), pixels(plain))
        # the same control image again: already on the server, not uploaded twice
        again = finished(client.run(SubmitJob("again", "img2img", JobParams(
            model="tiny", steps=3, seed=4, controls=(ControlUnit("canny", control.id),)), images={"image": control.id}),
            [control]))
        assert pixels(again).shape == (64, 64, 4)


def test_a_controlnet_error_reaches_the_client_and_the_server_goes_on(server):
    control = square(64, 64)
    with Client(server.url) as client:
        failed = client.run(SubmitJob("bad", "txt2img", JobParams(
            model="tiny", controls=(ControlUnit("canny", control.id, start=0.7, end=0.2),))), [control])[-1]
        assert isinstance(failed, JobFailed) and failed.code is ErrorCode.INVALID_PARAMETER
        assert failed.message.startswith("control unit 1: start (0.7) must be less than end (0.2)")
        unknown = client.run(SubmitJob("nope", "txt2img", JobParams(
            model="tiny", controls=(ControlUnit("depth-xl", control.id),))), [control])[-1]
        assert isinstance(unknown, JobFailed) and unknown.code is ErrorCode.UNKNOWN_MODEL
        assert isinstance(client.run(SubmitJob("ok", "txt2img", JobParams(model="tiny", width=64, height=64, steps=1)))[-1],
                          JobResult)


def test_lora_job_and_no_leak_into_the_next(server):
    params = dict(model="tiny", prompt="a sparkle tree", width=64, height=64, steps=2, seed=8)
    with Client(server.url) as client:
        before = pixels(finished(client.run(SubmitJob("l0", "txt2img", JobParams(**params)))))
        styled = pixels(finished(client.run(SubmitJob("l1", "txt2img", JobParams(
            loras=(LoraWeight("style", 0.8),), **params)))))
        after = pixels(finished(client.run(SubmitJob("l2", "txt2img", JobParams(**params)))))
        assert not np.array_equal(before, styled) and np.array_equal(before, after)
        refused = client.run(SubmitJob("l3", "txt2img", JobParams(loras=(LoraWeight("../style", 1.0),), **params)))[-1]
        assert isinstance(refused, JobFailed) and refused.code is ErrorCode.UNKNOWN_MODEL


def test_upscale_and_preprocess_jobs(server, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))  # as on a new machine
    image = rgba(48, 40)
    with Client(server.url) as client:
        up = finished(client.run(SubmitJob("up", "upscale", JobParams(model="tiny", steps=4, seed=1, upscale_factor=2.0),
                                           images={"image": image.id}), [image]))
        assert (up.images[0].width, up.images[0].height) == (96, 80)
        pre = finished(client.run(SubmitJob("pre", "preprocess", JobParams(preprocessor="canny"),
                                            images={"image": image.id}), [image]))
        edges = pixels(pre)
        assert edges.shape == (40, 48, 4) and set(np.unique(edges[..., 0])) <= {0, 255} and edges[..., 0].max() == 255
        offline = client.run(SubmitJob("depth", "preprocess", JobParams(preprocessor="depth_midas"),
                                       images={"image": image.id}), [image])[-1]
        assert isinstance(offline, JobFailed) and offline.code is ErrorCode.MODEL_UNAVAILABLE
        assert "hf download lllyasviel/Annotators dpt_hybrid-midas-501f0c75.pt" in offline.message
