"""The add-on's live state and its main-thread dispatcher. Imports ``bpy``.

One :class:`Runtime` exists while the add-on is enabled (made in ``register()``, closed in
``unregister()``): it holds the :class:`~.connection.Connection` (network on its own threads) and
the :class:`~.jobs.JobBook`. :func:`dispatch` runs on Blender's main thread from ``bpy.app.timers``:
it polls the connection, lets the book turn events into outcomes, and applies them to the scene —
previews into an image, results into packed images and projection materials. It is the only
place results touch Blender data.

Blender built as a Python module (``pip install bpy``) never fires timers; headless tests call
:func:`dispatch` directly instead.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import bpy

from . import render, texturing
from .connection import ConnectFailed, Connection
from .jobs import BusyError, Ended, Finished, JobBook, JobKind, OpenJob, Preview
from .protocol import ImageFormat
from .protocol.transport import Connected, Disconnected
from .request import GenerationRequest

log = logging.getLogger("easel.blender")

#: The version this add-on reports to the server (keep in step with blender_manifest.toml).
VERSION = "0.1.0"
PREVIEW_IMAGE = "Easel Preview"
#: Seconds between dispatcher runs while something is open.
POLL_INTERVAL = 0.1
#: After a connect request, keep polling this long for its outcome even with no job open.
CONNECT_WATCH_S = 30.0


class Runtime:
    def __init__(self) -> None:
        self.book = JobBook()
        self.connection: Connection | None = None
        self._watch_until = 0.0

    def connect(self, url: str, token: str = "") -> Connection:
        """The connection for ``url`` (a new one when the URL or token changed); connects in the background."""
        current = self.connection
        if current is None or current.url != url or current.token != token:
            if current is not None:
                current.close()
                self.apply(self.book.fail_all("the server URL changed"))
            self.connection = Connection(url, client_name="blender", client_version=VERSION, token=token)
            self.book.connection = f"connecting to {url}"
        self.connection.connect()
        self._watch_until = time.monotonic() + CONNECT_WATCH_S
        ensure_timer()
        return self.connection

    def submit(self, kind: JobKind, request: GenerationRequest, context: dict[str, Any], *,
               url: str, token: str = "") -> OpenJob:
        """Open a job and send it in the background. Raises :class:`~.jobs.BusyError`."""
        connection = self.connect(url, token)
        job = self.book.open(kind, request, context)
        connection.submit(request.job(job.job_id), request.payloads())
        ensure_timer()
        return job

    def cancel_all(self) -> int:
        """Cancel every open job: ended here at once (so a hung server cannot keep the buttons
        disabled), and a cancel sent to the server."""
        jobs = list(self.book.jobs)
        for job_id in jobs:
            if self.connection is not None:
                self.connection.cancel(job_id)
        self.apply([outcome for job_id in jobs for outcome in self.book.cancel(job_id)])
        return len(jobs)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        self.apply(self.book.fail_all("the Easel add-on was disabled"))

    # -- the main-thread side

    def dispatch(self) -> float | None:
        """Poll, and apply what arrived. Returns the delay until the next call, or ``None`` when
        nothing is open (the timer then stops)."""
        if self.connection is not None:
            events = self.connection.poll()
            if any(isinstance(e, (Connected, ConnectFailed, Disconnected)) for e in events):
                self._watch_until = 0.0  # the connect request has its answer
            self.apply(self.book.handle(events))
        _redraw()
        return POLL_INTERVAL if self.book.jobs or time.monotonic() < self._watch_until else None

    def apply(self, outcomes: list[Any]) -> None:
        for outcome in outcomes:
            try:
                if isinstance(outcome, Preview):
                    _show(render.show_jpeg(PREVIEW_IMAGE, outcome.jpeg))
                elif isinstance(outcome, Finished):
                    self._finish(outcome)
                elif isinstance(outcome, Ended):
                    _discard(outcome.job)
                    if not outcome.cancelled:
                        log.warning("Easel job %s failed: %s", outcome.job.job_id, outcome.message)
            except (texturing.TexturingError, render.RenderError, ValueError) as exc:
                self.book.last_error = str(exc)
                log.warning("applying an Easel result: %s", exc)

    def _finish(self, done: Finished) -> None:
        job = done.job
        if not done.images:
            raise ValueError("the server finished the job without an image")
        result = done.images[0]
        if result.format is not ImageFormat.RGBA8:
            raise ValueError(f"the server sent a {result.format.value} image; this add-on reads rgba8")
        if job.kind is JobKind.TEXTURE:
            self.book.notice = apply_texture(job, result.data, result.width, result.height, done.seed)
        else:
            image = render.image_from_rgba8(f"Easel refine {done.seed}", result.data, result.width, result.height)
            _show(image)
            self.book.notice = f"refined the render into '{image.name}'"
        _undo_push(f"Easel: {job.kind.value.replace('_', ' ')}")


def apply_texture(job: OpenJob, data: bytes, width: int, height: int, seed: int) -> str:
    """Pack the result, project it onto the job's objects that still exist, and give them
    projection materials. Returns a one-line summary for the panel."""
    camera = job.context["camera"]
    if (width, height) != (camera.width, camera.height):
        raise ValueError(f"the server sent {width}x{height}, the depth pass was {camera.width}x{camera.height}")
    texture = render.image_from_rgba8(f"Easel texture {seed}", data, width, height)
    depth_image = bpy.data.images.get(job.context["depth_image"])
    if depth_image is None:
        raise ValueError("the depth pass image of this job was deleted; run Texture from Depth again")
    seen, unseen = [], []
    for name in job.context["objects"]:
        obj = bpy.data.objects.get(name)
        if obj is None or obj.type != "MESH":
            continue
        visibility = texturing.project_object(obj, camera, job.context["depth"])
        (seen if visibility.seen_count else unseen).append(obj)
    texturing.apply_projection_materials(seen, texture, depth_image, job_id=job.job_id,
                                         shading=job.context.get("shading", "EMISSION"))
    _show(texture)
    summary = f"textured {len(seen)} object(s) with '{texture.name}'"
    if unseen:
        summary += f"; not seen by the camera, left as they were: {', '.join(o.name for o in unseen)}"
    return summary


def _discard(job: OpenJob) -> None:
    """Remove what a job that ended without a result left behind (its depth pass image)."""
    name = job.context.get("depth_image")
    image = bpy.data.images.get(name) if name else None
    if image is not None and image.users == 0:
        bpy.data.images.remove(image)


def _show(image: bpy.types.Image) -> None:
    """Show ``image`` in every Image Editor that shows an Easel image or nothing."""
    manager = bpy.context.window_manager
    for window in getattr(manager, "windows", ()):
        for area in window.screen.areas:
            if area.type != "IMAGE_EDITOR":
                continue
            space = area.spaces.active
            if space.image is None or space.image.name.startswith("Easel"):
                space.image = image
            area.tag_redraw()


def _redraw() -> None:
    manager = bpy.context.window_manager
    for window in getattr(manager, "windows", ()):
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR"}:
                area.tag_redraw()


def _undo_push(message: str) -> None:
    """Make the applied result one undo step (there is no undo stack without a window)."""
    if getattr(bpy.context.window_manager, "windows", None):
        try:
            bpy.ops.ed.undo_push(message=message)
        except RuntimeError as exc:
            log.debug("no undo step: %s", exc)


# --------------------------------------------------------------------------- the one instance

_runtime: Runtime | None = None


def start() -> None:
    """Called by ``register()``."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime()


def stop() -> None:
    """Called by ``unregister()``: closes the connection and stops the timer (a timer left
    registered hangs Blender 4.5 at exit)."""
    global _runtime
    if bpy.app.timers.is_registered(dispatch):
        bpy.app.timers.unregister(dispatch)
    if _runtime is not None:
        _runtime.close()
        _runtime = None


def get() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the Easel add-on is not enabled")
    return _runtime


def dispatch() -> float | None:
    """The ``bpy.app.timers`` function. Tests call it directly: timers never fire in the module build."""
    if _runtime is None:
        return None
    return _runtime.dispatch()


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(dispatch):
        bpy.app.timers.register(dispatch, first_interval=POLL_INTERVAL)


__all__ = ["Runtime", "BusyError", "dispatch", "get", "start", "stop", "ensure_timer", "apply_texture", "PREVIEW_IMAGE"]
