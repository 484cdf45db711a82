"""Z-Image (Turbo, and the undistilled base): a single-stream flow-matching transformer over Flux.1's
16-channel latents in 2×2 patches (sides multiples of 16), one Qwen3 text encoder (its second-last
hidden state, only the prompt's own tokens), Flux.1's VAE, 1024² native.

Guidance is classifier-free with the negative prompt. Z-Image's pipelines count guidance from 0
(``prompt + s · (prompt - negative)``); Easel's ``cfg_scale`` counts as every other family's does
(1 = no guidance, no negative pass), so the pipelines get ``cfg_scale - 1``. The defaults are
Turbo's: 8 steps at ``cfg_scale`` 1 (the weights do not say whether a model is Turbo; the undistilled
model wants about 50 steps at ``cfg_scale`` 4–5, which a job sets). A1111 emphasis does not apply:
the prompt goes through the LLM's chat template as text, so brackets are dropped and the words kept.

Tasks: txt2img, img2img, inpaint and outpaint through ``ZImagePipeline``, ``ZImageImg2ImgPipeline``
and ``ZImageInpaintPipeline``. LoRAs load into the transformer through peft (diffusers' Z-Image LoRA
reader: diffusers', kohya's and ai-toolkit's keys); the Qwen3 encoder takes none. No ControlNet units.
Previews use Flux.1's latent → RGB factors (the same VAE), and a TAESD configured for ``flux``.

Detected from a diffusers folder (``transformer/config.json`` of a ``ZImageTransformer2DModel``) or a
single transformer file (``layers.N.adaLN_modulation`` with ``cap_embedder``, in the original or
diffusers' layout, optionally under ``model.diffusion_model.``). A single file's model needs a
``config``: a Z-Image diffusers folder with the text encoder and the VAE. On CUDA, ``dtype auto``
loads it in bfloat16 (it was trained in it, and its transformer, unlike Flux's, does not clamp
float16 activations).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from protocol.messages import Task

from . import flux
from .facts import Defaults, ModelFacts, read_json, shape
from .family import Family

_PREFIXES = ("", "model.diffusion_model.")


def detect_folder(folder: Path, index: Mapping[str, Any], origin: str) -> ModelFacts | None:
    config = read_json(folder / "transformer" / "config.json")
    if config is None or config.get("_class_name") != "ZImageTransformer2DModel":
        return None
    encoder = read_json(folder / "text_encoder" / "config.json") or {}
    width = int(config.get("cap_feat_dim", encoder.get("hidden_size", 2560)))
    return ModelFacts("zimage", "base", origin, "flow", context_dim=width, text_dims=(width,))


def detect_file(header: Mapping[str, Any], prediction: str) -> ModelFacts | None:
    for prefix in _PREFIXES:
        caption = shape(header, prefix + "cap_embedder.1.weight")
        if prefix + "layers.0.adaLN_modulation.0.weight" in header and caption:
            return ModelFacts("zimage", "base", "single_file", "flow", context_dim=int(caption[1]),
                              text_dims=(int(caption[1]),))
    return None


def encode(root: Any, prompt: str, negative: str, expansions: Mapping[str, list[str]] | None = None) -> Any:
    """The Qwen3 features of both prompts through the pipeline's own ``encode_prompt`` (lists of
    one tensor each, as long as the prompt's tokens). Emphasis brackets are dropped;
    textual-inversion embeddings do not apply."""
    import torch

    from ..prompts import Conditioning, plain_text

    device = getattr(root, "_execution_device", None) or root.transformer.device
    with torch.no_grad():
        embeds, negative_embeds = root.encode_prompt(prompt=[plain_text(prompt)], negative_prompt=[plain_text(negative)],
                                                     device=device, do_classifier_free_guidance=True)
    return Conditioning(embeds, negative_embeds)


def guidance_scale(cfg_scale: float) -> float:
    """Easel's ``cfg_scale`` (1: no guidance) → Z-Image's ``guidance_scale`` (0: no guidance)."""
    return max(0.0, cfg_scale - 1.0)


FAMILY = Family(
    name="zimage", label="Z-Image", defaults=Defaults(1024, 8, 1.0), latent_channels=16, latent_rgb=flux.LATENT_RGB,
    pipelines={"txt2img": "ZImagePipeline", "img2img": "ZImageImg2ImgPipeline", "inpaint": "ZImageInpaintPipeline"},
    root_roles={"base": "txt2img"},
    tasks_by_kind={"base": (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT)},
    encode=encode, text_dims=(2560,), context_dim=2560, emphasis=False, size_multiple=16, denoiser="transformer",
    single_file_model="ZImageTransformer2DModel", sized_image_tasks=True,
    samplers={"euler": ("FlowMatchEulerDiscreteScheduler", {})}, default_sampler="euler", taesd="flux",
    detect_folder=detect_folder, detect_file=detect_file,
    kind_of_channels=lambda channels: "base", half_dtype="bf16", guidance_scale=guidance_scale,
    config_repos={"base": "Tongyi-MAI/Z-Image-Turbo"},
    suggestions={"edit": "a Flux.1 Kontext model (kind edit) or a Flux.2 Klein model does",
                 "depth2img": "Z-Image has no depth model here: an SD 2.x depth model does",
                 Task.UPSCALE: "an SD 1.x, SD 2.x or SDXL base model does (tiled upscaling)"},
)
