"""The engine seam between the worker thread and the models (see docs/design.md).

    engine = Engine(config)                       # cheap: reads model specs, loads nothing
    engine.model_infos() / engine.capabilities()  # for Welcome and ModelList
    prepared = engine.prepare(submit, images)     # every check that needs no model; raises JobError
    output = engine.run(prepared, progress)       # worker thread only; JobOutput, or raises
                                                  # JobCancelledError / JobError

``prepare`` is safe on the event loop (no torch, no image decoding). ``run`` is not thread-safe:
one device, one worker, one job at a time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from protocol.errors import ErrorCode
from protocol.images import ImagePayload
from protocol.messages import Capabilities, ModelInfo, SubmitJob, Task

from .demo import DEMO_NOTICE, default_cache_folder
from .errors import JobCancelledError, JobError
from .imaging import encode_rgba
from .models import TASKS_BY_KIND, LoadedModel, ModelSpec, ModelStore, free_memory, is_out_of_memory
from .params import SUPPORTED_TASKS, Limits, ResolvedParams, check_roles, resolve
from .previews import LatentDecoder, PreviewPump, load_taesd
from .samplers import SAMPLERS
from .tasks import ADAPTERS, Progress, TaskRun

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineConfig", "JobOutput", "PreparedJob", "Progress", "ModelSpec", "Limits",
           "JobError", "JobCancelledError"]

OOM_MESSAGE = ("the device ran out of memory while running this job; try a smaller size or batch, "
               "or start the server with --offload")


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs from the server's configuration.

    ``models`` empty means the demo models. ``device``: auto, cpu, cuda, mps. ``dtype``: auto
    (float16 on GPUs, float32 on the CPU), fp16, bf16, fp32. ``cache_size``: loaded models kept.
    ``cache_folder``: where the demo models are built (default ``~/.cache/easel``).
    ``taesd``: family → TAESD folder or cached hub id, for sharper previews. ``depth_estimator``:
    the DPT model used when a depth2img job sends no depth map (only ever taken from the local cache).
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

    @classmethod
    def from_settings(cls, settings: Any) -> "EngineConfig":
        """Build from the server's ``ServerConfig`` (backend/config.py): its ``models`` entries
        (``id``, ``path``, ``config``, ``kind``), ``device``, ``dtype``, ``model_cache_size``,
        ``cache_dir``, ``offload`` and ``allow_unsafe_checkpoints``."""
        models = tuple(
            ModelSpec(id=entry.id, source=str(entry.path), kind=getattr(entry, "kind", "") or "",
                      config=str(getattr(entry, "config", "") or ""))
            for entry in getattr(settings, "models", ()))
        return cls(
            models=models, device=getattr(settings, "device", "auto"), dtype=getattr(settings, "dtype", "auto"),
            cache_size=getattr(settings, "model_cache_size", 1), cache_folder=getattr(settings, "cache_dir", None),
            allow_unsafe_checkpoints=getattr(settings, "allow_unsafe_checkpoints", False),
            offload=getattr(settings, "offload", False),
        )


@dataclass(frozen=True)
class PreparedJob:
    """A checked job, ready for :meth:`Engine.run`. ``params`` holds every resolved value."""

    job_id: str
    params: ResolvedParams
    images: Mapping[str, ImagePayload]

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
        return self.params.steps

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
    ``prepare``, ``denoise``, ``decode``, ``encode``; ``previews`` (part of ``denoise``) is the preview
    work that held the worker back, ``preview_render`` the scaling and JPEG time on the preview thread."""

    images: list[ImagePayload]
    seeds: list[int]
    timings: dict[str, float]


def demo_specs() -> tuple[ModelSpec, ...]:
    return (
        ModelSpec("demo", "", kind="base", family="demo", name="Demo (random weights: noise)", demo=True),
        ModelSpec("demo-depth", "", kind="depth", family="demo", name="Demo depth (random weights: noise)", demo=True),
    )


class Engine:
    """Model registry, validation and dispatch to the task adapters. See the module docstring."""

    def __init__(self, config: EngineConfig | Any) -> None:
        """``config`` is an :class:`EngineConfig`, or the server's ``ServerConfig`` (converted with
        :meth:`EngineConfig.from_settings`). Raises ModelConfigError for a model spec that cannot work."""
        if not isinstance(config, EngineConfig):
            config = EngineConfig.from_settings(config)
        self.config = config
        self.demo = not config.models
        cache = config.cache_folder if config.cache_folder is not None else default_cache_folder()
        self.models = ModelStore(
            config.models or demo_specs(), device=config.device, dtype=config.dtype, cache_size=config.cache_size,
            allow_unsafe=config.allow_unsafe_checkpoints, offload=config.offload, demo_folder=Path(cache),
        )
        self._taesd: dict[str, Any] = {}
        self._depth: tuple[Any, Any] | None = None
        self._pump = PreviewPump()

    def close(self) -> None:
        """Stop the preview thread (started on the first preview). The engine is not used after this."""
        self._pump.close()

    @property
    def notice(self) -> str:
        """A sentence for the log and the Welcome message; empty when real models are configured."""
        return DEMO_NOTICE if self.demo else ""

    # ------------------------------------------------------------------ listing

    def model_infos(self) -> list[ModelInfo]:
        return self.models.infos()

    def capabilities(self) -> Capabilities:
        infos = self.model_infos()
        offered = {task for info in infos for task in info.tasks}
        return Capabilities(
            tasks=tuple(t for t in Task.ALL if t in offered and t in SUPPORTED_TASKS),
            samplers=tuple(SAMPLERS), models=tuple(infos), device=self.models.device,
        )

    def default_model(self, task: str) -> str | None:
        """The first configured model that can run ``task``."""
        for model_id in self.models.ids:
            if task in TASKS_BY_KIND[self.models.facts(model_id).kind]:
                return model_id
        return None

    # ------------------------------------------------------------------ prepare

    def prepare(self, submit: SubmitJob, images: Mapping[str, ImagePayload]) -> PreparedJob:
        """Check everything that needs no model work and fill in defaults (a random seed included).

        ``images`` maps each role in ``submit.images`` to its payload. Raises JobError with
        ``unsupported`` (task or feature), ``unknown_model``, or ``invalid_parameter``.
        """
        task = submit.task
        if task not in SUPPORTED_TASKS:
            known = "is not supported by this server yet" if task in Task.ALL else "is not a task"
            raise JobError(ErrorCode.UNSUPPORTED, f"{task!r} {known}; this server runs: {', '.join(SUPPORTED_TASKS)}",
                           {"field": "task"})
        model_id = submit.params.model or self.default_model(task)
        if model_id is None:
            raise JobError(ErrorCode.UNSUPPORTED, f"no configured model can run {task}; "
                           f"{'configure a depth model (5-channel UNet, e.g. stabilityai/stable-diffusion-2-depth)' if task == Task.DEPTH2IMG else 'configure a base model'}",
                           {"field": "model"})
        if model_id not in self.models.ids:
            raise JobError(ErrorCode.UNKNOWN_MODEL,
                           f"unknown model {model_id!r}; this server has: {', '.join(self.models.ids)}", {"field": "model"})
        facts = self.models.facts(model_id)
        if task not in TASKS_BY_KIND[facts.kind]:
            able = [m for m in self.models.ids if task in TASKS_BY_KIND[self.models.facts(m).kind]]
            hint = f"models that can: {', '.join(able)}" if able else "no configured model can"
            raise JobError(ErrorCode.UNSUPPORTED, f"model {model_id!r} is a {facts.kind} model and cannot run {task}; {hint}",
                           {"field": "model"})
        check_roles(task, images)
        params = resolve(submit, images, model=model_id, defaults=facts.defaults, limits=self.config.limits)
        return PreparedJob(submit.job_id, params, dict(images))

    # ------------------------------------------------------------------ run

    def run(self, prepared: PreparedJob, progress: Progress) -> JobOutput:
        """Run a prepared job on this thread (the worker's). Raises JobCancelledError when
        ``progress.cancelled()`` turned true, JobError for failures the user can act on; the engine
        stays usable after either, an out-of-memory failure included."""
        params = prepared.params
        job = TaskRun(
            params=params, images=prepared.images, progress=progress, max_side=self.config.limits.max_side,
            load=lambda: self.models.get(params.model), latent_decoder=self._latent_decoder,
            estimate_depth=self._estimate_depth, pump=self._pump,
        )
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
        for stage in ("load", "prepare", "denoise", "decode", "encode"):
            job.timings.setdefault(stage, 0.0)
        return JobOutput(images=images, seeds=list(params.seeds), timings=dict(job.timings))

    # ------------------------------------------------------------------ helpers the adapters get

    def _latent_decoder(self, model: LoadedModel) -> LatentDecoder:
        family = model.family
        source = self.config.taesd.get(family) or (self.config.taesd.get("sd15") if family in ("sd2", "demo") else None)
        if source and family not in self._taesd:
            try:
                self._taesd[family] = load_taesd(source, model.device, model.dtype)
            except Exception as exc:  # noqa: BLE001 - previews fall back to the linear map; say why once
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
        try:
            processor = DPTImageProcessor.from_pretrained(source, local_files_only=True)
            estimator = DPTForDepthEstimation.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):
            raise JobError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"depth2img without a depth map needs the depth estimator {source}, which is not on this machine. "
                f"Send a depth map (images['depth']), or download the estimator once with `hf download {source}`.",
                {"field": "depth"}) from None
        return estimator.to(model.device).eval(), processor

