"""Flux.2 Klein and Z-Image through the family registry, on tiny random models of both built offline
(``backend.demo.build_tiny_flux2`` / ``build_tiny_zimage``: diffusers' test sizes, a tiny Qwen3 and
an offline Qwen tokenizer): detection (folders, single files in both layouts, headers only; LoRA
files), every task each claims through the engine and through the real server (previews per step,
seeds that reproduce, cancel mid-step, a LoRA of the family, a single transformer file loaded with
its config folder), guidance as each family does it, and the refusals' sentences."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.addons import AddonStore
from backend.config import ModelEntry, ServerConfig
from backend.errors import JobCancelledError, JobError
from backend.tasks.common import _check_before_block
from backend.models import ModelSpec, family, inspect
from protocol import (
    JobCancelled, JobFailed, JobParams, JobResult, JobStarted, LoraWeight, Margins, ModelList, StepPreview, SubmitJob,
)
from protocol.errors import ErrorCode
from test_server_harness import Client, ServerThread, grey_mask, make_engine, rgba
from tiny_models import Recorder, cancelled_inside, grey_payload, pixels, rgba_payload

FAMILIES = {"klein": "flux2", "zimage": "zimage"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from backend.demo import build_tiny_flux2, build_tiny_transformer_lora, build_tiny_zimage

    root = tmp_path_factory.mktemp("klein-zimage")
    out = {"klein": build_tiny_flux2(root / "klein"), "klein-base": build_tiny_flux2(root / "klein-base", distilled=False),
           "zimage": build_tiny_zimage(root / "zimage"), "loras": root / "loras"}
    for name in ("klein", "zimage"):
        single = root / f"{name}-transformer.safetensors"
        single.write_bytes((out[name] / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes())
        out[f"{name}-single"] = single
        build_tiny_transformer_lora(out[name], out["loras"] / f"{name}-style.safetensors", seed=3)
    return out


def config(dirs, tmp_path) -> ServerConfig:
    models = (ModelEntry("klein", str(dirs["klein"])), ModelEntry("klein-base", str(dirs["klein-base"])),
              ModelEntry("zimage", str(dirs["zimage"])),
              ModelEntry("klein-single", str(dirs["klein-single"]), config=str(dirs["klein"])),
              ModelEntry("zimage-single", str(dirs["zimage-single"]), config=str(dirs["zimage"])),
              ModelEntry("klein-alone", str(dirs["klein-single"])), ModelEntry("zimage-alone", str(dirs["zimage-single"])))
    return ServerConfig(port=0, models=models, lora_dirs=(dirs["loras"],), device="cpu", cache_dir=tmp_path / "cache",
                        queue_size=4, model_cache_size=5)


@pytest.fixture(scope="module")
def engine(dirs, tmp_path_factory):
    return make_engine(config(dirs, tmp_path_factory.mktemp("engine")))


def run(engine, task, images=None, progress=None, **params):
    params = {"steps": 2, "seed": 7, "width": 64, "height": 64, "prompt": "a lighthouse", **params}
    images = images or {}
    submit = SubmitJob("k", task, JobParams(**params), images={role: p.id for role, p in images.items()} or None)
    prepared = engine.prepare(submit, images)
    return prepared, engine.run(prepared, progress or Recorder())


def image_of(engine, task="txt2img", images=None, **params) -> np.ndarray:
    return pixels(run(engine, task, images, **params)[1].images[0])


# --------------------------------------------------------------------------- detection (no torch work)


def test_folders_are_detected_with_their_guidance(dirs):
    klein, base, zimage = (inspect(ModelSpec("x", str(dirs[k]))) for k in ("klein", "klein-base", "zimage"))
    assert (klein.family, klein.kind, klein.distilled, klein.context_dim, klein.text_dims) == ("flux2", "base", True, 48, (16,))
    assert (base.distilled, base.defaults.steps, base.defaults.cfg) == (False, 50, 4.0)
    assert (klein.defaults.steps, klein.defaults.cfg) == (4, 1.0)  # step-distilled: 4 steps, no CFG
    assert family("flux2").ignores(klein) == ("negative_prompt", "cfg_scale") and family("flux2").ignores(base) == ()
    assert (zimage.family, zimage.kind, zimage.context_dim, zimage.defaults.steps, zimage.defaults.cfg) == (
        "zimage", "base", 16, 8, 1.0)
    # a single file's distillation is its config folder's
    assert inspect(ModelSpec("x", str(dirs["klein-single"]), config=str(dirs["klein"]))).distilled is True
    assert inspect(ModelSpec("x", str(dirs["klein-single"]), config=str(dirs["klein-base"]))).distilled is False


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("keys, context, expected", [
    ({"img_in.weight": (8, 128), "double_blocks.0.img_attn.qkv.weight": (2, 2),  # Flux.2, BFL's layout
      "single_stream_modulation.lin.weight": (2, 2)}, "txt_in.weight", "flux2"),
    ({"x_embedder.weight": (8, 128), "single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight": (2, 2),
      "single_stream_modulation.linear.weight": (2, 2)}, "context_embedder.weight", "flux2"),  # diffusers'
    ({"layers.0.adaLN_modulation.0.weight": (2, 2), "x_embedder.weight": (8, 64)}, "cap_embedder.1.weight", "zimage"),
    ({"layers.0.adaLN_modulation.0.weight": (2, 2), "all_x_embedder.2-1.weight": (8, 64),
      "noise_refiner.0.attention.to_q.weight": (2, 2)}, "cap_embedder.1.weight", "zimage"),
    ({"img_in.weight": (8, 64), "double_blocks.0.img_attn.qkv.weight": (2, 2)}, "txt_in.weight", "flux"),  # Flux.1
])
def test_single_files_are_detected_from_their_tensor_names(tmp_path, prefix, keys, context, expected):
    tensors = {prefix + key: torch.zeros(*shape) for key, shape in keys.items()}
    save_file({**tensors, prefix + context: torch.zeros(8, 7680)}, str(tmp_path / "m.safetensors"))
    facts = inspect(ModelSpec("x", str(tmp_path / "m.safetensors")))
    assert (facts.family, facts.kind, facts.origin, facts.context_dim) == (expected, "base", "single_file", 7680)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_a_models_folder_names_their_transformer_files(tmp_path, dirs, prefix):
    from backend.catalog import kind_from_header
    from backend.models import safetensors_header

    for name, expected in (("klein", "flux2"), ("zimage", "zimage")):
        header = safetensors_header(dirs[f"{name}-single"])
        header = {prefix + key: value for key, value in header.items() if key != "__metadata__"}
        assert kind_from_header(header) == ("diffusion_model", expected, "UNet/transformer only" if prefix else
                                            "transformer only")


@pytest.mark.parametrize("tensors, metadata, expected", [
    ({"transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A.weight": (4, 3072)}, None, "flux2"),
    ({"diffusion_model.single_blocks.0.linear1.lora_A.weight": (4, 3072),  # ai-toolkit / BFL: 9 × the width
      "diffusion_model.single_blocks.0.linear1.lora_B.weight": (27648, 4)}, None, "flux2"),
    ({"diffusion_model.single_blocks.0.linear1.lora_A.weight": (4, 3072),  # Flux.1's: 7 × the width
      "diffusion_model.single_blocks.0.linear1.lora_B.weight": (21504, 4)}, None, "flux"),
    ({"lora_unet_single_blocks_0_linear1.lora_down.weight": (4, 3072),
      "lora_unet_single_blocks_0_linear1.lora_up.weight": (27648, 4)}, None, "flux2"),  # kohya
    ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)},
     {"modelspec.architecture": "flux.2-klein-4b/lora"}, "flux2"),
    ({"diffusion_model.layers.0.attention.to_q.lora_A.weight": (4, 3840)}, None, "zimage"),  # ai-toolkit
    ({"transformer.noise_refiner.0.attention.to_k.lora_A.weight": (4, 3840)}, None, "zimage"),
    ({"lora_unet_layers_0_feed_forward_w1.lora_down.weight": (4, 3840)}, None, "zimage"),  # kohya
])
def test_lora_families_from_headers(tmp_path, tensors, metadata, expected):
    (tmp_path / "l").mkdir()
    save_file({key: torch.zeros(*shape) for key, shape in tensors.items()}, str(tmp_path / "l" / "x.safetensors"),
              metadata=metadata)
    found = AddonStore([tmp_path / "l"]).lora("x")
    assert (found.family, found.transformer) == (expected, True)


def test_auto_precision_on_cuda_is_bfloat16_for_both():
    from backend.models import resolve_dtype

    for name in ("flux2", "zimage"):  # trained in bfloat16, with Qwen3 text encoders
        assert resolve_dtype("auto", "cuda", family(name).half_dtype) is torch.bfloat16
        assert resolve_dtype("auto", "cpu", family(name).half_dtype) is torch.float32
    assert resolve_dtype("auto", "cuda", family("sdxl").half_dtype) is torch.float16
    assert resolve_dtype("fp16", "cuda", family("zimage").half_dtype) is torch.float16  # asked for: given


def test_klein_previews_unpack_what_the_pipeline_packs():
    from diffusers import Flux2KleinPipeline

    latents = torch.randn(2, 32, 6, 8)  # a 64 × 48 image
    packed = Flux2KleinPipeline._pack_latents(Flux2KleinPipeline._patchify_latents(latents))
    assert packed.shape == (2, 12, 128)
    assert torch.equal(family("flux2").unpack(packed, 64, 48), latents)
    assert (family("flux2").latent_channels, len(family("flux2").latent_rgb[0])) == (32, 32)
    assert (family("zimage").latent_channels, len(family("zimage").latent_rgb[0])) == (16, 16)


# --------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("model", ["klein", "zimage"])
def test_txt2img_previews_and_reproducible_seeds(engine, model):
    progress = Recorder()
    prepared, output = run(engine, "txt2img", progress=progress, model=model, width=96, height=64, batch_size=2)
    assert (prepared.params.sampler, prepared.params.steps) == ("euler", 2)
    first, second = (pixels(p) for p in output.images)
    assert first.shape == (64, 96, 4) and first[..., :3].std() > 1 and not np.array_equal(first, second)
    assert [(s, t, w, h) for s, t, w, h, _ in progress.previews] == [(1, 2, 96, 64), (2, 2, 96, 64)]
    assert all(jpeg[:2] == b"\xff\xd8" and len(jpeg) > 200 for *_, jpeg in progress.previews)
    _, again = run(engine, "txt2img", model=model, width=96, height=64, batch_size=2)
    assert all(np.array_equal(pixels(x), y) for x, y in zip(again.images, (first, second)))
    alone = image_of(engine, model=model, width=96, height=64, seed=8)  # seed 8 is the batch's second image
    assert np.abs(alone.astype(int) - second).max() <= 1


@pytest.mark.parametrize("model", ["klein", "zimage"])
def test_image_tasks(engine, model):
    source = rgba_payload(80, 56, seed=2)
    changed = image_of(engine, "img2img", {"image": source}, model=model, strength=0.5, steps=4)
    assert changed.shape == (56, 80, 4) and not np.array_equal(changed, pixels(source))
    image = rgba_payload(96, 64, seed=3, alpha=None)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 255
    painted = image_of(engine, "inpaint", {"image": image, "mask": grey_payload(mask)}, model=model)
    assert np.array_equal(painted[mask == 0], pixels(image)[mask == 0])
    assert not np.array_equal(painted[mask == 255], pixels(image)[mask == 255])
    extended = image_of(engine, "outpaint", {"image": rgba_payload(64, 64, seed=4)}, model=model,
                        margins=Margins(top=16, right=32))
    assert extended.shape == (80, 96, 4)


def test_klein_edits_an_image_by_instruction(engine):
    progress = Recorder()
    prepared, output = run(engine, "edit", {"image": rgba_payload(80, 48, seed=5)}, progress=progress, model="klein",
                           prompt="make the sky stormy", steps=3)
    assert prepared.steps == 3 and [p[:4] for p in progress.previews] == [(1, 3, 80, 48), (2, 3, 80, 48), (3, 3, 80, 48)]
    result = pixels(output.images[0])
    other = image_of(engine, "edit", {"image": rgba_payload(80, 48, seed=6)}, model="klein",
                     prompt="make the sky stormy", steps=3)
    assert result.shape == (48, 80, 4) and not np.array_equal(other, result)  # the image conditions the edit


def test_guidance_as_each_model_does_it(engine):
    # Klein 4B/9B are step-distilled: neither the negative prompt nor cfg_scale changes anything.
    distilled = image_of(engine, model="klein", negative_prompt="fog", cfg_scale=5.0)
    assert np.array_equal(distilled, image_of(engine, model="klein", negative_prompt="rain", cfg_scale=1.0))
    # An undistilled Klein runs classifier-free guidance with the negative prompt.
    assert not np.array_equal(image_of(engine, model="klein-base", negative_prompt="fog"),
                              image_of(engine, model="klein-base", negative_prompt="rain"))
    # Z-Image: cfg_scale 1 is no guidance (its pipeline's 0), so no negative pass; above 1 it is used.
    assert np.array_equal(image_of(engine, model="zimage", negative_prompt="fog"),
                          image_of(engine, model="zimage", negative_prompt="rain"))
    guided = image_of(engine, model="zimage", negative_prompt="fog", cfg_scale=3.0)
    assert not np.array_equal(guided, image_of(engine, model="zimage", negative_prompt="rain", cfg_scale=3.0))
    assert not np.array_equal(guided, image_of(engine, model="zimage", negative_prompt="fog"))


@pytest.mark.parametrize("model, blocks, later", [("klein", "transformer_blocks", "single_transformer_blocks"),
                                                  ("zimage", "layers", "noise_refiner")])
def test_a_cancel_stops_inside_a_transformer_block(engine, model, blocks, later):
    loaded, _ = engine.models.get(model)
    with cancelled_inside(getattr(loaded.root.transformer, blocks)[0]) as progress:
        with pytest.raises(JobCancelledError) as stopped:
            run(engine, "txt2img", progress=progress, model=model, steps=3)
    assert progress.steps == [] and stopped.value.step == 0  # stopped inside step 1
    blocks = [*getattr(loaded.root.transformer, blocks), *getattr(loaded.root.transformer, later)]
    assert [list(b._forward_pre_hooks.values()).count(_check_before_block) for b in blocks] == [1] * len(blocks)  # once each
    assert len(run(engine, "txt2img", model=model)[1].images) == 1


@pytest.mark.parametrize("model", ["klein", "zimage"])
def test_a_single_transformer_file_makes_the_same_image(engine, model):
    assert engine.models.facts(f"{model}-single").family == FAMILIES[model]
    assert np.array_equal(image_of(engine, model=model), image_of(engine, model=f"{model}-single"))


@pytest.mark.parametrize("model, repo", [("klein", "black-forest-labs/FLUX.2-klein-4B"),
                                         ("zimage", "Tongyi-MAI/Z-Image-Turbo")])
def test_a_single_file_without_its_config_folder_says_what_to_download(engine, model, repo):
    with pytest.raises(JobError) as failed:
        run(engine, "txt2img", model=f"{model}-alone")
    assert failed.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "needs a diffusers config folder" in failed.value.message and f"hf download {repo}" in failed.value.message


@pytest.mark.parametrize("model", ["klein", "zimage"])
def test_a_lora_of_the_family_changes_pixels_and_leaves_again(engine, model):
    lora = f"{model}-style"
    before = image_of(engine, model=model)
    styled = image_of(engine, model=model, loras=(LoraWeight(lora, 1.0),))
    half = image_of(engine, model=model, loras=(LoraWeight(lora, 0.5),))
    assert not np.array_equal(styled, before) and not np.array_equal(half, before) and not np.array_equal(half, styled)
    assert np.array_equal(image_of(engine, model=model, loras=(LoraWeight(lora, 0.0),)), before)
    assert np.array_equal(image_of(engine, model=model), before)  # disabled again: byte-identical
    other = "zimage-style" if model == "klein" else "klein-style"
    with pytest.raises(JobError) as refused:
        run(engine, "txt2img", model=model, loras=(LoraWeight(other, 1.0),))
    assert (refused.value.code, refused.value.details.get("field")) == (ErrorCode.MODEL_MISMATCH, "loras")
    assert f"is for {FAMILIES[other.split('-')[0]]} but model {model!r} is {FAMILIES[model]}" in refused.value.message


@pytest.mark.parametrize("model, task, words", [
    ("zimage", "edit", ("model 'zimage' is a Z-Image model and cannot run edit", "Flux.2 Klein model does",
                        "models here that can: klein")),
    ("klein", "depth2img", ("model 'klein' is a Flux.2 Klein model and cannot run depth2img", "SD 2.x depth model",
                            "no configured model can")),
    ("zimage", "upscale", ("a Z-Image model and cannot run upscale", "SD 1.x, SD 2.x or SDXL")),
])
def test_what_they_cannot_do_is_refused_naming_what_would(engine, model, task, words):
    submit = SubmitJob("no", task, JobParams(model=model, prompt="x"), images={"image": "i"})
    with pytest.raises(JobError) as refused:
        engine.prepare(submit, {"image": rgba_payload(64, 64)})
    assert (refused.value.code, refused.value.details.get("field")) == (ErrorCode.UNSUPPORTED, "model")
    assert all(word in refused.value.message for word in words), refused.value.message


@pytest.mark.parametrize("model", ["klein", "zimage"])
def test_reference_images_and_regions_are_refused_naming_the_family(engine, model):
    from protocol import ReferenceImage, Region

    ref, mask = rgba_payload(64, 64, seed=9), grey_payload(np.full((64, 64), 255, np.uint8))
    label = family(FAMILIES[model]).label
    for params, field in (({"references": (ReferenceImage(ref.id),)}, "references"),
                          ({"regions": (Region(mask.id, "a kite"),)}, "regions")):
        submit = SubmitJob("g", "txt2img", JobParams(model=model, prompt="x", **params))
        with pytest.raises(JobError) as refused:
            engine.prepare(submit, {ref.id: ref, mask.id: mask})
        assert (refused.value.code, refused.value.details.get("field")) == (ErrorCode.UNSUPPORTED, field)
        assert f"model {model!r} ({label}) takes no" in refused.value.message


# --------------------------------------------------------------------------- the real server


def test_through_the_server(engine, dirs, tmp_path):
    image, mask = rgba(64, 64), grey_mask(64, 64, (16, 16, 48, 48))
    inputs = {"txt2img": ({}, {}), "img2img": ({"image": image}, {"strength": 0.5}), "inpaint": (
        {"image": image, "mask": mask}, {}), "outpaint": ({"image": image}, {"margins": Margins(left=16)}),
              "edit": ({"image": image}, {})}
    with ServerThread(config(dirs, tmp_path), engine) as server, Client(server.url) as client:
        models = {m.id: m for m in client.welcome.capabilities.models}
        assert (models["klein"].family, models["klein"].tasks, models["klein"].ignores, models["klein"].samplers) == (
            "flux2", ("txt2img", "img2img", "inpaint", "outpaint", "edit"), ("negative_prompt", "cfg_scale"), ("euler",))
        assert (models["klein-base"].ignores, models["klein-base"].default_steps) == ((), 50)
        assert (models["zimage"].family, models["zimage"].tasks, models["zimage"].ignores) == (
            "zimage", ("txt2img", "img2img", "inpaint", "outpaint"), ())
        assert models["klein-single"].family == "flux2" and models["zimage-single"].family == "zimage"
        results = {}
        for model in ("klein", "zimage"):
            for task in models[model].tasks:  # every task each claims, with its previews
                images, extra = inputs[task]
                job = SubmitJob(f"{model}-{task}", task, JobParams(model=model, width=64, height=64, steps=2, seed=3,
                                                                   prompt="a cat", **extra),
                                images={role: p.id for role, p in images.items()} or None)
                events = client.run(job, images.values())
                assert isinstance(events[-1], JobResult), events[-1]
                steps = next(e.steps for e in events if isinstance(e, JobStarted))  # img2img at 0.5: one of two
                assert steps == (1 if task == "img2img" else 2)
                previews = [(e.step, e.total) for e in events if isinstance(e, StepPreview)]
                # a newer preview replaces one not sent yet (protocol: coalesced); each step makes one
                assert previews and all(t == steps for _, t in previews) and previews == sorted(set(previews))
                results[model, task] = events[-1].images[0].id
            plain = SubmitJob("again", "txt2img", JobParams(model=model, width=64, height=64, steps=2, seed=3,
                                                            prompt="a cat"))
            assert client.run(plain)[-1].images[0].id == results[model, "txt2img"]  # the seed reproduces
            single = SubmitJob("single", "txt2img", replace(plain.params, model=f"{model}-single"))
            assert client.run(single)[-1].images[0].id == results[model, "txt2img"]  # the same weights from one file
            styled = SubmitJob("lora", "txt2img", replace(plain.params, loras=(LoraWeight(f"{model}-style", 0.8),)))
            assert client.run(styled)[-1].images[0].id != results[model, "txt2img"]
            client.submit(SubmitJob("long", "txt2img", JobParams(model=model, width=64, height=64, steps=150, seed=1)))
            client.until(lambda e: isinstance(e, StepPreview) and e.job_id == "long")
            client.cancel("long")
            cancelled = client.until_done("long")
            assert isinstance(cancelled[-1], JobCancelled) and cancelled[-1].reason == "requested"
            assert len([e for e in cancelled if isinstance(e, StepPreview)]) < 150
        client.session.list_models()
        client.flush()
        listed = client.until(lambda e: isinstance(e, ModelList))[-1]
        assert {(a.id, a.family) for a in listed.loras} == {("klein-style", "flux2"), ("zimage-style", "zimage")}
        refused = client.run(SubmitJob("e", "edit", JobParams(model="zimage", prompt="stormy"),
                                       images={"image": image.id}), [image])
        assert isinstance(refused[-1], JobFailed) and refused[-1].code is ErrorCode.UNSUPPORTED
        assert "a Z-Image model and cannot run edit" in refused[-1].message and "klein" in refused[-1].message


# --------------------------------------------------------------------------- the memory plan


@pytest.mark.parametrize("model, cfg", [("klein", 4.0), ("klein-base", 4.0), ("zimage", 3.0)])
def test_the_memory_estimate_is_never_below_the_measured_peak(engine, model, cfg):
    from test_memory import FACTOR, measured_peak  # the measured peak of test_memory: CPU allocations counted

    job = SubmitJob("m", "txt2img", JobParams(model=model, width=128, height=128, steps=2, cfg_scale=cfg,
                                              prompt=f"memory {model}"))  # encoded (and measured) anew
    prepared = engine.prepare(job, {})
    measured = measured_peak(engine, prepared)
    assert measured <= prepared.memory.estimate <= FACTOR * measured, (prepared.memory.parts, measured)
    # the Qwen3 encoder's prompt costs its 512 tokens (2 heads, float32), not the 40960 positions its config allows
    assert prepared.memory.parts["text"] == 4 * 2 * 512 * 512 * 4
