"""The preview painter: step previews (and, after them, a result) onto the canvas, for Generate's
jobs and for live mode alike.

A :class:`PreviewPainter` draws the newest preview it was offered whenever one is due; older ones
are dropped. Decoding, scaling and masking run on a worker thread (:meth:`CanvasIO.fit_preview`);
drawing, all of it in wall time, is paced by a :class:`~.geometry.PreviewThrottle`, so on a large
selection previews take a bounded share of the machine and of the main thread. :attr:`lock` is held
while a preview is drawn: a result written under it (:meth:`paint_result`, or after
:meth:`finish`) never lands on a half-written preview.

Where a preview goes is the caller's :class:`PreviewTarget`: Generate draws each job's previews into
that job's preview layer, live mode into its live layer. No ``krita`` and no Qt here.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from .canvas_io import CanvasIO
from .documents import Spawn
from .geometry import Placement, PreviewThrottle
from .host import HostError
from .protocol import ImagePayload, StepPreview

log = logging.getLogger("easel.krita")


@dataclass(frozen=True)
class PreviewTarget:
    """Where one job's previews (or its result) go: its ``placement`` on the canvas and the
    selection ``mask`` over the placement's crop (None: all of it). ``wanted`` says whether a
    preview is still worth drawing; ``draw`` writes the BGRA pixels over the crop, on the main
    thread, under the painter's lock (it may still find the job gone and draw nothing; it raises
    :class:`HostError` when the canvas cannot take them)."""

    placement: Placement
    mask: bytes | None
    wanted: Callable[[], bool]
    draw: Callable[[bytes], Awaitable[None]]


class PreviewPainter:
    """Draws the newest offered preview when the throttle allows. Main thread (the plugin's loop)."""

    def __init__(self, canvas: CanvasIO, spawn: Spawn, clock: Callable[[], float], *, budget: float = 0.25,
                 what: str = "previews") -> None:
        self.canvas = canvas
        self.throttle = PreviewThrottle(budget)
        #: Held while a preview (or a result through :meth:`paint_result`) is drawn.
        self.lock = asyncio.Lock()
        self._spawn = spawn
        self._clock = clock
        self._what = what
        self._latest: tuple[StepPreview, PreviewTarget] | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def offer(self, preview: StepPreview, target: PreviewTarget) -> None:
        """Draw ``preview`` onto ``target`` once due, unless a newer one is offered first."""
        self._latest = (preview, target)
        if not self.running:
            self._task = self._spawn(self._run(), self._what)
        self._wakeup.set()

    def drop(self) -> None:
        """Forget a preview offered and not drawn yet."""
        self._latest = None

    def stop(self) -> None:
        """Stop at once (a preview being drawn is left as far as it got)."""
        task, self._task = self._task, None
        self._latest = None
        if task is not None:
            task.cancel()

    async def finish(self) -> None:
        """Let a preview being drawn finish (and one still due be drawn first, when its target
        wants it), then stop: the caller's result goes on the canvas next."""
        task = self._task
        if task is None:
            return
        async with self.lock:
            self._task = None
            if not task.done():
                task.cancel()
        await asyncio.wait([task])  # it stops without taking the caller's cancellation

    async def paint_result(self, image: ImagePayload, target: PreviewTarget) -> bool:
        """Put a final image onto ``target`` (prepared on a worker thread, drawn under the lock so
        no preview is half-written under it). False when ``target`` no longer wants it."""
        bgra = await asyncio.to_thread(self.canvas.prepare_result, image, target.placement, target.mask)
        async with self.lock:
            if not target.wanted():
                return False
            await target.draw(bgra)
        return True

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            wait = self.throttle.wait_time(self._clock())
            if wait > 0:
                await asyncio.sleep(wait)
            latest, self._latest = self._latest, None
            if latest is None:
                continue
            preview, target = latest
            if not target.wanted():
                continue
            started = self._clock()
            try:
                async with self.lock:
                    bgra = await asyncio.to_thread(self.canvas.fit_preview, preview, target.placement, target.mask)
                    await target.draw(bgra)
            except HostError as exc:
                log.info("easel: preview not drawn: %s", exc)
            finally:
                self.throttle.drawn(started, self._clock())
