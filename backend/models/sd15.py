"""SD 1.x (and the demo models, which have its shape): 4-channel latents, one 768-wide CLIP text
encoder, 512² native, classifier-free guidance, ControlNet and LoRA."""
from __future__ import annotations

from .facts import Defaults
from .family import Family
from .unet import ROOT_ROLES, SD15_LATENT_RGB, STANDARD_TEXT_DIMS, TASKS_BY_KIND, detector, encode

PIPELINES = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
             "inpaint": "StableDiffusionInpaintPipeline", "depth2img": "StableDiffusionDepth2ImgPipeline"}
CONTROL_PIPELINES = {"txt2img": "StableDiffusionControlNetPipeline",
                     "img2img": "StableDiffusionControlNetImg2ImgPipeline",
                     "inpaint": "StableDiffusionControlNetInpaintPipeline"}
_folder, _file = detector("sd15")

FAMILY = Family(
    name="sd15", label="SD 1.x", defaults=Defaults(512, 25, 7.0), latent_channels=4, latent_rgb=SD15_LATENT_RGB,
    pipelines=PIPELINES, control_pipelines=CONTROL_PIPELINES, root_roles=ROOT_ROLES, tasks_by_kind=TASKS_BY_KIND,
    encode=encode, text_dims=STANDARD_TEXT_DIMS["sd15"], context_dim=768, taesd="sd15",
    config_repos={"base": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                  "inpaint": "stable-diffusion-v1-5/stable-diffusion-inpainting",
                  "controlnet": "lllyasviel/control_v11p_sd15_canny"},
    detect_folder=_folder, detect_file=_file,
    suggestions={"edit": "a Flux.1 Kontext model (kind edit) or a Flux.2 Klein model does", "depth2img": "a depth model does (5-channel UNet, e.g. stabilityai/stable-diffusion-2-depth)"},
)

#: The built-in random demo models: SD 1.x shapes, 32-wide text features, 128² so they run anywhere.
DEMO = Family(
    name="demo", label="demo", defaults=Defaults(128, 8, 7.0), latent_channels=4, latent_rgb=SD15_LATENT_RGB,
    pipelines=PIPELINES, control_pipelines=CONTROL_PIPELINES, root_roles=ROOT_ROLES, tasks_by_kind=TASKS_BY_KIND,
    encode=encode, text_dims=STANDARD_TEXT_DIMS["demo"], context_dim=32, taesd="sd15",
    suggestions=FAMILY.suggestions,
)
