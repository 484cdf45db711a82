"""What every task adapter shares: the job's run context, and one diffusers call with previews,
cancellation, seeding and our own VAE decode.

``generate`` asks the pipeline for latents (``output_type="latent"``) and decodes them itself, so
that a cancelled job never reaches the decode, and so that denoise and decode are timed apart.
A cancel is honoured inside a step too: a check before each UNet block (and each block of the VAE
encoder that img2img-style pipelines run first) stops the job about a tenth of a step after the
cancel, so a superseded live job frees the device almost at once.
Prompts reach the pipeline as text embeddings (``JobSetup.conditioning``: emphasis, long prompts,
embeddings, a cache); ``TaskRun.pipeline`` gives the task's pipeline with the job's LoRAs active and,
when the job has control units, its ControlNet variant; ``TaskRun.control_inputs`` the control
images cut and scaled to the region the model works on.
"""
from __future__ import annotations

import threading
import time
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from protocol.images import ImagePayload

from ..errors import JobCancelledError
from ..imaging import Box, resize, working_size
from ..models import Family, LoadedModel, family
from ..params import ResolvedParams
from ..previews import LatentDecoder, PreviewFrame, PreviewPump


class Progress(Protocol):
    """What the worker gives :meth:`backend.engine.Engine.run`.

    After every denoising step the engine calls ``step``, then polls ``cancelled`` (once it returns
    True the job stops within that step, without the final VAE decode), then — when the job asked
    for previews and ``wants_preview`` says one would reach someone — makes a preview and hands it
    to ``preview``. ``step``, ``cancelled`` and ``wants_preview`` are called on the worker thread;
    ``preview`` on the engine's preview thread, in step order, and never after ``run`` has returned
    or raised. ``preview`` must not block: replace an unsent preview rather than queue it.
    """

    def cancelled(self) -> bool: ...

    def step(self, step: int, total: int) -> None: ...

    def wants_preview(self) -> bool: ...

    def preview(self, step: int, total: int, width: int, height: int, jpeg: bytes) -> None: ...


class JobSetup(Protocol):
    """What the engine prepares for a job beyond the model: see :class:`backend.engine.Engine`."""

    def control_images(self) -> list[np.ndarray]:
        """The job's control images as (H, W, 3) uint8 in result coordinates (preprocessed), once per job."""
        ...

    def pipeline(self, model: LoadedModel, role: str) -> tuple[Any, float]:
        """``model``'s pipeline for ``role`` with the job's LoRAs active (and the ControlNets of its
        units of nonzero weight attached), and the seconds spent loading LoRAs and ControlNets for it
        (0 when all were loaded)."""
        ...

    def conditioning(self, model: LoadedModel, pipe: Any) -> Any:
        """The job's prompts as a ``backend.prompts.Conditioning`` for ``pipe``."""
        ...

    def guides(self, model: LoadedModel, pipe: Any, work: tuple[int, int], box: Box | None, images: int) -> Any:
        """The job's references and regions for one call (a ``backend.guides.Guidance``), None without any."""
        ...


@dataclass
class TaskRun:
    """One job as its adapter sees it. ``model()`` loads the model on first call (timed as ``load``),
    so adapters decode and check their images first and fail fast without loading anything."""

    params: ResolvedParams
    images: Mapping[str, ImagePayload]
    progress: Progress
    max_side: int
    load: Callable[[], tuple[LoadedModel, float]]
    latent_decoder: Callable[[LoadedModel], LatentDecoder]
    estimate_depth: Callable[[LoadedModel, np.ndarray], np.ndarray]
    pump: PreviewPump
    setup: JobSetup | None = None
    #: (preprocessor name, RGB, seed, cache key) → control image; the preprocess task's runner.
    preprocess: Callable[[str, np.ndarray, int, str], np.ndarray] | None = None
    #: (RGB, (width, height)) → (the RGB enlarged, what enlarged it): the upscale task's first pass.
    enlarge: Callable[[np.ndarray, tuple[int, int]], tuple[np.ndarray, str]] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: The model's family (known before it loads: sizes the tasks work at follow it).
    family: Family = field(default_factory=lambda: family("sd15"))
    _model: LoadedModel | None = None

    def work_size(self, width: int, height: int, area: int) -> tuple[int, int]:
        """The size the model generates at for a ``width × height`` input: about ``area`` pixels,
        the aspect kept, sides multiples of the family's ``size_multiple``."""
        return working_size(width, height, area, self.max_side, self.family.size_multiple)

    def size_inputs(self, work: tuple[int, int]) -> dict[str, int]:
        """Pipeline arguments that fix the working size, for families whose image pipelines need them."""
        return {"width": work[0], "height": work[1]} if self.family.sized_image_tasks else {}

    def pipeline(self, role: str) -> Any:
        """The model's pipeline for ``role``, ready for this job: control images are made first (a
        missing preprocessor fails before the model loads), then the model, its LoRAs, its ControlNets."""
        assert self.setup is not None
        if self.params.controls:
            with self.timed("prepare"):
                self.setup.control_images()
        model = self.model()
        start = time.perf_counter()
        pipe, loading = self.setup.pipeline(model, role)
        self.timings["load"] = self.timings.get("load", 0.0) + loading
        self.timings["prepare"] = self.timings.get("prepare", 0.0) + time.perf_counter() - start - loading
        return pipe

    def control_inputs(self, key: str, work: tuple[int, int], box: Box | None = None) -> dict[str, Any]:
        """The pipeline arguments for the job's control units: their images (under ``key``: ``image``
        for txt2img pipelines, ``control_image`` for the others) cut to ``box`` (result coordinates;
        None: all of it) and scaled to ``work`` (the size the model generates at), and each unit's
        weight and start/end. Empty when the job has no control units. A unit at weight 0 changes
        nothing and is left out (its ControlNet is not run: see ``JobSetup.pipeline``), so the job
        gives the pixels of the same job without it."""
        units = self.params.controls
        if not units or self.setup is None:
            return {}
        key = self.family.control_image_arg or key
        from PIL import Image

        with self.timed("prepare"):
            images = []
            for unit, rgb in zip(units, self.setup.control_images()):
                if unit.weight == 0:
                    continue
                if box is not None:
                    x0, y0, x1, y1 = box
                    rgb = rgb[y0:y1, x0:x1]
                images.append(Image.fromarray(np.ascontiguousarray(resize(rgb, work))))
        units = tuple(unit for unit in units if unit.weight != 0)
        if not units:
            return {}
        if self._model is not None and self._model.facts.kind in self.family.control_kinds:
            return {key: images[0]}  # a control transformer (Flux.1 Canny): one image, no weights
        modes = {"control_mode": [None] * len(units)} if self.family.control_modes else {}
        return {key: images, "controlnet_conditioning_scale": [u.weight for u in units],
                "control_guidance_start": [u.start for u in units], "control_guidance_end": [u.end for u in units],
                **modes}

    def model(self) -> LoadedModel:
        if self._model is None:
            self.check_cancelled()
            self._model, seconds = self.load()
            self.timings["load"] = self.timings.get("load", 0.0) + seconds
            self.check_cancelled()  # loading can take minutes: honour a cancel that came meanwhile
        return self._model

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def check_cancelled(self, step: int = 0, total: int = 0) -> None:
        if self.progress.cancelled():
            raise JobCancelledError(step, total)


class _StopAtStep(Exception):
    """Raised from the step callback or a block hook to leave the pipeline at once (``_interrupt``
    would still decode)."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(step, total)
        self.step, self.total = step, total


def _blocks(pipe: Any) -> list[Any]:
    """The modules a step (and the VAE encode before the first step) runs through, in order: the
    UNet's down, mid and up blocks, or a transformer's (double-stream, then single-stream) blocks
    (Z-Image's: its refiners, then its layers),
    and the VAE encoder's down blocks. Checking for a cancel before each costs an ``Event.is_set``
    per block."""
    blocks: list[Any] = []
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        blocks += list(getattr(unet, "down_blocks", ()) or ())
        if getattr(unet, "mid_block", None) is not None:
            blocks.append(unet.mid_block)
        blocks += list(getattr(unet, "up_blocks", ()) or ())
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        for name in ("transformer_blocks", "single_transformer_blocks", "noise_refiner", "context_refiner", "layers"):
            blocks += list(getattr(transformer, name, ()) or ())
    encoder = getattr(getattr(pipe, "vae", None), "encoder", None)
    blocks += list(getattr(encoder, "down_blocks", ()) or ())
    return [block for block in blocks if hasattr(block, "register_forward_pre_hook")]


#: The cancel check of the job running on each thread (a worker runs one job at a time), read by
#: the hook every block of :func:`_blocks` carries; None outside a pipeline call.
_inside_call = threading.local()
#: Blocks that carry the hook already, each registered once (not per job: registering and removing
#: a hook per block took ~90 µs of every job on a tiny SD UNet, more on real models).
_hooked: "weakref.WeakSet[Any]" = weakref.WeakSet()
#: Pipelines whose blocks all carry it (a job of one walks none of them; the task pipelines never
#: swap their denoiser or VAE).
_hooked_pipes: "weakref.WeakSet[Any]" = weakref.WeakSet()
_hooking = threading.Lock()


def _check_before_block(module: Any, args: Any) -> None:
    """The forward pre-hook of every block: runs the check of the job inside a pipeline call on this thread."""
    check = getattr(_inside_call, "check", None)
    if check is not None:
        check()


@contextmanager
def _stop_inside_steps(pipe: Any, check: Callable[[], None]) -> Iterator[None]:
    """Run ``check`` (which raises to stop) before every block of :func:`_blocks` while inside, on
    this thread. A block gets its hook the first time a pipeline that runs it is called, and keeps
    it: outside a pipeline call (and on other threads) the hook does nothing."""
    if pipe not in _hooked_pipes:
        with _hooking:
            for block in _blocks(pipe):
                if block not in _hooked:
                    block.register_forward_pre_hook(_check_before_block)
                    _hooked.add(block)
            _hooked_pipes.add(pipe)
    outer, _inside_call.check = getattr(_inside_call, "check", None), check
    try:
        yield
    finally:
        _inside_call.check = outer


def generate(run: TaskRun, pipe: Any, frame: PreviewFrame, *, seeds: Sequence[int] | None = None,
             call: tuple[int, int] = (0, 1), area: tuple[tuple[int, int], Box | None] | None = None,
             **inputs: Any) -> np.ndarray:
    """Run ``pipe`` with the job's prompt, steps, CFG, sampler and seeds plus the task's ``inputs``.

    ``seeds`` (default: the job's) gives one image each. ``call`` = (index, count) when a task
    makes several calls (upscale: one per batch of tiles): steps are reported over all of them.
    ``area`` = (working size, box of the result or None) places the job's regions and references
    (:mod:`backend.guides`); tasks that take them pass it.
    Calls ``run.progress.preview`` after every step (when the job wants previews) and stops at the
    first step after ``run.progress.cancelled()`` turns true, raising JobCancelledError without
    decoding. Returns the decoded images as ``(batch, H, W, 3)`` uint8.
    """
    import torch

    p = run.params
    model = run.model()
    owner = model.owner
    scheduler = model.scheduler(p.sampler)
    if pipe.scheduler is not scheduler:  # setting it registers it in the pipeline's config (~0.1 ms): only on a change
        pipe.scheduler = scheduler
    decoder = run.latent_decoder(model) if p.previews else None
    seeds = list(p.seeds if seeds is None else seeds)
    # One CPU generator per image: the same seed gives the same image on any device and in any batch.
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    prompts: dict[str, Any] = {}
    per_prompt = len(seeds)  # images per prompt embedding
    if run.setup is not None:
        with run.timed("text"):
            prompts = run.setup.conditioning(model, pipe).kwargs()
        if not owner.expands_embeds:  # Flux's pipelines do not repeat given embeddings: one per image
            prompts = {name: tensor.repeat_interleave(len(seeds), 0) for name, tensor in prompts.items()}
            per_prompt = 1
    else:
        prompts = {"prompt": p.prompt, "negative_prompt": p.negative_prompt or None}
    guides = run.setup.guides(model, pipe, *area, len(seeds)) if run.setup is not None and area else None
    if guides is not None:
        prompts = guides.prompts(prompts)
    size = (inputs.get("width") or p.width, inputs.get("height") or p.height)  # what unpacks Flux's latents
    index, calls = call
    run.timings.setdefault("previews", 0.0)
    run.timings.setdefault("preview_render", 0.0)

    def deliver(rgb: np.ndarray, step: int, total: int) -> None:  # on the pump's thread
        start = time.perf_counter()
        jpeg, width, height = frame.render(rgb)
        run.timings["preview_render"] += time.perf_counter() - start
        run.progress.preview(step, total, width, height, jpeg)

    done: list[int] = []  # (steps finished, total) as last reported: what a stop inside a step reports

    def inside_step() -> None:
        if run.progress.cancelled():
            per_call = getattr(pipe, "_num_timesteps", 0) or 0  # set once the pipeline made its timesteps
            raise _StopAtStep(*(done or (index * per_call, per_call * calls)))

    def on_step_end(pipeline: Any, i: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        step, total = index * pipeline.num_timesteps + i + 1, pipeline.num_timesteps * calls
        done[:] = (step, total)
        if guides is not None:
            guides.step_end(i)
        run.progress.step(step, total)
        if run.progress.cancelled():
            raise _StopAtStep(step, total)
        if decoder is not None and run.progress.wants_preview():
            start = time.perf_counter()
            rgb = decoder.rgb(owner.unpack(tensors["latents"][:1], *size))  # the only preview work between steps
            run.pump.submit(lambda: deliver(rgb, step, total))
            run.timings["previews"] += time.perf_counter() - start
        return {}

    run.check_cancelled()
    try:
        try:
            with run.timed("denoise"), _stop_inside_steps(pipe, inside_step), guides or nullcontext():
                latents = pipe(
                    num_inference_steps=p.steps, guidance_scale=owner.guidance_scale(p.cfg_scale), num_images_per_prompt=per_prompt,
                    generator=generators, output_type="latent", callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=["latents"], **prompts, **inputs,
                ).images
        except _StopAtStep as stop:
            raise JobCancelledError(stop.step, stop.total) from None
        run.check_cancelled(pipe.num_timesteps * (index + 1), pipe.num_timesteps * calls)  # a cancel in the last step: no decode
        with run.timed("decode"):
            return decode_latents(pipe, owner.unpack(latents, *size), run.check_cancelled)
    finally:
        # Every preview of this job is out before its result or its cancellation. Waiting after the
        # VAE decode, not before it, lets the last step's JPEG render while the decode runs.
        start = time.perf_counter()
        run.pump.drain()
        run.timings["previews"] += time.perf_counter() - start


def decode_latents(pipe: Any, latents: Any, between: Callable[[], None] = lambda: None) -> np.ndarray:
    """The pipeline's VAE decode of ``(B, C, h, w)`` latents, one image at a time (peak memory of
    one), as uint8 ``(B, H, W, 3)``.

    ``between`` runs before each image (the cancellation check). SDXL's VAE overflows in float16,
    so it is upcast for the decode, as diffusers does. The VAE's ``shift_factor`` (Flux) is undone
    after its scaling; a VAE without a scaling factor (Flux.2's: the pipeline has undone its
    batch-norm) decodes the latents as they are.
    """
    import torch

    vae = pipe.vae
    config = vae.config
    upcast = vae.dtype == torch.float16 and getattr(config, "force_upcast", False) and hasattr(pipe, "text_encoder_2")
    if upcast:
        vae.to(torch.float32)
    dtype = next(vae.post_quant_conv.parameters()).dtype if getattr(vae, "post_quant_conv", None) is not None else vae.dtype
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    out = []
    try:
        with torch.no_grad():
            for index in range(latents.shape[0]):
                between()
                one = latents[index:index + 1].to(dtype)
                if mean is not None and std is not None:
                    mean_t = torch.tensor(mean, dtype=dtype, device=one.device).view(1, -1, 1, 1)
                    std_t = torch.tensor(std, dtype=dtype, device=one.device).view(1, -1, 1, 1)
                    one = one * std_t / config.scaling_factor + mean_t
                else:
                    one = one / (getattr(config, "scaling_factor", None) or 1.0) + (getattr(config, "shift_factor", None) or 0.0)
                image = vae.decode(one, return_dict=False)[0]
                image = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
                out.append(image[0].permute(1, 2, 0).cpu().numpy())
    finally:
        if upcast:
            vae.to(torch.float16)
    return np.stack(out)
