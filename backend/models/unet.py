"""What the UNet families (SD 1.x, SD 2.x, SDXL) share: detection from a diffusers folder or an
original-layout single file, and the sampler-agnostic pieces. Each family module declares its
:class:`~backend.models.family.Family` with these, filtered to its own name."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from protocol.messages import Task

from .facts import ModelFacts, read_json, shape

#: Text encoder widths of the released models of each family.
STANDARD_TEXT_DIMS: dict[str, tuple[int, ...]] = {"sd15": (768,), "sd2": (1024,), "sdxl": (768, 1280), "demo": (32,)}
CONTEXT_DIMS = {"sd15": 768, "sd2": 1024, "sdxl": 2048}

#: Tasks a UNet model of each kind can run. A 9-channel inpainting UNet only repaints masked areas;
#: a depth UNet needs a depth map.
TASKS_BY_KIND: dict[str, tuple[str, ...]] = {
    "base": (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT, Task.UPSCALE),
    "inpaint": (Task.INPAINT, Task.OUTPAINT),
    "depth": (Task.DEPTH2IMG,),
    "controlnet": (),  # used by a job's control units, never as the job's model
}
ROOT_ROLES = {"base": "txt2img", "inpaint": "inpaint", "depth": "depth2img"}

# Latent → RGB factors (rows: latent channels; columns: R, G, B) as ComfyUI/A1111 previews use
# them; they act on the scaled latents the pipeline steps on, output in [-1, 1].
SD15_LATENT_RGB = (((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
                    (-0.2120, -0.2616, -0.7177)), (0.0, 0.0, 0.0))
SDXL_LATENT_RGB = (((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                    (-0.3165, -0.2492, -0.2188)), (0.1084, -0.0175, -0.0011))


def family_from_context(context_dim: int, sdxl_marks: bool = False) -> str:
    """SD family from the width of the text features: 2048 (or SDXL's added conditioning) SDXL,
    1024 SD 2.x, anything else reads as SD 1.x."""
    if sdxl_marks or context_dim == 2048:
        return "sdxl"
    return "sd2" if context_dim == 1024 else "sd15"


def family_from_unet(config: Mapping[str, Any], has_second_encoder: bool) -> str:
    """SD family from a UNet config: SDXL has added ``text_time`` conditioning (and a second text
    encoder); SD 2.x cross-attends to 1024-wide OpenCLIP features; everything else reads as SD 1.x."""
    if has_second_encoder or config.get("addition_embed_type") == "text_time" or config.get("cross_attention_dim") == 2048:
        return "sdxl"
    if config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd15"


def kind_from_in_channels(in_channels: int) -> str:
    """9 input channels: inpainting UNet (latents + mask + masked image); 5: depth UNet; else base."""
    return {9: "inpaint", 5: "depth"}.get(int(in_channels), "base")


def context_dim(config: Mapping[str, Any]) -> int:
    value = config.get("cross_attention_dim", 0)
    return int(value[0] if isinstance(value, list) and value else value or 0)


def folder_facts(folder: Path, index: Mapping[str, Any], origin: str) -> ModelFacts | None:
    """Facts of a diffusers folder holding a UNet pipeline, or None (no ``unet/config.json``)."""
    unet = read_json(folder / "unet" / "config.json")
    if unet is None:
        return None
    scheduler = read_json(folder / "scheduler" / "scheduler_config.json") or {}
    second = bool(index.get("text_encoder_2")) and index.get("text_encoder_2") != [None, None]
    widths = tuple(int((read_json(folder / name / "config.json") or {}).get("hidden_size", 0))
                   for name in ("text_encoder", "text_encoder_2") if (folder / name / "config.json").is_file())
    return ModelFacts(family_from_unet(unet, second), kind_from_in_channels(unet.get("in_channels", 4)), origin,
                      scheduler.get("prediction_type", "epsilon"), context_dim=context_dim(unet), text_dims=widths)


def file_facts(header: Mapping[str, Any], prediction: str) -> ModelFacts | None:
    """Facts of an original-layout (A1111/ComfyUI) SD checkpoint, or None when it holds no UNet.

    SDXL v-prediction fine-tunes (NoobAI, Illustrious v-pred) carry an empty ``v_pred`` tensor
    as their marker; a file with it samples as v-prediction whatever the config folder says."""
    first = shape(header, "model.diffusion_model.input_blocks.0.0.weight")
    if not first:
        return None
    kind = kind_from_in_channels(first[1])
    if any(k.startswith("conditioner.embedders.1.") for k in header):
        family = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in header):
        family = "sd2"  # OpenCLIP text encoder
    else:
        family = "sd15"
    if "v_pred" in header:
        prediction = "v_prediction"
    return ModelFacts(family, kind, "single_file", prediction, context_dim=CONTEXT_DIMS[family],
                      text_dims=STANDARD_TEXT_DIMS[family])


def detector(name: str):
    """The folder and file detectors of the UNet family ``name``: the shared ones, kept to it."""

    def folder(path: Path, index: Mapping[str, Any], origin: str) -> ModelFacts | None:
        facts = folder_facts(path, index, origin)
        return facts if facts is not None and facts.family == name else None

    def single(header: Mapping[str, Any], prediction: str) -> ModelFacts | None:
        facts = file_facts(header, prediction)
        return facts if facts is not None and facts.family == name else None

    return folder, single


def encode(root: Any, prompt: str, negative: str, expansions: Mapping[str, list[str]] | None = None) -> Any:
    """CLIP encoding with A1111 emphasis and long prompts (see :mod:`backend.prompts`)."""
    from ..prompts import encode as clip_encode

    return clip_encode(root, "", prompt, negative, expansions)
