"""LoRAs and textual-inversion embeddings from configured folders: listing and family detection
from the files' headers, ids only (no path from a client, nothing outside the folders), applying
with weights, nothing leaking into the next job, the adapter cache, and every bad request's error.

The LoRAs are peft adapters on the tiny UNet (and text encoder) with random weights, saved with
diffusers' ``save_lora_weights``; the embeddings are random vectors in A1111's and SDXL's layouts.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from backend import demo
from backend.addons import MAX_ADAPTERS, AddonStore, adapter_name
from backend.engine import Engine, EngineConfig, ModelSpec
from backend.errors import JobError
from protocol import ErrorCode, JobParams, LoraWeight, SubmitJob
from tiny_guidance import guided_dirs, guided_engine, guided_engine_for  # noqa: F401 - fixtures
from tiny_models import Recorder, model_dirs, pixels  # noqa: F401 - fixture


def txt2img(engine: Engine, prompt: str = "a cat", loras=(), model: str = "tiny", **params):
    params.setdefault("steps", 2)
    params.setdefault("seed", 11)
    submit = SubmitJob("lora-job", "txt2img", JobParams(prompt=prompt, model=model, width=64, height=64,
                                                        loras=tuple(LoraWeight(i, w) for i, w in loras), **params))
    output = engine.run(engine.prepare(submit, {}), Recorder())
    return pixels(output.images[0]), output.timings


def refused(engine: Engine, loras, model: str = "tiny") -> JobError:
    submit = SubmitJob("lora-job", "txt2img", JobParams(model=model, loras=tuple(LoraWeight(i, w) for i, w in loras)))
    with pytest.raises(JobError) as caught:
        engine.prepare(submit, {})
    return caught.value


# --------------------------------------------------------------------------- listing


def test_folders_are_listed_with_families(guided_engine):
    loras, embeddings = guided_engine.addon_infos()
    assert [(a.id, a.name, a.kind, a.family) for a in loras] == [
        ("ink", "ink", "lora", "sd15"), ("style", "style", "lora", "sd15"), ("sub/deep", "deep", "lora", "sd15"),
        ("xl-style", "xl-style", "lora", "sdxl")]
    assert [(e.id, e.kind, e.family, e.trigger) for e in embeddings] == [
        ("glow", "embedding", "sdxl", "glow"), ("sparkle", "embedding", "sd15", "sparkle")]


def test_families_of_released_shapes_and_layouts(tmp_path):
    """kohya and peft key layouts, SD 1.x/2.x/XL widths, embedding layouts — from headers only."""
    import torch
    from safetensors.torch import save_file

    loras, embeddings = tmp_path / "loras", tmp_path / "embeddings"
    loras.mkdir()
    embeddings.mkdir()
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768),
               "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": torch.zeros(4, 768)},
              str(loras / "kohya15.safetensors"))
    save_file({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.zeros(4, 1024)},
              str(loras / "peft21.safetensors"))
    save_file({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 2048),
               "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": torch.zeros(4, 1280)},
              str(loras / "kohyaxl.safetensors"))
    save_file({"something": torch.zeros(2)}, str(loras / "not-a-lora.safetensors"))
    (loras / "broken.safetensors").write_bytes(b"\x00" * 3)
    save_file({"emb_params": torch.zeros(3, 768)}, str(embeddings / "a15.safetensors"))
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, str(embeddings / "axl.safetensors"))
    save_file({"<tok>": torch.zeros(1024)}, str(embeddings / "a21.safetensors"))
    store = AddonStore([loras], [embeddings])
    found, embedded = store.infos()
    assert [(a.id, a.family) for a in found] == [("kohya15", "sd15"), ("kohyaxl", "sdxl"), ("peft21", "sd2")]
    assert [(a.id, a.family) for a in embedded] == [("a15", "sd15"), ("a21", "sd2"), ("axl", "sdxl")]


def test_a_relative_or_linked_folder_is_listed(tmp_path, monkeypatch):
    """A folder given relative to the working directory (``--models-dir comfy``) or through a link is
    listed by the paths inside it; the listing used to fail (every ``list_models`` an internal error)."""
    import torch
    from safetensors.torch import save_file

    real = tmp_path / "real" / "loras"
    (real / "styles").mkdir(parents=True)
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768)},
              str(real / "styles" / "ink.safetensors"))
    (tmp_path / "linked").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    for folder in ("real/loras", tmp_path / "linked"):
        store = AddonStore([folder], [])
        loras, _ = store.infos()
        assert [(a.id, a.family) for a in loras] == [("styles/ink", "sd15")]
        assert store.resolve_path(store.lora("styles/ink")) == (real / "styles" / "ink.safetensors").resolve()


def test_only_safetensors_inside_the_folders_are_read(guided_dirs, tmp_path):
    loras = tmp_path / "loras"
    shutil.copytree(guided_dirs["loras"], loras)
    torch.save({"x": torch.zeros(1)}, str(loras / "pickled.pt"))  # pickle-based (by content: the suffix is not read)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(loras / "ink.safetensors", outside / "secret.safetensors")
    os.symlink(outside / "secret.safetensors", loras / "link.safetensors")
    deep = loras / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    shutil.copy(loras / "ink.safetensors", deep / "too-deep.safetensors")
    ids = [a.id for a in AddonStore([loras]).infos()[0]]
    assert ids == ["ink", "style", "sub/deep", "xl-style"]
    unsafe = [a.id for a in AddonStore([loras], allow_unsafe=True).infos()[0]]
    assert "pickled" in unsafe and "link" not in unsafe


def test_new_files_are_found_without_a_restart(guided_dirs, tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    engine = Engine(EngineConfig(models=(ModelSpec("tiny", str(guided_dirs["base"])),), device="cpu",
                                 cache_folder=tmp_path / "cache", lora_dirs=(loras,)))
    assert engine.addon_infos()[0] == []
    assert refused(engine, [("ink", 1.0)]).code is ErrorCode.UNKNOWN_MODEL
    shutil.copy(guided_dirs["loras"] / "ink.safetensors", loras / "ink.safetensors")
    prepared = engine.prepare(SubmitJob("j", "txt2img", JobParams(model="tiny", loras=(LoraWeight("ink", 1.0),))), {})
    assert prepared.params.loras == (("ink", 1.0),)


# --------------------------------------------------------------------------- applying


def test_lora_changes_the_image_weight_zero_does_not_and_nothing_leaks(guided_engine, guided_dirs, tmp_path):
    plain, _ = txt2img(guided_engine)
    styled, timings = txt2img(guided_engine, loras=[("style", 1.0)])
    assert np.abs(styled.astype(int) - plain.astype(int)).max() > 10
    half, _ = txt2img(guided_engine, loras=[("style", 0.5)])
    assert not np.array_equal(half, styled) and not np.array_equal(half, plain)
    zero, _ = txt2img(guided_engine, loras=[("style", 0.0)])
    assert np.array_equal(zero, plain)
    after, _ = txt2img(guided_engine)  # the next job without the LoRA
    fresh = guided_engine_for(guided_dirs, tmp_path)  # a server that never saw a LoRA
    untouched, _ = txt2img(fresh)
    assert np.array_equal(after, plain) and np.array_equal(after, untouched)


def test_several_loras_and_the_adapter_cache(guided_engine):
    both, first_timings = txt2img(guided_engine, loras=[("style", 0.8), ("ink", 0.6)])
    ink, _ = txt2img(guided_engine, loras=[("ink", 0.6)])
    assert not np.array_equal(both, ink)
    again, timings = txt2img(guided_engine, loras=[("style", 0.8), ("ink", 0.6)])
    assert np.array_equal(again, both) and timings["load"] == 0  # loaded once, reused
    model, _ = guided_engine.models.get("tiny")
    assert {adapter_name("style"), adapter_name("ink")} <= set(model.root.unet.peft_config)
    assert adapter_name("style") in model.root.text_encoder.peft_config  # the text-encoder layers too


def test_adapters_per_model_are_bounded(guided_dirs, tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    for i in range(MAX_ADAPTERS + 2):  # one file under many names: adapters are kept by id
        shutil.copy(guided_dirs["loras"] / "ink.safetensors", loras / f"l{i}.safetensors")
    engine = Engine(EngineConfig(models=(ModelSpec("tiny", str(guided_dirs["base"])),), device="cpu",
                                 cache_folder=tmp_path / "cache", lora_dirs=(loras,)))
    for i in range(MAX_ADAPTERS + 2):
        txt2img(engine, loras=[(f"l{i}", 1.0)], steps=1)
    model, _ = engine.models.get("tiny")
    assert len(model.root.unet.peft_config) == MAX_ADAPTERS and len(model.adapters.loaded) == MAX_ADAPTERS
    assert adapter_name("l0") not in model.root.unet.peft_config  # the least recently used went first


def test_sdxl_lora(guided_engine):
    plain, _ = txt2img(guided_engine, model="tiny-xl")
    styled, _ = txt2img(guided_engine, model="tiny-xl", loras=[("xl-style", 1.0)])
    after, _ = txt2img(guided_engine, model="tiny-xl")
    assert np.abs(styled.astype(int) - plain.astype(int)).max() > 5 and np.array_equal(after, plain)


@pytest.mark.parametrize("loras, code, message", [
    ([("xl-style", 1.0)], ErrorCode.MODEL_MISMATCH, "LoRA 'xl-style' is for sdxl but model 'tiny' is sd15; pick a LoRA made for sd15"),
    ([("nope", 1.0)], ErrorCode.UNKNOWN_MODEL, "unknown LoRA 'nope'; this server has: ink, style, sub/deep, xl-style"),
    ([("../loras/ink", 1.0)], ErrorCode.UNKNOWN_MODEL, "unknown LoRA '../loras/ink'"),
    ([("/etc/passwd", 1.0)], ErrorCode.UNKNOWN_MODEL, "unknown LoRA '/etc/passwd'"),
    ([("ink", 2.5)], ErrorCode.INVALID_PARAMETER, "LoRA 'ink': weight must be between -2 and 2, got 2.5"),
    ([("ink", 1.0), ("ink", 0.5)], ErrorCode.INVALID_PARAMETER, "LoRA 'ink' is listed twice"),
    ([("", 1.0)], ErrorCode.INVALID_PARAMETER, "each LoRA needs an id"),
    ([(f"x{i}", 1.0) for i in range(9)], ErrorCode.INVALID_PARAMETER, "a job may apply at most 8 LoRAs, got 9"),
])
def test_bad_loras(guided_engine, loras, code, message):
    err = refused(guided_engine, loras)
    assert err.code is code and err.message.startswith(message) and err.details == {"field": "loras"}


def test_no_lora_folder_says_how_to_configure_one(guided_dirs, tmp_path):
    engine = Engine(EngineConfig(models=(ModelSpec("tiny", str(guided_dirs["base"])),), device="cpu",
                                 cache_folder=tmp_path))
    assert refused(engine, [("ink", 1.0)]).message == ("unknown LoRA 'ink'; this server has no LoRA folder configured "
                                                       "(easel serve --lora-dir DIR)")


def test_demo_lora(tmp_path):
    engine = Engine(EngineConfig(device="cpu", cache_folder=tmp_path))
    plain, _ = txt2img(engine, model="demo")
    styled, _ = txt2img(engine, model="demo", loras=[("demo-style", 1.0)])
    assert not np.array_equal(plain, styled)
    assert (tmp_path / demo.DEMO_VERSION / "loras" / "demo-style.safetensors").is_file()
    assert not (tmp_path / demo.DEMO_VERSION / "depth").exists()  # only what was used is built


# --------------------------------------------------------------------------- embeddings


def conditioning(engine: Engine, model_id: str, prompt: str):
    from backend.engine import _Setup

    prepared = engine.prepare(SubmitJob("e", "txt2img", JobParams(model=model_id, prompt=prompt)), {})
    model, _ = engine.models.get(model_id)
    setup = _Setup(engine, prepared)
    setup.pipeline(model, "txt2img")
    return setup.conditioning(model, model.root)


def test_an_embedding_trigger_changes_the_text_embedding_and_is_removed_after(guided_engine):
    model, _ = guided_engine.models.get("tiny")
    vocabulary = len(model.root.tokenizer)
    rows = model.root.text_encoder.get_input_embeddings().weight.shape[0]
    with_it = conditioning(guided_engine, "tiny", "a sparkle cat").prompt_embeds
    without = conditioning(guided_engine, "tiny", "a sparkel cat").prompt_embeds
    assert not np.allclose(with_it.numpy(), without.numpy())
    assert len(model.root.tokenizer) == vocabulary  # unloaded again: "sparkle" is an ordinary word between jobs
    assert model.root.text_encoder.get_input_embeddings().weight.shape[0] == rows
    assert "sparkle" not in model.root.tokenizer.get_vocab()
    plain_word = conditioning(guided_engine, "tiny", "a sparkles cat").prompt_embeds  # not the whole word
    assert plain_word.shape == with_it.shape


def test_sdxl_embedding_and_the_other_familys_is_ignored(guided_engine):
    xl_with = conditioning(guided_engine, "tiny-xl", "a glow lamp")
    xl_without = conditioning(guided_engine, "tiny-xl", "a gl0w lamp")
    assert not np.allclose(xl_with.prompt_embeds.numpy(), xl_without.prompt_embeds.numpy())
    assert not np.allclose(xl_with.pooled_prompt_embeds.numpy(), xl_without.pooled_prompt_embeds.numpy())
    model, _ = guided_engine.models.get("tiny")
    # "glow" is an SDXL embedding: for the SD model it stays an ordinary word
    assert [a.trigger for a in guided_engine.addons.embeddings_in(["a glow lamp"], model.facts)] == []


def test_embedding_in_a_job_changes_the_image(guided_engine):
    a, _ = txt2img(guided_engine, prompt="a sparkle cat")
    b, _ = txt2img(guided_engine, prompt="a sparkel cat")
    assert not np.array_equal(a, b)


# --------------------------------------------------------------------------- configuration


def test_flags_and_toml_keys_for_addons_and_controlnets(tmp_path):
    from backend.cli import build_parser, server_config
    from backend.config import ConfigError, ModelEntry, load_toml

    loras, embeddings = tmp_path / "loras", tmp_path / "embeddings"
    loras.mkdir()
    embeddings.mkdir()
    args = build_parser().parse_args(["serve", "--model", "sd15=/models/v1-5", "--controlnet", "canny=/models/cn-canny",
                                      "--lora-dir", str(loras), "--embedding-dir", str(embeddings)])
    config = server_config(args)
    assert config.models == (ModelEntry("sd15", "/models/v1-5"), ModelEntry("canny", "/models/cn-canny", kind="controlnet"))
    assert config.lora_dirs == (loras,) and config.embedding_dirs == (embeddings,)
    engine_config = EngineConfig.from_settings(config)
    assert engine_config.lora_dirs == (loras,) and engine_config.models[1].kind == "controlnet"

    toml = tmp_path / "easel.toml"
    toml.write_text(f'lora_dirs = ["{loras}"]\nembedding_dirs = ["{embeddings}"]\n[models]\n'
                    f'pose = {{ path = "lllyasviel/control_v11p_sd15_openpose", kind = "controlnet", control_type = "openpose" }}\n')
    values = load_toml(toml)
    assert values["lora_dirs"] == (loras,) and values["models"][0].control_type == "openpose"
    assert EngineConfig.from_settings(server_config(build_parser().parse_args(["serve", "--config", str(toml)]))
                                      ).models[0].control_type == "openpose"
    with pytest.raises(ConfigError, match="lora_dirs: .*missing is not a folder; create it or fix the path"):
        server_config(build_parser().parse_args(["serve", "--lora-dir", str(tmp_path / "missing")]))
    toml.write_text('[models]\nx = { path = "/m", kind = "lora" }\n')
    with pytest.raises(ConfigError, match="kind must be base, inpaint, depth, edit, control or controlnet, got 'lora'"):
        server_config(build_parser().parse_args(["serve", "--config", str(toml)]))


def test_the_same_loras_again_are_not_switched_again_and_every_change_switches(guided_dirs, tmp_path, monkeypatch):
    """apply_loras remembers what it switched the modules to: a job asking for the same LoRAs and
    weights switches nothing (switching walks every module), and every other job gets exactly the
    pixels it would get on a server that never ran anything before it."""
    import diffusers.utils.peft_utils as peft_utils

    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copy(guided_dirs["loras"] / "style.safetensors", loras / "x.safetensors")
    shutil.copy(guided_dirs["loras"] / "ink.safetensors", loras / "ink.safetensors")

    def engine_for(name: str) -> Engine:
        return Engine(EngineConfig(models=(ModelSpec("tiny", str(guided_dirs["base"])),), device="cpu",
                                   cache_folder=tmp_path / name, lora_dirs=(loras,)))

    fresh_engines = []

    def fresh(chosen=()):  # the same job on a server that ran nothing before
        fresh_engines.append(engine_for(f"fresh{len(fresh_engines)}"))
        return txt2img(fresh_engines[-1], loras=chosen)[0]

    switches = []
    real = peft_utils.set_weights_and_activate_adapters

    def counted(module, names, weights):
        switches.append(names)
        return real(module, names, weights)

    monkeypatch.setattr(peft_utils, "set_weights_and_activate_adapters", counted)
    engine = engine_for("kept")
    first = txt2img(engine, loras=[("x", 0.8)])[0]
    assert switches
    switches.clear()
    assert np.array_equal(txt2img(engine, loras=[("x", 0.8)])[0], first) and not switches  # nothing switched
    half = txt2img(engine, loras=[("x", 0.5)])[0]
    assert switches and np.array_equal(half, fresh([("x", 0.5)]))
    assert np.array_equal(txt2img(engine)[0], fresh())  # no LoRA: disabled
    switches.clear()
    assert np.array_equal(txt2img(engine, loras=[("x", 0.8)])[0], first) and switches  # enabled again
    ink = txt2img(engine, loras=[("ink", 0.8)])[0]
    assert np.array_equal(txt2img(engine, loras=[("x", 0.8)])[0], first)
    shutil.copy(loras / "ink.safetensors", loras / "x.safetensors")  # x changes on disk: loaded again
    os.utime(loras / "x.safetensors", (1, 1))
    switches.clear()
    assert np.array_equal(txt2img(engine, loras=[("x", 0.8)])[0], ink) and switches
