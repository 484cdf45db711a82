"""Flux.2 Klein (4B, 9B, and their undistilled "base" releases): a flow-matching transformer over
32-channel latents patchified 2×2 into 128-channel tokens (so sides are multiples of 16), one Qwen3
text encoder (the hidden states of three of its layers side by side: 3 × its width), a VAE with a
batch-norm over the patchified latents instead of a scaling factor, 1024² native.

Guidance is classifier-free, with the negative prompt, on the undistilled models (50 steps,
``cfg_scale`` 4); the step-distilled 4B/9B models (``is_distilled`` in their ``model_index.json``,
or in a single file's config folder) run one pass per step: 4 steps, and ``cfg_scale`` and the
negative prompt change nothing (``ModelInfo.ignores``). A1111 emphasis does not apply: the prompt
goes through the LLM's chat template as text, so brackets are dropped and the words kept.

Tasks: txt2img; ``edit`` — an instruction ("make the sky stormy") applied to an image the model
looks at (``Flux2KleinPipeline``'s reference ``image``); inpaint and outpaint through
``Flux2KleinInpaintPipeline`` (which also looks at the whole input image); img2img through that same
pipeline with a mask over everything (Klein has no img2img pipeline of its own: ``strength`` sets how
much of the image is noised, as for any img2img). LoRAs load into the transformer through peft
(diffusers' Flux.2 LoRA reader: diffusers', kohya's and ai-toolkit's keys); the Qwen3 encoder takes
none. No ControlNet units.

Detected from a diffusers folder (``transformer/config.json`` of a ``Flux2Transformer2DModel``) or a
single transformer file in either layout: the original (``single_stream_modulation.lin``) or
diffusers' (``single_stream_modulation.linear``, ``single_transformer_blocks.*.attn.to_qkv_mlp_proj``),
optionally under ``model.diffusion_model.``. Flux.2 files share Flux.1's ``img_in``/``double_blocks``
names, so this family is asked before Flux.1. A single file's model needs a ``config``: a Klein
diffusers folder with the text encoder and the VAE. On CUDA, ``dtype auto`` loads it in bfloat16
(it was trained in it; its Qwen3 encoder's activations can overflow float16).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from protocol.messages import Task

from .facts import Defaults, ModelFacts, read_json, shape
from .family import Family

#: 32 latent channels (the 128-channel tokens unpatchified, still batch-normalised as the
#: transformer sees them) → RGB: the factors ComfyUI uses for Flux.2's VAE.
LATENT_RGB = (((0.0058, 0.0113, 0.0073), (0.0495, 0.0443, 0.0836), (-0.0099, 0.0096, 0.0644),
               (0.2144, 0.3009, 0.3652), (0.0166, -0.0039, -0.0054), (0.0157, 0.0103, -0.0160),
               (-0.0398, 0.0902, -0.0235), (-0.0052, 0.0095, 0.0109), (-0.3527, -0.2712, -0.1666),
               (-0.0301, -0.0356, -0.0180), (-0.0107, 0.0078, 0.0013), (0.0746, 0.0090, -0.0941),
               (0.0156, 0.0169, 0.0070), (-0.0034, -0.0040, -0.0114), (0.0032, 0.0181, 0.0080),
               (-0.0939, -0.0008, 0.0186), (0.0018, 0.0043, 0.0104), (0.0284, 0.0056, -0.0127),
               (-0.0024, -0.0022, -0.0030), (0.1207, -0.0026, 0.0065), (0.0128, 0.0101, 0.0142),
               (0.0137, -0.0072, -0.0007), (0.0095, 0.0092, -0.0059), (0.0000, -0.0077, -0.0049),
               (-0.0465, -0.0204, -0.0312), (0.0095, 0.0012, -0.0066), (0.0290, -0.0034, 0.0025),
               (0.0220, 0.0169, -0.0048), (-0.0332, -0.0457, -0.0468), (-0.0085, 0.0389, 0.0609),
               (-0.0076, 0.0003, -0.0043), (-0.0111, -0.0460, -0.0614)), (-0.0329, -0.0718, -0.0851))

#: Text features per encoder layer the transformer reads (Qwen3's layers 9, 18 and 27 side by side).
TEXT_LAYERS = 3
_PREFIXES = ("", "model.diffusion_model.")
_MARKS = ("single_stream_modulation.lin.weight", "single_stream_modulation.linear.weight")


def detect_folder(folder: Path, index: Mapping[str, Any], origin: str) -> ModelFacts | None:
    config = read_json(folder / "transformer" / "config.json")
    if config is None or config.get("_class_name") != "Flux2Transformer2DModel":
        return None
    encoder = read_json(folder / "text_encoder" / "config.json") or {}
    widths = (int(encoder["hidden_size"]),) if encoder.get("hidden_size") else ()
    return ModelFacts("flux2", "base", origin, "flow", context_dim=int(config.get("joint_attention_dim", 7680)),
                      text_dims=widths, guidance_embeds=False, distilled=bool(index.get("is_distilled", False)))


def detect_file(header: Mapping[str, Any], prediction: str) -> ModelFacts | None:
    for prefix in _PREFIXES:
        if any(prefix + mark in header for mark in _MARKS):
            context = shape(header, prefix + "txt_in.weight", prefix + "context_embedder.weight")
            width = int(context[1]) if context else 7680
            return ModelFacts("flux2", "base", "single_file", "flow", context_dim=width,
                              text_dims=(width // TEXT_LAYERS,), guidance_embeds=False)
    return None


def unpack(latents: Any, width: int, height: int) -> Any:
    """Step latents ``(B, (h/2)·(w/2), 128)`` (tokens row by row, each 32 channels × 2 × 2) →
    ``(B, 32, h, w)`` for an image of ``width × height`` pixels (8 per latent). The pipeline's own
    output is already ``(B, 32, h, w)`` (and de-normalised for the VAE): returned as it is."""
    if latents.ndim == 4:
        return latents
    batch, _, packed = latents.shape
    rows, cols = height // 16, width // 16
    grid = latents.view(batch, rows, cols, packed).permute(0, 3, 1, 2)
    out = grid.reshape(batch, packed // 4, 2, 2, rows, cols).permute(0, 1, 4, 2, 5, 3)
    return out.reshape(batch, packed // 4, rows * 2, cols * 2)


def encode(root: Any, prompt: str, negative: str, expansions: Mapping[str, list[str]] | None = None) -> Any:
    """The Qwen3 features through the pipeline's own ``encode_prompt`` (its chat template, 512
    tokens). Emphasis brackets are dropped; textual-inversion embeddings do not apply. The negative
    prompt is encoded only where it is used: an undistilled model's classifier-free guidance."""
    import torch

    from ..prompts import Conditioning, plain_text

    device = getattr(root, "_execution_device", None) or root.transformer.device
    with torch.no_grad():
        embeds, _ = root.encode_prompt(prompt=plain_text(prompt), device=device, num_images_per_prompt=1)
        negative_embeds = None
        if not root.config.get("is_distilled", False):
            negative_embeds, _ = root.encode_prompt(prompt=plain_text(negative), device=device, num_images_per_prompt=1)
    return Conditioning(embeds, negative_embeds)


FAMILY = Family(
    name="flux2", label="Flux.2 Klein", defaults=Defaults(1024, 50, 4.0), latent_channels=32, latent_rgb=LATENT_RGB,
    pipelines={"txt2img": "Flux2KleinPipeline", "img2img": "Flux2KleinInpaintPipeline",
               "inpaint": "Flux2KleinInpaintPipeline", "edit": "Flux2KleinPipeline"},
    root_roles={"base": "txt2img"},
    tasks_by_kind={"base": (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT, Task.EDIT)},
    encode=encode, text_dims=(2560,), context_dim=7680, emphasis=False, size_multiple=16, denoiser="transformer",
    single_file_model="Flux2Transformer2DModel", sized_image_tasks=True,
    samplers={"euler": ("FlowMatchEulerDiscreteScheduler", {})}, default_sampler="euler",
    detect_folder=detect_folder, detect_file=detect_file, unpack=unpack,
    kind_of_channels=lambda channels: "base", half_dtype="bf16", distilled_defaults=Defaults(1024, 4, 1.0), img2img_by_inpaint=True,
    config_repos={"base": "black-forest-labs/FLUX.2-klein-4B"},
    suggestions={"depth2img": "Flux.2 Klein has no depth model here: an SD 2.x depth model does",
                 Task.UPSCALE: "an SD 1.x, SD 2.x or SDXL base model does (tiled upscaling)"},
)
