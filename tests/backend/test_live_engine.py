"""What live mode needs from the engine, on tiny real models (no server here; test_live.py has it):

* a cancel is honoured inside a denoising step (before the next UNet or VAE-encoder block), so a
  superseded live job frees the device at once — by one hook per block, registered once (not per
  job), that does nothing outside a job's pipeline call;
* work that does not change between strokes is done once: the text encoders run once per prompt
  for every task and family, the loaded pipeline and its scheduler are reused, and a control
  image is preprocessed once per image id and preprocessor.
"""
from __future__ import annotations

import numpy as np
import pytest

from backend.errors import JobCancelledError
from backend.tasks import common
from protocol import ControlUnit, JobParams, Margins, SubmitJob
from tiny_guidance import guided_dirs, guided_engine, square_image  # noqa: F401 - fixtures
from tiny_models import Recorder, depth_payload, engine, grey_payload, model_dirs, rgba_payload  # noqa: F401 - fixtures


class FlagProgress(Recorder):
    """A Recorder whose cancel flag the test sets from inside the model (a forward hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.flag = False

    def cancelled(self) -> bool:
        return self.flag


def run_job(engine, task, images, progress=None, **params):
    params.setdefault("seed", 5)
    params.setdefault("steps", 4)
    submit = SubmitJob("live-1", task, JobParams(**params), {role: p.id for role, p in images.items()} or None)
    return engine.run(engine.prepare(submit, images), progress or Recorder())


def hook_count(modules) -> int:
    return sum(len(m._forward_pre_hooks) for m in modules)


def engine_checks(module) -> int:
    """The engine's cancel checks on ``module``."""
    return list(module._forward_pre_hooks.values()).count(common._check_before_block)


@pytest.mark.parametrize("where", ["unet", "vae_encoder"])
def test_a_cancel_stops_the_job_inside_a_step(engine, where):  # noqa: F811 - the fixture
    loaded, _ = engine.models.get("tiny")
    root = loaded.root
    watched = [*root.unet.down_blocks, root.unet.mid_block, *root.unet.up_blocks, *root.vae.encoder.down_blocks]
    run_job(engine, "img2img", {"image": rgba_payload(64, 64)}, model="tiny", width=64, height=64, strength=1.0)
    before = hook_count(watched)
    progress = FlagProgress()
    # The "cancel" arrives while the model is inside its first UNet block of step 1 (or inside the
    # VAE encode that img2img runs before step 1): no step may finish after it.
    target = root.unet.down_blocks[0] if where == "unet" else root.vae.encoder.down_blocks[0]
    handle = target.register_forward_hook(lambda *_: setattr(progress, "flag", True))
    try:
        with pytest.raises(JobCancelledError) as stopped:
            run_job(engine, "img2img", {"image": rgba_payload(64, 64)}, progress, model="tiny", width=64, height=64,
                    strength=1.0)
    finally:
        handle.remove()
    assert progress.steps == []  # stopped before step 1 ended (a check only at step ends would finish it)
    assert stopped.value.step == 0
    assert hook_count(watched) == before  # no check added for this job, none left behind
    output = run_job(engine, "img2img", {"image": rgba_payload(64, 64)}, model="tiny", width=64, height=64, strength=1.0)
    assert len(output.images) == 1  # and the pipeline runs on as usual


def test_the_cancel_checks_are_registered_once_per_block_not_per_job(engine):  # noqa: F811 - the fixture
    loaded, _ = engine.models.get("tiny")
    root = loaded.root
    watched = [*root.unet.down_blocks, root.unet.mid_block, *root.unet.up_blocks, *root.vae.encoder.down_blocks]
    for task in ("txt2img", "img2img", "txt2img"):  # two pipelines sharing the blocks, each run twice or more
        run_job(engine, task, {"image": rgba_payload(64, 64)} if task == "img2img" else {}, model="tiny", width=64,
                height=64, strength=0.5, steps=2)
        assert [engine_checks(block) for block in watched] == [1] * len(watched)
    # Outside a job's pipeline call the checks do nothing: the UNet runs with a "cancelled" job around.
    import torch

    progress = FlagProgress()
    progress.flag = True
    with torch.no_grad():
        out = root.unet(torch.zeros(1, root.unet.config.in_channels, 8, 8), 1,
                        encoder_hidden_states=torch.zeros(1, 4, root.unet.config.cross_attention_dim)).sample
    assert out.shape[-1] == 8


def test_a_cancel_check_holds_on_its_own_thread_only(engine):  # noqa: F811 - the fixture
    """Two engines' workers may run one model's blocks at once (tests do): a block checks the job
    inside a pipeline call on the thread running it, and only that."""
    import threading

    import torch

    loaded, _ = engine.models.get("tiny")
    pipe = loaded.pipeline("txt2img")
    unet = loaded.root.unet

    def call_unet() -> torch.Tensor:
        with torch.no_grad():
            return unet(torch.zeros(1, unet.config.in_channels, 8, 8), 1,
                        encoder_hidden_states=torch.zeros(1, 4, unet.config.cross_attention_dim)).sample

    class Stop(Exception):
        pass

    def stop() -> None:
        raise Stop()

    elsewhere = {}
    with common._stop_inside_steps(pipe, stop):
        with pytest.raises(Stop):
            call_unet()  # this thread's job: stopped before the first block
        thread = threading.Thread(target=lambda: elsewhere.setdefault("out", call_unet()))
        thread.start()
        thread.join(120)
    assert elsewhere["out"].shape[-1] == 8  # another thread ran every block
    assert call_unet().shape[-1] == 8  # and after the call, this thread does too
    with common._stop_inside_steps(pipe, stop):
        with common._stop_inside_steps(pipe, lambda: None):
            assert call_unet().shape[-1] == 8  # the inner call's check
        with pytest.raises(Stop):
            call_unet()  # the outer one's again once the inner call is over


@pytest.fixture
def text_encoder_calls():
    """``count(loaded) -> [calls]``: counts the forward calls of a model's text encoders, until the test ends."""
    handles = []

    def count(loaded) -> list[int]:
        calls = [0]
        for encoder in (loaded.root.text_encoder, getattr(loaded.root, "text_encoder_2", None)):
            if encoder is not None:
                handles.append(encoder.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)))
        return calls

    yield count
    for handle in handles:
        handle.remove()


JOBS = {
    "txt2img": lambda: ({}, dict(width=64, height=64)),
    "img2img": lambda: ({"image": rgba_payload(64, 64, seed=11)}, dict(strength=0.5, width=64, height=64)),
    "inpaint": lambda: ({"image": rgba_payload(64, 64, seed=12),
                         "mask": grey_payload(np.pad(np.full((32, 32), 255, np.uint8), 16))}, dict(width=64, height=64)),
    "outpaint": lambda: ({"image": rgba_payload(48, 48, seed=13)}, dict(margins=Margins(16, 0, 0, 0), width=64, height=64)),
    "depth2img": lambda: ({"image": rgba_payload(64, 64, seed=14),
                           "depth": depth_payload(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))},
                          dict(strength=0.7, width=64, height=64)),
}


@pytest.mark.parametrize("model, task", [
    ("tiny", "txt2img"), ("tiny", "img2img"), ("tiny", "inpaint"), ("tiny-inpaint", "inpaint"), ("tiny", "outpaint"),
    ("tiny-depth", "depth2img"), ("tiny-xl", "txt2img"), ("tiny-xl", "img2img"), ("tiny-xl", "inpaint"),
])
def test_text_encoders_run_once_per_prompt_for_every_task_and_family(engine, text_encoder_calls, model, task):  # noqa: F811
    loaded, _ = engine.models.get(model)
    calls = text_encoder_calls(loaded)
    prompt = f"live prompt for {model} {task}"  # a prompt no other test encoded
    for stroke in range(3):  # three strokes: the image changes, the prompt does not
        images, params = JOBS[task]()
        if "image" in images:
            images["image"] = rgba_payload(images["image"].width, images["image"].height, seed=100 + stroke)
        run_job(engine, task, images, model=model, prompt=prompt, negative_prompt="blurry", steps=2, **params)
        if stroke == 0:
            first = calls[0]
            assert first > 0
    assert calls[0] == first  # strokes 2 and 3 reused the embeddings of stroke 1
    pipelines = dict(loaded.pipelines)
    schedulers = dict(loaded.schedulers)
    images, params = JOBS[task]()
    run_job(engine, task, images, model=model, prompt=prompt + " and more", steps=2, **params)
    assert calls[0] > first  # a new prompt is encoded (the count above is not stuck)
    again, _ = engine.models.get(model)
    assert again is loaded  # the model stayed loaded...
    assert all(loaded.pipelines[role] is pipe for role, pipe in pipelines.items())  # ...with its pipelines
    assert all(loaded.schedulers[name] is s for name, s in schedulers.items()) and schedulers  # ...and schedulers


def test_a_control_image_is_preprocessed_once_per_image_and_preprocessor(guided_engine, monkeypatch):  # noqa: F811
    from backend import preprocessors

    calls: list[str] = []
    real = preprocessors._call
    monkeypatch.setattr(preprocessors, "_call", lambda pre, *a: (calls.append(pre.name), real(pre, *a))[1])
    control = square_image(64, 64, seed=21)  # the control layer: unchanged between strokes
    unit = ControlUnit(model="canny", image=control.id, preprocessor="canny")
    for stroke in range(3):
        image = rgba_payload(64, 64, seed=200 + stroke)
        submit = SubmitJob(f"s{stroke}", "img2img", JobParams(model="tiny", prompt="x", steps=2, seed=5, strength=0.5,
                                                              width=64, height=64, controls=(unit,), live=True),
                           {"image": image.id})
        guided_engine.run(guided_engine.prepare(submit, {"image": image, control.id: control}), Recorder())
    assert calls == ["canny"]
    other = square_image(64, 64, seed=22)
    unit = ControlUnit(model="canny", image=other.id, preprocessor="canny")
    submit = SubmitJob("s3", "img2img", JobParams(model="tiny", prompt="x", steps=2, seed=5, strength=0.5, width=64,
                                                  height=64, controls=(unit,)), {"image": image.id})
    guided_engine.run(guided_engine.prepare(submit, {"image": image, other.id: other}), Recorder())
    assert calls == ["canny", "canny"]  # a changed control image is preprocessed again


def test_a_controlnet_pipeline_is_built_once_per_units_and_dropped_with_its_controlnet(guided_engine, monkeypatch):  # noqa: F811
    """A live stroke with the same control units reuses the ControlNet pipeline of the last one (same
    pixels as the stroke that built it); one with other units, or the units in another order, gets
    its own; a ControlNet the store unloads takes its pipelines with it, so its memory is freed."""
    import gc
    import weakref

    from backend.models import loading

    control = square_image(64, 64, seed=23)
    image = rgba_payload(64, 64, seed=300)

    def stroke(*models: str) -> bytes:
        units = tuple(ControlUnit(model=m, image=control.id) for m in models)
        submit = SubmitJob("cn", "img2img", JobParams(model="tiny", prompt="x", steps=2, seed=5, strength=0.5, width=64,
                                                      height=64, controls=units, live=True), {"image": image.id})
        output = guided_engine.run(guided_engine.prepare(submit, {"image": image, control.id: control}), Recorder())
        return output.images[0].data

    loaded, _ = guided_engine.models.get("tiny")
    loaded.control_pipelines.clear()
    first = stroke("canny")
    (pipe,) = loaded.control_pipelines.values()
    assert stroke("canny") == first  # the pipeline again, the same pixels
    assert list(loaded.control_pipelines.values()) == [pipe]
    stroke("canny", "depth-cn")
    stroke("depth-cn", "canny")
    assert len(loaded.control_pipelines) == 3  # other units, or another order: a pipeline each
    assert list(loaded.control_pipelines.values())[0] is pipe
    assert stroke("canny") == first and list(loaded.control_pipelines.values())[-1] is pipe  # used last now
    depth, _ = guided_engine.models.controlnet("depth-cn")
    gone = weakref.ref(depth)
    monkeypatch.setattr(loading, "CONTROLNET_CACHE", 1)
    guided_engine.models.controlnet("canny-xl")  # unloads the two ControlNets held: every pipeline goes
    del depth
    gc.collect()
    assert not loaded.control_pipelines and gone() is None
    assert stroke("canny") == first  # built again from a fresh ControlNet load
