"""SDXL for every task and SD 2.x v-prediction models: detection, per-family defaults, and real runs
on tiny random models (ControlNet on SDXL is in test_controlnet, LoRA in test_addons)."""
from __future__ import annotations

import numpy as np
import pytest

from backend.models import ModelSpec, inspect
from protocol import JobParams, Margins, SubmitJob
from tiny_guidance import guided_dirs, guided_engine, smooth_image  # noqa: F401 - fixtures
from tiny_models import Recorder, grey_payload, model_dirs, pixels, rgba_payload  # noqa: F401 - fixture


def run(engine, task: str, images=None, **params):
    params.setdefault("steps", 2)
    params.setdefault("seed", 9)
    images = images or {}
    submit = SubmitJob("xl", task, JobParams(**params), images={role: p.id for role, p in images.items()})
    prepared = engine.prepare(submit, images)
    return prepared, engine.run(prepared, Recorder())


def test_family_defaults(guided_engine):
    infos = {i.id: i for i in guided_engine.model_infos()}
    assert (infos["tiny-xl"].family, infos["tiny-xl"].default_width, infos["tiny-xl"].default_cfg) == ("sdxl", 1024, 6.0)
    assert (infos["tiny-sd2"].family, infos["tiny-sd2"].default_width, infos["tiny-sd2"].default_height) == ("sd2", 768, 768)
    assert (infos["tiny"].family, infos["tiny"].default_width) == ("sd15", 512)
    xl = guided_engine.prepare(SubmitJob("d", "txt2img", JobParams(model="tiny-xl")), {})
    assert (xl.width, xl.height, xl.steps, xl.params.cfg_scale) == (1024, 1024, 25, 6.0)
    image = {"image": rgba_payload(200, 100)}
    xl_img = guided_engine.prepare(SubmitJob("d", "img2img", JobParams(model="tiny-xl"), images={"image": "x"}), image)
    assert xl_img.params.work_area == 1024 * 1024  # works at the native area, result at the image's size


def test_sd2_epsilon_model_keeps_512(guided_dirs, tmp_path):
    from backend import demo

    folder = demo.build_tiny_sd2(tmp_path / "sd2-base", prediction_type="epsilon")
    facts = inspect(ModelSpec("base", str(folder)))
    assert (facts.family, facts.prediction_type, facts.defaults.size) == ("sd2", "epsilon", 512)
    facts = inspect(ModelSpec("v", str(guided_dirs["sd2"])))
    assert (facts.family, facts.prediction_type, facts.defaults.size, facts.context_dim) == ("sd2", "v_prediction", 768, 1024)


@pytest.mark.parametrize("sampler", ["", "euler_a", "ddim"])
def test_sd2_v_prediction_runs_with_its_defaults(guided_engine, sampler):
    prepared, output = run(guided_engine, "txt2img", model="tiny-sd2", steps=1, sampler=sampler)
    assert (prepared.width, prepared.height) == (768, 768)
    image = pixels(output.images[0])
    assert image.shape == (768, 768, 4) and image[..., :3].std() > 1
    model, _ = guided_engine.models.get("tiny-sd2")
    assert model.scheduler(prepared.params.sampler).config.prediction_type == "v_prediction"


@pytest.mark.parametrize("task, images, extra, size", [
    ("txt2img", {}, {"width": 64, "height": 96}, (64, 96)),
    ("img2img", {"image": rgba_payload(80, 64, seed=1)}, {"width": 64, "height": 64}, (80, 64)),
    ("outpaint", {"image": rgba_payload(64, 64, seed=2)}, {"margins": Margins(top=16, right=24), "width": 64,
                                                           "height": 64}, (88, 80)),
    ("upscale", {"image": smooth_image(48, 40)}, {"steps": 4}, (96, 80)),
])
def test_sdxl_runs_every_task(guided_engine, task, images, extra, size):
    _, output = run(guided_engine, task, images, model="tiny-xl", **extra)
    assert pixels(output.images[0]).shape == (size[1], size[0], 4)


def test_sdxl_inpaint_keeps_the_unmasked_pixels(guided_engine):
    image = rgba_payload(96, 64, seed=3, alpha=None)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 255
    _, output = run(guided_engine, "inpaint", {"image": image, "mask": grey_payload(mask)}, model="tiny-xl",
                    width=64, height=64, batch_size=2)
    for payload in output.images:
        result = pixels(payload)
        assert np.array_equal(result[mask == 0], pixels(image)[mask == 0])
        assert not np.array_equal(result[mask == 255], pixels(image)[mask == 255])


@pytest.mark.parametrize("task", ["txt2img", "img2img", "inpaint"])
def test_sd2_runs_the_image_tasks(guided_engine, task):
    images = {}
    if task != "txt2img":
        images["image"] = rgba_payload(64, 64, seed=4)
    if task == "inpaint":
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        images["mask"] = grey_payload(mask)
    _, output = run(guided_engine, task, images, model="tiny-sd2", width=64, height=64)
    assert pixels(output.images[0]).shape == (64, 64, 4)
