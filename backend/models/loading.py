"""Devices, loading and the bounded cache of loaded models (imports torch/diffusers lazily)."""
from __future__ import annotations

import gc
import inspect as _inspect
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from protocol.errors import ErrorCode
from protocol.messages import ModelInfo

from ..construction import exclusive
from ..errors import JobError

log = logging.getLogger(__name__)


from .family import Family
from .inspection import (
    CONFIG_REPOS, CONTROLNET_CACHE, ModelConfigError, ModelFacts, ModelSpec, _read_json, check_spec, inspect,
    is_hub_id, model_info, pickle_only_weights,
)
from .registry import family
from .weight_files import read_header, transformer_file_kwargs

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


def resolve_dtype(name: str, device: str, half: str = "fp16"):
    """``auto``: float16 on GPUs (cuda, mps), float32 on the CPU (half precision is slow or unsupported there);
    ``half`` (a family's ``half_dtype``) instead of float16 on CUDA."""
    import torch

    table = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if name == "auto":
        return torch.float32 if device == "cpu" else table[half] if device.startswith("cuda") else torch.float16
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


def _classes(names: Mapping[str, str]) -> dict[str, Any]:
    """Role → diffusers class, from a family's class names."""
    import diffusers

    return {role: getattr(diffusers, name) for role, name in names.items()}


def roles_of(facts: ModelFacts) -> tuple[str, ...]:
    """The pipeline roles a model with ``facts`` offers: its root's and those its tasks run through."""
    owner = family(facts.family)
    roles = [owner.root_roles[facts.kind]] if facts.kind in owner.root_roles else []
    for task in owner.tasks(facts.kind):
        role = owner.role_for(task, facts.kind)
        if role in owner.pipelines and role not in roles:
            roles.append(role)
    return tuple(roles)


#: ControlNet pipelines a loaded model keeps (:attr:`LoadedModel.control_pipelines`): a few
#: combinations of units, as a painter switches between control layers.
KEPT_CONTROL_PIPELINES = 4

#: Pipeline roles a UNet model of each kind offers (other families: :func:`roles_of`).
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
    #: ControlNet variants of the pipelines, by (role, the ids of their ControlNets in order), the
    #: most recently used last, at most :data:`KEPT_CONTROL_PIPELINES`. Each holds its ControlNets: the
    #: store drops those with a ControlNet it unloads (:meth:`forget_controlnet`).
    control_pipelines: OrderedDict[tuple[str, tuple[int, ...]], Any] = field(default_factory=OrderedDict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    #: LoRA adapters loaded into this model's UNet/text encoders (backend.addons keeps it).
    adapters: Any = None

    @property
    def family(self) -> str:
        return self.facts.family

    @property
    def owner(self) -> Family:
        """The model's :class:`~backend.models.family.Family`."""
        return family(self.facts.family)

    @property
    def denoiser(self) -> Any:
        """The UNet or transformer."""
        return getattr(self.root, self.owner.denoiser)

    def pipeline(self, role: str, controlnets: list[Any] | None = None) -> Any:
        """The pipeline for ``role`` (``txt2img``/``img2img``/``inpaint``/``depth2img``), made once
        from the root pipeline's modules — switching task reloads nothing.

        With ``controlnets`` (loaded ``ControlNetModel``s, one per control unit) it is the
        ControlNet variant of the role's pipeline, made from the same modules plus a
        ``MultiControlNetModel`` of those ControlNets (no weights move) the first time these
        ControlNets are asked for in this order, and reused after that (building one took ~0.3 ms
        of every ControlNet job, a live stroke's included)."""
        role = self.owner.kind_roles.get(self.facts.kind, {}).get(role, role)  # Flux.1 Canny/Depth: control pipelines
        if role == "inpaint" and self.facts.kind == "inpaint":  # an inpainting model repaints with its own
            role = self.owner.root_roles["inpaint"]               # pipeline (SD: 9-channel UNet; Flux: Fill)
        if role not in roles_of(self.facts):
            raise JobError(ErrorCode.UNSUPPORTED, f"model {self.spec.id!r} ({self.facts.kind}) has no {role} pipeline")
        if controlnets:
            import diffusers.models

            if not self.owner.control_pipelines:
                raise JobError(ErrorCode.UNSUPPORTED, f"{self.owner.label} models take no ControlNet units",
                               {"field": "controls"})
            classes = _classes(self.owner.control_pipelines)
            if role not in classes:
                raise JobError(ErrorCode.UNSUPPORTED, f"ControlNet units work with txt2img, img2img, inpaint and "
                                                      f"outpaint, not {role}")
            # The ids name live objects: a cached pipeline holds its ControlNets.
            key = (role, tuple(id(net) for net in controlnets))
            pipe = self.control_pipelines.get(key)
            if pipe is None:
                multi = getattr(diffusers.models, self.owner.multi_controlnet)
                pipe = self.control_pipelines[key] = self._build(classes[role], controlnet=multi(list(controlnets)))
                while len(self.control_pipelines) > KEPT_CONTROL_PIPELINES:
                    self.control_pipelines.popitem(last=False)
            else:
                self.control_pipelines.move_to_end(key)
            return pipe
        if role not in self.pipelines:
            self.pipelines[role] = self._build(_classes(self.owner.pipelines)[role])
        return self.pipelines[role]

    def forget_controlnet(self, net: Any) -> None:
        """Drop the ControlNet pipelines that hold ``net`` (being unloaded: its memory must be freed)."""
        for key in [key for key in self.control_pipelines if id(net) in key[1]]:
            del self.control_pipelines[key]

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
        for name, value in self.owner.pipeline_flags.items():  # e.g. SDXL's requires_aesthetics_score
            if name in params:
                kwargs[name] = value
        kwargs.update(extra)
        pipe = cls(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def scheduler(self, sampler: str) -> Any:
        """The scheduler for ``sampler``, made from the model's own scheduler config once and reused."""
        from ..samplers import make_scheduler

        if sampler not in self.schedulers:
            self.schedulers[sampler] = make_scheduler(sampler, self.root.scheduler.config, self.owner.samplers)
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


@exclusive
def load_model(spec: ModelSpec, facts: ModelFacts, device: str, dtype: Any, offload: bool = False,
               demo_folder: Path | None = None, allow_unsafe: bool = False) -> LoadedModel:
    """Load ``spec`` onto ``device``; raises JobError(model_unavailable) with what to do when it cannot.
    Without ``allow_unsafe`` only ``.safetensors`` weights are read (never a pickle-based file)."""
    owner = family(facts.family)
    role = owner.root_roles.get(facts.kind)
    if role is None:
        raise JobError(ErrorCode.UNSUPPORTED, f"model {spec.id!r}: {owner.label} has no {facts.kind} models")
    cls = _classes({role: owner.pipelines[role]})[role]
    source = os.path.expanduser(spec.source)
    if spec.demo:
        from ..demo import demo_key, ensure_demo_models

        key = demo_key(facts.family, facts.kind)
        source = str(ensure_demo_models(demo_folder, (key,))[key]) if demo_folder else source
    with _load_failures("model", spec), _dtype_argument_quiet():
        root = _load_root(cls, spec, facts, source, dtype, allow_unsafe)
    root.set_progress_bar_config(disable=True)
    _check_kind(spec, facts, getattr(root, owner.denoiser).config.in_channels)
    _use_prediction_type(root, facts)
    if offload and device.startswith("cuda"):
        root.enable_model_cpu_offload(device=device)
    else:
        root.to(device)
    model = LoadedModel(spec, facts, root, device, dtype, offload)
    model.pipelines[role] = root
    return model


def _use_prediction_type(root: Any, facts: ModelFacts) -> None:
    """Sample as the weights were trained: a single file that marks itself v-prediction (SDXL
    v-pred fine-tunes' ``v_pred`` tensor) is loaded with whatever config folder the operator has,
    usually the epsilon base model's; its scheduler is made v-prediction, as ComfyUI does."""
    config = dict(root.scheduler.config)
    if facts.prediction_type == "v_prediction" and config.get("prediction_type", "epsilon") != "v_prediction":
        log.info("sampling %s as v-prediction (the checkpoint says so; its config folder said %s)",
                 facts.family, config.get("prediction_type", "epsilon"))
        root.scheduler = type(root.scheduler).from_config({**config, "prediction_type": "v_prediction"})


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
        denoiser = _read_json(Path(source) / family(facts.family).denoiser / "config.json") or {}
        _check_kind(spec, facts, denoiser.get("in_channels", 4))
        return cls.from_pretrained(source, torch_dtype=dtype, local_files_only=True, **safetensors_only(allow_unsafe),
                                   **_none_components(cls, index))
    if facts.origin == "single_file":
        return _load_single_file(cls, spec, facts, source, dtype)
    return _load_hub(cls, spec, facts, dtype, allow_unsafe)


def _check_kind(spec: ModelSpec, facts: ModelFacts, in_channels: int) -> None:
    owner = family(facts.family)
    actual = owner.kind_of_channels(in_channels)
    if actual != facts.kind and owner.shape_kinds.get(facts.kind) != actual:  # Kontext: base shapes; Flux Depth: control
        what = "UNet" if owner.denoiser == "unet" else "transformer"
        raise JobError(ErrorCode.MODEL_MISMATCH,
                       f"model {spec.id!r} is listed as a {facts.kind} model but its {what} has {in_channels} input "
                       f"channels (a {actual} model); fix or remove its kind in the server config")


@contextmanager
def _load_failures(what: str, spec: ModelSpec) -> Iterator[None]:
    """Every loader failure becomes one typed, explained error (model_unavailable naming ``what``
    and the source); JobErrors and out-of-memory pass through unchanged."""
    try:
        yield
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        if is_out_of_memory(exc):
            raise
        log.warning("loading %s %s from %s failed", what, spec.id, spec.source, exc_info=True)
        raise JobError(ErrorCode.MODEL_UNAVAILABLE,
                       f"{what} {spec.id!r} could not be loaded from {spec.source}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


@exclusive
def load_controlnet(spec: ModelSpec, facts: ModelFacts, device: str, dtype: Any, demo_folder: Path | None = None,
                    allow_unsafe: bool = False) -> Any:
    """Load the ControlNet ``spec`` onto ``device``; raises JobError(model_unavailable) saying what to do."""
    import diffusers

    ControlNetModel = getattr(diffusers, family(facts.family).controlnet_model)  # noqa: N806 - a class
    if facts.origin == "single_file" and not hasattr(ControlNetModel, "from_single_file"):  # Flux ControlNets
        raise JobError(ErrorCode.MODEL_UNAVAILABLE,
                       f"ControlNet {spec.id!r}: {Path(spec.source).name} is a single-file {family(facts.family).label} "
                       f"ControlNet, and diffusers loads those only from a diffusers folder (config.json + "
                       f"diffusion_pytorch_model.safetensors) or a hub id; use the ControlNet's diffusers version",
                       {"field": "controls"})
    source = os.path.expanduser(spec.source)
    if spec.demo:
        from ..demo import ensure_demo_models

        source = str(ensure_demo_models(demo_folder, ("controlnet",))["controlnet"]) if demo_folder else source
    with _load_failures("ControlNet", spec), _dtype_argument_quiet():
        if facts.origin in ("folder", "demo"):
            net = ControlNetModel.from_pretrained(source, torch_dtype=dtype, local_files_only=True, **safetensors_only(allow_unsafe))
        elif facts.origin == "single_file":
            net = _load_single_file(ControlNetModel, spec, facts, source, dtype)
        else:
            net = _load_hub(ControlNetModel, spec, facts, dtype, allow_unsafe)
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
    part = family(facts.family).single_file_model
    if part and cls.__name__ != "ControlNetModel":
        # the file holds only the denoiser (how Flux is shared): the config folder has the rest
        import diffusers

        name = family(facts.family).denoiser
        if config is None:
            raise JobError(ErrorCode.MODEL_UNAVAILABLE,
                           f"{Path(source).name} holds only a {family(facts.family).label} transformer; give the "
                           f"model a config: a diffusers folder of that family with its text encoders and VAE")
        extra = {**family(facts.family).single_file_config(read_header(Path(source))),
                 **transformer_file_kwargs(source, dtype)}  # Fill/control channels; fp8 and GGUF files
        module = getattr(diffusers, part).from_single_file(source, config=config, subfolder=name, torch_dtype=dtype,
                                                          local_files_only=True, **extra)
        return cls.from_pretrained(config, torch_dtype=dtype, local_files_only=True, **{name: module}, **kwargs)
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
                old_id, old = self._controlnets.popitem(last=False)
                for model in self._loaded.values():
                    model.forget_controlnet(old)
                del old
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
            dtype = resolve_dtype(self._dtype_name, self.device, family(facts.family).half_dtype)
            model = load_model(spec, facts, self.device, dtype, self._offload, self._demo_folder, self._allow_unsafe)
            seconds = time.perf_counter() - start
            log.info("model %s loaded in %.1f s", model_id, seconds)
            self._loaded[model_id] = model
            return model, seconds
