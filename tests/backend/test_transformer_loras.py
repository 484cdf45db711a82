"""LoRAs for the transformer families (Flux.1, SD 3.5) on tiny random models built offline: the
family read from the file's header (tensor names, shapes, the trainer's metadata), listed with it,
applied through peft with its weight (weight 0 is no LoRA), disabled again for a job without LoRAs
(byte-identical to before it was ever loaded), a LoRA of another family refused with
``model_mismatch`` naming both families — through the engine and through the real server.

The LoRAs are peft adapters on every attention projection of the tiny transformers with random
weights, saved with the pipelines' ``save_lora_weights`` (``backend.demo.build_tiny_transformer_lora``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.addons import AddonStore, adapter_name
from backend.config import ModelEntry, ServerConfig
from backend.errors import JobError
from protocol import JobFailed, JobParams, JobResult, LoraWeight, ModelList, SubmitJob
from protocol.errors import ErrorCode
from test_server_harness import Client, ServerThread, make_engine
from tiny_models import Recorder, grey_payload, pixels, rgba_payload


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from backend.demo import build_tiny_flux, build_tiny_sd3, build_tiny_transformer_lora

    root = tmp_path_factory.mktemp("transformer-loras")
    flux, sd3 = build_tiny_flux(root / "flux"), build_tiny_sd3(root / "sd3")
    fill, kontext = build_tiny_flux(root / "fill", fill=True), build_tiny_flux(root / "kontext", kontext=True)
    loras = root / "loras"
    sd35 = "stable-diffusion-v3.5-medium/lora"  # the tiny SD 3.5's 32-wide attention is no released
    # width: its trainer's metadata names it. "*-te": the same transformer part plus a CLIP-L part.
    for name, folder, seed, te, architecture in [("flux-style", flux, 1, False, ""), ("flux-te", flux, 1, True, ""),
                                                 ("sd3-style", sd3, 2, False, sd35), ("sd3-te", sd3, 2, True, sd35)]:
        build_tiny_transformer_lora(folder, loras / f"{name}.safetensors", seed=seed, architecture=architecture,
                                    text_encoder=te)
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
               torch.zeros(4, 768)}, str(loras / "sd15-ink.safetensors"))  # refused from its header: never loaded
    return {"flux": flux, "sd3": sd3, "fill": fill, "kontext": kontext, "loras": loras}


def config(dirs, tmp_path) -> ServerConfig:
    models = tuple(ModelEntry(name, str(dirs[name])) for name in ("flux", "sd3", "fill", "kontext"))
    return ServerConfig(port=0, models=models,
                        lora_dirs=(dirs["loras"],), device="cpu", cache_dir=tmp_path / "cache", queue_size=4)


@pytest.fixture(scope="module")
def engine(dirs, tmp_path_factory):
    return make_engine(config(dirs, tmp_path_factory.mktemp("engine")))


def params(model: str, loras=()) -> JobParams:
    return JobParams(model=model, prompt="a lighthouse", width=64, height=64, steps=2, seed=5,
                     loras=tuple(LoraWeight(i, w) for i, w in loras))


def txt2img(engine, model: str, loras=()) -> np.ndarray:
    output = engine.run(engine.prepare(SubmitJob("l", "txt2img", params(model, loras)), {}), Recorder())
    return pixels(output.images[0])


def test_listed_with_their_families(engine):
    loras, _ = engine.addon_infos()
    assert [(a.id, a.family) for a in loras] == [("flux-style", "flux"), ("flux-te", "flux"), ("sd15-ink", "sd15"),
                                                 ("sd3-style", "sd3"), ("sd3-te", "sd3")]


@pytest.mark.parametrize("keys, shape, metadata, family", [
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
      "lora_unet_single_blocks_0_linear1.lora_down.weight"], (4, 3072), None, "flux"),  # kohya (sd-scripts)
    (["diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight"], (4, 3072), None, "flux"),  # BFL / ComfyUI
    (["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"], (4, 3072), None, "flux"),  # diffusers
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], (4, 3072), None, "flux"),  # joint blocks only
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], (4, 2432), None, "sd3"),  # SD 3.5 Large
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], (4, 1536), None, "sd3"),  # SD 3.5 Medium
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], (4, 64), {"ss_base_model_version": "flux1"}, "flux"),
    (["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"], (4, 1536), None, "sd3"),
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], (4, 64), None, ""),  # a transformer's, which unknown
])
def test_transformer_families_from_headers(tmp_path, keys, shape, metadata, family):
    (tmp_path / "l").mkdir()
    save_file({key: torch.zeros(*shape) for key in keys}, str(tmp_path / "l" / "x.safetensors"), metadata=metadata)
    found = AddonStore([tmp_path / "l"]).lora("x")
    assert (found.family, found.transformer) == (family, True)


@pytest.mark.parametrize("model, lora", [("flux", "flux-style"), ("sd3", "sd3-style")])
def test_lora_changes_pixels_weight_zero_is_none_and_nothing_leaks(engine, model, lora):
    before = txt2img(engine, model)  # the model has never had this LoRA loaded
    styled = txt2img(engine, model, [(lora, 1.0)])
    assert np.abs(styled.astype(int) - before.astype(int)).max() > 10
    half = txt2img(engine, model, [(lora, 0.5)])
    assert not np.array_equal(half, styled) and not np.array_equal(half, before)
    assert np.array_equal(txt2img(engine, model, [(lora, 0.0)]), before)
    assert np.array_equal(txt2img(engine, model), before)  # disabled again: byte-identical
    assert np.array_equal(txt2img(engine, model, [(lora, 1.0)]), styled)  # loaded once, enabled again


@pytest.mark.parametrize("model, task", [("fill", "inpaint"), ("kontext", "edit")])
def test_a_flux_lora_applies_to_fill_and_kontext_models(engine, model, task):
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    images = {"image": rgba_payload(64, 64, seed=3), **({"mask": grey_payload(mask)} if task == "inpaint" else {})}

    def job(loras=()):
        submit = SubmitJob("l", task, params(model, loras), images={role: p.id for role, p in images.items()})
        return pixels(engine.run(engine.prepare(submit, images), Recorder()).images[0])

    before = job()
    assert np.abs(job([("flux-style", 1.0)]).astype(int) - before.astype(int)).max() > 10
    assert np.array_equal(job(), before)


@pytest.mark.parametrize("model, lora", [("flux", "flux"), ("sd3", "sd3")])
def test_the_text_encoder_part_applies_and_leaves_with_the_lora(engine, model, lora):
    """"*-te" has "*-style"'s transformer part plus a CLIP-L part: the difference is the prompt's."""
    before = txt2img(engine, model)
    transformer_only = txt2img(engine, model, [(f"{lora}-style", 1.0)])
    both = txt2img(engine, model, [(f"{lora}-te", 1.0)])
    assert np.abs(both.astype(int) - transformer_only.astype(int)).max() > 0
    root = engine.models.get(model)[0].root
    assert adapter_name(f"{lora}-te") in root.text_encoder.peft_config  # CLIP-L took its part
    assert adapter_name(f"{lora}-te") not in (getattr(root.text_encoder_2, "peft_config", None) or {})
    assert np.array_equal(txt2img(engine, model, [(f"{lora}-te", 0.0)]), before)
    assert np.array_equal(txt2img(engine, model), before)


@pytest.mark.parametrize("model, lora, made_for, family", [
    ("flux", "sd3-style", "sd3", "flux"), ("sd3", "flux-style", "flux", "sd3"), ("flux", "sd15-ink", "sd15", "flux")])
def test_a_lora_of_another_family_is_refused(engine, model, lora, made_for, family):
    with pytest.raises(JobError) as refused:
        engine.prepare(SubmitJob("l", "txt2img", params(model, [(lora, 1.0)])), {})
    assert (refused.value.code, refused.value.details.get("field")) == (ErrorCode.MODEL_MISMATCH, "loras")
    assert refused.value.message == (f"LoRA {lora!r} is for {made_for} but model {model!r} is {family}; "
                                     f"pick a LoRA made for {family}")


def test_through_the_server(engine, dirs, tmp_path):
    with ServerThread(config(dirs, tmp_path), engine) as server, Client(server.url) as client:
        client.session.list_models()
        client.flush()
        listed = client.until(lambda e: isinstance(e, ModelList))[-1]
        assert {(a.id, a.family) for a in listed.loras} >= {("flux-style", "flux"), ("sd3-style", "sd3")}
        plain = client.run(SubmitJob("a", "txt2img", params("flux")))[-1]
        styled = client.run(SubmitJob("b", "txt2img", params("flux", [("flux-style", 0.8)])))[-1]
        again = client.run(SubmitJob("c", "txt2img", params("flux")))[-1]
        assert all(isinstance(e, JobResult) for e in (plain, styled, again))
        assert styled.images[0].id != plain.images[0].id and again.images[0].id == plain.images[0].id
        wrong = client.run(SubmitJob("d", "txt2img", params("flux", [("sd3-style", 1.0)])))[-1]
        assert isinstance(wrong, JobFailed) and wrong.code is ErrorCode.MODEL_MISMATCH
        assert "is for sd3 but model 'flux' is flux" in wrong.message
