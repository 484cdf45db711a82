"""Engine.prepare: every bad input gets its typed JobError with a sentence that says what to fix,
before any model is loaded; good input gets every default filled in."""
from __future__ import annotations

import numpy as np
import pytest

from backend.engine import Engine, EngineConfig
from backend.errors import JobError
from protocol import ErrorCode, ImageFormat, ImagePayload, JobParams, Margins, SubmitJob
from protocol.messages import ControlUnit
from tiny_models import engine, grey_payload, model_dirs, rgba_payload, specs, submit  # noqa: F401 - fixtures


def prepare(engine, task, images=None, **params):
    job, imgs = submit(task, images, **params)
    return engine.prepare(job, imgs)


def refused(engine, task, images=None, **params) -> JobError:
    with pytest.raises(JobError) as caught:
        prepare(engine, task, images, **params)
    return caught.value


def test_prepare_loads_nothing(model_dirs, tmp_path):
    fresh = Engine(EngineConfig(models=specs(model_dirs), device="cpu", cache_folder=tmp_path))
    prepare(fresh, "txt2img", model="tiny")
    prepare(fresh, "inpaint", {"image": rgba_payload(64, 64), "mask": grey_payload(np.full((64, 64), 255, np.uint8))},
            model="tiny-inpaint")
    assert fresh.models.loaded_ids() == ()


def test_strength_out_of_range(engine):
    err = refused(engine, "img2img", {"image": rgba_payload(64, 64)}, model="tiny", strength=1.4)
    assert err.code is ErrorCode.INVALID_PARAMETER
    assert err.message == "strength must be between 0 and 1, got 1.4"
    assert err.details == {"field": "strength", "value": 1.4}


def test_strength_too_small_for_the_steps(engine):
    err = refused(engine, "img2img", {"image": rgba_payload(64, 64)}, model="tiny", strength=0.1, steps=4)
    assert err.code is ErrorCode.INVALID_PARAMETER
    assert "no denoising step would run" in err.message and "0.25" in err.message


@pytest.mark.parametrize("width, expected", [(100, "width must be a multiple of 8, got 100; use 96 or 104"),
                                             (32, "width must be between 64 and 2048, got 32"),
                                             (4096, "width must be between 64 and 2048, got 4096")])
def test_bad_size(engine, width, expected):
    err = refused(engine, "txt2img", model="tiny", width=width, height=64)
    assert err.code is ErrorCode.INVALID_PARAMETER and err.message == expected


def test_unknown_model_lists_the_models(engine):
    err = refused(engine, "txt2img", model="sd-nope")
    assert err.code is ErrorCode.UNKNOWN_MODEL
    assert "sd-nope" in err.message and "tiny" in err.message and "tiny-xl" in err.message


def test_a_path_is_not_a_model_id(engine, model_dirs):
    """Clients name models by the ids the server lists; a path on the server's disk is refused."""
    err = refused(engine, "txt2img", model=str(model_dirs["base"]))
    assert err.code is ErrorCode.UNKNOWN_MODEL


def test_unknown_sampler_lists_the_samplers(engine):
    err = refused(engine, "txt2img", model="tiny", sampler="dpm_fancy")
    assert err.code is ErrorCode.INVALID_PARAMETER
    assert "unknown sampler 'dpm_fancy'" in err.message
    for name in ("euler", "euler_a", "ddim", "dpmpp_2m_karras", "unipc", "lcm"):
        assert name in err.message


def test_mask_size_mismatch(engine):
    err = refused(engine, "inpaint", {"image": rgba_payload(64, 64), "mask": grey_payload(np.zeros((48, 64), np.uint8))},
                  model="tiny")
    assert err.code is ErrorCode.INVALID_PARAMETER
    assert err.message == "the mask is 64x48 but the image is 64x64; send a mask of the image's size"


@pytest.mark.parametrize("task, images, needs", [
    ("img2img", {}, "img2img needs an image"),
    ("inpaint", {"image"}, "inpaint needs a mask"),
    ("outpaint", {}, "outpaint needs an image"),
    ("depth2img", {}, "depth2img needs a depth map"),
])
def test_missing_image(engine, task, images, needs):
    payloads = {"image": rgba_payload(64, 64)} if "image" in images else {}
    err = refused(engine, task, payloads, margins=Margins(left=8))
    assert err.code is ErrorCode.INVALID_PARAMETER and err.message.startswith(needs)


def test_image_role_the_task_does_not_use(engine):
    err = refused(engine, "txt2img", {"image": rgba_payload(64, 64)}, model="tiny")
    assert err.code is ErrorCode.INVALID_PARAMETER and "does not use image role 'image'" in err.message


def test_wrong_format_for_a_role(engine):
    mask_as_rgba = rgba_payload(64, 64)
    err = refused(engine, "inpaint", {"image": rgba_payload(64, 64), "mask": mask_as_rgba}, model="tiny")
    assert err.code is ErrorCode.INVALID_PARAMETER and err.message == "the mask must be grey8, png, got rgba8"
    depth = ImagePayload(ImageFormat.RGBA8, 64, 64, bytes(64 * 64 * 4))
    err = refused(engine, "depth2img", {"depth": depth})
    assert "the depth must be depth32f, grey8" in err.message


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be between 1 and 150, got 0"),
    ("steps", 151, "steps must be between 1 and 150, got 151"),
    ("cfg_scale", 31.0, "cfg_scale must be between 0 and 30, got 31.0"),
    ("cfg_scale", float("nan"), "cfg_scale must be between 0 and 30, got nan"),
    ("batch_size", 0, "batch_size must be between 1 and 8, got 0"),
    ("batch_size", 9, "batch_size must be between 1 and 8, got 9"),
    ("seed", -1, "seed must be between 0 and 9223372036854775807, got -1"),
    ("result_format", ImageFormat.JPEG, "result_format must be rgba8 or png (results are lossless), got jpeg"),
])
def test_out_of_range_values(engine, field, value, message):
    err = refused(engine, "txt2img", model="tiny", **{field: value})
    assert err.code is ErrorCode.INVALID_PARAMETER and err.message == message
    # The offending value travels in details as sent (a format as its name), so a client can point at it.
    assert set(err.details) == {"field", "value"} and err.details["field"] == field
    sent = value.value if isinstance(value, ImageFormat) else value
    assert err.details["value"] == sent or (sent != sent and err.details["value"] != err.details["value"])  # nan


def test_unknown_and_unsupported_tasks(engine):
    err = refused(engine, "paint_a_cat")
    assert err.code is ErrorCode.UNSUPPORTED and "'paint_a_cat' is not a task" in err.message
    # depth2img with control units: ControlNet works with the four image tasks only.
    err = refused(engine, "depth2img", {"depth": grey_payload(np.arange(64 * 64).reshape(64, 64) % 256)},
                  controls=(ControlUnit(model="cn", image="x"),))
    assert err.code is ErrorCode.UNSUPPORTED and "depth2img takes no control units" in err.message


def test_task_the_model_cannot_run(engine):
    err = refused(engine, "txt2img", model="tiny-inpaint")
    assert err.code is ErrorCode.UNSUPPORTED
    assert "inpaint model and cannot run txt2img" in err.message and "tiny" in err.message


def test_a_control_unit_without_its_image_is_refused(engine):
    err = refused(engine, "txt2img", model="tiny", controls=(ControlUnit(model="cn", image="x"),))
    assert err.code is ErrorCode.INVALID_PARAMETER and "control unit 1's image x was not sent" in err.message


@pytest.mark.parametrize("margins, message", [
    (None, "outpaint needs margins"),
    (Margins(), "outpaint needs at least one margin above 0"),
    (Margins(left=-8), "margins.left must be 0 or more pixels, got -8"),
    (Margins(right=9000), "the image with its margins would be 9064x64"),
])
def test_bad_margins(engine, margins, message):
    err = refused(engine, "outpaint", {"image": rgba_payload(64, 64)}, model="tiny", margins=margins)
    assert err.code is ErrorCode.INVALID_PARAMETER and err.message.startswith(message)


def test_defaults_and_random_seed(engine):
    job = SubmitJob("job-1", "txt2img", JobParams(model="tiny", batch_size=3))  # no seed, no steps
    first = engine.prepare(job, {})
    second = engine.prepare(job, {})
    assert first.seed != second.seed  # drawn per job (equal with probability 2**-32)
    assert 0 <= first.seed < 2**32
    assert first.params.seeds == (first.seed, first.seed + 1, first.seed + 2)
    assert (first.width, first.height, first.steps) == (512, 512, 25)  # the SD 1.5 family's defaults
    assert first.params.cfg_scale == 7.0 and first.params.sampler == "dpmpp_2m_karras"


def test_sizes_of_image_tasks(engine):
    prepared = prepare(engine, "img2img", {"image": rgba_payload(100, 75)}, model="tiny", width=256, height=256)
    assert (prepared.width, prepared.height) == (100, 75)  # the result keeps the input's size
    assert prepared.params.work_area == 256 * 256
    prepared = prepare(engine, "outpaint", {"image": rgba_payload(64, 64)}, model="tiny", margins=Margins(8, 16, 24, 32))
    assert (prepared.width, prepared.height) == (64 + 8 + 24, 64 + 16 + 32)


def test_default_model_per_task(engine):
    assert prepare(engine, "txt2img").model == "tiny"
    assert prepare(engine, "depth2img", {"depth": grey_payload(np.arange(64 * 64).reshape(64, 64) % 256)}).model == "tiny-depth"


def test_demo_engine_lists_demo_models(tmp_path):
    demo = Engine(EngineConfig(device="cpu", cache_folder=tmp_path))
    infos = demo.model_infos()
    assert [(i.id, i.kind, i.family, i.demo) for i in infos] == [("demo", "base", "demo", True),
                                                                 ("demo-depth", "depth", "demo", True),
                                                                 ("demo-canny", "controlnet", "demo", True),
                                                                 ("demo-depth-control", "controlnet", "demo", True),
                                                                 ("demo-flux", "base", "flux", True),
                                                                 ("demo-ip-adapter", "reference", "demo", True),
                                                                 ("demo-redux", "reference", "flux", True)]
    assert infos[2].control_type == "canny" and infos[2].tasks == ()
    assert infos[3].control_type == "depth" and infos[3].tasks == ()
    loras, embeddings = demo.addon_infos()
    assert [(a.id, a.kind, a.family) for a in loras] == [("demo-style", "lora", "demo")] and embeddings == []
    assert demo.notice == "demo model: randomly initialised, its images are noise — configure a real model with --model"
    assert not (tmp_path / "demo-v1").exists()  # listing builds nothing


@pytest.mark.parametrize("task, images, params, field, value", [
    ("txt2img", {}, {"width": 100}, "width", 100),
    ("txt2img", {}, {"sampler": "warp-drive"}, "sampler", "warp-drive"),
    ("txt2img", {}, {"sampler": "x" * 300}, "sampler", "x" * 128),  # long strings are cut
    ("txt2img", {}, {"upscale_factor": 2.0}, "upscale_factor", 2.0),
    ("preprocess", {"image": rgba_payload(64, 64)}, {"preprocessor": "sobel-ish"}, "preprocessor", "sobel-ish"),
    ("img2img", {"image": rgba_payload(64, 64)}, {"strength": 0.0}, "strength", 0.0),
    ("inpaint", {"image": rgba_payload(64, 64), "mask": grey_payload(np.full((64, 64), 255, np.uint8))},
     {"feather": 300}, "feather", 300),
    ("upscale", {"image": rgba_payload(64, 64)}, {"steps": 10, "upscale_factor": 9.0}, "upscale_factor", 9.0),
    ("txt2img", {"imgae": rgba_payload(64, 64)}, {}, "images", "imgae"),
    ("inpaint", {"image": rgba_payload(64, 64), "mask": rgba_payload(64, 64)}, {}, "mask", "rgba8"),
])
def test_invalid_parameter_details_carry_the_offending_value(engine, task, images, params, field, value):
    if task != "preprocess":
        params = {"model": "tiny", **params}
    err = refused(engine, task, images, **params)
    assert err.code is ErrorCode.INVALID_PARAMETER
    assert err.details == {"field": field, "value": value}


def test_a_role_the_task_does_not_read_names_the_roles_it_takes(engine):
    err = refused(engine, "img2img", {"image": rgba_payload(64, 64), "imgae": rgba_payload(64, 64, seed=1)}, model="tiny")
    assert err.message == "img2img does not use image role 'imgae'; it takes 'image'"
    err = refused(engine, "depth2img", {"image": rgba_payload(64, 64), "mask": grey_payload(np.zeros((64, 64), np.uint8))})
    assert err.message == "depth2img does not use image role 'mask'; it takes 'image', 'depth'"


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 10, 25, 150])
def test_strength_needs_one_step_to_run(engine, steps):
    """docs/protocol.md 11.2: strength 0 ... 1 with int(steps * strength) >= 1; the smallest strength the
    sentence names is accepted."""
    image = {"image": rgba_payload(64, 64)}
    for strength in (0.0, 0.001, 0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.99, 1.0):
        runs = int(steps * strength)
        if runs >= 1:
            assert prepare(engine, "img2img", image, model="tiny", steps=steps, strength=strength).steps == runs
            continue
        err = refused(engine, "img2img", image, model="tiny", steps=steps, strength=strength)
        assert err.details == {"field": "strength", "value": strength}
        assert f"with strength {strength:g} and {steps} steps no denoising step would run" in err.message
        smallest = float(err.message.split("use strength ")[1].split(" ")[0])
        assert int(steps * smallest) >= 1
        assert prepare(engine, "img2img", image, model="tiny", steps=steps, strength=smallest).steps >= 1


def test_depth2img_without_an_image_ignores_strength(engine):
    depth = {"depth": grey_payload(np.arange(64 * 64).reshape(64, 64) % 256)}
    prepared = prepare(engine, "depth2img", depth, steps=4, strength=0.1)  # would run no step with an image
    assert prepared.params.strength == 1.0 and prepared.steps == 4


@pytest.mark.parametrize("batch_size", [1, 2, 4, 8])
def test_the_largest_seed_depends_on_the_batch(engine, batch_size):
    """docs/protocol.md 11.2: seed + batch_size - 1 <= 2**63 - 1 (batch image i uses seed + i)."""
    top = 2**63 - 1 - (batch_size - 1)
    prepared = prepare(engine, "txt2img", model="tiny", batch_size=batch_size, seed=top)
    assert prepared.params.seeds[-1] == 2**63 - 1
    err = refused(engine, "txt2img", model="tiny", batch_size=batch_size, seed=top + 1)
    assert err.details == {"field": "seed", "value": top + 1}
    assert f"seed must be between 0 and {top}" in err.message


def test_an_unknown_lora_is_unknown_model(engine):
    from protocol.messages import LoraWeight

    err = refused(engine, "txt2img", model="tiny", loras=(LoraWeight("ink-typo"),))
    assert err.code is ErrorCode.UNKNOWN_MODEL and "unknown LoRA 'ink-typo'" in err.message
    assert err.details == {"field": "loras"}
