"""SDXL: two CLIP encoders (768 + 1280, 2048-wide features, a pooled embedding and size
conditioning), 1024² native, its own VAE (preview factors, fp16 decode upcast). v-prediction
fine-tunes are detected from the single file's ``v_pred`` marker (see :func:`backend.models.unet.file_facts`)."""
from __future__ import annotations

from protocol.messages import Task

from .facts import Defaults
from .family import Family
from .unet import SDXL_LATENT_RGB, STANDARD_TEXT_DIMS, detector, encode

_folder, _file = detector("sdxl")

FAMILY = Family(
    name="sdxl", label="SDXL", defaults=Defaults(1024, 25, 6.0), latent_channels=4, latent_rgb=SDXL_LATENT_RGB,
    pipelines={"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
               "inpaint": "StableDiffusionXLInpaintPipeline"},
    control_pipelines={"txt2img": "StableDiffusionXLControlNetPipeline",
                       "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
                       "inpaint": "StableDiffusionXLControlNetInpaintPipeline"},
    root_roles={"base": "txt2img", "inpaint": "inpaint"},
    tasks_by_kind={"base": (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT, Task.UPSCALE),
                   "inpaint": (Task.INPAINT, Task.OUTPAINT), "controlnet": ()},
    encode=encode, text_dims=STANDARD_TEXT_DIMS["sdxl"], context_dim=2048, taesd="sdxl",
    config_repos={"base": "stabilityai/stable-diffusion-xl-base-1.0",
                  "inpaint": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                  "controlnet": "diffusers/controlnet-canny-sdxl-1.0"},
    pipeline_flags={"requires_aesthetics_score": False},
    detect_folder=_folder, detect_file=_file,
    suggestions={"edit": "a Flux.1 Kontext model (kind edit) or a Flux.2 Klein model does", "depth2img": "SDXL has no depth UNet: use txt2img with a depth ControlNet for SDXL, or an SD 2.x "
                              "depth model"},
)
