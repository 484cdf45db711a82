"""SD 3.5 (and SD 3): an MMDiT transformer over 16-channel latents in 2×2 patches (sides multiples
of 16), three text encoders (CLIP-L and CLIP-G, pooled and sequence, plus T5), flow matching,
1024² native. Classifier-free guidance with a negative prompt, as SD 1.x. A1111 emphasis does not
apply (T5): brackets are dropped, the words kept. txt2img, img2img, inpaint and outpaint through
diffusers' SD3 pipelines; LoRAs (diffusers' key layout) load into the transformer and the two CLIP
encoders through peft (``backend.addons``); no ControlNet units here yet.

Detected from a diffusers folder (``transformer/config.json`` of an ``SD3Transformer2DModel``) or a
single file in either tensor layout: the original (``joint_blocks.*``, ``x_embedder.proj``) or
diffusers' (``transformer_blocks.*`` with ``pos_embed.proj``), optionally under
``model.diffusion_model.``. A single file's transformer is loaded with its model's ``config``: an
SD 3.5 diffusers folder holding the text encoders and the VAE.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from protocol.messages import Task

from .facts import Defaults, ModelFacts, read_json, shape
from .family import Family

#: 16 latent channels → RGB (the factors ComfyUI uses for SD 3's VAE).
LATENT_RGB = (((-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
               (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
               (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
               (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
               (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
               (-0.1448, -0.1463, -0.1189)), (0.2394, 0.2135, 0.1925))
_PREFIXES = ("", "model.diffusion_model.")


def detect_folder(folder: Path, index: Mapping[str, Any], origin: str) -> ModelFacts | None:
    config = read_json(folder / "transformer" / "config.json")
    if config is None or config.get("_class_name") != "SD3Transformer2DModel":
        return None
    widths = tuple(int((read_json(folder / name / "config.json") or {}).get(key, 0))
                   for name, key in (("text_encoder", "hidden_size"), ("text_encoder_2", "hidden_size"),
                                     ("text_encoder_3", "d_model"))
                   if (folder / name / "config.json").is_file())
    return ModelFacts("sd3", "base", origin, "flow", context_dim=int(config.get("joint_attention_dim", 4096)),
                      text_dims=widths)


def detect_file(header: Mapping[str, Any], prediction: str) -> ModelFacts | None:
    for prefix in _PREFIXES:
        original = prefix + "joint_blocks.0.x_block.attn.qkv.weight" in header and prefix + "x_embedder.proj.weight" in header
        converted = prefix + "pos_embed.proj.weight" in header and prefix + "transformer_blocks.0.attn.to_q.weight" in header
        if original or converted:
            context = shape(header, prefix + "context_embedder.weight")
            return ModelFacts("sd3", "base", "single_file", "flow", context_dim=int(context[1]) if context else 4096,
                              text_dims=(768, 1280, 4096))
    return None


def encode(root: Any, prompt: str, negative: str, expansions: Mapping[str, list[str]] | None = None) -> Any:
    """The three encoders through the pipeline's own ``encode_prompt`` (emphasis brackets dropped;
    textual-inversion embeddings do not apply)."""
    import torch

    from ..prompts import Conditioning, plain_text

    device = getattr(root, "_execution_device", None) or root.transformer.device
    with torch.no_grad():
        embeds, negative_embeds, pooled, negative_pooled = root.encode_prompt(
            prompt=plain_text(prompt), prompt_2=None, prompt_3=None, negative_prompt=plain_text(negative),
            device=device, num_images_per_prompt=1, do_classifier_free_guidance=True)
    return Conditioning(embeds, negative_embeds, pooled, negative_pooled)


FAMILY = Family(
    name="sd3", label="SD 3.5", defaults=Defaults(1024, 28, 4.5), latent_channels=16, latent_rgb=LATENT_RGB,
    pipelines={"txt2img": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
               "inpaint": "StableDiffusion3InpaintPipeline"},
    root_roles={"base": "txt2img"},
    tasks_by_kind={"base": (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT)},
    encode=encode, text_dims=(768, 1280, 4096), context_dim=4096, emphasis=False, size_multiple=16,
    denoiser="transformer", single_file_model="SD3Transformer2DModel", expands_embeds=False, sized_image_tasks=True,
    samplers={"euler": ("FlowMatchEulerDiscreteScheduler", {})}, default_sampler="euler",
    detect_folder=detect_folder, detect_file=detect_file, demo_defaults=Defaults(128, 4, 4.5),
    kind_of_channels=lambda channels: "base",
    config_repos={"base": "stabilityai/stable-diffusion-3.5-large"},
    suggestions={"edit": "a Flux.1 Kontext model (kind edit) or a Flux.2 Klein model does", "depth2img": "SD 3.5 has no depth model here: an SD 2.x depth model does",
                 Task.UPSCALE: "an SD 1.x, SD 2.x or SDXL base model does (tiled upscaling)"},
)
