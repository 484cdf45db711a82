"""SD 2.x: SD 1.x's UNet cross-attending to a 1024-wide OpenCLIP encoder; the 768 models are
v-prediction (their defaults are 768², see :meth:`Family.defaults_for`); a depth model (5-channel UNet)."""
from __future__ import annotations

from .facts import Defaults
from .family import Family
from .sd15 import CONTROL_PIPELINES, PIPELINES
from .unet import ROOT_ROLES, SD15_LATENT_RGB, STANDARD_TEXT_DIMS, TASKS_BY_KIND, detector, encode

_folder, _file = detector("sd2")

FAMILY = Family(
    name="sd2", label="SD 2.x", defaults=Defaults(512, 25, 7.0), latent_channels=4, latent_rgb=SD15_LATENT_RGB,
    pipelines=PIPELINES, control_pipelines=CONTROL_PIPELINES, root_roles=ROOT_ROLES, tasks_by_kind=TASKS_BY_KIND,
    encode=encode, text_dims=STANDARD_TEXT_DIMS["sd2"], context_dim=1024, taesd="sd15",
    config_repos={"base": "stabilityai/stable-diffusion-2-1", "inpaint": "stabilityai/stable-diffusion-2-inpainting",
                  "depth": "stabilityai/stable-diffusion-2-depth", "controlnet": "thibaud/controlnet-sd21-canny-diffusers"},
    detect_folder=_folder, detect_file=_file,
    suggestions={"edit": "a Flux.1 Kontext model (kind edit) or a Flux.2 Klein model does", "depth2img": "an SD 2.x depth model does (e.g. stabilityai/stable-diffusion-2-depth)"},
)
