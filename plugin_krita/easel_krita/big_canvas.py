"""Big canvases: Generate at the model's size, then refine up to the area, pass by pass.

:func:`size_plan.plan_size` decides; this room carries the plan out. A Generate whose area is much
larger than the model's native size sends its ``txt2img`` at the first size (``request.size`` is
already that size, see :func:`request.plan`); when that result arrives, :meth:`BigCanvas.next_pass`
sends each image through the server's tiled ``upscale`` task (docs/protocol.md §11: Lanczos, then
img2img over overlapping tiles at the form's upscale strength), one job per pass, and hands the
refined images back to the controller, which places them over the region as it places any result.

The passes run under the same job record as the first image: its ticket in the controller's job
book is swapped for the pass's, so progress, previews, Cancel and reconnecting work as for any job.
The painter hears the plan before the click (:meth:`BigCanvas.describe_active`, the docker's
message line) and while the job runs (:meth:`BigCanvas.note`, the progress line): never a silent
stretch. A pass that fails (or is lost) does not throw the first image away: :meth:`BigCanvas.rescue`
hands the controller the best image it has — the last pass that worked, or the first image — to
place over the region like any result (one undo step), and the message line says which pass failed,
why, and how much that image is scaled. No ``krita`` and no Qt here.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

from .clientkit.book import EndKind, Ended, Phase
from .geometry import Rect
from .host import HostError
from .protocol import ImagePayload, JobFinished, JobResult, Task
from .request import MAX_STEPS, Action, GenerationRequest, RequestError
from .request import plan as plan_request
from .size_plan import (
    DEFAULT_LARGEST_SIDE, MAX_PASS_FACTOR, MAX_PASS_PIXELS, REFINE_ABOVE_AREA, SizePlan, plan_size,
)

log = logging.getLogger("easel.krita")

#: How the docker's message line starts the plan before the click.
PLAN_PREFIX = "Big canvas: Generate makes "


@dataclass
class Refining:
    """A big-canvas Generate under way: its plan, the first pass's ``job_finished`` (seeds and
    timings of the images the painter gets), the images still waiting for their passes, the
    refined ones, how many passes the current image has had and the image that pass started from."""

    plan: SizePlan
    origin: str
    first: JobFinished | None = None
    waiting: list[ImagePayload] = field(default_factory=list)
    done: list[ImagePayload] = field(default_factory=list)
    step: int = 0
    count: int = 1
    current: ImagePayload | None = None

    @property
    def refining(self) -> bool:
        return self.first is not None


class BigCanvas:
    """One per controller. ``largest_side`` is the painter's largest working size (the settings
    dialog's; the extension keeps it current)."""

    def __init__(self, controller: Any, largest_side: int = DEFAULT_LARGEST_SIDE) -> None:
        self.controller = controller
        self.largest_side = largest_side

    # -- the plan

    def plan(self, request: GenerationRequest) -> SizePlan | None:
        """The plan of a Generate (``None`` for other actions, live jobs and requests without a
        generation size). A plan that would refine on a server or model without the ``upscale``
        task has no passes (its :meth:`SizePlan.describe` then names the stretch)."""
        if request.action is not Action.GENERATE or request.live or request.size is None:
            return None
        region = request.placement.region
        welcome = self.controller.connection.welcome
        limits = welcome.limits if welcome is not None else None
        largest = min(self.largest_side, limits.max_image_side) if limits is not None else self.largest_side
        pixels = min(MAX_PASS_PIXELS, limits.max_image_pixels) if limits is not None else MAX_PASS_PIXELS
        plan = plan_size(region.width, region.height, self.controller.native_size, largest_side=max(64, largest),
                         max_pass_factor=MAX_PASS_FACTOR, max_pixels=max(64 * 64, pixels))
        if plan.first != request.size:  # the request was planned for another model size: say what it does
            plan = SizePlan(plan.region, request.size, (), request.size)
        if plan.refines and not self.can_refine(welcome):
            plan = SizePlan(plan.region, plan.first, (), plan.first)
        return plan

    def can_refine(self, welcome: Any) -> bool:
        """Whether the server and the chosen model run ``upscale``."""
        if welcome is not None and Task.UPSCALE not in welcome.capabilities.tasks:
            return False
        model = self.controller.current_model()
        return model is None or not model.tasks or Task.UPSCALE in model.tasks

    def describe_active(self) -> str:
        """What Generate would do on the active image now, as the docker says it before the click
        ("Big canvas: Generate makes 176×136, then ×3.6 in a tiled pass."), or ``""`` when it simply generates at
        the area's size. Never raises."""
        try:
            controller = self.controller
            host = controller.host
            doc = host.active_document()
            request = plan_request(Action.GENERATE, controller.settings, host.canvas_rect(doc),
                                   host.selection_rect(doc), controller.native_size)
            plan = self.plan(request)
        except (HostError, RequestError, ValueError):
            return ""
        except Exception:
            log.exception("easel: planning the big-canvas passes failed")
            return ""
        if plan is None or (not plan.refines and plan.stretch <= math.sqrt(REFINE_ABOVE_AREA)):
            return ""
        return f"{PLAN_PREFIX}{plan.describe()}."

    # -- the passes

    def track(self, request: GenerationRequest, job_id: str) -> Refining | None:
        """The record's refine state when ``request`` is a Generate with passes (the controller
        keeps it on the job's record), else ``None``."""
        plan = self.plan(request)
        if plan is None or not plan.refines:
            return None
        return Refining(plan, job_id, count=request.settings.batch_size)

    def note(self, record: Any) -> str:
        """What the progress line adds for a big-canvas job (``""`` for others)."""
        refining: Refining | None = getattr(record, "refining", None)
        if refining is None:
            return ""
        plan = refining.plan
        if not refining.refining:
            return f" ({plan.describe()})"
        image = len(refining.done) + 1
        text = f" · refining ×{plan.factor:.1f}: pass {refining.step + 1} of {len(plan.passes)}"
        return text + (f", image {image} of {refining.count}" if refining.count > 1 else "")

    def next_pass(self, record: Any, result: JobResult) -> JobResult | None:
        """Called with every result of a job: the result to place (the refined images once the last
        pass is in, or ``result`` itself for a job without passes), or ``None`` while passes remain
        (the next one was sent under the same record). Never raises: a pass that cannot be sent
        leaves the images as far as they got, placed (and scaled) over the region."""
        refining: Refining | None = getattr(record, "refining", None)
        if refining is None:
            return result
        passes = refining.plan.passes
        if refining.first is None:
            refining.first = result.finished
            refining.count = len(result.images)
            refining.waiting = list(result.images)
            current = refining.waiting.pop(0)
        else:
            current = result.images[0]
            refining.step += 1
            if refining.step >= len(passes):
                refining.done.append(current)
                refining.step = 0
                if not refining.waiting:
                    return self._finish(record)
                current = refining.waiting.pop(0)
        refining.current = current
        try:
            self._send_pass(record, current, passes[refining.step])
        except (RequestError, ValueError) as exc:
            log.warning("easel: a refine pass could not be sent (%s); placing the image as it is", exc)
            refining.done.append(current)
            refining.done.extend(refining.waiting)
            return self._finish(record)
        return None

    def rescue(self, record: Any, ended: Ended[Any]) -> JobResult | None:
        """A job ended without its result: when it was a refine pass that failed or was lost, the
        result to place instead (every image as far as its passes got: the failed pass's input for
        the current one, the refined ones, the waiting ones as they came), with the job back in the
        book as being applied and ``record.note`` saying what happened. ``None`` for every other end
        (the first image failed, or the painter cancelled)."""
        refining: Refining | None = getattr(record, "refining", None)
        if refining is None or refining.first is None or refining.current is None or ended.kind is EndKind.CANCELLED:
            return None
        plan, step, image = refining.plan, refining.step, refining.current
        refining.done.append(image)
        refining.done.extend(refining.waiting)
        refining.waiting = []
        what = "the first image" if step == 0 else f"pass {step}'s image"
        why = f"{ended.code.value}: {ended.reason}" if ended.code is not None else ended.reason
        scale = max(plan.region[0] / image.width, plan.region[1] / image.height)
        record.note = (f" Refine pass {step + 1} of {len(plan.passes)} {'was lost' if ended.kind is EndKind.LOST else 'failed'}"
                       f" ({why.rstrip('.')}); placed {what} ({image.width}×{image.height}) scaled ×{scale:.1f}.")
        record.partial = True
        log.warning("easel: refine pass %d of %s ended (%s); placing %s", step + 1, record.job_id, why, what)
        book = self.controller.book
        if record.job_id not in book:
            record.ticket = book.open(record.job_id, record)
            book.sent(record.job_id)
            record.ticket.phase = Phase.APPLYING
        return self._finish(record)

    def _finish(self, record: Any) -> JobResult:
        refining: Refining = record.refining
        record.refining = None
        assert refining.first is not None
        return JobResult(refining.first, tuple(refining.done))

    def _send_pass(self, record: Any, image: ImagePayload, factor: float) -> None:
        """Send ``image`` through one tiled upscale pass, as the record's new job."""
        controller, refining = self.controller, record.refining
        request: GenerationRequest = record.request
        index = len(refining.done)
        seeds = tuple(refining.first.seeds) or (refining.first.seed,)
        seed = seeds[index] if index < len(seeds) else seeds[0]
        settings = replace(request.settings, upscale_factor=factor, batch_size=1)
        strength = settings.upscale_strength
        if settings.steps and strength > 0 and settings.steps * strength < 1:  # at least one step must run
            settings = replace(settings, steps=min(MAX_STEPS, math.ceil(1 / strength - 1e-9)))
        pass_request = replace(request, action=Action.UPSCALE, settings=settings, size=None, seed=seed, controls=(),
                               references=(), regions=(), source=Rect.of_size(image.width, image.height))
        job_id = f"{refining.origin}-r{index + 1}.{refining.step + 1}"
        job, images = pass_request.submit(job_id, image)
        controller.book.release(record.job_id)
        record.job_id = job_id
        record.ticket = controller.book.open(job_id, record)
        controller.book.sent(job_id, job)
        controller.stats.jobs_submitted += 1
        controller.connection.submit(job, images)
