"""LoRAs and textual-inversion embeddings: found in the configured folders, named by id, applied per job.

Finding (no torch; safe on the event loop): :class:`AddonStore` scans the operator's LoRA and
embedding folders (at most :data:`MAX_DEPTH` levels, :data:`MAX_FILES` files) for ``.safetensors``
files (pickle-based ``.pt``/``.bin``/``.ckpt`` only with ``allow_unsafe``) and reads each header
once: which family it was made for comes from its tensor names and shapes. A file's **id** is its
path inside its folder without the suffix (``styles/ink``); clients name add-ons by id only, and the
store maps ids back to files it found itself — no path from a client is ever opened. The folders
are rescanned when listed and when a job names an id the store does not know yet.

Applying (worker thread only): :func:`apply_loras` loads each LoRA once per loaded model as a peft
adapter (kept, at most :data:`MAX_ADAPTERS` per model) and activates exactly the job's LoRAs with
their weights — or disables every adapter for a job without LoRAs, so a LoRA never leaks into the
next job. :func:`loaded_embeddings` loads a job's embeddings into the tokenizers and text encoders
only while its prompt is encoded and removes them afterwards, so a word that happens to be an
embedding's name means the same in every later job. An embedding is used when its trigger (the
file name without suffix) appears in the prompt or negative prompt as a word.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from protocol.errors import ErrorCode
from protocol.messages import AddonInfo

from .errors import JobError
from .filesafety import PICKLE_BASED, SAFETENSORS, UnsafeFileError, check_weights, inside, weights_kind
from .models import ModelFacts, family, family_from_context, safetensors_header

log = logging.getLogger(__name__)

#: Files scanned per folder tree, and how deep (subfolders of subfolders).
MAX_FILES = 2000
MAX_DEPTH = 3
#: LoRA adapters kept loaded in one model; the least recently used is removed first.
MAX_ADAPTERS = 8
#: The widths of released text encoders, for naming an embedding's family.
_EMBEDDING_FAMILIES = {(768,): "sd15", (1024,): "sd2", (768, 1280): "sdxl"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+/-]{0,127}$")
#: Tensor-name marks of transformer LoRAs (any prefix, lower case): Flux's single blocks (diffusers'
#: ``single_transformer_blocks``; kohya's and BFL's ``single_blocks``/``double_blocks``) and SD 3's
#: original ``joint_blocks``.
_TRANSFORMER_MARKS = (("flux", ("single_transformer_blocks", "single_blocks", "double_blocks")), ("sd3", ("joint_blocks",)))
#: Marks of the families whose names no other family's LoRA has, asked first: Flux.2's fused single-block
#: projection (diffusers' layout) and shared modulation; Z-Image's refiners and ``layers.N.attention`` /
#: ``feed_forward`` / ``adaLN_modulation`` (diffusers', ai-toolkit's and kohya's spellings).
_FIRST_MARKS = (("flux2", re.compile(r"to_qkv_mlp_proj|double_stream_modulation|single_stream_modulation")),
                ("zimage", re.compile(r"noise_refiner|context_refiner|(^|[._])layers[._]\d+[._](attention|feed_forward|adaln_modulation)")))
#: The output width ÷ input width of a Flux single block's fused ``linear1`` (q, k, v and the MLP's
#: input): 7 on Flux.1 (MLP ratio 4), 9 on Flux.2 (gated MLP of ratio 3), which share its name.
_LINEAR1_RATIOS = {7: "flux", 9: "flux2"}
#: What training tools write in ``modelspec.architecture`` / ``ss_base_model_version``, by family.
_ARCHITECTURES = (("flux.2", "flux2"), ("flux2", "flux2"), ("flux-2", "flux2"), ("z-image", "zimage"),
                  ("zimage", "zimage"), ("flux", "flux"), ("stable-diffusion-v3", "sd3"), ("sd3", "sd3"))
#: The attention width of released transformers (``to_q``'s input), for a diffusers-layout LoRA of
#: the joint blocks alone (names both families share): Flux.1 3072; SD 3 / 3.5 Medium 1536, 3.5 Large 2432.
_TRANSFORMER_WIDTHS = {3072: "flux", 1536: "sd3", 2432: "sd3"}


@dataclass(frozen=True)
class Addon:
    """One LoRA or embedding file the store found.

    ``context_dim`` (LoRAs): the width of the text features its UNet layers attend to, 0 when its
    keys do not say. ``sdxl``: its keys name SDXL's second text encoder. ``transformer``: its layers
    are a transformer's (Flux.1, SD 3.5), not a UNet's. ``widths`` (embeddings):
    the vector width per text encoder. ``family`` is "" when the shapes match no family.
    """

    kind: str
    id: str
    path: Path
    family: str
    trigger: str = ""
    context_dim: int = 0
    sdxl: bool = False
    widths: tuple[int, ...] = ()
    vectors: int = 1
    transformer: bool = False
    #: The configured folder it was found in: every open re-checks that ``path`` is still inside.
    folder: Path | None = None

    def info(self) -> AddonInfo:
        return AddonInfo(id=self.id, name=self.id.rsplit("/", 1)[-1], kind=self.kind, family=self.family,
                         trigger=self.trigger)

    def fits(self, facts: ModelFacts) -> bool:
        """True unless the shapes say this add-on was made for another kind of model than ``facts``."""
        if self.kind == "lora":
            on_transformer = family(facts.family).denoiser == "transformer"
            if self.transformer or on_transformer:
                return self.transformer == on_transformer and self.family in ("", facts.family)
            if self.sdxl and facts.family != "sdxl":
                return False
            return not (self.context_dim and facts.context_dim and self.context_dim != facts.context_dim)
        return not (self.widths and facts.text_dims and self.widths != facts.text_dims)


def mismatch(addon: Addon, model_id: str, facts: ModelFacts) -> JobError:
    """The ``model_mismatch`` error for using ``addon`` with the model ``model_id``."""
    made_for = addon.family or "another kind of model"
    what = "LoRA" if addon.kind == "lora" else "embedding"
    return JobError(ErrorCode.MODEL_MISMATCH,
                    f"{what} {addon.id!r} is for {made_for} but model {model_id!r} is {facts.family}; "
                    f"pick a {what} made for {facts.family}", {"field": "loras" if addon.kind == "lora" else "prompt"})


class AddonStore:
    """The LoRAs and embeddings in the configured folders. Thread-safe; scanning reads headers only.

    ``demo_loras`` (demo mode) returns the folder of the built-in demo LoRA, building it on first
    use; its LoRAs are listed from ``demo_ids`` without building anything.
    """

    def __init__(self, lora_dirs: Sequence[Path] = (), embedding_dirs: Sequence[Path] = (), *,
                 allow_unsafe: bool = False, families: Mapping[int, str] | None = None,
                 demo_loras: Callable[[], Path] | None = None, demo_ids: Sequence[str] = ()) -> None:
        self._dirs = {"lora": tuple(Path(d).expanduser() for d in lora_dirs),
                      "embedding": tuple(Path(d).expanduser() for d in embedding_dirs)}
        self._allow_unsafe = allow_unsafe
        self._families = dict(families or {})  # context width / text width → family, from the configured models
        self._demo_loras = demo_loras
        self._demo_ids = tuple(demo_ids)
        self._lock = threading.Lock()
        self._headers: dict[tuple[str, float, int], Addon | None] = {}
        self._found: dict[str, dict[str, Addon]] = {"lora": {}, "embedding": {}}
        self._scanned = False

    @property
    def folders(self) -> dict[str, tuple[Path, ...]]:
        return dict(self._dirs)

    # ------------------------------------------------------------------ listing

    def infos(self) -> tuple[list[AddonInfo], list[AddonInfo]]:
        """(loras, embeddings) as listed to clients, after a rescan of the folders."""
        self.rescan()
        with self._lock:
            loras = [a.info() for a in self._found["lora"].values()]
            embeddings = [a.info() for a in self._found["embedding"].values()]
        loras += [AddonInfo(id=i, name=i, kind="lora", family="demo") for i in self._demo_ids if i not in self._found["lora"]]
        return loras, embeddings

    def lora(self, addon_id: str) -> Addon | None:
        """The LoRA ``addon_id`` (rescanning once when it is not known yet), or None."""
        if addon_id in self._demo_ids and self._demo_loras is not None:
            return Addon("lora", addon_id, Path(), "demo", context_dim=32)
        found = self._found["lora"].get(addon_id)
        if found is None:
            self.rescan()
            found = self._found["lora"].get(addon_id)
        return found

    def knows_lora(self, addon_id: str) -> bool:
        """Whether :meth:`lora` finds ``addon_id`` without rescanning the folders."""
        return (addon_id in self._demo_ids and self._demo_loras is not None) or addon_id in self._found["lora"]

    def lora_ids(self) -> list[str]:
        return list(self._demo_ids) + list(self._found["lora"])

    def embeddings_in(self, texts: Iterable[str], facts: ModelFacts) -> list[Addon]:
        """The embeddings for ``facts``'s model whose trigger appears as a word in ``texts``, by trigger."""
        if not self._dirs["embedding"]:
            return []
        if not self._scanned:
            self.rescan()
        joined = "\n".join(texts)
        with self._lock:
            candidates = list(self._found["embedding"].values())
        used: dict[str, Addon] = {}
        for addon in candidates:
            if addon.trigger in used or not addon.fits(facts):
                continue
            if re.search(rf"(?<![\w]){re.escape(addon.trigger)}(?![\w])", joined):
                used[addon.trigger] = addon
        return sorted(used.values(), key=lambda a: a.trigger)

    def resolve_path(self, addon: Addon) -> Path:
        """The file to load for ``addon`` (the demo LoRA is built on first use): its real path, checked
        now to be inside its folder and, unless ``allow_unsafe``, not pickle-based by content (it may
        have been swapped since the scan). Raises JobError(model_unavailable) otherwise."""
        if addon.family == "demo" and addon.id in self._demo_ids and self._demo_loras is not None:
            return self._demo_loras() / f"{addon.id}.safetensors"
        what = f"{'LoRA' if addon.kind == 'lora' else 'embedding'} {addon.id!r}"
        try:
            real = inside(addon.path, addon.folder) if addon.folder is not None else addon.path
            check_weights(real, self._allow_unsafe, what)
        except UnsafeFileError as exc:
            log.warning("%s: %s", what, exc)
            raise JobError(ErrorCode.MODEL_UNAVAILABLE, f"{what} cannot be read safely now (the server's log says "
                                                        f"why); list the add-ons again and pick another",
                           {"field": "loras" if addon.kind == "lora" else "prompt"}) from None
        except OSError:
            raise JobError(ErrorCode.MODEL_UNAVAILABLE, f"{what} is gone from its folder; list the add-ons again and "
                                                        f"pick one that is there",
                           {"field": "loras" if addon.kind == "lora" else "prompt"}) from None
        return real

    # ------------------------------------------------------------------ scanning

    def rescan(self) -> None:
        """Look at the folders again: new files are listed, removed ones forgotten (bounded, headers only)."""
        found: dict[str, dict[str, Addon]] = {"lora": {}, "embedding": {}}
        for kind, folders in self._dirs.items():
            for folder in folders:
                root = folder.resolve()  # _files walks the real folder (a relative or linked one too)
                for path in self._files(folder):
                    addon_id = path.relative_to(root).with_suffix("").as_posix()
                    if not _ID.match(addon_id):
                        log.warning("skipping %s: its name is not a usable id (letters, digits, ' ._+-/')", path)
                        continue
                    if addon_id in found[kind]:
                        log.warning("skipping %s: %s %r is already %s", path, kind, addon_id, found[kind][addon_id].path)
                        continue
                    addon = self._read(kind, addon_id, path)
                    if addon is not None:
                        found[kind][addon_id] = replace(addon, folder=folder)
        found = {kind: dict(sorted(addons.items())) for kind, addons in found.items()}  # listed by id
        with self._lock:
            self._found = found
            self._scanned = True

    def _files(self, folder: Path) -> list[Path]:
        """Add-on files under ``folder`` by content (safetensors; pickle-based too with ``allow_unsafe``),
        whatever their names end with."""
        kinds = (SAFETENSORS,) + (PICKLE_BASED if self._allow_unsafe else ())
        root = folder.resolve()
        out: list[Path] = []
        if not root.is_dir():
            return out
        for current, dirs, files in os.walk(root, followlinks=False):
            depth = len(Path(current).relative_to(root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
            for name in sorted(files):
                path = Path(current) / name
                if name.startswith("."):
                    continue
                # A link may point anywhere; only files that really live inside the folder are read.
                if not path.resolve().is_relative_to(root):
                    log.warning("skipping %s: it links outside %s", path, root)
                    continue
                try:
                    kind = weights_kind(path)
                except OSError:
                    continue
                if kind not in kinds:
                    if kind in PICKLE_BASED:
                        log.warning("skipping %s: it is pickle-based (by its content), which only "
                                    "--allow-unsafe-checkpoints reads", path)
                    continue
                out.append(path)
                if len(out) >= MAX_FILES:
                    log.warning("%s holds more than %d add-on files; listing the first %d", root, MAX_FILES, MAX_FILES)
                    return out
        return out

    def _read(self, kind: str, addon_id: str, path: Path) -> Addon | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (str(path), stat.st_mtime, stat.st_size)
        if key in self._headers:
            cached = self._headers[key]
            return None if cached is None else Addon(**{**cached.__dict__, "id": addon_id})
        try:
            addon = (lora_facts if kind == "lora" else embedding_facts)(path, addon_id, self._families)
        except (OSError, ValueError, struct.error, KeyError, TypeError) as exc:
            log.warning("skipping %s %s: not a readable %s file (%s)", kind, path, kind, exc)
            addon = None
        if len(self._headers) > 4 * MAX_FILES:  # bounded: forget old entries wholesale
            self._headers.clear()
        self._headers[key] = addon
        return addon


def lora_facts(path: Path, addon_id: str, families: Mapping[int, str]) -> Addon:
    """What a LoRA file's tensor names and shapes say: a transformer family's layers (see
    :func:`transformer_family`), else the width of text features its cross-attention
    layers take (kohya ``lora_unet_*attn2_to_k.lora_down``, diffusers ``*.attn2.to_k.lora.down`` or
    peft ``lora_A``) and whether it has SDXL's second text encoder (``lora_te2_``/``text_encoder_2.``).
    Pickle-based files are not opened: their family is unknown."""
    if weights_kind(path) != SAFETENSORS:
        return Addon("lora", addon_id, path, "")
    header = safetensors_header(path)
    if not any("lora" in k.lower() for k in header if k != "__metadata__"):
        raise ValueError("no LoRA tensors in it")
    transformer = transformer_family(header)
    if transformer is not None:
        return Addon("lora", addon_id, path, transformer, transformer=True)
    context = 0
    for key, entry in header.items():
        low = key.lower()
        if ("attn2" in low and "to_k" in low and ("down" in low or "lora_a" in low)
                and isinstance(entry, dict) and len(entry.get("shape", ())) == 2):
            context = int(entry["shape"][1])
            break
    sdxl = any(k.startswith(("lora_te2_", "text_encoder_2.", "te2.")) for k in header)
    if context in (768, 1024, 2048) or sdxl:
        family = family_from_context(context, sdxl)
    else:
        family = families.get(context, "")
    return Addon("lora", addon_id, path, family, context_dim=context, sdxl=sdxl)


def transformer_family(header: Mapping[str, Any]) -> str | None:
    """The family of a transformer LoRA from its header, "" when it is one but which is unknown,
    None for a UNet LoRA. Flux's single blocks or SD 3's joint blocks name it; else the training
    tool's ``modelspec.architecture``/``ss_base_model_version``; else, for diffusers' layout of the
    joint blocks alone (``transformer.transformer_blocks.*``), the attention width of the file."""
    names = [k.lower() for k in header if k != "__metadata__"]
    for name, pattern in _FIRST_MARKS:
        if any(pattern.search(key) for key in names):
            return name
    for name, marks in _TRANSFORMER_MARKS:
        if any(mark in key for key in names for mark in marks):
            return _flux_generation(header) if name == "flux" else name
    if not any(key.startswith("transformer.") for key in names):
        return None
    metadata = header.get("__metadata__") or {}
    written = " ".join(str(metadata.get(k, "")) for k in ("modelspec.architecture", "ss_base_model_version")).lower()
    for mark, name in _ARCHITECTURES:
        if mark in written:
            return name
    for key, entry in header.items():
        low = key.lower()
        if ".attn.to_q." in low and ("lora_a" in low or "down" in low) and len(entry.get("shape", ())) == 2:
            return _TRANSFORMER_WIDTHS.get(int(entry["shape"][1]), "")
    return ""


def _flux_generation(header: Mapping[str, Any]) -> str:
    """``flux`` or ``flux2`` for a LoRA in the Flux layouts both share (BFL's, kohya's): the ratio of
    a single block's ``linear1`` up and down widths; Flux.1 when the file has no such pair."""
    widths: dict[str, dict[str, int]] = {}
    for key, entry in header.items():
        low = key.lower()
        if "linear1" in low and isinstance(entry, dict) and len(entry.get("shape", ())) == 2:
            stem = low.split("linear1")[0]
            if "lora_a" in low or "lora_down" in low:
                widths.setdefault(stem, {})["in"] = int(entry["shape"][1])
            elif "lora_b" in low or "lora_up" in low:
                widths.setdefault(stem, {})["out"] = int(entry["shape"][0])
    for pair in widths.values():
        if pair.get("in") and pair.get("out") and pair["out"] % pair["in"] == 0:
            return _LINEAR1_RATIOS.get(pair["out"] // pair["in"], "flux")
    return "flux"


def embedding_facts(path: Path, addon_id: str, families: Mapping[int, str]) -> Addon:
    """An embedding's vector widths: A1111 (``emb_params``), SDXL (``clip_l`` + ``clip_g``), or a
    diffusers file with one tensor. Its trigger is the file name without the suffix."""
    trigger = path.stem
    if weights_kind(path) != SAFETENSORS:
        return Addon("embedding", addon_id, path, "", trigger=trigger)
    header = {k: v for k, v in safetensors_header(path).items() if k != "__metadata__"}
    if "clip_l" in header and "clip_g" in header:
        shapes = [header["clip_l"]["shape"], header["clip_g"]["shape"]]
    elif "emb_params" in header:
        shapes = [header["emb_params"]["shape"]]
    elif len(header) == 1:
        shapes = [next(iter(header.values()))["shape"]]
    else:
        raise ValueError("expected emb_params, clip_l + clip_g, or a single tensor")
    widths = tuple(int(shape[-1]) for shape in shapes)
    vectors = int(shapes[0][0]) if len(shapes[0]) == 2 else 1
    family = _EMBEDDING_FAMILIES.get(widths) or families.get(sum(widths), "")
    return Addon("embedding", addon_id, path, family, trigger=trigger, widths=widths, vectors=vectors)


# --------------------------------------------------------------------------- applying (worker thread)


@dataclass
class AdapterState:
    """The LoRA adapters loaded into one model: adapter name → file key, least recently used first."""

    loaded: OrderedDict[str, tuple[str, float]] = field(default_factory=OrderedDict)
    enabled: bool = False
    #: The (adapter name, weight) pairs the modules were last switched to, while nothing was loaded,
    #: deleted or disabled since: a job asking for the same pairs finds them active (switching walks
    #: every module of the UNet and text encoders: 5 ms a job on the tiny model). None: unknown.
    active: tuple[tuple[str, float], ...] | None = None


def adapter_name(addon_id: str) -> str:
    """peft adapter names become module keys, which may not hold dots: a stable digest of the id."""
    return "easel_" + hashlib.sha1(addon_id.encode("utf-8")).hexdigest()[:16]


def _lora_modules(root: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """The denoiser (UNet or transformer) and the text encoders the pipeline's LoRA loader serves
    (Flux.1: CLIP only, not T5; SD 3.5 and SDXL: both CLIPs)."""
    denoiser = root.unet if getattr(root, "unet", None) is not None else root.transformer
    loadable = getattr(type(root), "_lora_loadable_modules", ("text_encoder", "text_encoder_2"))
    encoders = [(name, getattr(root, name, None)) for name in loadable if name.startswith("text_encoder")]
    return denoiser, [(name, module) for name, module in encoders if module is not None]


def _adapters_of(module: Any) -> set[str]:
    return set(getattr(module, "peft_config", {}) or {})


def apply_loras(model: Any, loras: Sequence[tuple[Addon, Path, float]]) -> float:
    """Make exactly ``loras`` (addon, file, weight) active on ``model`` (a LoadedModel), loading the
    ones not loaded yet; with none, disable every adapter so the model is as it was loaded.
    Returns the seconds spent loading files. Raises JobError(model_mismatch) when a file does not
    fit the model's layers."""
    from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters

    state: AdapterState = model.adapters if model.adapters is not None else AdapterState()
    model.adapters = state
    unet, encoders = _lora_modules(model.root)
    if not loras:
        if state.enabled:
            state.active = None
            for module in [unet] + [e for _, e in encoders]:
                if _adapters_of(module):
                    set_adapter_layers(module, enabled=False)
            state.enabled = False
        return 0.0
    loading = 0.0
    for addon, path, _ in loras:
        loading += _ensure_loaded(model, state, addon, path)
    names = [adapter_name(addon.id) for addon, _, _ in loras]
    weights = [float(weight) for _, _, weight in loras]
    wanted = tuple(zip(names, weights))
    if state.enabled and state.active == wanted:
        return loading
    state.active = None  # until every module is switched
    for module in [unet] + [e for _, e in encoders]:
        present = _adapters_of(module)
        chosen = [(n, w) for n, w in zip(names, weights) if n in present]
        if not present:
            continue
        if not chosen:
            set_adapter_layers(module, enabled=False)
            continue
        set_adapter_layers(module, enabled=True)
        set_weights_and_activate_adapters(module, [n for n, _ in chosen], [w for _, w in chosen])
    state.enabled = True
    state.active = wanted
    return loading


def _ensure_loaded(model: Any, state: AdapterState, addon: Addon, path: Path) -> float:
    """Load ``addon`` into ``model`` unless it is loaded (and unchanged on disk); the seconds it took."""
    name = adapter_name(addon.id)
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        raise JobError(ErrorCode.MODEL_UNAVAILABLE, f"LoRA {addon.id!r} is gone from {path.parent}; "
                                                    f"list the LoRAs again and pick one that is there") from None
    unet, encoders = _lora_modules(model.root)
    if state.loaded.get(name) == key:
        state.loaded.move_to_end(name)
        return 0.0
    start = time.perf_counter()
    state.active = None  # loading and deleting adapters change which are active
    if name in state.loaded:  # the file changed on disk: load it again
        _delete(unet, encoders, name)
        del state.loaded[name]
    while len(state.loaded) >= MAX_ADAPTERS:
        old, _ = state.loaded.popitem(last=False)
        _delete(unet, encoders, old)
    try:
        _load_lora(model.root, path, name)
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - a file that does not fit is the user's to fix, not a crash
        _delete(unet, encoders, name)
        log.warning("LoRA %s (%s) could not be applied to %s", addon.id, path, model.spec.id, exc_info=True)
        raise JobError(ErrorCode.MODEL_MISMATCH,
                       f"LoRA {addon.id!r} does not fit model {model.spec.id!r} ({model.family}): its layers do not "
                       f"match the model's; pick a LoRA made for {model.family}", {"field": "loras"}) from None
    state.loaded[name] = key
    log.info("LoRA %s loaded into %s", addon.id, model.spec.id)
    return time.perf_counter() - start


def _delete(unet: Any, encoders: list[tuple[str, Any]], name: str) -> None:
    from diffusers.utils.peft_utils import delete_adapter_layers

    if name in _adapters_of(unet):
        unet.delete_adapters(name)
    for _, encoder in encoders:
        if name in _adapters_of(encoder):
            delete_adapter_layers(encoder, name)
            encoder.peft_config.pop(name, None)


def _load_lora(root: Any, path: Path, name: str) -> None:
    """Load one LoRA file as adapter ``name``: the UNet or transformer part with diffusers (the
    pipeline's ``lora_state_dict`` reads diffusers', kohya's and, for Flux, BFL's and XLabs' keys),
    the text encoder parts with peft directly (diffusers goes through transformers' own peft hook, which needs a newer
    peft than this install pins)."""
    source: Any = str(path)
    if path.suffix.lower() != ".safetensors" and weights_kind(path) == SAFETENSORS:  # diffusers reads by suffix
        from safetensors.torch import load_file

        source = load_file(source)
    prefix = "unet" if getattr(root, "unet", None) is not None else "transformer"
    # Flux gives (state, alphas, metadata) when asked for alphas; SD 3 has none: (state, metadata).
    out = type(root).lora_state_dict(source, return_lora_metadata=True,
                                     **({"return_alphas": True} if prefix == "transformer" else {}))
    state, alphas, metadata = out if len(out) == 3 else (out[0], None, out[1])
    if not all("lora" in key for key in state):
        raise ValueError("not a LoRA: some tensor names lack 'lora'")
    denoiser, encoders = _lora_modules(root)
    with warnings.catch_warnings():  # peft warns of a second adapter in a model: that is the adapter cache
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        if any(key.startswith(f"{prefix}.") for key in state):
            denoiser.load_lora_adapter(state, prefix=prefix, network_alphas=alphas, adapter_name=name,
                                       metadata=metadata, _pipeline=root)
        for prefix, encoder in encoders:
            _load_text_encoder_lora(state, alphas, metadata, encoder, prefix, name)


def _load_text_encoder_lora(state: Mapping[str, Any], alphas: Mapping[str, float] | None, metadata: Any,
                            encoder: Any, prefix: str, name: str) -> None:
    """diffusers' ``_load_lora_into_text_encoder``, with peft's ``inject_adapter_in_model`` +
    ``set_peft_model_state_dict`` in place of ``text_encoder.load_adapter``."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    part = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
    if not part:
        return
    part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    if not hasattr(encoder, "text_model"):  # transformers 5 flattened CLIPTextModel; files keep the old names
        part = {k.removeprefix("text_model."): v for k, v in part.items()}
    rank = {}
    for module_name, _ in encoder.named_modules():
        if module_name.endswith((".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")):
            rank_key = f"{module_name}.lora_B.weight"
            if rank_key in part:
                rank[rank_key] = part[rank_key].shape[1]
    if alphas:
        alphas = {k.removeprefix(f"{prefix}."): v for k, v in alphas.items() if k.split(".")[0] == prefix}
    if metadata:
        metadata = {k.removeprefix(f"{prefix}."): v for k, v in metadata.items() if k.startswith(f"{prefix}.")}
    config = _create_lora_config(part, alphas or None, metadata or None, rank, is_unet=False)
    inject_adapter_in_model(config, encoder, adapter_name=name)
    result = set_peft_model_state_dict(encoder, part, adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{len(unexpected)} text encoder tensors match no layer, e.g. {unexpected[0]}")
    encoder.to(device=encoder.device, dtype=encoder.dtype)


@contextmanager
def loaded_embeddings(root: Any, embeddings: Sequence[tuple[Addon, Path]], model_id: str) -> Iterator[dict[str, list[str]]]:
    """Load ``embeddings`` into ``root``'s tokenizers and text encoders (diffusers'
    ``load_textual_inversion``) for the duration of the block, and unload them on leaving.

    Yields trigger → the tokens it expands to (``name``, ``name_1``, … for multi-vector embeddings),
    which the prompt encoder needs. Raises JobError(model_mismatch) for an embedding that does not fit.
    """
    added: list[tuple[Any, Any, list[str]]] = []
    expansions: dict[str, list[str]] = {}
    pairs = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")]
    targets = [(getattr(root, t, None), getattr(root, e, None)) for t, e in pairs]
    targets = [(t, e) for t, e in targets if t is not None and e is not None]
    try:
        for addon, path in embeddings:
            parts = _embedding_parts(_load_tensors(path))
            if len(parts) != len(targets):
                raise JobError(ErrorCode.MODEL_MISMATCH,
                               f"embedding {addon.id!r} has {len(parts)} part(s) but model {model_id!r} has "
                               f"{len(targets)} text encoder(s); pick an embedding made for this model's family",
                               {"field": "prompt"})
            for vectors, (tokenizer, encoder) in zip(parts, targets):
                width = encoder.get_input_embeddings().weight.shape[1]
                if vectors.shape[-1] != width:
                    raise JobError(ErrorCode.MODEL_MISMATCH,
                                   f"embedding {addon.id!r} has {vectors.shape[-1]}-wide vectors but model {model_id!r}'s "
                                   f"text encoder takes {width}; pick an embedding made for this model's family",
                                   {"field": "prompt"})
                tokens = [addon.trigger] + [f"{addon.trigger}_{i}" for i in range(1, vectors.shape[0])]
                if any(t in tokenizer.get_vocab() for t in tokens):
                    raise JobError(ErrorCode.INVALID_PARAMETER,
                                   f"embedding {addon.id!r}: its name {addon.trigger!r} is already a token of the "
                                   f"model's tokenizer; rename the file", {"field": "prompt"})
                root.load_textual_inversion(vectors.to(encoder.dtype), token=addon.trigger, tokenizer=tokenizer,
                                            text_encoder=encoder)
                added.append((tokenizer, encoder, tokens))
            expansions[addon.trigger] = [addon.trigger] + [f"{addon.trigger}_{i}" for i in range(1, parts[0].shape[0])]
        yield expansions
    finally:
        for tokenizer, encoder, tokens in reversed(added):
            root.unload_textual_inversion(tokens, tokenizer=tokenizer, text_encoder=encoder)


def _load_tensors(path: Path) -> Mapping[str, Any]:
    """``path`` comes from :meth:`AddonStore.resolve_path` (inside its folder, pickle only when allowed)."""
    if weights_kind(path) == SAFETENSORS:
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)  # only with allow_unsafe (see AddonStore)


def _embedding_parts(tensors: Mapping[str, Any]) -> list[Any]:
    if "clip_l" in tensors and "clip_g" in tensors:
        parts = [tensors["clip_l"], tensors["clip_g"]]
    elif "emb_params" in tensors:
        parts = [tensors["emb_params"]]
    elif "string_to_param" in tensors:
        parts = [next(iter(tensors["string_to_param"].values()))]
    elif len(tensors) == 1:
        parts = [next(iter(tensors.values()))]
    else:
        raise JobError(ErrorCode.MODEL_MISMATCH, "the embedding file holds no recognised vectors "
                                                 "(emb_params, clip_l + clip_g, or one tensor)")
    return [p if p.ndim == 2 else p.reshape(1, -1) for p in parts]
