"""Flux.1 through the family registry, on tiny random Flux-shaped models built offline: detection
(folders and single files, both tensor layouts, headers only), every task it claims through the
engine and through the real server (previews, seeds, batches, cancel inside a transformer block,
single-file loading), the protocol's ``ignores``/``samplers``, and the typed refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.config import ModelEntry, ServerConfig
from backend.errors import JobCancelledError, JobError
from backend.tasks.common import _check_before_block
from backend.models import ModelSpec, family, inspect
from protocol import JobFailed, JobParams, JobResult, LoraWeight, Margins, StepPreview, SubmitJob
from protocol.errors import ErrorCode
from test_server_harness import Client, ServerThread, grey_mask, make_engine, rgba
from tiny_models import Recorder, cancelled_inside, grey_payload, pixels, rgba_payload


@pytest.fixture(scope="module")
def flux_dirs(tmp_path_factory):
    from backend.demo import build_tiny_flux, build_tiny_model

    root = tmp_path_factory.mktemp("flux")
    base = build_tiny_flux(root / "flux")
    single = root / "flux-transformer.safetensors"
    single.write_bytes((base / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes())
    return {"flux": base, "fill": build_tiny_flux(root / "flux-fill", fill=True),
            "schnell": build_tiny_flux(root / "flux-schnell", guidance=False), "single": single,
            "sd": build_tiny_model(root / "sd"), "sd-depth": build_tiny_model(root / "sd-depth", kind="depth")}


def flux_config(dirs, tmp_path, **overrides) -> ServerConfig:
    models = (ModelEntry("flux", str(dirs["flux"])), ModelEntry("flux-fill", str(dirs["fill"])),
              ModelEntry("flux-single", str(dirs["single"]), config=str(dirs["flux"])),
              ModelEntry("sd-depth", str(dirs["sd-depth"])))
    return ServerConfig(**{**dict(port=0, models=models, device="cpu", cache_dir=tmp_path / "cache", queue_size=4),
                           **overrides})


@pytest.fixture(scope="module")
def flux_engine(flux_dirs, tmp_path_factory):
    return make_engine(flux_config(flux_dirs, tmp_path_factory.mktemp("engine")))


def run(engine, task, images=None, progress=None, **params):
    params.setdefault("model", "flux")
    params.setdefault("steps", 2)
    params.setdefault("seed", 7)
    images = images or {}
    submit = SubmitJob("f", task, JobParams(**params), images={role: p.id for role, p in images.items()} or None)
    prepared = engine.prepare(submit, images)
    return prepared, engine.run(prepared, progress or Recorder())


# --------------------------------------------------------------------------- detection (no torch work)


def test_folders_are_detected_as_flux(flux_dirs):
    base, fill, schnell = (inspect(ModelSpec("x", str(flux_dirs[k]))) for k in ("flux", "fill", "schnell"))
    assert (base.family, base.kind, base.guidance_embeds, base.context_dim) == ("flux", "base", True, 32)
    assert (fill.family, fill.kind) == ("flux", "inpaint")  # 384 input channels: Flux Fill
    assert schnell.guidance_embeds is False
    assert (schnell.defaults.steps, schnell.defaults.cfg) == (4, 0.0)  # no guidance input: few steps, no CFG
    assert (base.defaults.size, base.defaults.steps, base.defaults.cfg) == (1024, 28, 3.5)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("layout, in_key, block, guidance, context", [
    ("original", "img_in.weight", "double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight", "txt_in.weight"),
    ("diffusers", "x_embedder.weight", "transformer_blocks.0.attn.to_q.weight",
     "time_text_embed.guidance_embedder.linear_1.weight", "context_embedder.weight"),
])
@pytest.mark.parametrize("channels, kind", [(64, "base"), (384, "inpaint")])
def test_single_files_are_detected_from_their_tensor_names(tmp_path, prefix, layout, in_key, block, guidance, context,
                                                           channels, kind):
    tensors = {prefix + in_key: torch.zeros(8, channels), prefix + block: torch.zeros(2, 2),
               prefix + context: torch.zeros(8, 4096)}
    save_file(tensors, str(tmp_path / "dev.safetensors"))
    facts = inspect(ModelSpec("x", str(tmp_path / "dev.safetensors")))
    assert (facts.family, facts.kind, facts.origin, facts.guidance_embeds) == ("flux", kind, "single_file", False)
    save_file({**tensors, prefix + guidance: torch.zeros(2, 2)}, str(tmp_path / "dev.safetensors"))
    assert inspect(ModelSpec("x", str(tmp_path / "dev.safetensors"))).guidance_embeds is True


def test_the_family_declares_what_the_engine_asks():
    flux = family("flux")
    assert (flux.latent_channels, len(flux.latent_rgb[0]), flux.size_multiple, flux.guidance) == (16, 16, 16, "distilled")
    assert flux.tasks("base") == ("txt2img", "img2img", "inpaint", "outpaint") and flux.tasks("inpaint") == (
        "inpaint", "outpaint")
    packed = torch.arange(2 * 12 * 64, dtype=torch.float32).view(2, 12, 64)  # 64×48 px: 4×3 packed tokens
    latents = flux.unpack(packed, 64, 48)
    assert latents.shape == (2, 16, 6, 8)
    # token (row 1, col 2), channel 3, sub-position (1, 0) lands at latent (3, 2*1+1, 2*2+0)
    assert latents[0, 3, 3, 4] == packed[0, 1 * 4 + 2, 3 * 4 + 1 * 2 + 0]


# --------------------------------------------------------------------------- the engine


def test_txt2img_previews_and_reproducible_seeds(flux_engine):
    progress = Recorder()
    prepared, output = run(flux_engine, "txt2img", progress=progress, width=96, height=64, batch_size=2,
                           negative_prompt="ignored by distilled guidance")
    assert (prepared.params.sampler, prepared.params.cfg_scale) == ("euler", 3.5)
    first, second = (pixels(p) for p in output.images)
    assert first.shape == (64, 96, 4) and first[..., :3].std() > 1 and not np.array_equal(first, second)
    assert progress.steps == [(1, 2), (2, 2)]
    assert [(s, t, w, h) for s, t, w, h, _ in progress.previews] == [(1, 2, 96, 64), (2, 2, 96, 64)]
    assert all(jpeg[:2] == b"\xff\xd8" for *_, jpeg in progress.previews)
    _, again = run(flux_engine, "txt2img", progress=Recorder(), width=96, height=64, batch_size=2,
                   negative_prompt="ignored by distilled guidance")
    assert all(np.array_equal(pixels(x), y) for x, y in zip(again.images, (first, second)))  # a seed reproduces
    _, alone = run(flux_engine, "txt2img", width=96, height=64, seed=8)  # seed 8 is the batch's second image
    # alone it is the same picture: batched matrix products may round the last bit differently
    assert np.abs(pixels(alone.images[0]).astype(int) - second).max() <= 1


def test_img2img_keeps_the_input_size(flux_engine):
    _, output = run(flux_engine, "img2img", {"image": rgba_payload(80, 56, seed=2)}, width=64, height=64, strength=0.5,
                    steps=4)
    assert pixels(output.images[0]).shape == (56, 80, 4)


@pytest.mark.parametrize("model", ["flux", "flux-fill"])
def test_inpaint_keeps_the_unmasked_pixels(flux_engine, model):
    image = rgba_payload(96, 64, seed=3, alpha=None)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 255
    _, output = run(flux_engine, "inpaint", {"image": image, "mask": grey_payload(mask)}, model=model, width=64,
                    height=64)
    result = pixels(output.images[0])
    assert np.array_equal(result[mask == 0], pixels(image)[mask == 0])
    assert not np.array_equal(result[mask == 255], pixels(image)[mask == 255])


def test_outpaint_with_flux_fill(flux_engine):
    _, output = run(flux_engine, "outpaint", {"image": rgba_payload(64, 64, seed=4)}, model="flux-fill",
                    margins=Margins(top=16, right=24), width=64, height=64)
    assert pixels(output.images[0]).shape == (80, 88, 4)


def test_a_cancel_stops_inside_a_transformer_block(flux_engine):
    loaded, _ = flux_engine.models.get("flux")
    with cancelled_inside(loaded.root.transformer.transformer_blocks[0]) as progress:
        with pytest.raises(JobCancelledError) as stopped:
            run(flux_engine, "txt2img", progress=progress, width=64, height=64, steps=3)
    assert progress.steps == [] and stopped.value.step == 0  # stopped inside step 1, before the single block
    blocks = [*loaded.root.transformer.transformer_blocks, *loaded.root.transformer.single_transformer_blocks]
    assert [list(b._forward_pre_hooks.values()).count(_check_before_block) for b in blocks] == [1] * len(blocks)  # once each
    _, output = run(flux_engine, "txt2img", width=64, height=64)
    assert len(output.images) == 1


def test_a_single_transformer_file_loads_with_its_config_folder(flux_engine):
    _, folder = run(flux_engine, "txt2img", width=64, height=64)
    _, single = run(flux_engine, "txt2img", model="flux-single", width=64, height=64)
    assert np.array_equal(pixels(folder.images[0]), pixels(single.images[0]))  # the same weights, the same image


@pytest.mark.parametrize("task, params, code, field, words", [
    ("depth2img", {"model": "flux"}, ErrorCode.UNSUPPORTED, "model",
     ("is a Flux.1 model and cannot run depth2img", "models here that can: sd-depth")),
    ("upscale", {"model": "flux"}, ErrorCode.UNSUPPORTED, "model", ("Flux.1", "SD 1.x, SD 2.x or SDXL")),
    ("txt2img", {"model": "flux-fill"}, ErrorCode.UNSUPPORTED, "model",
     ("a Flux.1 inpaint model and cannot run txt2img", "flux, flux-single")),
    ("txt2img", {"sampler": "dpmpp_2m_karras"}, ErrorCode.INVALID_PARAMETER, "sampler",
     ("flow matching", "euler")),
    ("txt2img", {"width": 72}, ErrorCode.INVALID_PARAMETER, "width", ("multiple of 16", "64 or 80")),
    ("txt2img", {"loras": (LoraWeight("any"),)}, ErrorCode.UNKNOWN_MODEL, "loras", ("unknown LoRA", "no LoRA folder")),
])
def test_what_flux_cannot_do_is_refused_before_any_work(flux_engine, task, params, code, field, words):
    params = {"model": "flux", **params}
    images = {"image": rgba_payload(64, 64)} if task in ("depth2img", "upscale") else {}
    submit = SubmitJob("no", task, JobParams(**params), images={r: p.id for r, p in images.items()} or None)
    with pytest.raises(JobError) as refused:
        flux_engine.prepare(submit, images)
    assert (refused.value.code, refused.value.details.get("field")) == (code, field)
    assert all(word in refused.value.message for word in words), refused.value.message


# --------------------------------------------------------------------------- the real server


def test_through_the_server(flux_engine, flux_dirs, tmp_path):
    with ServerThread(flux_config(flux_dirs, tmp_path), flux_engine) as server, Client(server.url) as client:
        models = {m.id: m for m in client.welcome.capabilities.models}
        assert (models["flux"].family, models["flux"].ignores, models["flux"].samplers) == (
            "flux", ("negative_prompt",), ("euler",))
        assert models["flux-fill"].tasks == ("inpaint", "outpaint") and models["sd-depth"].ignores == ()
        assert models["sd-depth"].samplers == ()
        job = SubmitJob("t", "txt2img", JobParams(model="flux", width=64, height=64, steps=2, seed=3, prompt="a cat"))
        events = client.run(job)
        # a preview that has not left yet may be replaced by the next (docs/protocol.md, step_preview):
        # on a loaded machine one of the two can be coalesced away
        steps = [e.step for e in events if isinstance(e, StepPreview)]
        assert steps in ([1, 2], [1], [2]), steps
        assert isinstance(events[-1], JobResult)
        again = client.run(SubmitJob("t2", "txt2img", job.params))
        assert isinstance(again[-1], JobResult) and again[-1].images[0].id == events[-1].images[0].id  # same seed
        image, mask = rgba(64, 64), grey_mask(64, 64, (16, 16, 48, 48))
        painted = client.run(SubmitJob("i", "inpaint", JobParams(model="flux-fill", steps=2, seed=1, width=64,
                                                                 height=64), images={"image": image.id, "mask": mask.id}),
                             [image, mask])
        assert isinstance(painted[-1], JobResult)
        refused = client.run(SubmitJob("d", "depth2img", JobParams(model="flux"), images={"image": image.id}), [image])
        assert isinstance(refused[-1], JobFailed) and refused[-1].code is ErrorCode.UNSUPPORTED
        assert "Flux.1" in refused[-1].message and "sd-depth" in refused[-1].message


def test_the_demo_set_has_a_flux_model(tmp_path):
    from backend.engine import Engine, EngineConfig

    demo = Engine(EngineConfig(device="cpu", cache_folder=tmp_path))
    info = {i.id: i for i in demo.model_infos()}["demo-flux"]
    assert (info.family, info.kind, info.demo, info.default_width, info.default_steps) == ("flux", "base", True, 128, 4)
    _, output = run(demo, "txt2img", model="demo-flux", width=64, height=80)
    assert pixels(output.images[0]).shape == (80, 64, 4)


# --------------------------------------------------------------------------- Kontext: the edit task


@pytest.fixture(scope="module")
def kontext_engine(flux_dirs, tmp_path_factory):
    from backend.demo import build_tiny_flux
    from backend.engine import Engine, EngineConfig

    root = tmp_path_factory.mktemp("kontext")
    folder = build_tiny_flux(root / "kontext", kontext=True)
    return Engine(EngineConfig(models=(ModelSpec("kontext", str(folder)), ModelSpec("flux", str(flux_dirs["flux"]))),
                               device="cpu", cache_folder=root, cache_size=2))


def test_kontext_edits_an_image_by_instruction(kontext_engine):
    info = {i.id: i for i in kontext_engine.model_infos()}
    assert (info["kontext"].kind, info["kontext"].tasks) == ("edit", ("edit", "txt2img"))
    assert "edit" in kontext_engine.capabilities().tasks
    image = rgba_payload(80, 48, seed=5)
    progress = Recorder()
    prepared, output = run(kontext_engine, "edit", {"image": image}, progress=progress, model="kontext",
                           prompt="make the sky stormy", width=64, height=64, steps=3)
    assert prepared.steps == 3 and progress.steps == [(1, 3), (2, 3), (3, 3)]  # every step runs: no strength
    assert [p[2:4] for p in progress.previews] == [(80, 48)] * 3
    result = pixels(output.images[0])
    assert result.shape == (48, 80, 4) and not np.array_equal(result, pixels(image))
    _, other = run(kontext_engine, "edit", {"image": rgba_payload(80, 48, seed=6)}, model="kontext",
                   prompt="make the sky stormy", width=64, height=64, steps=3)
    assert not np.array_equal(pixels(other.images[0]), result)  # the image conditions the edit


def test_edit_on_a_model_that_cannot_names_what_can(kontext_engine):
    submit = SubmitJob("e", "edit", JobParams(model="flux", prompt="stormy"), images={"image": "x"})
    with pytest.raises(JobError) as refused:
        kontext_engine.prepare(submit, {"image": rgba_payload(64, 64)})
    assert refused.value.code is ErrorCode.UNSUPPORTED
    assert "a Flux.1 model and cannot run edit" in refused.value.message and "kontext" in refused.value.message
