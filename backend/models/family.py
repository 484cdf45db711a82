"""What a model family is, as the rest of the backend asks it (one module per family declares one).

A :class:`Family` holds the facts the engine, the task adapters, the previews and the parameter
checks need, so none of them branches on family names: how a model of the family is detected
(a diffusers folder, a single file's tensor names — headers only), which diffusers pipeline runs
each task, how prompts become embeddings, how guidance works, the latent channels and their
latent → RGB preview factors, the native size and defaults, what LoRA and ControlNet support it has.

Pipelines are named by diffusers class name and resolved when a model loads, so declaring a family
imports neither torch nor diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from protocol.messages import Task

from .facts import Defaults, ModelFacts

#: Detects a diffusers folder: (folder, its model_index.json, origin) → facts, or None when not this family.
FolderDetector = Callable[[Path, Mapping[str, Any], str], "ModelFacts | None"]
#: Detects a single ``.safetensors`` file from its header: (header, scheduler prediction type) → facts or None.
FileDetector = Callable[[Mapping[str, Any], str], "ModelFacts | None"]

#: JobParams a family may not honour (``ModelInfo.ignores``).
NEGATIVE_PROMPT, CFG_SCALE = "negative_prompt", "cfg_scale"


def _never(*_: Any) -> None:
    return None


def _same(latents: Any, width: int, height: int) -> Any:
    return latents


def _unet_controlnet_misfit(net: Any, unet: Any) -> str:
    """Why a loaded ``ControlNetModel`` (its config) cannot guide a UNet (its config); "" when it can."""
    if net.cross_attention_dim != unet.cross_attention_dim or net.addition_embed_type != unet.addition_embed_type:
        return f"it was made for a model with {net.cross_attention_dim}-wide text features"
    return ""


def _as_given(cfg_scale: float) -> float:
    return cfg_scale


@dataclass(frozen=True)
class Family:
    """One model family. See the module docstring; the fields are its declaration.

    ``pipelines``: role (``txt2img``, ``img2img``, ``inpaint``, ``depth2img``, ``fill``, ``edit``)
    → diffusers class name; ``control_pipelines`` the same for jobs with ControlNet units (empty:
    the family takes none). ``root_roles``: kind → the role a model of that kind loads as (its other
    roles are built from the same modules). ``tasks_by_kind``: the tasks a model of each kind runs;
    ``task_roles`` maps a task to the role that runs it where that differs by kind (Flux Fill
    inpaints with its fill pipeline). ``guidance``: ``cfg`` (classifier-free, the negative prompt
    counts) or ``distilled`` (a guidance input of the transformer; no negative pass).
    ``size_multiple``: sides the model generates at are multiples of it (Flux packs 2×2 latents: 16).
    ``unpack``: (step latents, width, height) → ``(B, C, h, w)`` latents, for previews and decoding.
    ``encode``: (root pipeline, prompt, negative prompt, embedding expansions) → ``backend.prompts.Conditioning``.
    ``samplers``: sampler name → (scheduler class name, settings); None: every sampler of
    ``backend.samplers``. ``denoiser``: the root pipeline's attribute holding the UNet or transformer.
    """

    name: str
    label: str
    defaults: Defaults
    latent_channels: int
    latent_rgb: tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]
    pipelines: Mapping[str, str]
    root_roles: Mapping[str, str]
    tasks_by_kind: Mapping[str, tuple[str, ...]]
    encode: Callable[..., Any]
    text_dims: tuple[int, ...] = ()
    context_dim: int = 0
    control_pipelines: Mapping[str, str] = field(default_factory=dict)
    config_repos: Mapping[str, str] = field(default_factory=dict)
    guidance: str = "cfg"
    emphasis: bool = True
    lora: bool = True
    size_multiple: int = 8
    denoiser: str = "unet"
    #: Whether the pipelines repeat given prompt embeddings for each image of a batch (Flux's do not).
    expands_embeds: bool = True
    #: Whether the image pipelines need the working size given (Flux's default to 1024² otherwise).
    sized_image_tasks: bool = False
    #: The diffusers class of the part a single file holds ("" : a whole pipeline, SD's checkpoints).
    single_file_model: str = ""
    samplers: Mapping[str, tuple[str, dict[str, Any]]] | None = None
    default_sampler: str = ""
    #: The family whose TAESD decodes this one's previews ("" : none fits).
    taesd: str = ""
    pipeline_flags: Mapping[str, Any] = field(default_factory=dict)
    detect_folder: FolderDetector = _never
    detect_file: FileDetector = _never
    unpack: Callable[[Any, int, int], Any] = _same
    #: kind → defaults that differ from ``defaults`` (e.g. SD 2.x v-prediction base: 768²).
    demo_defaults: Defaults | None = None
    kind_of_channels: Callable[[int], str] = lambda channels: {9: "inpaint", 5: "depth"}.get(int(channels), "base")
    #: Which model would run a task this family cannot (for the refusal's sentence).
    suggestions: Mapping[str, str] = field(default_factory=dict)
    #: The diffusers classes of this family's ControlNets and of several of them at once.
    controlnet_model: str = "ControlNetModel"
    multi_controlnet: str = "MultiControlNetModel"
    #: (loaded ControlNet's config, denoiser's config) → why it cannot guide it ("" : it can).
    controlnet_misfit: Callable[[Any, Any], str] = _unet_controlnet_misfit
    #: The pipeline argument every role's control pipeline takes the control images as ("" : SD's
    #: ``image`` for txt2img, ``control_image`` for the others).
    control_image_arg: str = ""
    #: Whether its ControlNet pipelines take a control mode per unit (Flux: None for every unit, as
    #: union ControlNets, which need one, are refused; its img2img/inpaint pipelines need the list).
    control_modes: bool = False
    #: Kinds whose denoiser takes the control image itself as extra input channels (Flux.1 Canny,
    #: Depth): one control image per job, at full weight, through the kind's own pipelines.
    control_kinds: tuple[str, ...] = ()
    #: kind → {role → the role that runs it for that kind} (Flux.1 Canny's txt2img is its control pipeline).
    kind_roles: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: kind → the kind its denoiser's input channels read as, when they differ (Kontext: a base
    #: model's shapes; Flux.1 Depth: a control model's).
    shape_kinds: Mapping[str, str] = field(default_factory=dict)
    #: kind → defaults that differ from ``defaults`` (Flux.1 Canny and Depth want more guidance).
    kind_defaults: Mapping[str, Defaults] = field(default_factory=dict)
    #: (a single file's header) → config values its transformer needs beyond its config folder's
    #: (Flux: ``in_channels``, so any Flux.1 folder configures a Fill or control transformer).
    single_file_config: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda header: {}
    #: Detect a ControlNet of this family: from its diffusers ``config.json`` (config, origin) and
    #: from a single file's header; None when it is not one.
    detect_controlnet_folder: Callable[[Mapping[str, Any], str], "ModelFacts | None"] = _never
    detect_controlnet_file: Callable[[Mapping[str, Any]], "ModelFacts | None"] = _never
    #: ``cfg_scale`` → the pipelines' ``guidance_scale`` (Z-Image's pipelines count guidance from 0:
    #: its scale is cfg_scale - 1).
    guidance_scale: Callable[[float], float] = _as_given
    #: Steps and CFG of a step-distilled model of the family (``ModelFacts.distilled``); None: it has none.
    distilled_defaults: Defaults | None = None
    #: img2img runs through the inpaint pipeline with a mask over everything (Flux.2 Klein has no
    #: img2img pipeline of its own).
    img2img_by_inpaint: bool = False
    #: The half precision ``dtype auto`` loads its models in on CUDA: ``bf16`` for families trained in
    #: it whose activations float16 may not hold (Z-Image's transformer, the Qwen3 text encoders).
    half_dtype: str = "fp16"

    def defaults_for(self, facts: ModelFacts) -> Defaults:
        """The defaults of a model with ``facts``: the demo's small size, SD 2.x v-prediction's 768²,
        a guidance-free (schnell-style) Flux's 4 steps without CFG, else the family's."""
        if facts.origin == "demo" and self.demo_defaults is not None:
            base = self.demo_defaults
        else:
            base = self.kind_defaults.get(facts.kind, self.defaults)
        if facts.distilled and self.distilled_defaults is not None:
            return Defaults(base.size, self.distilled_defaults.steps, self.distilled_defaults.cfg)
        if self.guidance == "distilled" and not facts.guidance_embeds:
            return Defaults(base.size, min(base.steps, 4), 0.0)
        if self.name == "sd2" and facts.prediction_type == "v_prediction" and facts.kind == "base":
            return Defaults(768, base.steps, base.cfg)
        return base

    def tasks(self, kind: str) -> tuple[str, ...]:
        return tuple(self.tasks_by_kind.get(kind, ()))

    def ignores(self, facts: ModelFacts) -> tuple[str, ...]:
        """The JobParams a model with ``facts`` does not use (``ModelInfo.ignores``)."""
        out = []
        if facts.distilled:
            return NEGATIVE_PROMPT, CFG_SCALE
        if self.guidance != "cfg":
            out.append(NEGATIVE_PROMPT)
            if not facts.guidance_embeds:
                out.append(CFG_SCALE)
        return tuple(out)

    def sampler_names(self) -> tuple[str, ...]:
        """The samplers this family's models take; () means every one the server lists."""
        return tuple(self.samplers) if self.samplers is not None else ()

    def role_for(self, task: str, kind: str) -> str:
        """The pipeline role that runs ``task`` on a model of ``kind``."""
        if kind in ("inpaint",) and "fill" in self.pipelines and task in (Task.INPAINT, Task.OUTPAINT):
            return "fill"
        role = {Task.TXT2IMG: "txt2img", Task.IMG2IMG: "img2img", Task.UPSCALE: "img2img", Task.INPAINT: "inpaint",
                Task.OUTPAINT: "inpaint", Task.DEPTH2IMG: "depth2img", Task.EDIT: "edit"}.get(task, task)
        return self.kind_roles.get(kind, {}).get(role, role)

    def cannot(self, task: str, kind: str) -> str:
        """What a ``kind`` model of this family is and that it cannot run ``task``, and what would:
        "an SD 1.x inpaint model and cannot run txt2img", to follow "model 'x' is "."""
        hint = self.suggestions.get(task, "")
        article = "an" if self.label.startswith("SD") else "a"  # "an S-D", "a Flux"
        what = f"{article} {self.label} {kind} model" if kind != "base" else f"{article} {self.label} model"
        return f"{what} and cannot run {task}" + (f" ({hint})" if hint else "")
