"""Single-file checkpoints load offline with the configs Easel ships (backend/single_file.py).

The shipped configs are checked against the released models they copy: every model built from
them (on the meta device: no memory) has the released model's parameter count, and the CLIP
tokenizer built from the shipped BPE merges gives CLIP's token ids. A tiny single-file checkpoint
(a tiny UNet/VAE, a text encoder with CLIP's 49 408-token vocabulary) then loads and runs through the
engine with no ``--model-config``: the shipped folder with the tiny model's three size configs
written over its real-size ones, everything else (model index, scheduler, both tokenizer files) as
shipped. Real-size loading is the GPU check (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from backend import demo
from backend.engine import Engine, EngineConfig, ModelSpec
from backend.single_file import SHIPPED, config_folder, configs, with_shipped_config
from tiny_models import Recorder, pixels
from protocol import JobParams, SubmitJob

#: Parameters of the released models (UNet / ControlNet / text encoder).
RELEASED = {
    ("sd15", "unet"): 859_520_964, ("sd2", "unet"): 865_910_724, ("sdxl", "unet"): 2_567_463_684,
    ("sd15", "controlnet"): 361_279_120, ("sdxl", "controlnet"): 1_251_014_160,
    ("sd15", "text_encoder"): 123_060_480, ("sd2", "text_encoder"): 340_387_840,
    ("sdxl", "text_encoder_2"): 694_659_840, ("vae", "vae"): 83_653_863,
}


def count(cls, config: dict) -> int:
    import torch

    with torch.device("meta"):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_shipped_configs_build_the_released_models(family):
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    files = configs(family, "base")
    assert count(UNet2DConditionModel, files["unet/config.json"]) == RELEASED[(family, "unet")]
    assert count(AutoencoderKL, files["vae/config.json"]) == RELEASED[("vae", "vae")]
    if (family, "controlnet") in RELEASED:
        assert count(ControlNetModel, configs(family, "controlnet")["config.json"]) == RELEASED[(family, "controlnet")]
    for name in ("text_encoder", "text_encoder_2"):
        if (family, name) in RELEASED:
            config = CLIPTextConfig(**files[f"{name}/config.json"])
            cls = CLIPTextModelWithProjection if name.endswith("_2") else CLIPTextModel
            assert count(cls, config) == RELEASED[(family, name)]
    for kind in ("inpaint", "depth"):
        if (family, kind) in SHIPPED:
            assert configs(family, kind)["unet/config.json"]["in_channels"] == {"inpaint": 9, "depth": 5}[kind]
    prediction = configs(family, "base")["scheduler/scheduler_config.json"]["prediction_type"]
    assert prediction == ("v_prediction" if family == "sd2" else "epsilon")


def test_the_shipped_tokenizers_are_clips(tmp_path):
    from transformers import CLIPTokenizer

    folder = config_folder("sdxl", "base", tmp_path)
    first = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    second = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"), local_files_only=True)
    assert len(first) == 49408
    # CLIP's ids for these words (the released tokenizer's)
    assert first("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert first.pad_token == "<|endoftext|>" and second.pad_token == "!"
    assert (folder / ".easel-configs").is_file()
    stamp = (folder / "unet" / "config.json").stat().st_mtime_ns
    assert config_folder("sdxl", "base", tmp_path) == folder  # written once
    assert (folder / "unet" / "config.json").stat().st_mtime_ns == stamp


def test_unshipped_pairs_get_no_config(tmp_path):
    with pytest.raises(KeyError):
        config_folder("sdxl", "depth", tmp_path)
    spec = ModelSpec("x", "owner/name")
    assert with_shipped_config(spec, tmp_path) is spec  # hub ids: untouched


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny SD 1.x single-file checkpoint whose text encoder has CLIP's vocabulary, and the
    tiny model's diffusers folder (for its size configs)."""
    root = tmp_path_factory.mktemp("tiny-single")
    model = demo.build_tiny_model(root / "diffusers", "base")
    demo._text_encoder(49408, 32, 2, 4, seed=2).save_pretrained(str(model / "text_encoder"))
    return demo.write_single_file(model, root / "checkpoint" / "tiny.safetensors"), model


def shrink(cache: Path, model: Path) -> Path:
    """The shipped sd15 folder in ``cache``, with the tiny model's UNet, VAE and text encoder sizes."""
    folder = config_folder("sd15", "base", cache)
    for part in ("unet", "vae", "text_encoder"):
        shutil.copy(model / part / "config.json", folder / part / "config.json")
    return folder


def test_a_single_file_loads_offline_with_no_model_config(tiny_single, tmp_path):
    checkpoint, model = tiny_single
    folder = shrink(tmp_path, model)
    shipped = json.loads((folder / "model_index.json").read_text())
    assert shipped["_class_name"] == "StableDiffusionPipeline"
    engine = Engine(EngineConfig(models=(ModelSpec("sf", str(checkpoint)),), device="cpu", cache_folder=tmp_path))
    assert engine.models.spec("sf").config == str(folder)
    submit = SubmitJob("j", "txt2img", JobParams(prompt="a lighthouse at dusk", width=64, height=64, steps=2, seed=1))
    image = pixels(engine.run(engine.prepare(submit, {}), Recorder()).images[0])
    assert image.shape == (64, 64, 4) and image[..., :3].std() > 0
    loaded, _ = engine.models.get("sf")
    assert len(loaded.root.tokenizer) == 49408  # the shipped tokenizer, not the tiny model's


def test_a_models_folder_checkpoint_loads_with_no_other_setting(tiny_single, tmp_path):
    checkpoint, model = tiny_single
    shrink(tmp_path / "cache", model)
    comfy = tmp_path / "ComfyUI" / "models" / "checkpoints"
    comfy.mkdir(parents=True)
    shutil.copy(checkpoint, comfy / "tiny.safetensors")
    engine = Engine(EngineConfig(models_dirs=(tmp_path / "ComfyUI",), device="cpu", cache_folder=tmp_path / "cache"))
    assert [i.id for i in engine.model_infos()] == ["tiny"]
    submit = SubmitJob("j", "txt2img", JobParams(prompt="a cat", width=64, height=64, steps=2, seed=1))
    image = pixels(engine.run(engine.prepare(submit, {}), Recorder()).images[0])
    assert image.shape == (64, 64, 4)


def test_a_checkpoint_of_other_shapes_fails_with_a_typed_error(tiny_single, tmp_path):
    from backend.errors import JobError
    from protocol import ErrorCode

    checkpoint, _ = tiny_single  # the shipped real-size sd15 configs do not fit the tiny weights
    engine = Engine(EngineConfig(models=(ModelSpec("sf", str(checkpoint)),), device="cpu", cache_folder=tmp_path))
    submit = SubmitJob("j", "txt2img", JobParams(width=64, height=64, steps=1))
    with pytest.raises(JobError) as caught:
        engine.run(engine.prepare(submit, {}), Recorder())
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE and "could not be loaded" in caught.value.message
