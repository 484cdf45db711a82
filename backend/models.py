"""Model specs, cheap inspection, loading, and the bounded cache of loaded pipelines.

Base models (``base``/``inpaint``/``depth``) and ControlNets (``controlnet``) are configured the
same way. Three kinds of source, one code path after the first call:

* a **diffusers folder** (``model_index.json`` inside; a ControlNet's holds ``config.json``) —
  loaded with ``from_pretrained``, offline;
* a **single-file checkpoint** (``.safetensors``) — ``from_single_file(path, config=<local
  diffusers folder>)``, offline when a config folder is given (without one diffusers asks the hub);
* a **hub id** (``owner/name``) — the normal Hugging Face cache; offline, a missing model is a typed
  ``model_unavailable`` error that names what to download, never a hang.

Inspection (family and kind, for ``ModelInfo``) reads JSON configs and safetensors headers only: no
torch, no weights. Loading imports torch/diffusers, builds the task pipelines from one set of modules
(sharing modules, nothing copied), and keeps at most ``cache_size`` models, least recently used first out.
Loaded ControlNets live in a cache of their own (:data:`CONTROLNET_CACHE`), so switching base model or
task never reloads them; the ControlNet pipelines are made per job from the loaded modules.

Pickle-based checkpoints (``.ckpt``, ``.bin``, ``.pt``, ``.pth``) can run arbitrary code when loaded:
they are refused unless the server was started with ``allow_unsafe_checkpoints``.
"""
from __future__ import annotations

import gc
import inspect as _inspect
import json
import logging
import os
import struct
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from protocol.errors import ErrorCode
from protocol.messages import ModelInfo, Task

from .errors import JobError
from .filesafety import refuse_pickled_file

log = logging.getLogger(__name__)

FAMILIES = ("sd15", "sd2", "sdxl", "demo")
KINDS = ("base", "inpaint", "depth", "controlnet")
#: ControlNets kept loaded at once (a job uses at most this many units).
CONTROLNET_CACHE = 4
UNSAFE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")

#: Tasks a model of each kind can run. A 9-channel inpainting UNet only repaints masked areas;
#: a depth UNet needs a depth map.
TASKS_BY_KIND: dict[str, tuple[str, ...]] = {
    "base": (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT, Task.UPSCALE),
    "inpaint": (Task.INPAINT, Task.OUTPAINT),
    "depth": (Task.DEPTH2IMG,),
    "controlnet": (),  # used by a job's control units, never as the job's model
}

#: What a ControlNet expects, guessed from words in its id, name or source (first match wins:
#: "softedge" before "edge"-like words, "lineart_anime" counts as lineart).
CONTROL_TYPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("canny", ("canny",)),
    ("depth", ("depth", "midas", "zoe")),
    ("openpose", ("openpose", "pose", "dwpose")),
    ("lineart", ("lineart", "line_art", "line-art")),
    ("softedge", ("softedge", "soft_edge", "hed", "pidi")),
    ("scribble", ("scribble", "sketch")),
    ("normal", ("normal",)),
    ("mlsd", ("mlsd",)),
    ("segmentation", ("seg",)),
    ("shuffle", ("shuffle",)),
    ("tile", ("tile",)),
    ("inpaint", ("inpaint",)),
    ("ip2p", ("ip2p",)),
)

#: Where to get the diffusers configs a single-file checkpoint of each family/kind needs offline.
CONFIG_REPOS: dict[tuple[str, str], str] = {
    ("sd15", "base"): "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ("sd15", "inpaint"): "stable-diffusion-v1-5/stable-diffusion-inpainting",
    ("sd2", "base"): "stabilityai/stable-diffusion-2-1",
    ("sd2", "inpaint"): "stabilityai/stable-diffusion-2-inpainting",
    ("sd2", "depth"): "stabilityai/stable-diffusion-2-depth",
    ("sdxl", "base"): "stabilityai/stable-diffusion-xl-base-1.0",
    ("sdxl", "inpaint"): "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
    ("sd15", "controlnet"): "lllyasviel/control_v11p_sd15_canny",
    ("sd2", "controlnet"): "thibaud/controlnet-sd21-canny-diffusers",
    ("sdxl", "controlnet"): "diffusers/controlnet-canny-sdxl-1.0",
}


@dataclass(frozen=True)
class Defaults:
    """A family's native size and the defaults a job gets when it leaves a value out."""

    size: int
    steps: int
    cfg: float


FAMILY_DEFAULTS: dict[str, Defaults] = {
    "sd15": Defaults(512, 25, 7.0),
    "sd2": Defaults(512, 25, 7.0),  # 768 for v-prediction models, see ModelFacts.defaults
    "sdxl": Defaults(1024, 25, 6.0),
    "demo": Defaults(128, 8, 7.0),
}


#: Text encoder widths of the released models of each family.
STANDARD_TEXT_DIMS: dict[str, tuple[int, ...]] = {"sd15": (768,), "sd2": (1024,), "sdxl": (768, 1280), "demo": (32,)}


class ModelConfigError(ValueError):
    """A model spec that cannot work, found before anything loads (bad path, unsafe format, duplicate id)."""


@dataclass(frozen=True)
class ModelSpec:
    """One configured model.

    ``source`` is a diffusers folder, a ``.safetensors`` file or a hub id. ``kind`` and ``family``
    are detected when left empty. ``config`` is the local diffusers folder (or cached hub id) whose
    configs a single-file checkpoint uses. ``control_type`` (ControlNets: ``canny``, ``depth``, …)
    is guessed from the id, name and source when left empty. ``demo`` marks the built-in random models.
    """

    id: str
    source: str
    kind: str = ""
    family: str = ""
    config: str = ""
    name: str = ""
    demo: bool = False
    control_type: str = ""


@dataclass(frozen=True)
class ModelFacts:
    """What inspection found: ``origin`` is ``folder``, ``single_file``, ``hub`` or ``demo``.

    ``context_dim`` is the width of the text features the UNet (or ControlNet) cross-attends to
    (768 SD 1.x, 1024 SD 2.x, 2048 SDXL; 0 when unknown): add-ons and ControlNets must match it.
    """

    family: str
    kind: str
    origin: str
    prediction_type: str = "epsilon"
    detected: bool = True
    context_dim: int = 0
    control_type: str = ""
    #: Hidden widths of the text encoders (embeddings must match): (768,) SD 1.x, (768, 1280) SDXL.
    text_dims: tuple[int, ...] = ()

    @property
    def defaults(self) -> Defaults:
        base = FAMILY_DEFAULTS[self.family]
        if self.family == "sd2" and self.prediction_type == "v_prediction" and self.kind == "base":
            return Defaults(768, base.steps, base.cfg)
        return base


# --------------------------------------------------------------------------- inspection (no torch)


def is_hub_id(source: str) -> bool:
    """``owner/name`` that is not a path on this machine."""
    if os.path.exists(source) or source.startswith(("/", ".", "~")) or "\\" in source:
        return False
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.endswith((".safetensors",) + UNSAFE_SUFFIXES)


def check_spec(spec: ModelSpec, allow_unsafe: bool) -> None:
    """Raise :class:`ModelConfigError` when ``spec`` cannot work, with the sentence that says why."""
    if not spec.id or any(c.isspace() for c in spec.id):
        raise ModelConfigError(f"model id {spec.id!r} must be a non-empty word without spaces")
    if spec.kind and spec.kind not in KINDS:
        raise ModelConfigError(f"model {spec.id!r}: kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    if spec.family and spec.family not in FAMILIES:
        raise ModelConfigError(f"model {spec.id!r}: family must be one of {', '.join(FAMILIES)}, got {spec.family!r}")
    if spec.demo:
        return
    source = os.path.expanduser(spec.source)
    if source.lower().endswith(UNSAFE_SUFFIXES) and not allow_unsafe:
        raise ModelConfigError(
            f"model {spec.id!r}: {Path(source).name} is a pickle-based checkpoint, and loading one can run any code "
            f"it contains. Use a .safetensors version of the model, or start the server with "
            f"--allow-unsafe-checkpoints if you trust the file.")
    refuse_pickled_file(source, allow_unsafe, f"model {spec.id!r}", ModelConfigError)  # by content, not suffix
    if is_hub_id(spec.source):
        return
    if os.path.isdir(source) and not allow_unsafe:
        pickled = pickle_only_weights(Path(source))
        if pickled:
            raise ModelConfigError(
                f"model {spec.id!r}: {pickled[0]} holds its weights only in a pickle-based file, and loading one "
                f"can run any code it contains. Use a copy of the model saved with .safetensors weights, or start "
                f"the server with --allow-unsafe-checkpoints if you trust the files.")
    if not os.path.exists(source):
        raise ModelConfigError(f"model {spec.id!r}: {source} does not exist (give a diffusers folder, "
                               f"a .safetensors file or a hub id like owner/name)")
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "model_index.json")):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise ModelConfigError(f"model {spec.id!r}: {source} is a folder without model_index.json (a model) or "
                                   f"config.json (a ControlNet); point at a diffusers folder or a .safetensors file")
        if spec.kind and spec.kind != "controlnet":
            raise ModelConfigError(f"model {spec.id!r}: {source} holds a ControlNet (config.json, no model_index.json) "
                                   f"but is listed as kind {spec.kind!r}; use kind \"controlnet\" or leave kind out")
    if spec.config and not is_hub_id(spec.config) and not os.path.isdir(os.path.expanduser(spec.config)):
        raise ModelConfigError(f"model {spec.id!r}: config folder {spec.config} does not exist")


def pickle_only_weights(folder: Path) -> list[str]:
    """Files in ``folder`` (or its component folders, one level down) that diffusers or
    transformers would unpickle: pickle-based weights (``.bin``, ``.ckpt``, ``.pt``, ``.pth``) in a
    folder with no ``.safetensors`` beside them. Paths relative to ``folder``."""
    found: list[str] = []
    for current in [folder, *sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        try:
            names = [entry.name for entry in current.iterdir() if entry.is_file()]
        except OSError:
            continue
        if any(name.endswith(".safetensors") for name in names):
            continue
        found += [str((current / name).relative_to(folder)) for name in sorted(names) if name.lower().endswith(UNSAFE_SUFFIXES)]
    return found


def inspect(spec: ModelSpec) -> ModelFacts:
    """Family, kind and prediction type from configs and headers — no torch, no weights read.

    Values set in the spec win. A hub model that is not in the cache cannot be inspected offline:
    its facts are the spec's (or ``sd15``/``base``) with ``detected=False``, and loading checks them.
    """
    if spec.demo:
        facts = ModelFacts("demo", spec.kind or "base", "demo", context_dim=32, text_dims=(32,))
    else:
        source = os.path.expanduser(spec.source)
        if is_hub_id(spec.source):
            folder = _cached_hub_folder(spec.source)
            facts = _inspect_folder(folder, "hub") if folder else None
            if facts is None and spec.kind in ("", "controlnet"):
                folder = _cached_hub_folder(spec.source, "config.json")
                facts = _inspect_controlnet_folder(folder, "hub") if folder else None
        elif os.path.isdir(source):
            facts = _inspect_folder(Path(source), "folder") or _inspect_controlnet_folder(Path(source), "folder")
        else:
            facts = _inspect_single_file(Path(source), spec.config)
        if facts is None:
            facts = ModelFacts(spec.family or "sd15", spec.kind or "base", "hub", detected=False)
    control_type = spec.control_type or facts.control_type
    if facts.kind == "controlnet" or spec.kind == "controlnet":
        control_type = control_type or guess_control_type(spec.id, spec.name, spec.source)
    return replace(facts, family=spec.family or facts.family, kind=spec.kind or facts.kind, control_type=control_type)


def guess_control_type(*texts: str) -> str:
    """The control type named by a word in ``texts`` (id, name, path or hub id — the first text
    that names one wins, so an id the operator chose beats a file name), or "" when none does."""
    for text in texts:
        lowered = text.lower()
        for control_type, words in CONTROL_TYPES:
            if any(word in lowered for word in words):
                return control_type
    return ""


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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _inspect_folder(folder: Path, origin: str) -> ModelFacts | None:
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    if index is None or unet is None:
        return None
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json") or {}
    second = bool(index.get("text_encoder_2")) and index.get("text_encoder_2") != [None, None]
    widths = tuple(int((_read_json(folder / name / "config.json") or {}).get("hidden_size", 0))
                   for name in ("text_encoder", "text_encoder_2") if (folder / name / "config.json").is_file())
    return ModelFacts(family_from_unet(unet, second), kind_from_in_channels(unet.get("in_channels", 4)), origin,
                      scheduler.get("prediction_type", "epsilon"), context_dim=_context_dim(unet), text_dims=widths)


def _context_dim(config: Mapping[str, Any]) -> int:
    value = config.get("cross_attention_dim", 0)
    return int(value[0] if isinstance(value, list) and value else value or 0)


def _inspect_controlnet_folder(folder: Path, origin: str) -> ModelFacts | None:
    """A diffusers ControlNet folder: ``config.json`` whose class is ``ControlNetModel``."""
    config = _read_json(folder / "config.json")
    if config is None:
        return None
    if config.get("_class_name") != "ControlNetModel":
        raise ModelConfigError(f"{folder} holds a {config.get('_class_name')!r}; Easel loads ControlNetModel "
                               f"ControlNets (folders with config.json + diffusion_pytorch_model.safetensors)")
    return ModelFacts(family_from_unet(config, False), "controlnet", origin, context_dim=_context_dim(config))


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file (names, dtypes, shapes) without reading tensors."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 * 1024 * 1024:
            raise ValueError("header larger than 100 MB")
        return json.loads(f.read(length))


def _inspect_single_file(path: Path, config: str) -> ModelFacts:
    prediction = "epsilon"
    if config and not is_hub_id(config):
        scheduler = _read_json(Path(os.path.expanduser(config)) / "scheduler" / "scheduler_config.json") or {}
        prediction = scheduler.get("prediction_type", prediction)
    if path.suffix.lower() != ".safetensors":
        return ModelFacts("sd15", "base", "single_file", prediction, detected=False)
    try:
        header = safetensors_header(path)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelConfigError(f"{path} is not a readable .safetensors file ({exc})") from None
    if any(k.startswith(("control_model.", "controlnet_cond_embedding.", "input_hint_block.")) for k in header):
        return _controlnet_file_facts(header)
    first = header.get("model.diffusion_model.input_blocks.0.0.weight", {}).get("shape", [0, 4])
    kind = kind_from_in_channels(first[1])
    if any(k.startswith("conditioner.embedders.1.") for k in header):
        family = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in header):
        family = "sd2"  # OpenCLIP text encoder
    else:
        family = "sd15"
    return ModelFacts(family, kind, "single_file", prediction, context_dim={"sdxl": 2048, "sd2": 1024}.get(family, 768),
                      text_dims=STANDARD_TEXT_DIMS[family])


def _controlnet_file_facts(header: Mapping[str, Any]) -> ModelFacts:
    """A single-file ControlNet (original ``control_model.*`` keys or diffusers names): its family
    from the width of its cross-attention keys, SDXL also from its added (label) conditioning."""
    context = 0
    for key, entry in header.items():
        if key.endswith("attn2.to_k.weight") and isinstance(entry, dict) and len(entry.get("shape", ())) == 2:
            context = int(entry["shape"][1])
            break
    sdxl = any("label_emb" in key or "add_embedding" in key for key in header)
    return ModelFacts(family_from_context(context, sdxl), "controlnet", "single_file", context_dim=context)


def _cached_hub_folder(repo: str, marker: str = "model_index.json") -> Path | None:
    """The snapshot folder of ``repo`` in the local HF cache, if its ``marker`` file is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, marker)
    return Path(found).parent if isinstance(found, str) else None


def model_info(spec: ModelSpec, facts: ModelFacts) -> ModelInfo:
    defaults = facts.defaults
    return ModelInfo(
        id=spec.id, name=spec.name or spec.id, kind=facts.kind, family=facts.family,
        tasks=TASKS_BY_KIND[facts.kind], default_width=defaults.size, default_height=defaults.size,
        default_steps=defaults.steps, default_cfg=defaults.cfg, control_type=facts.control_type, demo=spec.demo,
    )


# --------------------------------------------------------------------------- device and dtype


def resolve_device(name: str) -> str:
    """``auto`` picks cuda, then mps, then cpu. Raises ModelConfigError for a device this machine lacks."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError("device cuda was asked for but torch sees no CUDA GPU (is this a CPU-only torch build?)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ModelConfigError("device mps was asked for but this machine has no Metal GPU")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ModelConfigError(f"device must be auto, cpu, cuda or mps, got {name!r}")
    return name


def resolve_dtype(name: str, device: str):
    """``auto``: float16 on GPUs (cuda, mps), float32 on the CPU (half precision is slow or unsupported there)."""
    import torch

    table = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    if name not in table:
        raise ModelConfigError(f"dtype must be auto, fp16, bf16 or fp32, got {name!r}")
    return table[name]


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocation failures (they do not share one exception type)."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or "out of memory" in str(exc).lower())


def free_memory() -> None:
    """Give cached allocator memory back after an eviction or an out-of-memory failure."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


# --------------------------------------------------------------------------- loaded models


def _pipeline_classes(family: str) -> dict[str, Any]:
    import diffusers

    if family == "sdxl":
        return {"txt2img": diffusers.StableDiffusionXLPipeline, "img2img": diffusers.StableDiffusionXLImg2ImgPipeline,
                "inpaint": diffusers.StableDiffusionXLInpaintPipeline}
    return {"txt2img": diffusers.StableDiffusionPipeline, "img2img": diffusers.StableDiffusionImg2ImgPipeline,
            "inpaint": diffusers.StableDiffusionInpaintPipeline,
            "depth2img": diffusers.StableDiffusionDepth2ImgPipeline}


def _control_pipeline_classes(family: str) -> dict[str, Any]:
    import diffusers

    if family == "sdxl":
        return {"txt2img": diffusers.StableDiffusionXLControlNetPipeline,
                "img2img": diffusers.StableDiffusionXLControlNetImg2ImgPipeline,
                "inpaint": diffusers.StableDiffusionXLControlNetInpaintPipeline}
    return {"txt2img": diffusers.StableDiffusionControlNetPipeline,
            "img2img": diffusers.StableDiffusionControlNetImg2ImgPipeline,
            "inpaint": diffusers.StableDiffusionControlNetInpaintPipeline}


#: The pipeline a model is loaded as, by kind; the other task pipelines are made from its modules.
_ROOT_ROLE = {"base": "txt2img", "inpaint": "inpaint", "depth": "depth2img"}
#: Pipeline roles a model of each kind offers.
ROLES_BY_KIND = {"base": ("txt2img", "img2img", "inpaint"), "inpaint": ("inpaint",), "depth": ("depth2img",)}


@dataclass
class LoadedModel:
    """One model's modules on the device, its task pipelines (sharing those modules) and schedulers."""

    spec: ModelSpec
    facts: ModelFacts
    root: Any
    device: str
    dtype: Any
    offload: bool = False
    pipelines: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    #: LoRA adapters loaded into this model's UNet/text encoders (backend.addons keeps it).
    adapters: Any = None

    @property
    def family(self) -> str:
        return self.facts.family

    def pipeline(self, role: str, controlnets: list[Any] | None = None) -> Any:
        """The pipeline for ``role`` (``txt2img``/``img2img``/``inpaint``/``depth2img``), made once
        from the root pipeline's modules — switching task reloads nothing.

        With ``controlnets`` (loaded ``ControlNetModel``s, one per control unit) it is the
        ControlNet variant of the role's pipeline, made for this job from the same modules plus a
        ``MultiControlNetModel`` of those ControlNets (cheap: no weights move)."""
        if role not in ROLES_BY_KIND[self.facts.kind]:
            raise JobError(ErrorCode.UNSUPPORTED, f"model {self.spec.id!r} ({self.facts.kind}) has no {role} pipeline")
        if controlnets:
            from diffusers.models import MultiControlNetModel

            classes = _control_pipeline_classes(self.facts.family)
            if role not in classes:
                raise JobError(ErrorCode.UNSUPPORTED, f"ControlNet units work with txt2img, img2img, inpaint and "
                                                      f"outpaint, not {role}")
            return self._build(classes[role], controlnet=MultiControlNetModel(list(controlnets)))
        if role not in self.pipelines:
            self.pipelines[role] = self._build(_pipeline_classes(self.facts.family)[role])
        return self.pipelines[role]

    def _build(self, cls: Any, **extra: Any) -> Any:
        # Built straight from the root's modules (what from_pipe does, minus its dtype cast of the
        # shared modules): nothing is copied or moved.
        params = _inspect.signature(cls.__init__).parameters
        kwargs = {name: module for name, module in self.root.components.items() if name in params}
        for name, value in self.root.config.items():  # pipeline flags such as force_zeros_for_empty_prompt
            if name in params and name not in kwargs and not name.startswith("_"):
                kwargs[name] = value
        if "requires_safety_checker" in params:
            kwargs["requires_safety_checker"] = False
        if self.facts.family == "sdxl" and "requires_aesthetics_score" in params:
            kwargs["requires_aesthetics_score"] = False
        kwargs.update(extra)
        pipe = cls(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def scheduler(self, sampler: str) -> Any:
        """The scheduler for ``sampler``, made from the model's own scheduler config once and reused."""
        from .samplers import make_scheduler

        if sampler not in self.schedulers:
            self.schedulers[sampler] = make_scheduler(sampler, self.root.scheduler.config)
        return self.schedulers[sampler]


@contextmanager
def _dtype_argument_quiet() -> Iterator[None]:
    """Newer diffusers call the loaders' argument ``dtype`` and warn on ``torch_dtype``; older ones
    (which pyproject allows) know only ``torch_dtype``. Pass that, without the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        yield


def _none_components(cls, index: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments that skip optional components: the safety checker (Easel, like A1111 and
    ComfyUI, runs none), and components a model_index lists as null (depth2img without an estimator)."""
    params = _inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "safety_checker" in params:
        kwargs["safety_checker"] = None
        kwargs["requires_safety_checker"] = False
    for name, value in (index or {}).items():
        if name in params and isinstance(value, list) and value[:2] == [None, None]:
            kwargs[name] = None
    if cls.__name__ == "StableDiffusionDepth2ImgPipeline":  # depth maps can come from the client instead
        for name in ("depth_estimator", "feature_extractor"):
            if not (index or {}).get(name):
                kwargs.setdefault(name, None)
    return kwargs


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_model(spec: ModelSpec, facts: ModelFacts, device: str, dtype: Any, offload: bool = False,
               demo_folder: Path | None = None, allow_unsafe: bool = False) -> LoadedModel:
    """Load ``spec`` onto ``device``; raises JobError(model_unavailable) with what to do when it cannot.
    Without ``allow_unsafe`` only ``.safetensors`` weights are read (never a pickle-based file)."""
    cls = _pipeline_classes(facts.family)[_ROOT_ROLE[facts.kind]]
    source = os.path.expanduser(spec.source)
    if spec.demo:
        from .demo import ensure_demo_models

        source = str(ensure_demo_models(demo_folder, (facts.kind,))[facts.kind]) if demo_folder else source
    try:
        with _dtype_argument_quiet():
            root = _load_root(cls, spec, facts, source, dtype, allow_unsafe)
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one typed, explained error
        if is_out_of_memory(exc):
            raise
        log.warning("loading model %s from %s failed", spec.id, spec.source, exc_info=True)
        raise JobError(ErrorCode.MODEL_UNAVAILABLE,
                       f"model {spec.id!r} could not be loaded from {spec.source}: {_short(exc)}") from None
    root.set_progress_bar_config(disable=True)
    _check_kind(spec, facts, root.unet.config.in_channels)
    if offload and device.startswith("cuda"):
        root.enable_model_cpu_offload(device=device)
    else:
        root.to(device)
    model = LoadedModel(spec, facts, root, device, dtype, offload)
    model.pipelines[_ROOT_ROLE[facts.kind]] = root
    return model


def safetensors_only(allow_unsafe: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments that make it read ``.safetensors`` only: by default diffusers
    and transformers fall back to a pickle-based ``.bin`` when there is no ``.safetensors``, and
    unpickle it. Every ``from_pretrained`` of weights in the backend passes these."""
    return {} if allow_unsafe else {"use_safetensors": True}


def pickled_weights(source: str, safe_name: str, pickle_name: str) -> str:
    """The pickle-based weights file that makes ``source`` unloadable with :func:`safetensors_only`,
    or "" when that is not why. ``source`` is a local folder (any ``.bin``/``.pt``/... with no
    ``.safetensors`` beside it) or a hub id, looked up in the local cache only (``pickle_name``
    there, ``safe_name`` not). For the sentence of a ``model_unavailable`` error."""
    folder = Path(os.path.expanduser(source))
    if folder.is_dir():
        found = pickle_only_weights(folder)
        return found[0] if found else ""
    if not is_hub_id(source):
        return ""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, safe_name), str):
        return ""
    return pickle_name if isinstance(try_to_load_from_cache(source, pickle_name), str) else ""


def _load_root(cls, spec: ModelSpec, facts: ModelFacts, source: str, dtype: Any, allow_unsafe: bool = False) -> Any:
    if facts.origin in ("folder", "demo"):
        index = _read_json(Path(source) / "model_index.json")
        unet = _read_json(Path(source) / "unet" / "config.json") or {}
        _check_kind(spec, facts, unet.get("in_channels", 4))
        return cls.from_pretrained(source, torch_dtype=dtype, local_files_only=True, **safetensors_only(allow_unsafe),
                                   **_none_components(cls, index))
    if facts.origin == "single_file":
        return _load_single_file(cls, spec, facts, source, dtype)
    return _load_hub(cls, spec, facts, dtype, allow_unsafe)


def _check_kind(spec: ModelSpec, facts: ModelFacts, in_channels: int) -> None:
    actual = kind_from_in_channels(in_channels)
    if actual != facts.kind:
        raise JobError(ErrorCode.MODEL_MISMATCH,
                       f"model {spec.id!r} is listed as a {facts.kind} model but its UNet has {in_channels} input "
                       f"channels (a {actual} model); fix or remove its kind in the server config")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def load_controlnet(spec: ModelSpec, facts: ModelFacts, device: str, dtype: Any, demo_folder: Path | None = None,
                    allow_unsafe: bool = False) -> Any:
    """Load the ControlNet ``spec`` onto ``device``; raises JobError(model_unavailable) saying what to do."""
    from diffusers import ControlNetModel

    source = os.path.expanduser(spec.source)
    if spec.demo:
        from .demo import ensure_demo_models

        source = str(ensure_demo_models(demo_folder, ("controlnet",))["controlnet"]) if demo_folder else source
    try:
        with _dtype_argument_quiet():
            if facts.origin in ("folder", "demo"):
                net = ControlNetModel.from_pretrained(source, torch_dtype=dtype, local_files_only=True, **safetensors_only(allow_unsafe))
            elif facts.origin == "single_file":
                net = _load_single_file(ControlNetModel, spec, facts, source, dtype)
            else:
                net = _load_hub(ControlNetModel, spec, facts, dtype, allow_unsafe)
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one typed, explained error
        if is_out_of_memory(exc):
            raise
        log.warning("loading ControlNet %s from %s failed", spec.id, spec.source, exc_info=True)
        raise JobError(ErrorCode.MODEL_UNAVAILABLE,
                       f"ControlNet {spec.id!r} could not be loaded from {spec.source}: {_short(exc)}") from None
    return net.to(device).eval()


def _load_single_file(cls, spec: ModelSpec, facts: ModelFacts, source: str, dtype: Any):
    config = os.path.expanduser(spec.config) if spec.config else None
    if config is None and _offline():
        repo = CONFIG_REPOS.get((facts.family, facts.kind), CONFIG_REPOS[("sd15", "base")])
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"the single-file checkpoint {Path(source).name} needs a diffusers config folder to load offline. "
            f"Download the configs once (no weights) with `hf download {repo} --exclude '*.safetensors' '*.bin' "
            f"'*.ckpt' --local-dir <folder>` and give that folder as the model's config.")
    kwargs = _none_components(cls, None)
    return cls.from_single_file(source, config=config, torch_dtype=dtype,
                                local_files_only=bool(config) or _offline(), **kwargs)


def _load_hub(cls, spec: ModelSpec, facts: ModelFacts, dtype: Any, allow_unsafe: bool = False):
    kwargs = {**_none_components(cls, None), **safetensors_only(allow_unsafe)}
    try:
        return cls.from_pretrained(spec.source, torch_dtype=dtype, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        if _offline():
            raise JobError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"model {spec.id!r} ({spec.source}) is not in the Hugging Face cache and the server is offline "
                f"(HF_HUB_OFFLINE). Download it once with `hf download {spec.source}` on a machine with internet, "
                f"or unset HF_HUB_OFFLINE.") from None
        log.info("model %s: not in the cache (%s); downloading %s", spec.id, _short(exc), spec.source)
    try:
        return cls.from_pretrained(spec.source, torch_dtype=dtype, **kwargs)
    except OSError as exc:
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"model {spec.id!r} ({spec.source}) could not be downloaded ({_short(exc)}). Check the id and the "
            f"network, or download it with `hf download {spec.source}`.") from None


class ModelStore:
    """The configured models: their infos (cheap), and the loaded ones in a bounded LRU cache.

    ``get`` is called from the worker thread only; ``infos`` from anywhere.
    """

    def __init__(self, specs: tuple[ModelSpec, ...], *, device: str, dtype: str, cache_size: int,
                 allow_unsafe: bool, offload: bool, demo_folder: Path | None) -> None:
        if cache_size < 1:
            raise ModelConfigError(f"the model cache must hold at least 1 model, got {cache_size}")
        seen: set[str] = set()
        self._specs: dict[str, ModelSpec] = {}
        self._facts: dict[str, ModelFacts] = {}
        for spec in specs:
            if spec.id in seen:
                raise ModelConfigError(f"model id {spec.id!r} is configured twice; give each model its own id")
            seen.add(spec.id)
            check_spec(spec, allow_unsafe)
            self._specs[spec.id] = spec
            self._facts[spec.id] = inspect(spec)
        self._device_name, self._dtype_name = device, dtype
        self._device: str | None = None
        self._dtype: Any = None
        self._cache_size = cache_size
        self._offload = offload
        self._allow_unsafe = allow_unsafe
        self._demo_folder = demo_folder
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._controlnets: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def spec(self, model_id: str) -> ModelSpec:
        return self._specs[model_id]

    def facts(self, model_id: str) -> ModelFacts:
        return self._facts[model_id]

    def infos(self) -> list[ModelInfo]:
        return [model_info(self._specs[i], self._facts[i]) for i in self._specs]

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self._device_name)
            self._dtype = resolve_dtype(self._dtype_name, self._device)
        return self._device

    @property
    def dtype(self) -> Any:
        _ = self.device
        return self._dtype

    def loaded_ids(self) -> tuple[str, ...]:
        """Ids of the models in memory, least recently used first."""
        return tuple(self._loaded)

    def controlnet(self, model_id: str) -> tuple[Any, float]:
        """The loaded ControlNet ``model_id`` and the seconds spent loading it now (0 when cached).
        At most :data:`CONTROLNET_CACHE` stay loaded; the least recently used goes first."""
        with self._lock:
            if model_id in self._controlnets:
                self._controlnets.move_to_end(model_id)
                return self._controlnets[model_id], 0.0
            while len(self._controlnets) >= CONTROLNET_CACHE:
                old_id, _ = self._controlnets.popitem(last=False)
                log.info("unloading ControlNet %s (cache holds %d)", old_id, CONTROLNET_CACHE)
                free_memory()
            spec, facts = self._specs[model_id], self._facts[model_id]
            log.info("loading ControlNet %s from %s (%s, %s) on %s", model_id, spec.source or "demo", facts.family,
                     facts.control_type or "control type unknown", self.device)
            start = time.perf_counter()
            net = load_controlnet(spec, facts, self.device, self.dtype, self._demo_folder, self._allow_unsafe)
            self._controlnets[model_id] = net
            return net, time.perf_counter() - start

    def get(self, model_id: str) -> tuple[LoadedModel, float]:
        """The loaded model and the seconds spent loading it now (0 when it was cached)."""
        if self._facts[model_id].kind == "controlnet":
            raise JobError(ErrorCode.UNSUPPORTED, f"{model_id!r} is a ControlNet; use it in a control unit")
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id], 0.0
            while len(self._loaded) >= self._cache_size:  # evict before loading: the memory is needed now
                old_id, _ = self._loaded.popitem(last=False)
                log.info("unloading model %s (cache holds %d)", old_id, self._cache_size)
                free_memory()
            spec, facts = self._specs[model_id], self._facts[model_id]
            log.info("loading model %s from %s (%s %s) on %s", model_id, spec.source or "demo", facts.family,
                     facts.kind, self.device)
            start = time.perf_counter()
            model = load_model(spec, facts, self.device, self.dtype, self._offload, self._demo_folder, self._allow_unsafe)
            seconds = time.perf_counter() - start
            log.info("model %s loaded in %.1f s", model_id, seconds)
            self._loaded[model_id] = model
            return model, seconds
