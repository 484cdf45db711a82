"""ControlNet units on tiny random SD and SDXL models: every image task, one and several units,
weights and guidance ranges, control images placed and cut like the image, the family check,
detection and loading like base models, and every bad unit's typed error."""
from __future__ import annotations

import json

import numpy as np
import pytest

from backend.engine import Engine, EngineConfig, ModelSpec
from backend.errors import JobError
from backend.models import ModelConfigError, guess_control_type, inspect
from protocol import ControlUnit, ErrorCode, ImageFormat, ImagePayload, JobParams, Margins, SubmitJob
from tiny_guidance import guided_dirs, guided_engine, square_image  # noqa: F401 - fixtures
from tiny_models import Recorder, grey_payload, model_dirs, pixels, rgba_payload  # noqa: F401 - fixture


def job(engine: Engine, task: str, images: dict[str, ImagePayload] | None = None,
        controls: tuple[tuple[ControlUnit, ImagePayload], ...] = (), **params):
    """(prepared job) for ``task`` with role ``images`` and ``controls`` (unit, its image payload)."""
    params.setdefault("steps", 2)
    params.setdefault("seed", 3)
    images = dict(images or {})
    submit = SubmitJob("cn-job", task, JobParams(controls=tuple(u for u, _ in controls), **params),
                       images={role: p.id for role, p in images.items()})
    given = dict(images)
    given.update({unit.image: payload for unit, payload in controls})
    return engine.prepare(submit, given)


def generate(engine: Engine, task: str, images=None, controls=(), **params) -> list[np.ndarray]:
    output = engine.run(job(engine, task, images, controls, **params), Recorder())
    return [pixels(image) for image in output.images]


def unit(model: str, payload: ImagePayload, **fields) -> tuple[ControlUnit, ImagePayload]:
    return ControlUnit(model=model, image=payload.id, **fields), payload


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() > 2


def mask_payload(width: int, height: int) -> tuple[ImagePayload, np.ndarray]:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4:3 * height // 4, width // 4:3 * width // 4] = 255
    return grey_payload(mask), mask


# --------------------------------------------------------------------------- every task, SD and SDXL


@pytest.mark.parametrize("model, net", [("tiny", "canny"), ("tiny-xl", "canny-xl")])
def test_txt2img_follows_the_control_image_and_weight_zero_is_no_control(guided_engine, model, net):
    plain = generate(guided_engine, "txt2img", model=model, width=64, height=64)[0]
    control = square_image(64, 64)
    guided = generate(guided_engine, "txt2img", controls=(unit(net, control),), model=model, width=64, height=64)[0]
    other = generate(guided_engine, "txt2img", controls=(unit(net, rgba_payload(64, 64, seed=90)),), model=model,
                     width=64, height=64)[0]
    assert guided.shape == (64, 64, 4) and differs(guided, plain)
    assert differs(guided, other)  # the control image itself steers the result, not only the ControlNet's presence
    silent = generate(guided_engine, "txt2img", controls=(unit(net, control, weight=0.0),), model=model,
                      width=64, height=64)[0]
    assert np.abs(silent.astype(int) - plain.astype(int)).max() <= 1  # weight 0 adds nothing


@pytest.mark.parametrize("model, net", [("tiny", "canny"), ("tiny-xl", "canny-xl")])
def test_img2img_with_two_units(guided_engine, model, net):
    image = rgba_payload(80, 64, seed=1)
    first, second = square_image(80, 64), square_image(80, 64, seed=60)
    one = generate(guided_engine, "img2img", {"image": image}, (unit(net, first),), model=model, width=64, height=64)[0]
    two = generate(guided_engine, "img2img", {"image": image}, (unit(net, first), unit(net, second, weight=0.7)),
                   model=model, width=64, height=64)[0]
    plain = generate(guided_engine, "img2img", {"image": image}, model=model, width=64, height=64)[0]
    assert one.shape == two.shape == (64, 80, 4)
    assert differs(one, plain) and differs(two, one)


@pytest.mark.parametrize("model, net", [("tiny", "canny"), ("tiny-inpaint", "canny"), ("tiny-xl", "canny-xl")])
def test_inpaint_with_units_keeps_every_pixel_outside_the_mask(guided_engine, model, net):
    image = rgba_payload(80, 64, seed=2, alpha=None)
    original = pixels(image)
    mask, raw = mask_payload(80, 64)
    controls = (unit(net, square_image(80, 64)), unit(net, square_image(40, 32, seed=9), start=0.0, end=0.5))
    results = generate(guided_engine, "inpaint", {"image": image, "mask": mask}, controls, model=model,
                       width=64, height=64)
    plain = generate(guided_engine, "inpaint", {"image": image, "mask": mask}, model=model, width=64, height=64)[0]
    result = results[0]
    assert np.array_equal(result[raw == 0], original[raw == 0])
    assert differs(result[raw == 255], plain[raw == 255])


def test_outpaint_takes_control_images_of_the_result_or_of_the_original(guided_engine):
    image = rgba_payload(64, 48, seed=4)
    margins = Margins(right=32)
    canvas_sized = square_image(96, 48)
    original_sized = square_image(64, 48, seed=20)
    wide = generate(guided_engine, "outpaint", {"image": image}, (unit("canny", canvas_sized),), model="tiny",
                    margins=margins, width=64, height=64)[0]
    placed = generate(guided_engine, "outpaint", {"image": image}, (unit("canny", original_sized),), model="tiny",
                      margins=margins, width=64, height=64)[0]
    assert wide.shape == placed.shape == (48, 96, 4)
    # beyond the seam band the original is untouched, whatever guides the new area
    assert np.array_equal(wide[:, :40], pixels(image)[:, :40]) and np.array_equal(placed[:, :40], pixels(image)[:, :40])
    assert differs(wide[:, 64:], placed[:, 64:])


def test_guidance_range_and_batches(guided_engine):
    control = square_image(64, 64)
    full = generate(guided_engine, "txt2img", controls=(unit("canny", control),), model="tiny", width=64, height=64,
                    steps=4)[0]
    late = generate(guided_engine, "txt2img", controls=(unit("canny", control, start=0.5, end=1.0),), model="tiny",
                    width=64, height=64, steps=4)[0]
    assert differs(full, late)  # the first half of the steps ran without the ControlNet
    batch = generate(guided_engine, "txt2img", controls=(unit("canny", control),), model="tiny", width=64, height=64,
                     steps=4, batch_size=2)
    assert len(batch) == 2 and np.abs(batch[0].astype(int) - full.astype(int)).max() <= 2  # image 0 = the single job


def test_a_units_preprocessor_runs_on_the_server(guided_engine):
    photo = square_image(64, 64, seed=30)
    raw = generate(guided_engine, "txt2img", controls=(unit("canny", photo),), model="tiny", width=64, height=64)[0]
    edges = generate(guided_engine, "txt2img", controls=(unit("canny", photo, preprocessor="canny"),), model="tiny",
                     width=64, height=64)[0]
    assert differs(raw, edges)


def test_grey_and_depth_control_images(guided_engine):
    grey = grey_payload(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))
    depth = np.tile(np.linspace(0.0, 3.0, 64, dtype=np.float32)[:, None], (1, 64))
    depth_payload = ImagePayload(ImageFormat.DEPTH32F, 64, 64, np.ascontiguousarray(depth, "<f4").tobytes())
    a = generate(guided_engine, "txt2img", controls=(unit("depth-cn", grey),), model="tiny", width=64, height=64)[0]
    b = generate(guided_engine, "txt2img", controls=(unit("depth-cn", depth_payload),), model="tiny", width=64,
                 height=64)[0]
    assert differs(a, b)


def test_controlnets_load_once_and_are_shared_across_tasks_and_models(guided_engine):
    control = square_image(64, 64)
    generate(guided_engine, "txt2img", controls=(unit("canny", control),), model="tiny", width=64, height=64)
    net, _ = guided_engine.models.controlnet("canny")
    output = guided_engine.run(job(guided_engine, "img2img", {"image": rgba_payload(64, 64)},
                                   (unit("canny", control),), model="tiny", width=64, height=64), Recorder())
    assert output.timings["load"] == 0  # switching task loads nothing
    again, seconds = guided_engine.models.controlnet("canny")
    assert again is net and seconds == 0
    model, _ = guided_engine.models.get("tiny")
    pipe = model.pipeline("txt2img", [net])
    assert pipe.unet is model.root.unet and pipe.controlnet.nets[0] is net  # no copy of any module


# --------------------------------------------------------------------------- checks before any model work


def test_family_mismatch_is_refused_with_the_fix(guided_engine):
    with pytest.raises(JobError) as caught:
        job(guided_engine, "txt2img", controls=(unit("canny-xl", square_image(64, 64)),), model="tiny")
    assert caught.value.code is ErrorCode.MODEL_MISMATCH
    assert caught.value.message == "ControlNet 'canny-xl' is for sdxl but model 'tiny' is sd15; pick a ControlNet for sd15"


@pytest.mark.parametrize("fields, code, message", [
    ({"model": "nope"}, ErrorCode.UNKNOWN_MODEL, "control unit 1: unknown ControlNet 'nope'; this server has: canny, canny-xl, depth-cn"),
    ({"model": "tiny-xl"}, ErrorCode.INVALID_PARAMETER, "control unit 1: 'tiny-xl' is a base model, not a ControlNet"),
    ({"weight": 2.5}, ErrorCode.INVALID_PARAMETER, "control unit 1: weight must be between 0 and 2, got 2.5"),
    ({"weight": -0.1}, ErrorCode.INVALID_PARAMETER, "control unit 1: weight must be between 0 and 2, got -0.1"),
    ({"start": 0.6, "end": 0.4}, ErrorCode.INVALID_PARAMETER,
     "control unit 1: start (0.6) must be less than end (0.4); e.g. start 0, end 1 guides every step"),
    ({"end": 1.5}, ErrorCode.INVALID_PARAMETER, "control unit 1: end must be between 0 and 1 (a fraction of the steps), got 1.5"),
    ({"preprocessor": "sobel"}, ErrorCode.INVALID_PARAMETER, "unknown preprocessor 'sobel'; use one of: canny,"),
    ({"model": ""}, ErrorCode.INVALID_PARAMETER, "control unit 1 needs a model"),
])
def test_bad_units(guided_engine, fields, code, message):
    settings = {"model": "canny", **fields}
    payload = square_image(64, 64)
    with pytest.raises(JobError) as caught:
        job(guided_engine, "txt2img", controls=((ControlUnit(image=payload.id, **settings), payload),), model="tiny",
            width=64, height=64)
    assert caught.value.code is code and caught.value.message.startswith(message)
    assert caught.value.details["field"] == "controls"


def test_unit_images_are_checked(guided_engine):
    payload = square_image(64, 64)
    with pytest.raises(JobError, match="was not sent with the job"):
        guided_engine.prepare(SubmitJob("j", "txt2img", JobParams(model="tiny", controls=(ControlUnit("canny", payload.id),))),
                              {})
    with pytest.raises(JobError, match="control unit 1's image is 64x64 but the result is 128x64; send a control image with "
                                       "the result's aspect"):
        job(guided_engine, "txt2img", controls=(unit("canny", payload),), model="tiny", width=128, height=64)
    with pytest.raises(JobError, match="at most 4 control units, got 5"):
        job(guided_engine, "txt2img", controls=tuple(unit("canny", square_image(64, 64, seed=i)) for i in range(5)),
            model="tiny", width=64, height=64)
    with pytest.raises(JobError) as caught:
        job(guided_engine, "depth2img", {"image": rgba_payload(64, 64)}, (unit("canny", payload),), model="tiny")
    assert caught.value.code in (ErrorCode.UNSUPPORTED,)


def test_checks_need_no_model_work(guided_dirs, tmp_path):
    engine = Engine(EngineConfig(models=(ModelSpec("tiny", str(guided_dirs["base"])),
                                         ModelSpec("canny-xl", str(guided_dirs["cn_xl"]))), device="cpu",
                                 cache_folder=tmp_path))
    with pytest.raises(JobError):
        job(engine, "txt2img", controls=(unit("canny-xl", square_image(64, 64)),), model="tiny")
    assert engine.models.loaded_ids() == ()


# --------------------------------------------------------------------------- configured like base models


def test_controlnets_are_detected_and_listed(guided_engine, guided_dirs):
    infos = {i.id: i for i in guided_engine.model_infos()}
    assert (infos["canny"].kind, infos["canny"].family, infos["canny"].control_type, infos["canny"].tasks) == \
        ("controlnet", "sd15", "canny", ())
    assert (infos["canny-xl"].family, infos["depth-cn"].control_type) == ("sdxl", "depth")
    assert guided_engine.default_model("txt2img") == "tiny"  # a ControlNet is never a job's model
    with pytest.raises(JobError, match="controlnet model and cannot run txt2img"):
        guided_engine.prepare(SubmitJob("j", "txt2img", JobParams(model="canny")), {})
    given = inspect(ModelSpec("mine", str(guided_dirs["cn"]), control_type="lineart"))
    assert given.control_type == "lineart" and given.kind == "controlnet"


@pytest.mark.parametrize("texts, expected", [
    (("control_v11p_sd15_canny",), "canny"), (("sd-controlnet-openpose",), "openpose"),
    (("controlnet-depth-sdxl-1.0",), "depth"), (("control_v11p_sd15_softedge",), "softedge"),
    (("control_v11p_sd15s2_lineart_anime",), "lineart"), (("my-net", "/models/x"), ""),
])
def test_control_type_guesses(texts, expected):
    assert guess_control_type(*texts) == expected


def test_a_folder_that_is_not_a_controlnet(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ModelConfigError, match="holds a 'UNet2DConditionModel'; Easel loads ControlNetModel"):
        Engine(EngineConfig(models=(ModelSpec("odd", str(folder)),), device="cpu", cache_folder=tmp_path))


def test_single_file_controlnet_is_detected_from_its_header(tmp_path):
    from safetensors.torch import save_file
    import torch

    for width, family, extra in ((768, "sd15", {}), (1024, "sd2", {}), (2048, "sdxl", {"control_model.label_emb.0.0.weight": torch.zeros(1, 1)})):
        path = tmp_path / f"cn-{width}.safetensors"
        tensors = {"control_model.input_hint_block.0.weight": torch.zeros(1, 1),
                   "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, width), **extra}
        save_file(tensors, str(path))
        facts = inspect(ModelSpec("cn", str(path)))
        assert (facts.kind, facts.family, facts.context_dim, facts.origin) == ("controlnet", family, width, "single_file")


def test_offline_hub_controlnet_is_a_typed_error(guided_dirs, tmp_path):
    engine = Engine(EngineConfig(models=(ModelSpec("tiny", str(guided_dirs["base"])),
                                         ModelSpec("hub-canny", "someone/controlnet-canny-not-here", kind="controlnet")),
                                 device="cpu", cache_folder=tmp_path))
    prepared = job(engine, "txt2img", controls=(unit("hub-canny", square_image(64, 64)),), model="tiny", width=64,
                   height=64)
    with pytest.raises(JobError) as caught:
        engine.run(prepared, Recorder())
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "hf download someone/controlnet-canny-not-here" in caught.value.message


def test_demo_controlnet_runs(tmp_path):
    demo = Engine(EngineConfig(device="cpu", cache_folder=tmp_path))
    control = square_image(64, 64)
    output = demo.run(job(demo, "txt2img", controls=(unit("demo-canny", control, preprocessor="canny"),),
                          width=64, height=64), Recorder())
    assert pixels(output.images[0]).shape == (64, 64, 4)
