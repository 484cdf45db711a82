"""The engine seam between the worker thread and the models (see docs/design.md).

    engine = Engine(config)                       # cheap: reads model specs, loads nothing
    engine.model_infos() / engine.capabilities()  # for Welcome and ModelList
    prepared = engine.prepare(submit, images)     # every check that needs no model, and the memory plan
                                                  # (backend.memory); raises JobError
    output = engine.run(prepared, progress)       # worker thread only; JobOutput, or raises
                                                  # JobCancelledError / JobError

``prepare`` loads no model and decodes no image (the memory plan reads safetensors headers, once
per model); the server runs it off the event loop. ``run`` is not thread-safe:
one device, one worker, one job at a time.

``images`` given to ``prepare`` maps each role of ``submit.images`` (``image``, ``mask``, ``depth``)
to its payload, and each control unit's image id (``ControlUnit.image``) to its payload: roles are
words, ids are 64 hex digits, so one mapping holds both.

Besides the models the engine keeps: the LoRAs and embeddings of the configured folders
(:class:`backend.addons.AddonStore`, listed by :meth:`Engine.addon_infos`), the text embeddings of
recent prompts (:class:`backend.prompts.PromptEncoder`), and the control-image preprocessors
(:class:`backend.preprocessors.Preprocessors`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from protocol.errors import ErrorCode
from protocol.images import ImagePayload
from protocol.messages import AddonInfo, Capabilities, ModelInfo, SubmitJob, Task

from .addons import AddonStore, apply_loras, loaded_embeddings, mismatch
from .catalog import ModelFolders
from .download import cached_taesd
from .single_file import with_shipped_config
from .upscalers import SuperResolution
from .demo import (
    DEMO_CONTROLNET, DEMO_DEPTH_CONTROLNET, DEMO_FLUX, DEMO_LORA, DEMO_NOTICE, default_cache_folder, ensure_demo_models,
)
from .errors import JobCancelledError, JobError, invalid
from .imaging import decode_control, encode_rgba, place_control, resize
from .memory import Footprint, MemoryPlan, apply_plan, available_memory, device_budget, footprint_of_folder, \
    footprint_of_loaded, make_plan
from .models.flux_control import check_units as check_control_model_units
from .models.weight_files import weights_bytes
from .models import (
    FAMILY_DEFAULTS, LoadedModel, ModelSpec, ModelStore, family, free_memory, is_out_of_memory, pickled_weights,
    safetensors_only,
)
from .params import SUPPORTED_TASKS, Limits, ResolvedParams, check_roles, resolve, same_aspect
from .preprocessors import PREPROCESSORS, Preprocessors
from .previews import LatentDecoder, PreviewPump, load_taesd
from .prompts import Conditioning, PromptEncoder
from .guides import REGION_FAMILIES, Guidance, JobGuides
from .demo_references import build_demo_adapter, demo_adapters
from .references import ReferenceAdapters
from .samplers import SAMPLERS
from .tasks import ADAPTERS, Progress, TaskRun, denoising_steps
from .tasks.preprocess import over_white

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineConfig", "JobOutput", "PreparedJob", "Progress", "ModelSpec", "Limits",
           "JobError", "JobCancelledError"]

#: What to configure when no model can run a task.
_NEEDS = {Task.DEPTH2IMG: "configure a depth model (5-channel UNet, e.g. stabilityai/stable-diffusion-2-depth)",
          Task.EDIT: "configure an instruction-edit model (Flux.1 Kontext, e.g. black-forest-labs/FLUX.1-Kontext-dev)"}

#: Prompt and negative prompt characters together up to which :meth:`Engine.prepare` is quick enough
#: for the server's event loop (parsing them takes ~0.15 µs a character here).
QUICK_PROMPT_CHARS = 1000

OOM_MESSAGE = ("the device ran out of memory while running this job; try a smaller size or batch, "
               "or start the server with --offload")


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs from the server's configuration.

    ``models`` empty means the demo models. ``device``: auto, cpu, cuda, mps. ``dtype``: auto
    (float16 on GPUs — bfloat16 on CUDA for a family whose ``half_dtype`` says so — float32 on the CPU), fp16, bf16, fp32. ``cache_size``: loaded models kept.
    ``cache_folder``: where the demo models are built (default ``~/.cache/easel``).
    ``taesd``: family → TAESD folder or cached hub id, for sharper previews. ``depth_estimator``:
    the DPT model used when a depth2img job sends no depth map (only ever taken from the local cache).
    Both read ``.safetensors`` weights only unless ``allow_unsafe_checkpoints``, like the models.
    ``lora_dirs`` / ``embedding_dirs``: folders whose ``.safetensors`` LoRAs and textual-inversion
    embeddings jobs may name by id (pickle formats too with ``allow_unsafe_checkpoints``).
    """

    models: tuple[ModelSpec, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    cache_size: int = 1
    cache_folder: Path | None = None
    allow_unsafe_checkpoints: bool = False
    offload: bool = False
    taesd: Mapping[str, str] = field(default_factory=dict)
    depth_estimator: str = "Intel/dpt-hybrid-midas"
    limits: Limits = Limits()
    lora_dirs: tuple[Path, ...] = ()
    embedding_dirs: tuple[Path, ...] = ()
    #: A1111/Forge, ComfyUI or InvokeAI folders whose models are served too (backend.catalog).
    models_dirs: tuple[Path, ...] = ()
    #: Bytes a job may use on the device for the memory plan (backend.memory); 0: on CUDA the free
    #: device memory, elsewhere the memory this machine had available when the engine started.
    device_memory: int = 0

    @classmethod
    def from_settings(cls, settings: Any) -> "EngineConfig":
        """Build from the server's ``ServerConfig`` (backend/config.py): its ``models`` entries
        (``id``, ``path``, ``config``, ``kind``, ``control_type``), ``device``, ``dtype``,
        ``model_cache_size``, ``cache_dir``, ``offload``, ``allow_unsafe_checkpoints``, ``lora_dirs``
        and ``embedding_dirs``."""
        models = tuple(
            ModelSpec(id=entry.id, source=str(entry.path), kind=getattr(entry, "kind", "") or "",
                      config=str(getattr(entry, "config", "") or ""),
                      control_type=str(getattr(entry, "control_type", "") or ""))
            for entry in getattr(settings, "models", ()))
        return cls(
            models=models, device=getattr(settings, "device", "auto"), dtype=getattr(settings, "dtype", "auto"),
            cache_size=getattr(settings, "model_cache_size", 1), cache_folder=getattr(settings, "cache_dir", None),
            allow_unsafe_checkpoints=getattr(settings, "allow_unsafe_checkpoints", False),
            offload=getattr(settings, "offload", False),
            lora_dirs=tuple(Path(d) for d in getattr(settings, "lora_dirs", ()) or ()),
            embedding_dirs=tuple(Path(d) for d in getattr(settings, "embedding_dirs", ()) or ()),
            models_dirs=tuple(Path(d) for d in getattr(settings, "models_dirs", ()) or ()),
            device_memory=int(getattr(settings, "device_memory", 0) or 0),
            taesd=cached_taesd(),  # what `easel download taesd` put into the Hugging Face cache
        )


@dataclass(frozen=True)
class PreparedJob:
    """A checked job, ready for :meth:`Engine.run`. ``params`` holds every resolved value;
    ``images`` the role images, ``control_images`` the control units' images by id;
    ``denoising_steps`` the steps it will report (:func:`backend.tasks.denoising_steps`)."""

    job_id: str
    params: ResolvedParams
    images: Mapping[str, ImagePayload]
    control_images: Mapping[str, ImagePayload] = field(default_factory=dict)
    denoising_steps: int = 0
    #: The memory plan (backend.memory); None where the model's footprint is not known before it loads.
    memory: MemoryPlan | None = None

    @property
    def task(self) -> str:
        return self.params.task

    @property
    def model(self) -> str:
        return self.params.model

    @property
    def seed(self) -> int:
        return self.params.seed

    @property
    def steps(self) -> int:
        """The denoising steps that will run, as ``step_preview.total`` counts them: what
        ``job_started.steps`` announces (not ``params.steps``, the steps asked for: img2img at
        strength 0.6 runs 6 of 10)."""
        return self.denoising_steps

    @property
    def width(self) -> int:
        """Width of the result."""
        return self.params.width

    @property
    def height(self) -> int:
        return self.params.height


@dataclass(frozen=True)
class JobOutput:
    """Lossless results (one per batch image), their seeds, and seconds by stage: ``load``,
    ``prepare``, ``text`` (prompt encoding), ``denoise``, ``decode``, ``encode``; ``previews`` (part of
    ``denoise``) is the preview work that held the worker back, ``preview_render`` the scaling and
    JPEG time on the preview thread; ``preprocess`` for the preprocess task."""

    images: list[ImagePayload]
    seeds: list[int]
    timings: dict[str, float]


def demo_specs() -> tuple[ModelSpec, ...]:
    return (
        ModelSpec("demo", "", kind="base", family="demo", name="Demo (random weights: noise)", demo=True),
        ModelSpec("demo-depth", "", kind="depth", family="demo", name="Demo depth (random weights: noise)", demo=True),
        ModelSpec(DEMO_CONTROLNET, "", kind="controlnet", family="demo", name="Demo ControlNet canny (random weights)",
                  demo=True, control_type="canny"),
        ModelSpec(DEMO_DEPTH_CONTROLNET, "", kind="controlnet", family="demo",
                  name="Demo ControlNet depth (random weights)", demo=True, control_type="depth"),
        ModelSpec(DEMO_FLUX, "", kind="base", family="flux", name="Demo Flux (random weights: noise)", demo=True),
    )


class Engine:
    """Model registry, validation and dispatch to the task adapters. See the module docstring."""

    def __init__(self, config: EngineConfig | Any) -> None:
        """``config`` is an :class:`EngineConfig`, or the server's ``ServerConfig`` (converted with
        :meth:`EngineConfig.from_settings`). Raises ModelConfigError for a model spec that cannot work."""
        if not isinstance(config, EngineConfig):
            config = EngineConfig.from_settings(config)
        self.config = config
        cache = config.cache_folder if config.cache_folder is not None else default_cache_folder()
        self.folders = ModelFolders(config.models_dirs, taken=[spec.id for spec in config.models], cache=Path(cache))
        found = tuple(self.folders.specs())
        self.demo = not (config.models or any(spec.kind != "controlnet" for spec in found))
        configured = tuple(with_shipped_config(spec, Path(cache)) for spec in config.models)  # single files offline
        self.models = ModelStore(
            (*(demo_specs() if self.demo else configured), *found), device=config.device, dtype=config.dtype, cache_size=config.cache_size,
            allow_unsafe=config.allow_unsafe_checkpoints, offload=config.offload, demo_folder=Path(cache),
        )
        self._demo_folder = Path(cache)
        families = {}
        for model_id in self.models.ids:
            facts = self.models.facts(model_id)
            if facts.kind != "controlnet":
                families.setdefault(facts.context_dim, facts.family)
                families.setdefault(sum(facts.text_dims), facts.family)
        self.addons = AddonStore(
            (*config.lora_dirs, *self.folders.lora_dirs), (*config.embedding_dirs, *self.folders.embedding_dirs),
            allow_unsafe=config.allow_unsafe_checkpoints, families=families,
            demo_loras=(lambda: ensure_demo_models(self._demo_folder, ("loras",))["loras"]) if self.demo else None,
            demo_ids=(DEMO_LORA,) if self.demo else ())
        self.prompts = PromptEncoder()
        self._families = families
        self.references = ReferenceAdapters(  # IP-Adapter and Redux files of the models folders (and the demo's)
            demo_adapters(Path(cache)) if self.demo else (),
            lambda adapter: build_demo_adapter(adapter, self._demo_folder))
        self.references.refresh(self.folders.last.found, families)
        self.upscalers = SuperResolution(self.folders.upscalers, lambda: self.models.device)
        self._preprocessors: Preprocessors | None = None
        self._taesd: dict[str, Any] = {}
        self._depth: tuple[Any, Any] | None = None
        self._pump = PreviewPump()
        self._footprints: dict[str, Footprint] = {}
        self._available = config.device_memory or available_memory()  # the CPU budget: before any model loads

    def close(self) -> None:
        """Stop the preview thread (started on the first preview). The engine is not used after this."""
        self._pump.close()

    @property
    def notice(self) -> str:
        """A sentence for the log and the Welcome message; empty when real models are configured."""
        return DEMO_NOTICE if self.demo else ""

    # ------------------------------------------------------------------ listing

    def model_infos(self) -> list[ModelInfo]:
        """Every configured model, ControlNets (kind ``controlnet``, no tasks) included; the models
        folders are scanned again first."""
        self.folders.refresh(self.models)
        self.references.refresh(self.folders.last.found, self._families)
        return self.models.infos() + self.references.infos()

    def addon_infos(self) -> tuple[list[AddonInfo], list[AddonInfo]]:
        """(loras, embeddings) for ``ModelList``; rescans the configured folders (headers only)."""
        return self.addons.infos()

    def capabilities(self) -> Capabilities:
        infos = self.model_infos()
        offered = {task for info in infos for task in info.tasks} | {Task.PREPROCESS}  # preprocess needs no model
        return Capabilities(
            tasks=tuple(t for t in Task.ALL if t in offered and t in SUPPORTED_TASKS),
            samplers=tuple(SAMPLERS), models=tuple(infos), preprocessors=tuple(PREPROCESSORS),
            device=self.models.device,
        )

    def default_model(self, task: str) -> str | None:
        """The first configured model that can run ``task``."""
        for model_id in self.models.ids:
            if task in self._tasks_of(model_id):
                return model_id
        return None

    def _tasks_of(self, model_id: str) -> tuple[str, ...]:
        facts = self.models.facts(model_id)
        return family(facts.family).tasks(facts.kind)

    # ------------------------------------------------------------------ prepare

    def prepare(self, submit: SubmitJob, images: Mapping[str, ImagePayload]) -> PreparedJob:
        """Check everything that needs no model work and fill in defaults (a random seed included).

        ``images`` maps each role in ``submit.images`` to its payload, and each control unit's image
        id to its payload. Raises JobError with ``unsupported`` (task or feature), ``unknown_model``
        (job or control-unit model, LoRA), ``model_mismatch`` (a ControlNet or LoRA for another
        family) or ``invalid_parameter``.
        """
        task = submit.task
        if task not in SUPPORTED_TASKS:
            known = "is not supported by this server yet" if task in Task.ALL else "is not a task"
            raise JobError(ErrorCode.UNSUPPORTED, f"{task!r} {known}; this server runs: {', '.join(SUPPORTED_TASKS)}",
                           {"field": "task"})
        roles = {role: images[role] for role in (submit.images or {}) if role in images}
        controls = {unit.image: images[unit.image] for unit in submit.params.controls
                    if isinstance(unit.image, str) and unit.image in images}
        controls.update(guide_images(submit.params, images))  # references' images and regions' masks, by id
        if task == Task.PREPROCESS:  # no diffusion model: the preprocessor is the whole job
            check_roles(task, roles)
            params = resolve(submit, roles, model="", defaults=FAMILY_DEFAULTS["sd15"], limits=self.config.limits)
            return PreparedJob(submit.job_id, params, roles, denoising_steps=denoising_steps(params))
        model_id = submit.params.model or self.default_model(task)
        if model_id is None:
            raise JobError(ErrorCode.UNSUPPORTED, f"no configured model can run {task}; "
                           f"{_NEEDS.get(task, 'configure a base model')}",
                           {"field": "model"})
        if model_id not in self.models.ids:
            self.folders.refresh(self.models)  # a file put into a models folder since the last listing
        if model_id not in self.models.ids:
            raise JobError(ErrorCode.UNKNOWN_MODEL,
                           f"unknown model {model_id!r}; this server has: {', '.join(self.models.ids)}", {"field": "model"})
        facts = self.models.facts(model_id)
        owner = family(facts.family)
        if task not in self._tasks_of(model_id):
            able = [m for m in self.models.ids if task in self._tasks_of(m)]
            hint = f"models here that can: {', '.join(able)}" if able else "no configured model can"
            raise JobError(ErrorCode.UNSUPPORTED, f"model {model_id!r} is {owner.cannot(task, facts.kind)}; {hint}",
                           {"field": "model"})
        check_roles(task, roles)
        params = resolve(submit, roles, model=model_id, defaults=facts.defaults, limits=self.config.limits,
                         control_images=controls, family=owner)
        self._check_controls(model_id, params)
        self._check_loras(model_id, params)
        self._check_guides(model_id, params)
        return PreparedJob(submit.job_id, params, roles, controls, denoising_steps(params), self._plan(model_id, params))

    def prepares_quickly(self, submit: SubmitJob) -> bool:
        """Whether :meth:`prepare` of ``submit`` reads no file, asks no device and has little text to
        parse (~0.1 ms), so the server may run it on its event loop instead of on a thread and back:
        a job with no images of any kind (roles, control units, references, regions), a configured
        model whose footprint is known, LoRAs known without a rescan, a short prompt, and a memory
        budget that needs no question to a CUDA device."""
        p = submit.params
        if submit.images or p.controls or p.references or p.regions or submit.task == Task.PREPROCESS:
            return False
        texts = (p.prompt, p.negative_prompt)  # fields of the wrong type: prepare on the thread says what is wrong
        if not all(isinstance(text, str) for text in texts) or sum(map(len, texts)) > QUICK_PROMPT_CHARS:
            return False
        if not isinstance(p.model, str) or p.model not in self._footprints or p.model not in self.models.ids:
            return False
        if self.models.device.startswith("cuda") and not self.config.device_memory:
            return False
        return all(isinstance(lora.id, str) and self.addons.knows_lora(lora.id) for lora in p.loras)

    def _plan(self, model_id: str, params: ResolvedParams) -> MemoryPlan | None:
        """The job's memory plan, or None when the model's footprint is unknown until it loads (a hub
        model, a single file, a demo model not built yet). Raises JobError(out_of_memory)."""
        owner = family(self.models.facts(model_id).family)
        fp = self._footprints.get(model_id)
        source = Path(os.path.expanduser(self.models.spec(model_id).source or "-")) if fp is None else None
        if source is not None and source.is_dir():
            element = self.models.dtype.itemsize
            fp = footprint_of_folder(source, owner.denoiser, owner.size_multiple, owner.name, element)
            if fp is not None:
                self._footprints[model_id] = fp
        if fp is None:
            return None
        device = self.models.device
        budget = device_budget(device, self.config.device_memory) if device.startswith("cuda") else self._available
        units = () if self.models.facts(model_id).kind in owner.control_kinds else params.controls  # Flux.1 Canny: none
        units = tuple(u for u in units if u.weight != 0)  # left out (TaskRun.control_inputs)
        nets = len(units)
        control_weights = sum(  # from the ControlNets' headers; unknown: half the denoiser (SD's copies its encoder)
            weights_bytes(self.models.spec(u.model).source, fp.element) or fp.weights.get(owner.denoiser, 0) // 2
            for u in units)
        cfg = owner.guidance == "cfg" and params.cfg_scale > 1 and not self.models.facts(model_id).distilled
        return make_plan(fp, params, budget, device, nets, control_weights, cfg)

    def _check_controls(self, model_id: str, params: ResolvedParams) -> None:
        facts = self.models.facts(model_id)
        owner = family(facts.family)
        if facts.kind in owner.control_kinds:  # its transformer takes the control image itself (Flux.1 Canny)
            return check_control_model_units(model_id, facts, params.controls)
        if params.controls and owner.role_for(params.task, facts.kind) not in owner.control_pipelines:
            raise JobError(ErrorCode.UNSUPPORTED, f"model {model_id!r} ({owner.label}"
                                                  f"{'' if facts.kind == 'base' else ' ' + facts.kind}) takes no "
                                                  f"ControlNet units; use an SD 1.x, SD 2.x, SDXL or Flux.1 base "
                                                  f"model for ControlNet guidance", {"field": "controls"})
        for index, unit in enumerate(params.controls, 1):
            if unit.model not in self.models.ids:
                nets = [m for m in self.models.ids if self.models.facts(m).kind == "controlnet"]
                have = f"this server has: {', '.join(nets)}" if nets else "this server has no ControlNet configured"
                raise JobError(ErrorCode.UNKNOWN_MODEL, f"control unit {index}: unknown ControlNet {unit.model!r}; {have}",
                               {"field": "controls"})
            net = self.models.facts(unit.model)
            if net.kind != "controlnet":
                raise invalid(f"control unit {index}: {unit.model!r} is a {net.kind} model, not a ControlNet",
                              field="controls")
            both_known = (net.detected or self.models.spec(unit.model).family) and (
                facts.detected or self.models.spec(model_id).family)
            if both_known and net.family != facts.family:
                raise JobError(ErrorCode.MODEL_MISMATCH,
                               f"ControlNet {unit.model!r} is for {net.family} but model {model_id!r} is {facts.family}; "
                               f"pick a ControlNet for {facts.family}", {"field": "controls"})

    def _check_guides(self, model_id: str, params: ResolvedParams) -> None:
        """References: an adapter that exists and fits the model (``unsupported`` for a family that
        takes none); regions: a family that runs them."""
        facts = self.models.facts(model_id)
        owner = family(facts.family)
        if params.regions and facts.family not in REGION_FAMILIES:
            raise JobError(ErrorCode.UNSUPPORTED, f"model {model_id!r} ({owner.label}) takes no regions; "
                                                  f"SD 1.x, SD 2.x, SDXL and Flux.1 models do", {"field": "regions"})
        for field_name, ref in [("references", r) for r in params.references] + [
                ("regions", r) for region in params.regions for r in region.references]:
            self.references.choose(ref.model, model_id, facts, owner.label, field_name)

    def _check_loras(self, model_id: str, params: ResolvedParams) -> None:
        facts = self.models.facts(model_id)
        owner = family(facts.family)
        if params.loras and not owner.lora:
            raise JobError(ErrorCode.UNSUPPORTED, f"model {model_id!r} ({owner.label}): this server does not apply "
                                                  f"LoRAs to {owner.label} models yet; leave loras empty",
                           {"field": "loras"})
        for lora_id, _ in params.loras:
            addon = self.addons.lora(lora_id)
            if addon is None:
                have = self.addons.lora_ids()
                listed = f"this server has: {', '.join(have[:20])}" if have else \
                    "this server has no LoRA folder configured (easel serve --lora-dir DIR)"
                raise JobError(ErrorCode.UNKNOWN_MODEL, f"unknown LoRA {lora_id!r}; {listed}", {"field": "loras"})
            if not addon.fits(facts):
                raise mismatch(addon, model_id, facts)

    # ------------------------------------------------------------------ run

    def run(self, prepared: PreparedJob, progress: Progress) -> JobOutput:
        """Run a prepared job on this thread (the worker's). Raises JobCancelledError when
        ``progress.cancelled()`` turned true, JobError for failures the user can act on; the engine
        stays usable after either, an out-of-memory failure included."""
        params = prepared.params
        job = TaskRun(
            params=params, images=prepared.images, progress=progress, max_side=self.config.limits.max_side,
            load=lambda: self.models.get(params.model), latent_decoder=self._latent_decoder,
            estimate_depth=self._estimate_depth, pump=self._pump, setup=_Setup(self, prepared),
            preprocess=self._preprocess, enlarge=self.upscalers.enlarge,
        )
        if params.model:
            job.family = family(self.models.facts(params.model).family)
        try:
            pixels = ADAPTERS[params.task](job)
        except (JobError, JobCancelledError):
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                log.warning("job %s ran out of memory (%s)", prepared.job_id, exc)
                free_memory()
                raise JobError(ErrorCode.OUT_OF_MEMORY, OOM_MESSAGE) from None
            raise
        with job.timed("encode"):
            images = [encode_rgba(rgba, params.result_format) for rgba in pixels]
        for stage in ("load", "prepare", "text", "denoise", "decode", "encode"):
            job.timings.setdefault(stage, 0.0)
        return JobOutput(images=images, seeds=list(params.seeds), timings=dict(job.timings))

    # ------------------------------------------------------------------ helpers the adapters get

    def _preprocess(self, name: str, rgb: np.ndarray, seed: int = 0, key: str | None = None) -> np.ndarray:
        if self._preprocessors is None:
            self._preprocessors = Preprocessors(self.models.device, self.config.allow_unsafe_checkpoints)
        return self._preprocessors.run(name, rgb, seed, key)

    def _controlnet(self, model_id: str, model: LoadedModel) -> tuple[Any, float]:
        """The loaded ControlNet ``model_id`` (and the seconds loading it took now), checked against
        ``model``'s UNet (a hub ControlNet that was not in the cache could not be checked before it loaded)."""
        net, seconds = self.models.controlnet(model_id)
        misfit = model.owner.controlnet_misfit(net.config, model.denoiser.config)
        if misfit:
            family = self.models.facts(model_id).family
            raise JobError(ErrorCode.MODEL_MISMATCH,
                           f"ControlNet {model_id!r} does not fit model {model.spec.id!r} ({model.family}): {misfit}"
                           f"{f' ({family})' if family else ''}; pick a ControlNet for {model.family}",
                           {"field": "controls"})
        return net, seconds

    def _latent_decoder(self, model: LoadedModel) -> LatentDecoder:
        family = model.family
        source = self.config.taesd.get(family) or (self.config.taesd.get(model.owner.taesd) if model.owner.taesd else None)
        if source and family not in self._taesd:
            unsafe = self.config.allow_unsafe_checkpoints
            try:
                self._taesd[family] = load_taesd(source, model.device, model.dtype, unsafe)
            except Exception as exc:  # noqa: BLE001 - previews fall back to the linear map; say why once
                pickled = "" if unsafe else pickled_weights(source, "diffusion_pytorch_model.safetensors",
                                                            "diffusion_pytorch_model.bin")
                if pickled:
                    log.warning("TAESD %s for %s previews holds its weights only in %s, a pickle-based file that can "
                                "run any code it contains; using the linear preview. Use a copy with .safetensors "
                                "weights, or start the server with --allow-unsafe-checkpoints if you trust the file",
                                source, family, pickled)
                else:
                    log.warning("TAESD %s for %s previews could not be loaded (%s); using the linear preview", source,
                                family, exc)
                self._taesd[family] = None
        return LatentDecoder(family, self._taesd.get(family))

    def _estimate_depth(self, model: LoadedModel, rgb: np.ndarray) -> np.ndarray:
        """Relative depth (near = large) of ``rgb`` at its own size, from the model's own estimator
        or the configured DPT — only from files already on this machine."""
        import torch

        estimator = getattr(model.root, "depth_estimator", None)
        processor = getattr(model.root, "feature_extractor", None)
        if estimator is None or processor is None:
            if self._depth is None:
                self._depth = self._load_depth_estimator(model)
            estimator, processor = self._depth
        inputs = processor(images=rgb, return_tensors="pt").pixel_values.to(model.device, next(estimator.parameters()).dtype)
        with torch.no_grad():
            predicted = estimator(inputs).predicted_depth
        predicted = torch.nn.functional.interpolate(predicted[:, None].float(), size=rgb.shape[:2], mode="bicubic",
                                                    align_corners=False)
        return predicted[0, 0].cpu().numpy()

    def _load_depth_estimator(self, model: LoadedModel) -> tuple[Any, Any]:
        from transformers import DPTForDepthEstimation, DPTImageProcessor

        source = self.config.depth_estimator
        unsafe = self.config.allow_unsafe_checkpoints
        try:
            processor = DPTImageProcessor.from_pretrained(source, local_files_only=True)  # JSON only
            estimator = DPTForDepthEstimation.from_pretrained(source, local_files_only=True, **safetensors_only(unsafe))
        except (OSError, ValueError):
            pickled = "" if unsafe else pickled_weights(source, "model.safetensors", "pytorch_model.bin")
            if pickled:
                raise JobError(
                    ErrorCode.MODEL_UNAVAILABLE,
                    f"depth2img without a depth map needs the depth estimator {source}, whose weights here are only in "
                    f"{pickled}, a pickle-based file that can run any code it contains. Send a depth map "
                    f"(images['depth']), put a copy with model.safetensors weights there, or start the server with "
                    f"--allow-unsafe-checkpoints if you trust the file.",
                    {"field": "depth"}) from None
            raise JobError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"depth2img without a depth map needs the depth estimator {source}, which is not on this machine. "
                f"Send a depth map (images['depth']), or download the estimator once with `hf download {source}`.",
                {"field": "depth"}) from None
        return estimator.to(model.device).eval(), processor


class _Setup:
    """One job's LoRAs, ControlNets, control images and prompt embeddings (the adapters'
    :class:`~backend.tasks.common.JobSetup`). Worker thread only."""

    def __init__(self, engine: Engine, prepared: PreparedJob) -> None:
        self.engine = engine
        self.prepared = prepared
        self.params = prepared.params
        self._controls: list[np.ndarray] | None = None
        self._guides: JobGuides | None = None

    def control_images(self) -> list[np.ndarray]:
        """Decoded, preprocessed, placed on the result: (H, W, 3) uint8 at the result's size."""
        if self._controls is None:
            p = self.params
            out = []
            for unit in p.controls:
                payload = self.prepared.control_images[unit.image]
                if unit.preprocessor:
                    from .imaging import decode_image

                    rgb = self.engine._preprocess(unit.preprocessor, over_white(decode_image(payload)), p.seed, payload.id)
                else:
                    rgb = decode_control(payload)
                if p.margins is not None and not same_aspect((rgb.shape[1], rgb.shape[0]), (p.width, p.height)):
                    # made for the original image (params checked it has the original's aspect)
                    original = self.prepared.images["image"]
                    rgb = place_control(rgb, (original.width, original.height), p.margins)
                out.append(resize(rgb, (p.width, p.height)))
            self._controls = out
        return self._controls

    def pipeline(self, model: LoadedModel, role: str) -> tuple[Any, float]:
        store = self.engine.addons
        loras = []
        for lora_id, weight in self.params.loras:
            addon = store.lora(lora_id)
            if addon is None:  # removed from the folder since the job was accepted
                raise JobError(ErrorCode.UNKNOWN_MODEL, f"LoRA {lora_id!r} is no longer in the LoRA folders",
                               {"field": "loras"})
            loras.append((addon, store.resolve_path(addon), weight))
        loading = apply_loras(model, loras) if model.owner.lora else 0.0
        nets = []
        guiding = () if model.facts.kind in model.owner.control_kinds else self.params.controls  # Flux.1 Canny: none
        for unit in (u for u in guiding if u.weight != 0):  # weight 0 changes nothing: not run (TaskRun.control_inputs)
            net, seconds = self.engine._controlnet(unit.model, model)
            nets.append(net)
            loading += seconds
        pipe = model.pipeline(role, nets or None)
        if model.spec.id not in self.engine._footprints:  # exact from now on (hub, single-file and demo models too)
            owner = model.owner
            self.engine._footprints[model.spec.id] = footprint_of_loaded(model.root, owner.denoiser, owner.size_multiple,
                                                                         owner.name, model.dtype)
        apply_plan(pipe, self.prepared.memory, model.device)
        return pipe, loading

    def conditioning(self, model: LoadedModel, pipe: Any) -> Conditioning:
        return self._encoded(model, self.params.prompt, self.params.negative_prompt)

    def _encoded(self, model: LoadedModel, prompt: str, negative: str) -> Conditioning:
        """``prompt`` and ``negative`` encoded with the job's LoRAs and the embeddings they name (cached)."""
        p = self.params
        store = self.engine.addons
        embeddings = [(addon, store.resolve_path(addon)) for addon in store.embeddings_in([prompt, negative],
                                                                                           model.facts)]
        key = (model.spec.id, prompt, negative, _stamps(store, p.loras), tuple(
            (addon.trigger, str(path), _mtime(path)) for addon, path in embeddings))

        def make() -> Conditioning:
            with loaded_embeddings(model.root, embeddings, model.spec.id) as expansions:
                return model.owner.encode(model.root, prompt, negative, expansions)

        return self.engine.prompts.get(key, make)

    def guides(self, model: LoadedModel, pipe: Any, work: tuple[int, int], box: Any, images: int) -> Guidance | None:
        """The references and regions of one call (:mod:`backend.guides`); None for a job without any."""
        p = self.params
        if not p.references and not p.regions:
            return None
        if self._guides is None:
            engine = self.engine
            facts = engine.models.facts(p.model)
            label = model.owner.label
            original = self.prepared.images.get("image")
            self._guides = JobGuides(
                p, self.prepared.control_images,
                choose=lambda ref, field_name: engine.references.choose(ref.model, p.model, facts, label, field_name),
                load=lambda adapter, loaded: engine.references.load(adapter, getattr(loaded.root, "unet", None),
                                                                    loaded.device, loaded.dtype),
                original=(original.width, original.height) if original is not None else None)
        plan = self.prepared.memory
        return self._guides.call(model, pipe, work, box, images, lambda prompt: self._encoded(model, prompt, ""),
                                 plan.rows_fitting() if plan is not None else None)


def guide_images(params: Any, images: Mapping[str, ImagePayload]) -> dict[str, ImagePayload]:
    """The payloads of a job's reference images and region masks, by id (those sent)."""
    ids = [ref.image for ref in params.references]
    for region in params.regions:
        ids += [region.mask, *(ref.image for ref in region.references)]
    return {i: images[i] for i in ids if isinstance(i, str) and i in images}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _stamps(store: AddonStore, loras: tuple[tuple[str, float], ...]) -> tuple:
    """The job's LoRAs as a cache key: id, weight and the file's time (a replaced file re-encodes)."""
    out = []
    for lora_id, weight in loras:
        addon = store.lora(lora_id)
        out.append((lora_id, weight, _mtime(addon.path) if addon is not None and addon.path.name else 0.0))
    return tuple(out)
