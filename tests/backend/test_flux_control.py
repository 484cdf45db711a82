"""Flux.1 guided by images, and Flux transformers stored as fp8 or GGUF, on tiny random models
built offline (``tiny_flux_control``): Flux ControlNets in control units (txt2img, img2img,
inpaint, outpaint; weight 0 is no unit), a Depth-style control transformer running
depth2img and a Canny-style one taking its control unit, the fp8 and GGUF transformer files
(detected from their headers; fp8 upcast exactly; GGUF quantized), each through the engine and
the real server, and the sentences of what is refused."""
from __future__ import annotations

import numpy as np
import pytest

from backend.catalog import read_file
from backend.config import ModelEntry, ServerConfig
from backend.errors import JobError
from backend.models import ModelSpec, inspect
from backend.models.weight_files import gguf_header, read_header, weights_format
from protocol import ControlUnit, JobFailed, JobParams, JobResult, SubmitJob
from protocol.errors import ErrorCode
from test_server_harness import Client, ServerThread, make_engine, rgba
from tiny_flux_control import (
    build_tiny_flux_control, build_tiny_flux_controlnet, write_fp8, write_gguf, write_upcast_fp8,
)
from tiny_models import Recorder, depth_payload, grey_payload, pixels, rgba_payload


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from backend.demo import build_tiny_flux, build_tiny_model

    root = tmp_path_factory.mktemp("fluxcontrol")
    flux = build_tiny_flux(root / "flux")
    return {"flux": flux, "cn": build_tiny_flux_controlnet(root / "flux-cn-canny", flux),
            "cn2": build_tiny_flux_controlnet(root / "flux-cn-depth", flux, seed=1),
            "control": build_tiny_flux_control(root / "flux-control", flux),
            "fp8": write_fp8(flux, root / "flux-fp8.safetensors"),
            "upcast": write_upcast_fp8(flux, root / "flux-upcast.safetensors"),
            "gguf": write_gguf(flux, root / "flux-Q8_0.gguf"),
            "sd-cn": root / "sd-cn", "sd": build_tiny_model(root / "sd"), "fill": build_tiny_flux(root / "fill", fill=True),
            "cn-file": root / "flux-cn-canny.safetensors", "depth-file": root / "flux1-depth.safetensors"}


def config(dirs, tmp_path) -> ServerConfig:
    from backend.demo import build_tiny_controlnet

    if not dirs["sd-cn"].exists():
        build_tiny_controlnet(dirs["sd-cn"], dirs["sd"])
        dirs["cn-file"].write_bytes((dirs["cn"] / "diffusion_pytorch_model.safetensors").read_bytes())
        dirs["depth-file"].write_bytes((dirs["control"] / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes())
    flux = str(dirs["flux"])
    models = (ModelEntry("flux", flux), ModelEntry("cn-canny", str(dirs["cn"])), ModelEntry("cn-depth", str(dirs["cn2"])),
              ModelEntry("flux-depth", str(dirs["control"]), control_type="depth"),
              ModelEntry("flux-canny", str(dirs["control"]), control_type="canny"),
              ModelEntry("flux-fp8", str(dirs["fp8"]), config=flux), ModelEntry("flux-upcast", str(dirs["upcast"]), config=flux),
              ModelEntry("flux-gguf", str(dirs["gguf"]), config=flux), ModelEntry("sd-cn", str(dirs["sd-cn"])),
              ModelEntry("cn-file", str(dirs["cn-file"])), ModelEntry("fill", str(dirs["fill"])),
              ModelEntry("flux-depth-file", str(dirs["depth-file"]), config=flux))
    return ServerConfig(port=0, models=models, device="cpu", cache_dir=tmp_path / "cache", queue_size=4,
                        model_cache_size=2)


@pytest.fixture(scope="module")
def engine(dirs, tmp_path_factory):
    return make_engine(config(dirs, tmp_path_factory.mktemp("engine")))


def run(engine, task, images=None, **params):
    params = {"model": "flux", "steps": 2, "seed": 7, "width": 64, "height": 64, **params}
    images = images or {}
    roles = {role: payload for role, payload in images.items() if role != "control"}  # "control": a unit's image
    sent = {**roles, **{payload.id: payload for role, payload in images.items() if role == "control"}}
    submit = SubmitJob("f", task, JobParams(**params), images={r: p.id for r, p in roles.items()} or None)
    prepared = engine.prepare(submit, sent)
    return engine.run(prepared, Recorder())


def unit(model="cn-canny", image=None, **values):
    return ControlUnit(model=model, image=image.id, **values)


def refused(engine, task, images=None, **params) -> JobError:
    with pytest.raises(JobError) as caught:
        run(engine, task, images, **params)
    return caught.value


# --------------------------------------------------------------------------- detection (headers, configs)


def test_control_models_and_formats_are_detected(dirs, engine):
    infos = {i.id: i for i in engine.model_infos()}
    assert (infos["cn-canny"].kind, infos["cn-canny"].family, infos["cn-canny"].control_type) == ("controlnet", "flux", "canny")
    assert (infos["flux-depth"].kind, infos["flux-depth"].tasks, infos["flux-depth"].default_cfg) == (
        "depth", ("depth2img",), 10.0)  # 128 input channels + "depth": a depth model
    assert (infos["flux-canny"].kind, infos["flux-canny"].control_type, infos["flux-canny"].tasks) == (
        "control", "canny", ("txt2img", "img2img", "inpaint", "outpaint"))
    assert inspect(ModelSpec("x", str(dirs["control"]))).kind == "control"  # no word says which: control
    for key in ("fp8", "gguf"):
        facts = inspect(ModelSpec("x", str(dirs[key]), config=str(dirs["flux"])))
        assert (facts.family, facts.kind, facts.origin, facts.guidance_embeds) == ("flux", "base", "single_file", True)
    assert weights_format(read_header(dirs["fp8"])) == "fp8" and weights_format(read_header(dirs["upcast"])) == ""
    header = gguf_header(dirs["gguf"])
    assert weights_format(header) == "gguf Q8_0"
    assert header["x_embedder.weight"] == {"dtype": "Q8_0", "shape": [32, 64]}  # PyTorch order, as safetensors
    assert header["x_embedder.bias"] == {"dtype": "F32", "shape": [32]}


def test_the_catalog_says_how_a_transformer_file_is_stored(tmp_path, dirs):
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(dirs["fp8"]))
    original = {"double_blocks.0.img_attn.qkv.weight": weights["transformer_blocks.0.attn.to_q.weight"],
                "img_in.weight": weights["x_embedder.weight"], "txt_in.weight": torch.zeros(32, 32)}
    save_file(original, str(tmp_path / "flux1-dev-fp8.safetensors"))
    found = read_file(tmp_path / "flux1-dev-fp8.safetensors", "diffusion_model")
    assert (found.kind, found.family, found.status, found.detail) == ("diffusion_model", "flux", "listed",
                                                                      "transformer only, fp8")
    assert "--model and a config folder" in found.reason


def test_a_gguf_file_in_a_comfyui_folder_is_listed_with_its_quantization(tmp_path):
    import gguf
    from gguf.quants import quantize

    from backend.catalog import scan

    folder = tmp_path / "ComfyUI" / "models" / "unet"
    folder.mkdir(parents=True)
    writer = gguf.GGUFWriter(str(folder / "flux1-dev-Q4_0.gguf"), "flux")
    writer.add_string("general.name", "flux1-dev")  # metadata is skipped: strings, arrays of both kinds
    writer.add_array("general.tags", ["flux", "gguf"])
    writer.add_array("general.sizes", [1, 2, 3])
    writer.add_uint32("general.quantization_version", 2)
    for name, shape in (("img_in.weight", (32, 64)), ("double_blocks.0.img_attn.qkv.weight", (96, 32))):
        packed = quantize(np.ones(shape, np.float32), gguf.GGMLQuantizationType.Q4_0)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.add_tensor("img_in.bias", np.zeros(32, np.float32))
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file, writer.close):
        write()
    found = scan([tmp_path / "ComfyUI"]).found
    assert [(f.path.name, f.kind, f.family, f.detail) for f in found] == [
        ("flux1-dev-Q4_0.gguf", "diffusion_model", "flux", "transformer only, gguf Q4_0")]
    facts = inspect(ModelSpec("x", str(folder / "flux1-dev-Q4_0.gguf")))
    assert (facts.family, facts.kind, facts.origin) == ("flux", "base", "single_file")


def test_flux_controlnets_in_a_comfyui_folder(tmp_path, dirs):
    import shutil

    from backend.catalog import scan

    folder = tmp_path / "ComfyUI" / "models" / "controlnet"
    folder.mkdir(parents=True)
    shutil.copytree(dirs["cn"], folder / "FLUX.1-dev-ControlNet-Canny")
    shutil.copy(dirs["cn"] / "diffusion_pytorch_model.safetensors", folder / "instantx-flux-canny.safetensors")
    found = {f.path.name: f for f in scan([tmp_path / "ComfyUI"]).found}
    folder_cn, file_cn = found["FLUX.1-dev-ControlNet-Canny"], found["instantx-flux-canny.safetensors"]
    assert (folder_cn.kind, folder_cn.family, folder_cn.status, folder_cn.detail) == ("controlnet", "flux", "served", "canny")
    assert (file_cn.kind, file_cn.family, file_cn.status) == ("controlnet", "flux", "listed")
    assert "diffusers folder" in file_cn.reason


def test_a_broken_gguf_file_is_refused_with_a_sentence(tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00\x05")
    with pytest.raises(Exception) as caught:
        inspect(ModelSpec("x", str(cut)))
    assert "is not a readable GGUF file" in str(caught.value) and "cut short" in str(caught.value)


# --------------------------------------------------------------------------- Flux ControlNets


def test_a_flux_controlnet_guides_txt2img_and_weight_0_is_no_unit(engine):
    first, second = rgba_payload(64, 64, seed=1), rgba_payload(64, 64, seed=2)
    none = pixels(run(engine, "txt2img").images[0])
    guided = pixels(run(engine, "txt2img", {"control": first}, controls=(unit(image=first),)).images[0])
    other = pixels(run(engine, "txt2img", {"control": second}, controls=(unit(image=second),)).images[0])
    assert not np.array_equal(guided, none) and not np.array_equal(guided, other)  # the image guides
    again = pixels(run(engine, "txt2img", {"control": first}, controls=(unit(image=first),)).images[0])
    assert np.array_equal(again, guided)  # a seed reproduces
    zero = pixels(run(engine, "txt2img", {"control": first}, controls=(unit(image=first, weight=0.0),)).images[0])
    assert np.array_equal(zero, none)  # weight 0 is no unit at all
    half = pixels(run(engine, "txt2img", {"control": first}, controls=(unit(image=first, weight=0.0),
                                                                       unit("cn-depth", first))).images[0])
    alone = pixels(run(engine, "txt2img", {"control": first}, controls=(unit("cn-depth", first),)).images[0])
    assert np.array_equal(half, alone)  # ... beside other units too
    two = pixels(run(engine, "txt2img", {"control": first}, controls=(unit(image=first), unit("cn-depth", first))
                     ).images[0])
    assert not np.array_equal(two, guided)  # several ControlNets at once


def test_the_memory_plan_counts_a_flux_controlnet_by_its_own_weights(engine, dirs):
    from safetensors.torch import load_file

    tensors = load_file(str(dirs["cn"] / "diffusion_pytorch_model.safetensors"))
    net_bytes = sum(t.numel() for t in tensors.values()) * 4  # float32 on the CPU
    control = rgba_payload(64, 64)

    def weights(model, controls):
        submit = SubmitJob("m", "txt2img", JobParams(model=model, width=64, height=64, controls=controls))
        return engine.prepare(submit, {control.id: control}).memory.parts["weights"]

    plain = weights("flux", ())
    assert weights("flux", (unit(image=control),)) - plain == net_bytes  # not half the transformer: its own size
    assert weights("flux", (unit(image=control), unit("cn-depth", control))) - plain == 2 * net_bytes
    assert weights("flux", (unit(image=control), unit("cn-depth", control, weight=0.0))) - plain == net_bytes
    # a control model's unit names the model itself: no ControlNet to count
    assert weights("flux-canny", (unit("flux-canny", control),)) == engine._footprints["flux-canny"].weight_bytes


@pytest.mark.parametrize("task", ["img2img", "inpaint", "outpaint"])
def test_flux_controlnets_guide_the_image_tasks(engine, task):
    from protocol import Margins

    image, control = rgba_payload(64, 64, seed=3, alpha=None), rgba_payload(64, 64, seed=4)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    images = {"image": image, "control": control, **({"mask": grey_payload(mask)} if task == "inpaint" else {})}
    extra = {"margins": Margins(right=16)} if task == "outpaint" else {"strength": 1.0}
    none = pixels(run(engine, task, images, **extra).images[0])
    guided = pixels(run(engine, task, images, controls=(unit(image=control),), **extra).images[0])
    assert guided.shape == none.shape and not np.array_equal(guided, none)
    if task == "inpaint":
        assert np.array_equal(guided[mask == 0], pixels(image)[mask == 0])  # kept pixels stay byte-identical


# --------------------------------------------------------------------------- control transformers


def test_depth2img_on_a_flux_depth_model(engine):
    depth = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    progress = Recorder()
    submit = SubmitJob("d", "depth2img", JobParams(model="flux-depth", steps=2, seed=3, width=64, height=64),
                       images={"depth": depth_payload(depth).id})
    prepared = engine.prepare(submit, {"depth": depth_payload(depth)})
    assert prepared.params.cfg_scale == 10.0  # the depth model's own default guidance
    first = pixels(engine.run(prepared, progress).images[0])
    assert first.shape == (64, 64, 4) and progress.steps == [(1, 2), (2, 2)] and len(progress.previews) == 2
    flipped = pixels(run(engine, "depth2img", {"depth": depth_payload(depth[:, ::-1].copy())}, model="flux-depth",
                         seed=3, cfg_scale=10.0).images[0])
    assert not np.array_equal(first, flipped)  # the depth map shapes it
    same = pixels(run(engine, "depth2img", {"depth": depth_payload(depth)}, model="flux-depth", seed=3,
                      cfg_scale=10.0).images[0])
    assert np.array_equal(first, same)
    image, wide = rgba_payload(80, 48, seed=5), np.tile(np.linspace(0, 1, 80, dtype=np.float32), (48, 1))
    with_image = pixels(run(engine, "depth2img", {"image": image, "depth": depth_payload(wide)}, model="flux-depth",
                            strength=0.5, steps=4).images[0])
    assert with_image.shape == (48, 80, 4)


def test_a_control_transformer_file_loads_with_a_base_flux_config_folder(engine):
    assert (engine.models.facts("flux-depth-file").kind, engine.models.facts("flux-depth-file").origin) == (
        "depth", "single_file")  # 128 channels in its header, "depth" in its name
    depth = depth_payload(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1)))
    folder, single = (pixels(run(engine, "depth2img", {"depth": depth}, model=m, cfg_scale=10.0).images[0])
                      for m in ("flux-depth", "flux-depth-file"))
    assert np.array_equal(folder, single)  # the same weights, the same image


def test_flux_depth_gets_the_depth_map_as_a_grey_image_near_white(engine, monkeypatch):
    from diffusers import FluxControlImg2ImgPipeline

    seen = {}
    original = FluxControlImg2ImgPipeline.__call__

    def spy(self, *args, **kwargs):
        seen["control"] = np.asarray(kwargs["control_image"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FluxControlImg2ImgPipeline, "__call__", spy)
    depth = np.tile(np.linspace(5, 1, 64, dtype=np.float32), (64, 1))  # nearest on the left, any range
    run(engine, "depth2img", {"depth": depth_payload(depth)}, model="flux-depth")
    grey = seen["control"]
    assert grey.shape == (64, 64, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert grey[10, 0, 0] > 240 and grey[10, 63, 0] < 15 and (np.diff(grey[10, :, 0].astype(int)) <= 0).all()


def test_flux_depth_estimates_depth_from_the_image(dirs, tmp_path):
    from backend import demo
    from backend.engine import Engine, EngineConfig

    fresh = Engine(EngineConfig(models=(ModelSpec("flux-depth", str(dirs["control"]), control_type="depth"),),
                                device="cpu", cache_folder=tmp_path, depth_estimator=str(demo.build_tiny_dpt(tmp_path / "dpt"))))
    output = run(fresh, "depth2img", {"image": rgba_payload(48, 40)}, model="flux-depth", strength=1.0)
    assert (output.images[0].width, output.images[0].height) == (48, 40) and fresh._depth is not None


@pytest.mark.parametrize("task", ["txt2img", "img2img", "inpaint"])
def test_a_canny_control_model_takes_its_image_from_a_unit_naming_itself(engine, task):
    image = rgba_payload(64, 64, seed=6, alpha=None)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    images = {"image": image, **({"mask": grey_payload(mask)} if task == "inpaint" else {})} if task != "txt2img" else {}
    results = []
    for seed in (1, 2):
        control = rgba_payload(64, 64, seed=seed)
        results.append(pixels(run(engine, task, {**images, "control": control}, model="flux-canny", strength=1.0,
                                  controls=(unit("flux-canny", control, preprocessor="canny"),)).images[0]))
    assert results[0].shape == (64, 64, 4) and not np.array_equal(results[0], results[1])  # the edges guide


@pytest.mark.parametrize("controls, code, words", [
    ((), ErrorCode.INVALID_PARAMETER, ("Flux.1 control model (canny)", "exactly one control unit naming 'flux-canny'",
                                       "preprocessor 'canny'", "got 0 units")),
    ((("cn-canny", 1.0, 0.0, 1.0),), ErrorCode.UNSUPPORTED, ("takes no ControlNets ('cn-canny')", "Flux.1 base model")),
    ((("flux-canny", 0.5, 0.0, 1.0),), ErrorCode.UNSUPPORTED, ("full strength", "weight 1, start 0 and end 1",
                                                                "got weight 0.5")),
])
def test_what_a_control_model_refuses(engine, controls, code, words):
    control = rgba_payload(64, 64, seed=1)
    units = tuple(ControlUnit(model=m, image=control.id, weight=w, start=s, end=e) for m, w, s, e in controls)
    error = refused(engine, "txt2img", {"control": control}, model="flux-canny", controls=units)
    assert (error.code, error.details.get("field")) == (code, "controls")
    assert all(word in error.message for word in words), error.message


def test_a_single_file_flux_controlnet_is_not_taken_for_a_transformer_and_says_what_to_use(engine):
    assert (engine.models.facts("cn-file").family, engine.models.facts("cn-file").kind) == ("flux", "controlnet")
    control = rgba_payload(64, 64)
    error = refused(engine, "txt2img", {"control": control}, controls=(unit("cn-file", control),))
    assert (error.code, error.details.get("field")) == (ErrorCode.MODEL_UNAVAILABLE, "controls")
    assert "single-file Flux.1 ControlNet" in error.message and "diffusers folder" in error.message


def test_what_makes_a_flux_controlnet_not_fit():
    from types import SimpleNamespace

    from backend.models.flux_control import controlnet_misfit

    transformer = SimpleNamespace(num_attention_heads=24, attention_head_dim=128, joint_attention_dim=4096)
    net = SimpleNamespace(num_attention_heads=24, attention_head_dim=128, joint_attention_dim=4096, num_mode=None)
    assert controlnet_misfit(net, transformer) == ""
    assert "blocks are 1536 wide, the transformer's 3072" in controlnet_misfit(
        SimpleNamespace(**{**vars(net), "num_attention_heads": 12}), transformer)
    assert "768-wide text features" in controlnet_misfit(SimpleNamespace(**{**vars(net), "joint_attention_dim": 768}),
                                                         transformer)
    union = controlnet_misfit(SimpleNamespace(**{**vars(net), "num_mode": 10}), transformer)
    assert "union ControlNet" in union and "single-type Flux ControlNet" in union


def test_a_flux_fill_model_takes_no_controlnet_units(engine):
    image, control = rgba_payload(64, 64, seed=3), rgba_payload(64, 64)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    error = refused(engine, "inpaint", {"image": image, "mask": grey_payload(mask), "control": control}, model="fill",
                    controls=(unit(image=control),))
    assert (error.code, error.details.get("field")) == (ErrorCode.UNSUPPORTED, "controls")
    assert "model 'fill' (Flux.1 inpaint) takes no ControlNet units" in error.message and "Flux.1 base" in error.message


def test_an_sd_controlnet_on_flux_is_a_mismatch_before_any_work(engine):
    control = rgba_payload(64, 64)
    error = refused(engine, "txt2img", {"control": control}, controls=(unit("sd-cn", control),))
    assert error.code is ErrorCode.MODEL_MISMATCH and "ControlNet 'sd-cn' is for" in error.message
    assert "model 'flux' is flux" in error.message


# --------------------------------------------------------------------------- fp8 and GGUF transformer files


def test_fp8_and_gguf_transformers_run_and_reproduce(engine):
    folder = pixels(run(engine, "txt2img").images[0])
    fp8 = pixels(run(engine, "txt2img", model="flux-fp8").images[0])
    upcast = pixels(run(engine, "txt2img", model="flux-upcast").images[0])
    assert np.array_equal(fp8, upcast)  # fp8 values upcast exactly: the same image as their float32 copy
    assert not np.array_equal(fp8, folder)  # (and the fp8 rounding is really there)
    gguf = pixels(run(engine, "txt2img", model="flux-gguf").images[0])
    assert gguf.shape == fp8.shape == (64, 64, 4) and gguf[..., :3].std() > 1
    assert np.array_equal(pixels(run(engine, "txt2img", model="flux-gguf").images[0]), gguf)  # a seed reproduces
    loaded, _ = engine.models.get("flux-gguf")
    assert type(loaded.root.transformer.x_embedder.weight).__name__ == "GGUFParameter"  # stays quantized


def test_without_the_gguf_package_the_loader_says_what_to_install(engine, monkeypatch, dirs):
    import sys

    from backend.models.weight_files import transformer_file_kwargs

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if it were not installed
    with pytest.raises(JobError) as caught:
        transformer_file_kwargs(str(dirs["gguf"]), None)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE and "pip install gguf" in caught.value.message


# --------------------------------------------------------------------------- the real server


def test_through_the_server(engine, dirs, tmp_path):
    with ServerThread(config(dirs, tmp_path), engine) as server, Client(server.url) as client:
        models = {m.id: m for m in client.welcome.capabilities.models}
        assert models["cn-canny"].kind == "controlnet" and models["flux-depth"].kind == "depth"
        assert "depth2img" in client.welcome.capabilities.tasks
        control = rgba(64, 64, seed=1)
        params = dict(model="flux", width=64, height=64, steps=2, seed=3, prompt="a cat")
        plain = client.run(SubmitJob("p", "txt2img", JobParams(**params)))
        guided = client.run(SubmitJob("g", "txt2img", JobParams(**params, controls=(unit(image=control),))), [control])
        assert isinstance(plain[-1], JobResult) and isinstance(guided[-1], JobResult)
        assert plain[-1].images[0].id != guided[-1].images[0].id
        depth = depth_payload(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1)))
        job = SubmitJob("d", "depth2img", JobParams(**{**params, "model": "flux-depth"}), images={"depth": depth.id})
        first, again = client.run(job, [depth]), client.run(SubmitJob("d2", "depth2img", job.params, images=job.images), [depth])
        assert isinstance(first[-1], JobResult) and first[-1].images[0].id == again[-1].images[0].id
        for model in ("flux-fp8", "flux-gguf"):
            one = client.run(SubmitJob(model, "txt2img", JobParams(**{**params, "model": model})))
            two = client.run(SubmitJob(model + "2", "txt2img", JobParams(**{**params, "model": model})))
            assert isinstance(one[-1], JobResult) and (one[-1].images[0].width, one[-1].images[0].height) == (64, 64)
            assert one[-1].images[0].id == two[-1].images[0].id  # each reproduces per seed
        fill = client.run(SubmitJob("u", "txt2img", JobParams(**{**params, "model": "flux-canny"}, controls=(
            ControlUnit(model="flux-canny", image=control.id, weight=0.5),))), [control])
        assert isinstance(fill[-1], JobFailed) and fill[-1].code is ErrorCode.UNSUPPORTED
        assert "full strength" in fill[-1].message


def test_sd35_transformer_files_in_fp8_and_gguf_load_too(tmp_path):
    from backend.demo import build_tiny_sd3
    from backend.engine import Engine, EngineConfig

    folder = build_tiny_sd3(tmp_path / "sd3")
    fp8, gguf = write_fp8(folder, tmp_path / "sd35-fp8.safetensors"), write_gguf(folder, tmp_path / "sd35-Q8_0.gguf")
    engine = Engine(EngineConfig(models=(ModelSpec("fp8", str(fp8), config=str(folder)),
                                         ModelSpec("gguf", str(gguf), config=str(folder))),
                                 device="cpu", cache_folder=tmp_path, cache_size=2))
    assert [(i.family, i.kind) for i in engine.model_infos()] == [("sd3", "base"), ("sd3", "base")]
    for model in ("fp8", "gguf"):
        first, again = (pixels(run(engine, "txt2img", model=model).images[0]) for _ in range(2))
        assert first.shape == (64, 64, 4) and np.array_equal(first, again)
