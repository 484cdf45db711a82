"""Model specs and facts, and inspection from configs and safetensors headers (no torch, no weights)."""
from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from protocol.messages import ModelInfo, Task

from ..filesafety import refuse_pickled_file

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
