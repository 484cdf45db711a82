"""Model specs and facts, and inspection from configs and safetensors headers (no torch, no weights)."""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from protocol.messages import ModelInfo

from .facts import (  # noqa: F401 - re-exported: backend.models' names
    KINDS, UNSAFE_SUFFIXES, Defaults, ModelConfigError, ModelFacts, ModelSpec, read_json as _read_json,
    safetensors_header,
)
from .registry import FAMILIES as FAMILY_REGISTRY, FAMILY_LIST, family
from .unet import (  # noqa: F401 - re-exported
    STANDARD_TEXT_DIMS, TASKS_BY_KIND as UNET_TASKS, context_dim as _context_dim, family_from_context,
    family_from_unet, kind_from_in_channels,
)
from .family import Family  # noqa: F401 - re-exported

from ..filesafety import refuse_pickled_file
from .weight_files import gguf_header

log = logging.getLogger(__name__)

FAMILIES = tuple(FAMILY_REGISTRY)
#: ControlNets kept loaded at once (a job uses at most this many units).
CONTROLNET_CACHE = 4
#: Tasks a UNet model of each kind can run (other families: ``family(name).tasks(kind)``).
TASKS_BY_KIND = UNET_TASKS

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
    (f.name, kind): repo for f in FAMILY_REGISTRY.values() for kind, repo in f.config_repos.items()}
FAMILY_DEFAULTS: dict[str, Defaults] = {name: f.defaults for name, f in FAMILY_REGISTRY.items()}


# --------------------------------------------------------------------------- inspection (no torch)


def is_hub_id(source: str) -> bool:
    """``owner/name`` that is not a path on this machine."""
    if os.path.exists(source) or source.startswith(("/", ".", "~")) or "\\" in source:
        return False
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.endswith((".safetensors", ".gguf") + UNSAFE_SUFFIXES)


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
    if spec.demo:  # the built-in random models: SD 1.x shapes (family demo) or Flux shapes, 32-wide text
        owner = family(spec.family or "demo")
        facts = ModelFacts(owner.name, spec.kind or "base", "demo", "flow" if owner.denoiser == "transformer" else
                           "epsilon", context_dim=32, text_dims=(32,) * len(owner.text_dims or (32,)))
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
    if facts.kind in ("controlnet", "control") or spec.kind == "controlnet":
        control_type = control_type or guess_control_type(spec.id, spec.name, spec.source)
    if facts.kind == "control" and control_type == "depth":  # Flux.1 Depth: runs depth2img (backend.models.flux_control)
        facts = replace(facts, kind="depth")
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










def _inspect_folder(folder: Path, origin: str) -> ModelFacts | None:
    """A diffusers model folder: the first family whose detector knows it (None: not a model folder)."""
    index = _read_json(folder / "model_index.json")
    if index is None:
        return None
    for candidate in FAMILY_LIST:
        facts = candidate.detect_folder(folder, index, origin)
        if facts is not None:
            return facts
    return None




def _inspect_controlnet_folder(folder: Path, origin: str) -> ModelFacts | None:
    """A diffusers ControlNet folder: ``config.json`` whose class is ``ControlNetModel``."""
    config = _read_json(folder / "config.json")
    if config is None:
        return None
    for candidate in FAMILY_LIST:  # transformer families' ControlNets (FluxControlNetModel)
        facts = candidate.detect_controlnet_folder(config, origin)
        if facts is not None:
            return facts
    if config.get("_class_name") != "ControlNetModel":
        raise ModelConfigError(f"{folder} holds a {config.get('_class_name')!r}; Easel loads ControlNetModel "
                               f"ControlNets (folders with config.json + diffusion_pytorch_model.safetensors)")
    return ModelFacts(family_from_unet(config, False), "controlnet", origin, context_dim=_context_dim(config))




def _inspect_single_file(path: Path, config: str) -> ModelFacts:
    prediction = "epsilon"
    if config and not is_hub_id(config):
        scheduler = _read_json(Path(os.path.expanduser(config)) / "scheduler" / "scheduler_config.json") or {}
        prediction = scheduler.get("prediction_type", prediction)
    gguf = path.suffix.lower() == ".gguf"  # a quantized transformer (backend.models.weight_files)
    if path.suffix.lower() != ".safetensors" and not gguf:
        return ModelFacts("sd15", "base", "single_file", prediction, detected=False)
    try:
        header = gguf_header(path) if gguf else safetensors_header(path)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelConfigError(f"{path} is not a readable {'GGUF' if gguf else '.safetensors'} file ({exc})") from None
    for candidate in FAMILY_LIST:  # before SD's: XLabs' Flux ControlNets have an input_hint_block too
        facts = candidate.detect_controlnet_file(header)
        if facts is not None:
            return facts
    if any(k.startswith(("control_model.", "controlnet_cond_embedding.", "input_hint_block.")) for k in header):
        return _controlnet_file_facts(header)
    for candidate in FAMILY_LIST:
        facts = candidate.detect_file(header, prediction)
        if facts is not None:
            return _distilled_per_config(facts, config)
    # no family's tensor names: read as SD 1.x (what loading it with an SD 1.x config folder assumes)
    return ModelFacts("sd15", "base", "single_file", prediction, context_dim=768, text_dims=STANDARD_TEXT_DIMS["sd15"])


def _distilled_per_config(facts: ModelFacts, config: str) -> ModelFacts:
    """A single file's step distillation, as its local config folder's pipeline says (Flux.2 Klein:
    ``is_distilled`` in ``model_index.json``; the tensors look the same either way)."""
    index = _read_json(Path(os.path.expanduser(config)) / "model_index.json") if config and not is_hub_id(config) else None
    return replace(facts, distilled=bool(index.get("is_distilled", False))) if index else facts


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
    owner = family(facts.family)
    return ModelInfo(
        id=spec.id, name=spec.name or spec.id, kind=facts.kind, family=facts.family,
        tasks=owner.tasks(facts.kind), default_width=defaults.size, default_height=defaults.size,
        default_steps=defaults.steps, default_cfg=defaults.cfg, control_type=facts.control_type, demo=spec.demo,
        ignores=owner.ignores(facts), samplers=owner.sampler_names(),
    )
