"""Model specs, family/kind detection, the three loading paths, the bounded cache, the demo models."""
from __future__ import annotations

import hashlib
import json
import shutil
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend import demo
from backend.engine import Engine, EngineConfig
from backend.errors import JobError
from backend.models import ModelConfigError, ModelSpec, inspect, pickled_weights, resolve_device, resolve_dtype
from protocol import ErrorCode
from tiny_models import engine, grey_payload, model_dirs, rgba_payload, run  # noqa: F401 - fixtures


def fresh_engine(model_specs, tmp_path, **config) -> Engine:
    return Engine(EngineConfig(models=tuple(model_specs), device="cpu", cache_folder=tmp_path / "cache", **config))


# --------------------------------------------------------------------------- detection


def test_family_and_kind_from_diffusers_folders(model_dirs):
    found = {name: inspect(ModelSpec(name, str(model_dirs[name]))) for name in ("base", "inpaint", "depth", "sdxl")}
    assert {n: (f.family, f.kind, f.origin) for n, f in found.items()} == {
        "base": ("sd15", "base", "folder"), "inpaint": ("sd15", "inpaint", "folder"),
        "depth": ("sd15", "depth", "folder"), "sdxl": ("sdxl", "base", "folder")}


def test_sd2_v_prediction_from_configs(tmp_path):
    """Detection reads configs only: an SD 2.x 768-v folder is recognised without its weights."""
    (tmp_path / "unet").mkdir()
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"in_channels": 4, "cross_attention_dim": 1024}))
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    facts = inspect(ModelSpec("sd21", str(tmp_path)))
    assert (facts.family, facts.kind, facts.prediction_type) == ("sd2", "base", "v_prediction")
    assert facts.defaults.size == 768


@pytest.mark.parametrize("keys, in_channels, expected", [
    (["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"], 4, ("sd15", "base")),
    (["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"], 5, ("sd2", "depth")),
    (["conditioner.embedders.0.transformer.text_model.x", "conditioner.embedders.1.model.ln_final.weight"], 9,
     ("sdxl", "inpaint")),
])
def test_family_and_kind_from_single_file_headers(tmp_path, keys, in_channels, expected):
    tensors = {key: torch.zeros(1) for key in keys}
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, in_channels, 3, 3)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    facts = inspect(ModelSpec("m", str(path)))
    assert (facts.family, facts.kind, facts.origin) == expected + ("single_file",)


def test_spec_values_win_over_detection(model_dirs):
    facts = inspect(ModelSpec("m", str(model_dirs["base"]), family="sd2"))
    assert (facts.family, facts.kind) == ("sd2", "base")


# --------------------------------------------------------------------------- loading


def test_single_file_loads_like_the_folder_it_came_from(engine, model_dirs):
    """A single-file checkpoint with a config-only folder: offline, same weights, same pixels."""
    config_files = [p.name for p in model_dirs["single_config"].rglob("*") if p.is_file()]
    assert not any(name.endswith((".safetensors", ".bin")) for name in config_files)  # weights come from the file
    single, _ = engine.models.get("tiny-single")
    folder, _ = engine.models.get("tiny")
    assert single.facts.origin == "single_file"
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(single.root, name).state_dict(), getattr(folder.root, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    a, _ = run(engine, "txt2img", model="tiny-single", width=64, height=64, seed=5)
    b, _ = run(engine, "txt2img", model="tiny", width=64, height=64, seed=5)
    assert a.images[0].data == b.images[0].data


def test_single_file_without_config_offline_says_what_to_download(model_dirs, tmp_path):
    # The engine gives single files the configs Easel ships (test_single_file.py); the loader alone
    # still says what to download when it has none.
    import torch

    from backend.models import load_model

    spec = ModelSpec("sf", str(model_dirs["single"]))
    with pytest.raises(JobError) as caught:
        load_model(spec, inspect(spec), "cpu", torch.float32)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in caught.value.message


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_checkpoints_are_refused_without_the_flag(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not loaded")
    with pytest.raises(ModelConfigError) as caught:
        fresh_engine([ModelSpec("old", str(path))], tmp_path)
    assert "can run any code" in str(caught.value) and "--allow-unsafe-checkpoints" in str(caught.value)
    allowed = fresh_engine([ModelSpec("old", str(path))], tmp_path, allow_unsafe_checkpoints=True)
    assert [info.id for info in allowed.model_infos()] == ["old"]


def test_pickled_weights_finds_the_pickle_in_a_folder_or_the_hub_cache(tmp_path, monkeypatch):
    """What the depth estimator's and TAESD's errors name when only a pickle-based file is there."""
    import huggingface_hub.constants

    folder = tmp_path / "dpt"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    assert pickled_weights(str(folder), "model.safetensors", "pytorch_model.bin") == "pytorch_model.bin"
    (folder / "model.safetensors").write_bytes(b"not loaded")
    assert pickled_weights(str(folder), "model.safetensors", "pytorch_model.bin") == ""

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--owner--dpt"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "pytorch_model.bin").write_bytes(b"not loaded")
    assert pickled_weights("owner/dpt", "model.safetensors", "pytorch_model.bin") == "pytorch_model.bin"
    assert pickled_weights("owner/absent", "model.safetensors", "pytorch_model.bin") == ""
    (snapshot / "model.safetensors").write_bytes(b"not loaded")
    assert pickled_weights("owner/dpt", "model.safetensors", "pytorch_model.bin") == ""


def test_bad_specs_fail_at_startup(tmp_path, model_dirs):
    with pytest.raises(ModelConfigError, match="does not exist"):
        fresh_engine([ModelSpec("gone", str(tmp_path / "nowhere"))], tmp_path)
    with pytest.raises(ModelConfigError, match="configured twice"):
        fresh_engine([ModelSpec("a", str(model_dirs["base"])), ModelSpec("a", str(model_dirs["inpaint"]))], tmp_path)
    with pytest.raises(ModelConfigError, match="without model_index.json"):
        fresh_engine([ModelSpec("empty", str(tmp_path))], tmp_path)


def test_hub_model_missing_offline_is_a_typed_error_not_a_hang(tmp_path):
    fresh = fresh_engine([ModelSpec("hub", "easel-tests/not-a-real-model")], tmp_path)
    start = time.monotonic()
    with pytest.raises(JobError) as caught:
        run(fresh, "txt2img", model="hub", width=64, height=64)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "hf download easel-tests/not-a-real-model" in caught.value.message
    assert time.monotonic() - start < 60  # generous: only a network wait would come near it


def test_corrupt_weights_are_a_typed_error_and_other_models_still_run(model_dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dirs["base"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    fresh = fresh_engine([ModelSpec("broken", str(broken)), ModelSpec("tiny", str(model_dirs["base"]))], tmp_path)
    with pytest.raises(JobError) as caught:
        run(fresh, "txt2img", model="broken", width=64, height=64)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE and "broken" in caught.value.message
    output, _ = run(fresh, "txt2img", model="tiny", width=64, height=64)
    assert len(output.images) == 1


def test_listed_kind_that_the_weights_contradict(model_dirs, tmp_path):
    fresh = fresh_engine([ModelSpec("liar", str(model_dirs["base"]), kind="depth")], tmp_path)
    with pytest.raises(JobError) as caught:
        run(fresh, "depth2img", {"depth": grey_payload(np.tile(np.arange(64, dtype=np.uint8), (64, 1)))}, model="liar")
    assert caught.value.code is ErrorCode.MODEL_MISMATCH and "4 input channels" in caught.value.message


def test_cache_is_bounded_and_tasks_share_modules(model_dirs, tmp_path):
    fresh = fresh_engine([ModelSpec("tiny", str(model_dirs["base"])), ModelSpec("inp", str(model_dirs["inpaint"]))],
                         tmp_path, cache_size=1)
    first, _ = run(fresh, "txt2img", model="tiny", width=64, height=64)
    assert first.timings["load"] > 0
    image = rgba_payload(64, 64)
    second, _ = run(fresh, "img2img", {"image": image}, model="tiny", width=64, height=64)
    assert second.timings["load"] == 0  # switching task reloads nothing
    loaded, _ = fresh.models.get("tiny")
    assert loaded.pipeline("img2img").unet is loaded.pipeline("txt2img").unet is loaded.root.unet
    assert fresh.models.loaded_ids() == ("tiny",)
    fresh.models.get("inp")
    assert fresh.models.loaded_ids() == ("inp",)  # one model at most: the other was unloaded


def test_server_config_builds_the_engine_config(model_dirs, tmp_path):
    from backend.config import ModelEntry, ServerConfig

    settings = ServerConfig(models=(ModelEntry("tiny", str(model_dirs["base"])),
                                    ModelEntry("sf", str(model_dirs["single"]), config=str(model_dirs["single_config"]))),
                            device="cpu", model_cache_size=2, cache_dir=tmp_path)
    config = EngineConfig.from_settings(settings)
    assert [(s.id, s.source, s.config) for s in config.models] == [
        ("tiny", str(model_dirs["base"]), ""), ("sf", str(model_dirs["single"]), str(model_dirs["single_config"]))]
    assert (config.cache_size, config.device, config.cache_folder) == (2, "cpu", tmp_path)
    assert [i.id for i in Engine(settings).model_infos()] == ["tiny", "sf"]


def test_device_and_dtype_choice():
    assert resolve_device("auto") == "cpu"  # no GPU on the test machines
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda") is torch.float16
    assert resolve_dtype("bf16", "cuda") is torch.bfloat16
    with pytest.raises(ModelConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


# --------------------------------------------------------------------------- demo


def digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_demo_models_are_deterministic_and_cached(tmp_path):
    one = demo.ensure_demo_models(tmp_path / "a")
    two = demo.ensure_demo_models(tmp_path / "b")
    assert digest(one["base"]) == digest(two["base"]) and digest(one["depth"]) == digest(two["depth"])
    stamp = (one["base"] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    again = demo.ensure_demo_models(tmp_path / "a")
    assert again == one and (one["base"] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "a" / demo.DEMO_VERSION).iterdir() if p.name.startswith(".")]  # no leftovers
    facts = inspect(ModelSpec("x", str(one["depth"])))
    assert (facts.kind, facts.origin) == ("depth", "folder")  # a plain diffusers folder, loaded like a user's


# --------------------------------------------------------------------------- v-prediction single files


def test_an_sdxl_v_pred_marker_makes_the_file_v_prediction(tmp_path):
    """NoobAI / Illustrious v-pred files carry an empty ``v_pred`` tensor; nothing else tells them apart."""
    tensors = {"conditioner.embedders.1.model.ln_final.weight": torch.zeros(1),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}
    save_file(tensors, str(tmp_path / "eps.safetensors"))
    save_file({**tensors, "v_pred": torch.zeros(0)}, str(tmp_path / "vpred.safetensors"))
    eps, vpred = (inspect(ModelSpec("m", str(tmp_path / name))) for name in ("eps.safetensors", "vpred.safetensors"))
    assert (eps.family, eps.prediction_type) == ("sdxl", "epsilon")
    assert (vpred.family, vpred.prediction_type) == ("sdxl", "v_prediction")


def test_a_v_pred_file_samples_as_v_prediction_with_an_epsilon_config(model_dirs, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(model_dirs["single"]))
    save_file({**state, "v_pred": torch.zeros(0)}, str(tmp_path / "vpred.safetensors"))
    config = str(model_dirs["single_config"])  # its scheduler predicts epsilon
    engine = Engine(EngineConfig(models=(ModelSpec("eps", str(model_dirs["single"]), config=config),
                                         ModelSpec("v", str(tmp_path / "vpred.safetensors"), config=config)),
                                 device="cpu", cache_folder=tmp_path, cache_size=2))
    for model_id, expected in (("eps", "epsilon"), ("v", "v_prediction")):
        loaded, _ = engine.models.get(model_id)
        assert loaded.scheduler("euler").config.prediction_type == expected
        assert loaded.pipeline("img2img").scheduler.config.prediction_type == expected
