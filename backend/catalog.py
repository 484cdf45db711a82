"""The model folders artists already have (A1111/Forge, ComfyUI, InvokeAI), found and understood.

``easel serve --models-dir DIR`` points Easel at such a folder. :func:`scan` walks its known
sub-folders (or, for a folder of no known layout, all of it) and names every file it meets:

* its **kind** (:data:`KINDS`: checkpoint, LoRA, ControlNet, VAE, embedding, CLIP vision,
  IP-Adapter, upscaler, text encoder, diffusion model) and **family** (``sd15``, ``sd2``, ``sdxl``,
  ``sd3``, ``flux``, ``flux2``, ``zimage``; "" where the file fits any or the header does not say) from the tensor names
  and shapes in its ``.safetensors`` header alone — no tensor is read, no pickle is ever opened;
* a **stable id**: its path inside its kind folder without the suffix (``SDXL/juggernaut``),
  characters other than letters, digits and ``._/+-`` written as ``_``; when two files would get
  the same id, the one met later gets ``~`` and 6 hex digits of its path;
* its **status**: ``served`` (a checkpoint or ControlNet of a family Easel runs, a LoRA, an
  embedding, an ESRGAN-family upscaler), ``listed`` (understood, not used by Easel), ``refused``
  (pickle-based files; links leading outside the folder) or ``unreadable`` (0 bytes, no
  permission, a broken header), each with its ``reason``.

The folder's layout is read from its sub-folder names, case-insensitively; the kind a folder
implies is a hint the header overrules. :class:`ModelFolders` keeps the result for the engine:
the found checkpoints and ControlNets as :class:`~backend.models.ModelSpec`, the LoRA and embedding
folders for :class:`~backend.addons.AddonStore`, and rescans (headers are read again only for new or
changed files) each time the engine lists its models.

Family and kind detection reuse :func:`backend.models.inspect` (checkpoints, ControlNets) and
:func:`backend.addons.lora_facts` / :func:`~backend.addons.embedding_facts` (LoRAs, embeddings).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .addons import embedding_facts, lora_facts
from .filesafety import is_pickle_based
from .single_file import shipped_config
from .models.weight_files import gguf_header, is_gguf, weights_format
from .models import (
    UNSAFE_SUFFIXES, ModelConfigError, ModelSpec, ModelStore, family_from_context, inspect,
    pickle_only_weights, safetensors_header,
)

log = logging.getLogger(__name__)

KINDS = ("checkpoint", "lora", "controlnet", "vae", "embedding", "clip_vision", "ipadapter", "redux", "upscaler",
         "text_encoder", "diffusion_model")
#: Families Easel runs (checkpoints and ControlNets of others are listed, not served).
SERVED_FAMILIES = ("sd15", "sd2", "sdxl")
#: Files looked at under one folder, and how deep below a kind folder.
MAX_FILES = 5000
MAX_DEPTH = 4
SAFE_SUFFIXES = (".safetensors", ".sft")

#: Sub-folders of ``models/`` (lower case) and the kind of file each holds, for every layout.
KIND_FOLDERS: dict[str, str] = {
    # A1111 / Forge
    "stable-diffusion": "checkpoint", "lora": "lora", "lycoris": "lora", "controlnet": "controlnet",
    "vae": "vae", "esrgan": "upscaler", "realesrgan": "upscaler", "text_encoder": "text_encoder",
    # ComfyUI
    "checkpoints": "checkpoint", "loras": "lora", "t2i_adapter": "controlnet", "embeddings": "embedding",
    "clip_vision": "clip_vision", "ipadapter": "ipadapter", "diffusion_models": "diffusion_model",
    "unet": "diffusion_model", "text_encoders": "text_encoder", "clip": "text_encoder",
    "upscale_models": "upscaler", "diffusers": "checkpoint", "style_models": "redux",
}
#: InvokeAI: ``models/<base>/<type>/``.
INVOKE_BASES: dict[str, str] = {"sd-1": "sd15", "sd-2": "sd2", "sdxl": "sdxl", "sdxl-refiner": "sdxl",
                                "sd-3": "sd3", "flux": "flux", "any": ""}
INVOKE_TYPES: dict[str, str] = {
    "main": "checkpoint", "lora": "lora", "controlnet": "controlnet", "t2i_adapter": "controlnet", "vae": "vae",
    "embedding": "embedding", "clip_vision": "clip_vision", "ip_adapter": "ipadapter", "t5_encoder": "text_encoder",
    "clip_embed": "text_encoder", "spandrel_image_to_image": "upscaler",
}
_ID_CHARS = re.compile(r"[^A-Za-z0-9._/+-]")
#: Easel's kinds of served models, by the kinds :func:`backend.models.inspect` reports.
_SERVED_MODEL_KINDS = ("base", "inpaint", "depth", "controlnet")


@dataclass(frozen=True)
class Found:
    """One file (or diffusers folder) met by a scan. ``model_kind`` is what Easel serves it as
    (``base``, ``inpaint``, ``depth``, ``controlnet``) for checkpoints and ControlNets; ``detail``
    says more in words (an upscaler's architecture, a text encoder's width, ...)."""

    path: Path
    kind: str
    family: str
    status: str
    id: str = ""
    reason: str = ""
    detail: str = ""
    layout: str = ""
    model_kind: str = ""
    folder: Path = Path()

    @property
    def served(self) -> bool:
        return self.status == "served"


@dataclass
class Scan:
    """What :func:`scan` found: every file met, the layouts seen, and the folders whose LoRAs and
    embeddings :class:`~backend.addons.AddonStore` serves."""

    found: list[Found] = field(default_factory=list)
    layouts: dict[Path, str] = field(default_factory=dict)
    lora_dirs: list[Path] = field(default_factory=list)
    embedding_dirs: list[Path] = field(default_factory=list)
    upscaler_dirs: list[Path] = field(default_factory=list)

    def of(self, kind: str) -> list[Found]:
        return [f for f in self.found if f.kind == kind]

    def specs(self, cache: Path | None = None) -> list[ModelSpec]:
        """The served checkpoints and ControlNets, as model specs (by id). With ``cache``, single
        files get the config folder Easel ships for their family and kind (:mod:`backend.single_file`)."""
        return [ModelSpec(f.id, str(f.path), kind=f.model_kind, family=f.family, name=f.path.stem,
                          config=shipped_config(f.family, f.model_kind, cache) if cache and f.path.is_file() else "")
                for f in self.found if f.served and f.model_kind]


# --------------------------------------------------------------------------- reading one file


def _transformer_family(header: Mapping[str, Any]) -> str:
    """The transformer family whose single-file detector knows ``header`` ("" when none does)."""
    from .models import FAMILY_LIST

    return next((f.name for f in FAMILY_LIST if f.denoiser == "transformer" and f.detect_file(header, "epsilon")), "")


def kind_from_header(header: Mapping[str, Any]) -> tuple[str, str, str]:
    """(kind, family, detail) from a ``.safetensors`` header's tensor names and shapes; kind "" when
    they match no kind Easel knows. Checkpoints and ControlNets of SD families get their family
    from :func:`backend.models.inspect` later; here they get "" (or ``sd3``/``flux``)."""
    keys = [k for k in header if k != "__metadata__"]

    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    def shape(key: str) -> list[int]:
        entry = header.get(key)
        return list(entry.get("shape", ())) if isinstance(entry, dict) else []

    transformer = _transformer_family(header)
    if has("model.diffusion_model."):
        family = transformer or ("flux" if has("model.diffusion_model.double_blocks.") else
                                 "sd3" if has("model.diffusion_model.joint_blocks.") else "")
        whole = has("first_stage_model.", "cond_stage_model.", "conditioner.", "text_encoders.", "vae.")
        if whole:
            return "checkpoint", family, ""
        return "diffusion_model", family or _unet_family(header, "model.diffusion_model."), "UNet/transformer only"
    if has("control_model.", "controlnet_cond_embedding.", "input_hint_block.", "controlnet_blocks."):
        return "controlnet", "", ""  # controlnet_blocks: a Flux ControlNet (InstantX's, XLabs')
    if any("lora" in k.lower() or ".hada_" in k or ".lokr_" in k for k in keys):
        return "lora", "", ""
    if has("redux_up.") and has("redux_down."):
        width = shape("redux_down.weight")
        return "redux", "flux", f"{width[0] if width else 0}-wide text features"
    if has("image_proj.") and has("ip_adapter."):
        width = next((s[1] for k in keys if k.endswith("to_k_ip.weight") and len(s := shape(k)) == 2), 0)
        return "ipadapter", family_from_context(width) if width in (768, 1024, 2048) else "", f"{width}-wide text features"
    if has("encoder.conv_in.") and has("decoder.conv_in."):
        latent = shape("decoder.conv_in.weight")
        channels = latent[1] if len(latent) == 4 else 0
        return "vae", "", f"{channels} latent channels" + (" (SD 1.x, 2.x, SDXL)" if channels == 4 else
                                                           " (SD 3, Flux)" if channels == 16 else "")
    if has("vision_model.") and not has("text_model."):
        width = shape("vision_model.post_layernorm.weight") or shape("vision_model.embeddings.patch_embedding.weight")
        names = {1024: "ViT-L", 1280: "ViT-H", 1664: "ViT-bigG"}
        return "clip_vision", "", names.get(width[0] if width else 0, "CLIP vision")
    if has("text_model.", "encoder.block.", "transformer.resblocks.", "shared.weight"):
        width = shape("text_model.final_layer_norm.weight") or shape("final_layer_norm.weight")
        names = {768: "CLIP-L", 1024: "OpenCLIP-H", 1280: "OpenCLIP-bigG"}
        detail = names.get(width[0] if len(width) == 1 else 0, "") or ("T5" if has("encoder.block.") else "text encoder")
        return "text_encoder", "", detail
    if transformer:
        return "diffusion_model", transformer, "transformer only"
    if has("double_blocks."):
        return "diffusion_model", "flux", "transformer only"
    if has("joint_blocks."):
        return "diffusion_model", "sd3", "transformer only"
    if has("input_blocks.") and has("middle_block."):
        return "diffusion_model", _unet_family(header, ""), "UNet only"
    if has("conv_in.") and has("time_embedding.") and has("down_blocks."):
        return "diffusion_model", "sdxl" if has("add_embedding.") else _unet_family(header, ""), "UNet only"
    if (has("model.0.weight") and has("model.1.sub.")) or (has("conv_first.") and has("RRDB_trunk.", "body.")):
        return "upscaler", "", "ESRGAN"
    if "emb_params" in keys or {"clip_l", "clip_g"} <= set(keys) or (
            len(keys) == 1 and len(shape(keys[0])) in (1, 2)):
        return "embedding", "", ""
    return "", "", ""


def _unet_family(header: Mapping[str, Any], prefix: str) -> str:
    sdxl = any(k.startswith(prefix) and ("label_emb" in k or "add_embedding" in k) for k in header)
    for key, entry in header.items():
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight") and isinstance(entry, dict):
            shape = entry.get("shape", ())
            if len(shape) == 2:
                return family_from_context(int(shape[1]), sdxl)
    return "sdxl" if sdxl else ""


def read_file(path: Path, hint: str, hint_family: str = "") -> Found:
    """One file's :class:`Found` (without id): kind and family from its header; pickle-based files
    are refused without being opened. ``hint``: the kind its folder implies (used only when the
    header says nothing decisive is wrong with it); ``hint_family``: InvokeAI's base folder."""
    lower = path.name.lower()
    if lower.endswith(UNSAFE_SUFFIXES):
        return Found(path, hint, hint_family, "refused",
                     reason=f"{path.suffix} files are pickle-based, and loading one can run any code it contains; "
                            f"use a .safetensors version (or configure it with --model and "
                            f"--allow-unsafe-checkpoints if you trust it)")
    try:
        size = path.stat().st_size
        if size == 0:
            return Found(path, hint, hint_family, "unreadable",
                         reason="the file is empty (0 bytes): an interrupted download? Download it again")
        if is_pickle_based(path):  # the first bytes only: a pickle in disguise is never unpickled
            return Found(path, hint, hint_family, "refused",
                         reason="despite its name it holds pickle-based weights, which can run any code they "
                                "contain; use a real .safetensors file")
        header = gguf_header(path) if is_gguf(path) else safetensors_header(path)  # GGUF: a quantized transformer
        if not isinstance(header, dict):
            raise ValueError("the header is not a table of tensors")
    except PermissionError:
        return Found(path, hint, hint_family, "unreadable",
                     reason="no permission to read it; let the user running Easel read the file")
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        return Found(path, hint, hint_family, "unreadable", reason=f"not a readable .safetensors file ({_short(exc)})")
    kind, family, detail = kind_from_header(header)
    stored = weights_format(header)  # "fp8", "gguf Q8_0": how the weights are stored
    detail = ", ".join(part for part in (detail, stored) if part)
    if not kind:
        if hint == "upscaler":  # spandrel knows many more architectures than the header patterns here
            return Found(path, "upscaler", "", "listed", detail="architecture unknown",
                         reason="its tensor names match no upscaler architecture Easel runs (ESRGAN family)")
        return Found(path, hint, hint_family, "listed", reason="its tensor names match no kind of model Easel knows")
    if kind == "checkpoint" and not family:
        return _sd_model(path, "checkpoint", hint_family)
    if kind == "controlnet":
        return _sd_model(path, "controlnet", hint_family)
    if kind in ("lora", "embedding"):
        try:
            addon = (lora_facts if kind == "lora" else embedding_facts)(path, path.stem, {})
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            return Found(path, kind, hint_family, "unreadable", reason=f"not a usable {kind} file ({_short(exc)})")
        return Found(path, kind, addon.family or hint_family, "served")
    if kind == "checkpoint":
        return Found(path, kind, family, "listed", detail=detail,
                     reason=f"a {family} checkpoint; Easel runs SD 1.x, SD 2.x and SDXL models")
    if kind in ("upscaler", "ipadapter", "redux"):  # reference adapters: backend.references pairs them with encoders
        return Found(path, kind, family or hint_family, "served", detail=detail)
    why = {
        "vae": "Easel uses each checkpoint's own VAE",
        "clip_vision": "an image encoder: IP-Adapter and Redux reference models beside it use it",
        "text_encoder": "Easel uses each checkpoint's own text encoders",
        "diffusion_model": "Easel loads whole checkpoints (UNet, VAE and text encoders in one file), or a Flux or "
                           "SD 3.5 transformer file given with --model and a config folder of its family",
    }[kind]
    return Found(path, kind, family or hint_family, "listed", detail=detail, reason=f"not used by Easel: {why}")


def _sd_model(path: Path, kind: str, hint_family: str) -> Found:
    """A checkpoint or ControlNet (single file or diffusers folder): family and model kind from
    :func:`backend.models.inspect`."""
    try:
        facts = inspect(ModelSpec("scan", str(path)))
    except (ModelConfigError, OSError, ValueError) as exc:
        return Found(path, kind, hint_family, "unreadable", reason=_short(exc))
    if kind == "controlnet" and facts.kind != "controlnet":
        kind = "checkpoint"
    elif kind == "checkpoint" and facts.kind == "controlnet":
        kind = "controlnet"
    detail = facts.control_type if kind == "controlnet" else facts.kind
    if kind == "controlnet" and facts.family == "flux" and path.is_file():
        return Found(path, kind, "flux", "listed", detail=detail,
                     reason="a single-file Flux ControlNet: diffusers loads Flux ControlNets only from a diffusers "
                            "folder; put that (config.json + diffusion_pytorch_model.safetensors) here instead")
    return Found(path, kind, facts.family, "served", detail=detail, model_kind=facts.kind)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# --------------------------------------------------------------------------- walking folders


def layout_folders(root: Path) -> tuple[str, list[tuple[Path, str, str]]]:
    """The layout of ``root`` and its kind folders: (layout, [(folder, kind, family hint)]).
    ``root`` may be the install folder (holding ``models/``) or its ``models`` folder itself.
    A folder of no known layout is one folder of kind "" (every file judged by its header)."""
    models = _child(root, "models") or root
    kinds: list[tuple[Path, str, str]] = []
    names = {p.name.lower(): p for p in _subdirs(models)}
    for name, kind in KIND_FOLDERS.items():
        if name in names:
            kinds.append((names[name], kind, ""))
    embeddings = _child(root, "embeddings")  # A1111 keeps them beside models/, not in it
    if embeddings is not None and all(folder != embeddings for folder, _, _ in kinds):
        kinds.append((embeddings, "embedding", ""))
    for base, family in INVOKE_BASES.items():
        if base in names:
            for sub in _subdirs(names[base]):
                if sub.name.lower() in INVOKE_TYPES:
                    kinds.append((sub, INVOKE_TYPES[sub.name.lower()], family))
    if any(folder.parent.parent == models for folder, _, _ in kinds):
        layout = "invokeai"
    elif "checkpoints" in names:
        layout = "comfyui"
    elif "stable-diffusion" in names:
        layout = "a1111"
    elif kinds:
        layout = "comfyui" if {"loras", "upscale_models", "clip_vision"} & set(names) else "a1111"
    else:
        return "folder", [(root, "", "")]
    return layout, kinds


def _child(folder: Path, name: str) -> Path | None:
    for sub in _subdirs(folder):
        if sub.name.lower() == name:
            return sub
    return None


def _kind_links_outside(root: Path) -> list[tuple[Path, str]]:
    """(link, kind) for each layout folder of ``root`` (``models/loras``, ``models``, A1111's
    ``embeddings``, ...) that is a link leading outside ``root``: not scanned, but said so."""
    models = _child(root, "models") or root
    known = set(KIND_FOLDERS) | set(INVOKE_BASES) | {"models"}
    out: list[tuple[Path, str]] = []
    for folder in dict.fromkeys((models, root)):
        try:
            links = sorted(p for p in folder.iterdir() if p.is_symlink() and p.name.lower() in known)
        except OSError:
            continue
        out += [(p, KIND_FOLDERS.get(p.name.lower(), "")) for p in links if p.is_dir() and not _inside(p, root)]
    return out


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    except OSError:
        return []


def _walk(folder: Path, root: Path, budget: list[int]) -> Iterable[tuple[Path, str]]:
    """(path, "") for each model file or diffusers folder under ``folder``, or (path, reason) for a
    link that leads outside ``root``; bounded by ``budget[0]`` files and :data:`MAX_DEPTH`."""
    suffixes = SAFE_SUFFIXES + UNSAFE_SUFFIXES + (".gguf",)  # GGUF: quantized transformers
    for current, dirs, files in os.walk(folder, followlinks=False):
        here = Path(current)
        depth = len(here.relative_to(folder).parts)
        keep = []
        for name in sorted(dirs):
            sub = here / name
            if name.startswith("."):
                continue
            if sub.is_symlink() and not _inside(sub, root):
                yield sub, _leads_outside(root)
                continue
            if (sub / "model_index.json").is_file() or ((sub / "config.json").is_file() and _is_diffusers_folder(sub)):
                yield sub, ""
                continue
            if depth < MAX_DEPTH:
                keep.append(name)
        dirs[:] = keep
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(suffixes):
                continue
            budget[0] -= 1
            if budget[0] < 0:
                return
            path = here / name
            if path.is_symlink() and not _inside(path, root):
                yield path, _leads_outside(root)
                continue
            yield path, ""


def _leads_outside(root: Path) -> str:
    return f"it links outside {root}; give the folder it leads to as a --models-dir of its own"


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def _is_diffusers_folder(folder: Path) -> bool:
    return any(name.endswith(SAFE_SUFFIXES + UNSAFE_SUFFIXES) for name in os.listdir(folder))


def _read_folder_model(path: Path, hint: str, hint_family: str) -> Found:
    from .references import vision_folder_detail

    vision = vision_folder_detail(path)
    if vision:  # a transformers image encoder (IP-Adapter's image_encoder/, a SigLIP): used by reference models
        return Found(path, "clip_vision", "", "listed", detail=vision,
                     reason="not used by Easel: an image encoder: IP-Adapter and Redux reference models beside it use it")
    pickled = pickle_only_weights(path)
    if pickled:
        return Found(path, hint or "checkpoint", hint_family, "refused",
                     reason=f"{pickled[0]} holds its weights only in a pickle-based file, which can run any code "
                            f"it contains; use a copy with .safetensors weights")
    return _sd_model(path, "controlnet" if not (path / "model_index.json").is_file() else "checkpoint", hint_family)


def scan(folders: Sequence[Path], *, taken: Iterable[str] = (), cache: dict | None = None) -> Scan:
    """Every model file under ``folders`` (see the module docstring). ``taken``: ids already used
    (the configured models): a found model never takes one. ``cache``: a dict kept between scans so
    unchanged files (same size and time) are not read again."""
    result = Scan()
    used = set(taken)
    cache = {} if cache is None else cache
    for given in folders:
        root = Path(given).expanduser()
        if not root.is_dir():
            log.warning("models folder %s does not exist (any more)", root)
            continue
        layout, kind_folders = layout_folders(root)
        result.layouts[root] = layout
        if layout != "folder":  # a plain folder's links are reported by _walk
            for link, hint in _kind_links_outside(root):
                result.found.append(Found(link, hint, "", "refused", layout=layout, folder=link.parent,
                                          reason=_leads_outside(root)))
        budget = [MAX_FILES]
        for folder, hint, hint_family in kind_folders:
            if hint == "lora":
                result.lora_dirs.append(folder)
            elif hint == "embedding":
                result.embedding_dirs.append(folder)
            elif hint == "upscaler":
                result.upscaler_dirs.append(folder)
            for path, refusal in _walk(folder, root, budget):
                if refusal:
                    found = Found(path, hint, hint_family, "refused", reason=refusal)
                else:
                    found = _cached_read(path, hint, hint_family, cache)
                found = replace(found, layout=layout, folder=folder)
                if found.served:
                    found = replace(found, id=_unique_id(path, folder, used))
                result.found.append(found)
            if budget[0] < 0:
                log.warning("%s holds more than %d model files; the rest are not listed", root, MAX_FILES)
                break
    if len(cache) > 4 * MAX_FILES:  # bounded: forget old entries wholesale
        cache.clear()
    _unpaired_adapters(result)
    return result


def _unpaired_adapters(result: Scan) -> None:
    """Reference adapters (IP-Adapter, Redux) without a fitting image encoder are listed, not served,
    with the reason (:func:`backend.references.find_adapters` pairs them)."""
    from .references import find_adapters

    _, skipped = find_adapters(result.found, {})
    reasons = {path: reason for path, reason in skipped}
    result.found = [replace(f, status="listed", id="", reason=f"not used by Easel: {reasons[f.path]}")
                    if f.kind in ("ipadapter", "redux") and f.path in reasons else f for f in result.found]


def _cached_read(path: Path, hint: str, hint_family: str, cache: dict) -> Found:
    try:
        stat = path.stat()
        key = (str(path), hint, hint_family, stat.st_mtime_ns, stat.st_size)
    except OSError as exc:
        return Found(path, hint, hint_family, "unreadable", reason=_short(exc))
    if key not in cache:
        cache[key] = _read_folder_model(path, hint, hint_family) if path.is_dir() else read_file(path, hint, hint_family)
    return cache[key]


def _unique_id(path: Path, folder: Path, used: set[str]) -> str:
    relative = path.relative_to(folder) if path.is_relative_to(folder) else Path(path.name)
    stem = relative.as_posix()
    if not path.is_dir():
        stem = stem[: -len(path.suffix)] if path.suffix else stem
    ident = _ID_CHARS.sub("_", stem).lstrip("._/+-")[:96] or "model"
    if ident in used:
        ident = f"{ident}~{hashlib.sha1(str(path).encode('utf-8')).hexdigest()[:6]}"
    used.add(ident)
    return ident


# --------------------------------------------------------------------------- serving what was found


class ModelFolders:
    """The ``--models-dir`` folders of one engine: scanned at start and on every :meth:`refresh`."""

    def __init__(self, folders: Sequence[Path], taken: Iterable[str] = (), cache: Path | None = None) -> None:
        """``cache``: where the single-file configs Easel ships are written (see :meth:`Scan.specs`)."""
        self.folders = tuple(Path(f).expanduser() for f in folders)
        self._cache_folder = cache
        self._taken = tuple(taken)
        self._cache: dict = {}
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str]] = set()
        self.last = self._scan()
        for root, layout in self.last.layouts.items():
            mine = [f for f in self.last.found if f.path.is_relative_to(root)]
            log.info("models folder %s (%s layout): %d served, %d not used, %d skipped", root, layout,
                     sum(f.served for f in mine), sum(f.status == "listed" for f in mine),
                     sum(f.status in ("refused", "unreadable") for f in mine))

    def _scan(self) -> Scan:
        result = scan(self.folders, taken=self._taken, cache=self._cache)
        for found in result.found:
            if found.status in ("refused", "unreadable") and (str(found.path), found.reason) not in self._reported:
                self._reported.add((str(found.path), found.reason))
                log.warning("models folder: skipping %s: %s", found.path, found.reason)
        return result

    def specs(self) -> list[ModelSpec]:
        return self.last.specs(self._cache_folder)

    def upscalers(self) -> list[Path]:
        """The super-resolution model files found (served ones: ESRGAN family, ``.safetensors``)."""
        return [f.path for f in self.last.found if f.kind == "upscaler" and f.served]

    @property
    def lora_dirs(self) -> list[Path]:
        return self.last.lora_dirs

    @property
    def embedding_dirs(self) -> list[Path]:
        return self.last.embedding_dirs

    def refresh(self, store: ModelStore) -> None:
        """Scan again and make ``store`` serve exactly the configured models plus what is found now."""
        if not self.folders:
            return
        with self._lock:
            before = {s.id: s for s in self.specs()}
            self.last = self._scan()
            sync(store, before, {s.id: s for s in self.specs()})


def sync(store: ModelStore, before: Mapping[str, ModelSpec], now: Mapping[str, ModelSpec]) -> None:
    """Add to ``store`` the specs new in ``now`` and drop those gone since ``before``.

    The store's tables are replaced whole, never changed in place, and in an order (ids out before
    their facts, facts in before their ids) that lets the worker thread read them meanwhile. A model
    that is loaded stays in the store's bounded cache until it is evicted like any other."""
    if dict(before) == dict(now):
        return
    gone = {i for i in before if i not in now or before[i] != now[i]}
    specs = {i: s for i, s in store._specs.items() if i not in gone}
    store._specs = dict(specs)
    facts = {i: f for i, f in store._facts.items() if i not in gone}
    added = {}
    for model_id, spec in now.items():
        if model_id in specs:
            continue
        try:
            facts[model_id] = inspect(spec)
        except ModelConfigError as exc:
            log.warning("models folder: skipping %s: %s", spec.source, exc)
            continue
        added[model_id] = spec
        log.info("models folder: serving %s (%s %s) from %s", model_id, facts[model_id].family,
                 facts[model_id].kind, spec.source)
    store._facts = facts
    store._specs = {**specs, **added}
