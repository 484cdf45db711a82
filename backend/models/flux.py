"""Flux.1 (dev, schnell, Fill): a flow-matching transformer over 16-channel latents packed 2×2
(so sides are multiples of 16), CLIP-L pooled + T5 sequence text features (4096 wide), 1024² native.

Kontext models (kind ``edit``: detected from a diffusers folder's ``FluxKontextPipeline``; a single
file needs ``kind = "edit"`` in the config, its tensors look like a base model's) run the ``edit``
task — an instruction such as "make the sky stormy" applied to an image — and txt2img.

Guidance is distilled: dev's transformer takes the guidance value as an input (``cfg_scale`` is that
value, default 3.5) and runs one pass per step, so there is no negative prompt; schnell has no
guidance input and ignores both. A1111 emphasis does not apply to T5: brackets are dropped and the
words kept. Fill models (384 input channels: latents + masked image + mask) inpaint and outpaint
through ``FluxFillPipeline``; base models inpaint through ``FluxInpaintPipeline``. Flux ControlNets
guide base models in control units, and the Canny/Depth control transformers (128 input channels)
are kinds of their own (``control``, ``depth``): see :mod:`backend.models.flux_control`. LoRAs load
into the transformer and the CLIP encoder through peft (``backend.addons``), read by diffusers' Flux
LoRA reader (diffusers' own keys; it converts kohya's, BFL's and XLabs' layouts — the tests cover
diffusers' keys).

Detected from a diffusers folder (``transformer/config.json`` of a ``FluxTransformer2DModel``) or
a single transformer file in either layout: the original (``double_blocks.*``, ``img_in``) or
diffusers' (``transformer_blocks.*``, ``x_embedder``), optionally under ``model.diffusion_model.``.
A single file holds only the transformer: its model's ``config`` must be a Flux diffusers folder
with the text encoders and the VAE (any Flux.1 folder: the file's input channels are read from its
header). Transformer files in fp8 or GGUF load too (:mod:`backend.models.weight_files`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from protocol.messages import Task

from . import flux_control
from .facts import Defaults, ModelFacts, read_json, shape
from .family import Family

#: 16 latent channels → RGB, for per-step previews (the factors ComfyUI uses for Flux.1's VAE).
LATENT_RGB = (((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
               (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
               (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
               (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
               (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
               (-0.1262, -0.0982, -0.0778)), (-0.0329, -0.0718, -0.0851))

BASE_CHANNELS, FILL_CHANNELS = 64, 384
_PREFIXES = ("", "model.diffusion_model.")


def kind_of_channels(in_channels: int) -> str:
    """64 packed input channels: a base model; 384 (latents + masked image + mask): Fill; 128
    (latents + control image): a Canny or Depth control model."""
    return {FILL_CHANNELS: "inpaint", flux_control.CONTROL_CHANNELS: "control"}.get(int(in_channels), "base")


def detect_folder(folder: Path, index: Mapping[str, Any], origin: str) -> ModelFacts | None:
    config = read_json(folder / "transformer" / "config.json")
    if config is None or config.get("_class_name") != "FluxTransformer2DModel":
        return None
    kind = kind_of_channels(config.get("in_channels", BASE_CHANNELS))
    if index.get("_class_name") == "FluxKontextPipeline":
        kind = "edit"  # Kontext's transformer has a base model's shapes; its pipeline names it
    widths = tuple(int((read_json(folder / name / "config.json") or {}).get(key, 0))
                   for name, key in (("text_encoder", "hidden_size"), ("text_encoder_2", "d_model"))
                   if (folder / name / "config.json").is_file())
    return ModelFacts("flux", kind, origin, "flow",
                      context_dim=int(config.get("joint_attention_dim", 4096)), text_dims=widths,
                      guidance_embeds=bool(config.get("guidance_embeds", False)))


def detect_file(header: Mapping[str, Any], prediction: str) -> ModelFacts | None:
    for prefix in _PREFIXES:
        entry = shape(header, prefix + "img_in.weight", prefix + "x_embedder.weight")
        blocks = (prefix + "double_blocks.0.img_attn.qkv.weight", prefix + "transformer_blocks.0.attn.to_q.weight")
        if entry and any(name in header for name in blocks):
            context = shape(header, prefix + "txt_in.weight", prefix + "context_embedder.weight")
            guidance = any(k.startswith((prefix + "guidance_in.", prefix + "time_text_embed.guidance_embedder."))
                           for k in header)
            return ModelFacts("flux", kind_of_channels(entry[1]), "single_file", "flow",
                              context_dim=int(context[1]) if context else 4096, text_dims=(768, 4096),
                              guidance_embeds=guidance)
    return None


def unpack(latents: Any, width: int, height: int) -> Any:
    """Packed step latents ``(B, (h/2)·(w/2), C·4)`` → ``(B, C, h, w)`` for an image of
    ``width × height`` pixels (8 pixels per latent)."""
    if latents.ndim == 4:
        return latents
    batch, _, packed = latents.shape
    rows, cols = height // 16, width // 16
    out = latents.view(batch, rows, cols, packed // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(batch, packed // 4, rows * 2, cols * 2)


def encode(root: Any, prompt: str, negative: str, expansions: Mapping[str, list[str]] | None = None) -> Any:
    """CLIP pooled + T5 sequence embeddings through the pipeline's own ``encode_prompt``. Emphasis
    brackets are dropped (T5 has no per-token weights here); the negative prompt is not used
    (distilled guidance makes no negative pass); textual-inversion embeddings do not apply."""
    import torch

    from ..prompts import Conditioning, plain_text

    device = getattr(root, "_execution_device", None) or root.transformer.device
    with torch.no_grad():
        embeds, pooled, _ = root.encode_prompt(prompt=plain_text(prompt), prompt_2=None, device=device,
                                               num_images_per_prompt=1)
    return Conditioning(embeds, None, pooled, None)


FAMILY = Family(
    name="flux", label="Flux.1", defaults=Defaults(1024, 28, 3.5), latent_channels=16, latent_rgb=LATENT_RGB,
    pipelines={"txt2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline",
               "fill": "FluxFillPipeline", "edit": "FluxKontextPipeline", "control": "FluxControlPipeline",
               "control_img2img": "FluxControlImg2ImgPipeline", "control_inpaint": "FluxControlInpaintPipeline"},
    root_roles={"base": "txt2img", "inpaint": "fill", "edit": "edit", "control": "control", "depth": "control"},
    tasks_by_kind={"base": (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT),
                   "inpaint": (Task.INPAINT, Task.OUTPAINT), "edit": (Task.EDIT, Task.TXT2IMG),
                   "control": (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT), "depth": (Task.DEPTH2IMG,)},
    control_pipelines={"txt2img": "FluxControlNetPipeline", "img2img": "FluxControlNetImg2ImgPipeline",
                       "inpaint": "FluxControlNetInpaintPipeline"},
    controlnet_model="FluxControlNetModel", multi_controlnet="FluxMultiControlNetModel",
    controlnet_misfit=flux_control.controlnet_misfit, control_image_arg="control_image", control_modes=True,
    control_kinds=("control",),
    kind_roles={"control": {"txt2img": "control", "img2img": "control_img2img", "inpaint": "control_inpaint"},
                "depth": {"depth2img": "control_img2img"}},
    shape_kinds={"edit": "base", "depth": "control"},
    kind_defaults={"control": Defaults(1024, 28, 30.0), "depth": Defaults(1024, 28, 10.0)},
    single_file_config=flux_control.single_file_config,
    detect_controlnet_folder=flux_control.controlnet_folder_facts,
    detect_controlnet_file=flux_control.controlnet_file_facts,
    encode=encode, text_dims=(768, 4096), context_dim=4096, guidance="distilled", emphasis=False,
    size_multiple=16, denoiser="transformer", single_file_model="FluxTransformer2DModel",
    expands_embeds=False, sized_image_tasks=True, samplers={"euler": ("FlowMatchEulerDiscreteScheduler", {})},
    default_sampler="euler", detect_folder=detect_folder, detect_file=detect_file, unpack=unpack,
    demo_defaults=Defaults(128, 4, 3.5), kind_of_channels=kind_of_channels,
    config_repos={"base": "black-forest-labs/FLUX.1-dev", "inpaint": "black-forest-labs/FLUX.1-Fill-dev"},
    suggestions={"depth2img": "a Flux.1 Depth model (kind depth, e.g. black-forest-labs/FLUX.1-Depth-dev) or an SD 2.x "
                              "depth model does",
                 Task.UPSCALE: "an SD 1.x, SD 2.x or SDXL base model does (tiled upscaling)",
                 Task.EDIT: "a Flux.1 Kontext model does (kind edit)",
                 Task.INPAINT: "a Flux.1 Fill model (black-forest-labs/FLUX.1-Fill-dev) or any Flux.1 base model does"},
)
