"""Configs for single-file checkpoints, shipped with Easel, so a ``.safetensors`` from a model site
loads offline without ``--model-config``.

``diffusers``' ``from_single_file`` needs a diffusers folder of configs (no weights) beside the
checkpoint: each component's ``config.json``, the scheduler's, ``model_index.json`` and the
tokenizers' files; without one it asks the Hugging Face hub. :func:`config_folder` writes that
folder for a family and kind (SD 1.x, SD 2.x, SDXL; base, inpaint, depth, ControlNet) into the cache
folder the first time it is needed, from the configs below — the values of the released models'
own configs (``stable-diffusion-v1-5``, ``stable-diffusion-2-1``, ``stable-diffusion-xl-base-1.0``,
their inpainting and depth variants, ``control_v11p_sd15_canny``, ``controlnet-canny-sdxl-1.0``) —
and the CLIP tokenizer built from the BPE merges shipped in ``configs/`` (OpenAI CLIP's
``bpe_simple_vocab_16e6``, MIT licence, as OpenCLIP distributes it: see ``configs/LICENSE-clip-bpe``).

SD 2.x checkpoints get SD 2.1's ``v_prediction`` scheduler (768²), as diffusers assumes
for SD 2.x files; a 512² epsilon SD 2.x model needs ``--model-config`` with its own folder.
Checkpoints whose shapes differ from the released model (SDXL "small" ControlNets, pruned UNets)
fail to load with a ``model_unavailable`` error naming the size mismatch: give their own config folder.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from .models import ModelConfigError, ModelSpec, inspect, is_hub_id

#: Bumped whenever a config below changes, so folders written by an older Easel are rewritten.
VERSION = "1"
_MARK = ".easel-configs"
_SCALED_LINEAR = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
_CROSS_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_CROSS_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
_XL_DOWN = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
_XL_UP = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]


def _unet(family: str, in_channels: int) -> dict[str, Any]:
    common = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "center_input_sample": False,
              "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": in_channels,
              "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
              "out_channels": 4}
    if family == "sd15":
        return {**common, "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
                "cross_attention_dim": 768, "down_block_types": _CROSS_DOWN, "up_block_types": _CROSS_UP,
                "sample_size": 64}
    if family == "sd2":
        return {**common, "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
                "cross_attention_dim": 1024, "down_block_types": _CROSS_DOWN, "up_block_types": _CROSS_UP,
                "sample_size": 96 if in_channels == 4 else 64, "use_linear_projection": True}
    return {**common, "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
            "cross_attention_dim": 2048, "down_block_types": _XL_DOWN, "up_block_types": _XL_UP,
            "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True}


def _controlnet(family: str) -> dict[str, Any]:
    unet = _unet(family, 4)
    drop = ("up_block_types", "out_channels", "center_input_sample", "sample_size")
    return {**{k: v for k, v in unet.items() if k not in drop}, "_class_name": "ControlNetModel",
            "conditioning_embedding_out_channels": [16, 32, 96, 256], "controlnet_conditioning_channel_order": "rgb",
            "global_pool_conditions": False, "only_cross_attention": False, "resnet_time_scale_shift": "default",
            "upcast_attention": family == "sd2"}


def _vae(family: str) -> dict[str, Any]:
    config = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
              "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
              "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
              "sample_size": {"sd15": 512, "sd2": 768, "sdxl": 1024}[family], "scaling_factor": 0.18215}
    if family == "sdxl":
        config.update(scaling_factor=0.13025, force_upcast=True)
    return config


def _text_encoder(width: int) -> dict[str, Any]:
    """CLIP-L (768, SD 1.x and SDXL's first), OpenCLIP-H (1024, SD 2.x), OpenCLIP-bigG (1280, SDXL's second)."""
    shape = {768: (12, 12, 3072, "quick_gelu", 768, "CLIPTextModel"),
             1024: (23, 16, 4096, "gelu", 512, "CLIPTextModel"),
             1280: (32, 20, 5120, "gelu", 1280, "CLIPTextModelWithProjection")}[width]
    layers, heads, intermediate, act, projection, cls = shape
    return {"architectures": [cls], "model_type": "clip_text_model", "attention_dropout": 0.0, "dropout": 0.0,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "hidden_act": act, "hidden_size": width,
            "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": intermediate,
            "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": heads,
            "num_hidden_layers": layers, "projection_dim": projection, "torch_dtype": "float32", "vocab_size": 49408}


def _scheduler(family: str, kind: str) -> dict[str, Any]:
    if family == "sdxl":
        return {"_class_name": "EulerDiscreteScheduler", **_SCALED_LINEAR, "interpolation_type": "linear",
                "prediction_type": "epsilon", "sample_max_value": 1.0, "timestep_spacing": "leading",
                "use_karras_sigmas": False}
    prediction = "v_prediction" if family == "sd2" and kind == "base" else "epsilon"
    return {"_class_name": "PNDMScheduler" if family == "sd15" else "DDIMScheduler", **_SCALED_LINEAR,
            "prediction_type": prediction}


_PIPELINES = {("sd15", "base"): "StableDiffusionPipeline", ("sd15", "inpaint"): "StableDiffusionInpaintPipeline",
              ("sd2", "base"): "StableDiffusionPipeline", ("sd2", "inpaint"): "StableDiffusionInpaintPipeline",
              ("sd2", "depth"): "StableDiffusionDepth2ImgPipeline", ("sdxl", "base"): "StableDiffusionXLPipeline",
              ("sdxl", "inpaint"): "StableDiffusionXLInpaintPipeline"}
#: (family, kind) pairs with a shipped config: every pipeline above and the ControlNets.
SHIPPED = tuple(_PIPELINES) + (("sd15", "controlnet"), ("sd2", "controlnet"), ("sdxl", "controlnet"))


def configs(family: str, kind: str) -> dict[str, dict[str, Any]]:
    """The config files of ``family``/``kind`` (path inside the folder → JSON), tokenizers' vocabularies aside."""
    if (family, kind) not in SHIPPED:
        raise KeyError(f"Easel ships no config for {family} {kind} models")
    if kind == "controlnet":
        return {"config.json": _controlnet(family)}
    in_channels = {"base": 4, "inpaint": 9, "depth": 5}[kind]
    files: dict[str, dict[str, Any]] = {
        "unet/config.json": _unet(family, in_channels), "vae/config.json": _vae(family),
        "scheduler/scheduler_config.json": _scheduler(family, kind),
    }
    index: dict[str, Any] = {"_class_name": _PIPELINES[(family, kind)], "_diffusers_version": "0.27.0",
                             "scheduler": ["diffusers", files["scheduler/scheduler_config.json"]["_class_name"]],
                             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    encoders = {"sd15": [768], "sd2": [1024], "sdxl": [768, 1280]}[family]
    for n, width in enumerate(encoders):
        suffix = "" if n == 0 else f"_{n + 1}"
        files[f"text_encoder{suffix}/config.json"] = _text_encoder(width)
        index[f"text_encoder{suffix}"] = ["transformers", _text_encoder(width)["architectures"][0]]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
        pad = "!" if width != 768 else "<|endoftext|>"  # OpenCLIP's tokenizers pad with "!"
        files[f"tokenizer{suffix}/tokenizer_config.json"] = {
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace",
            "add_prefix_space": False, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>", "pad_token": pad}
        files[f"tokenizer{suffix}/special_tokens_map.json"] = {
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}
    if family == "sdxl":
        index.update(force_zeros_for_empty_prompt=True)
        if kind == "inpaint":
            index.update(requires_aesthetics_score=False)
    elif kind == "depth":
        index.update(depth_estimator=[None, None], feature_extractor=[None, None])
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    files["model_index.json"] = index
    return files


def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP's BPE vocabulary and merges, as ``openai/clip-vit-large-patch14``'s ``vocab.json`` and
    ``merges.txt`` hold them: built from the shipped merges the way CLIP's own tokenizer builds them
    (256 byte symbols, the same with ``</w>``, 48 894 merges, the two special tokens)."""
    data = resources.files("backend").joinpath("configs/clip_bpe_simple_vocab_16e6.txt.gz").read_bytes()
    merges = gzip.decompress(data).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    from .demo import _bytes_to_unicode  # the table the demo models' tokenizer is built with

    symbols = list(_bytes_to_unicode().values())
    words = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    return {word: i for i, word in enumerate(words)}, merges


def config_folder(family: str, kind: str, cache: Path) -> Path:
    """The diffusers config folder for single-file ``family``/``kind`` checkpoints, written into
    ``cache`` (``single-file-configs/<family>-<kind>``) the first time. Raises ``KeyError`` for a
    pair Easel ships nothing for (:data:`SHIPPED`)."""
    files = configs(family, kind)
    folder = Path(cache) / "single-file-configs" / f"{family}-{kind}"
    if (folder / _MARK).is_file() and (folder / _MARK).read_text() == VERSION:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = None
    for name, content in files.items():
        _write(folder / name, json.dumps(content, indent=2, sort_keys=True))
        if name.endswith("tokenizer_config.json"):
            vocabulary = vocabulary or clip_vocabulary()
            _write(folder / Path(name).parent / "vocab.json", json.dumps(vocabulary[0], ensure_ascii=False))
            _write(folder / Path(name).parent / "merges.txt", "#version: 0.2\n" + "\n".join(vocabulary[1]) + "\n")
    _write(folder / _MARK, VERSION)  # last: a folder cut short by a crash is written again
    return folder


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + f".{os.getpid()}.tmp")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)


def shipped_config(family: str, kind: str, cache: Path) -> str:
    """:func:`config_folder` as a string, or "" when Easel ships no config for ``family``/``kind``."""
    return str(config_folder(family, kind, cache)) if (family, kind) in SHIPPED else ""


def with_shipped_config(spec: ModelSpec, cache: Path) -> ModelSpec:
    """``spec`` with the shipped config folder of its family and kind when it is a single-file
    ``.safetensors`` checkpoint given without one; any other spec unchanged."""
    source = os.path.expanduser(spec.source)
    if spec.demo or spec.config or is_hub_id(spec.source) or not source.lower().endswith((".safetensors", ".sft")):
        return spec
    try:
        facts = inspect(spec)
    except ModelConfigError:
        return spec  # the store reports it with its own sentence
    if (facts.family, facts.kind) not in SHIPPED:
        return spec
    return replace(spec, config=str(config_folder(facts.family, facts.kind, cache)))
