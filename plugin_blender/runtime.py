"""The add-on's live state and its main-thread dispatcher. Imports ``bpy``.

One :class:`Runtime` exists while the add-on is enabled (made in ``register()``, closed in
``unregister()``): it holds the :class:`~.clientkit.links.ThreadLink` (network on its own threads) and
the :class:`~.jobs.JobBook`. :func:`dispatch` runs on Blender's main thread from ``bpy.app.timers``:
it polls the connection, lets the book turn events into outcomes, and applies them to the scene —
previews into an image, results into packed images and projection materials. It is the only
place results touch Blender data.

Results survive what happens around them. A result that arrived is applied, or — when the objects
it was made for are gone, or another file was opened since the job started — kept in the job
history with the reason, for the *Apply* button. Each job's context holds what applying needs
(objects by name and session id, the camera matrices and depth at submit time), so a job resumed
after a reconnect lands exactly as it would have. A ``load_post`` handler counts file loads (a
job started before a load never touches the new file on its own) and the timer is persistent.

Blender built as a Python module (``pip install bpy``) never fires timers; headless tests call
:func:`dispatch` directly instead.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import bpy

from . import multiview, render, texturing
from .clientkit.events import ConnectFailed
from .clientkit.links import ThreadLink
from .jobs import BusyError, Ended, Finished, JobBook, JobKind, OpenJob, Preview, Status
from .model_setup import ModelSetup
from .protocol import ImageFormat, Welcome
from .protocol.transport import Connected, Disconnected
from .request import GenerationRequest, RequestError

log = logging.getLogger("easel.blender")

#: The version this add-on reports to the server (keep in step with blender_manifest.toml).
VERSION = "0.1.0"
PREVIEW_IMAGE = "Easel Preview"
#: Seconds between dispatcher runs while something is open.
POLL_INTERVAL = 0.1
#: After a connect request, keep polling this long for its outcome even with no job open.
CONNECT_WATCH_S = 30.0


class NotApplied(RuntimeError):
    """A result that cannot be applied now; it stays in the history. The message says why and what to do."""


def _uid(item: Any) -> int | None:
    return getattr(item, "session_uid", None)


def _find(collection: Any, ref: tuple[str, int | None] | None, strict: bool = True) -> Any:
    """The ID named in ``ref`` (name, session uid) if it is still the same one (``strict``), or any
    of that name (not strict). ``None`` if there is none."""
    if not ref:
        return None
    item = collection.get(ref[0])
    if item is None or (strict and ref[1] is not None and _uid(item) != ref[1]):
        return None
    return item


class Runtime:
    def __init__(self) -> None:
        self.book = JobBook()
        self.connection: ThreadLink | None = None
        self._watch_until = 0.0
        #: Counts the files loaded (``load_post``) while the add-on runs: jobs remember the count
        #: they started under, and never apply themselves to another file.
        self.generation = 0
        #: Missing models and their downloads (the panel's Models sub-panel).
        self.setup = ModelSetup(lambda: self.connection)

    def connect(self, url: str, token: str = "") -> ThreadLink:
        """The connection for ``url`` (a new one when the URL or token changed); connects in the background."""
        current = self.connection
        if current is None or current.url != url or current.token != token:
            if current is not None:
                self.apply(self.book.handle(current.poll()))  # results that already arrived are not lost
                current.close()
                self.apply(self.book.fail_all("the server URL changed while it ran; run it again", lost=True))
            self.connection = ThreadLink(url, client_name="blender", client_version=VERSION, token=token,
                                         open_jobs=self.book.sent_jobs)
            self.book.connection = f"connecting to {url}"
            self.book.models, self.book.preprocessors = (), None  # another server's list would mislead
        self.connection.connect()
        self._watch_until = time.monotonic() + CONNECT_WATCH_S
        ensure_timer()
        return self.connection

    def submit(self, kind: JobKind, request: GenerationRequest, context: dict[str, Any], *,
               url: str, token: str = "") -> OpenJob:
        """Open a job and send it in the background. Raises :class:`~.jobs.BusyError`, and
        :class:`~.request.RequestError` when the request does not fit the server's known models
        (a ControlNet it lacks). Unknown models (never connected): checked when the job is sent."""
        known = bool(self.book.models)
        if request.controls and known:  # picks unnamed ControlNets, checks named ones
            request = request.resolved(self.book.models, self.book.preprocessors)
        connection = self.connect(url, token)
        job = self.book.open(kind, request, dict(context, generation=self.generation))
        if request.controls and not known:
            connection.submit_built(job.job_id, lambda welcome: _build_for(request, job.job_id, welcome))
        else:
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
            self.apply(self.book.handle(self.connection.poll()))
            self.connection.close()
            self.connection = None
        self.apply(self.book.fail_all("the Easel add-on was disabled while it ran", lost=True))

    def file_loaded(self) -> None:
        """After a file load: results of jobs started before it wait in the history."""
        self.generation += 1
        if self.book.jobs:
            ensure_timer()

    # -- the main-thread side

    def dispatch(self) -> float | None:
        """Poll, and apply what arrived. Returns the delay until the next call, or ``None`` when
        nothing is open (the timer then stops)."""
        if self.connection is not None:
            events = self.connection.poll()
            if any(isinstance(e, (Connected, ConnectFailed, Disconnected)) for e in events):
                self._watch_until = 0.0  # the connect request has its answer
            self.setup.handle(events)
            self.apply(self.book.handle(events))
        _redraw()
        busy = self.book.jobs or self.setup.busy or time.monotonic() < self._watch_until
        return POLL_INTERVAL if busy else None

    def apply(self, outcomes: list[Any]) -> None:
        for outcome in outcomes:
            try:
                if isinstance(outcome, Preview):
                    if outcome.job.context.get("generation", self.generation) == self.generation:
                        _show(render.show_jpeg(PREVIEW_IMAGE, outcome.jpeg))  # not into a file opened since
                elif isinstance(outcome, Finished):
                    self._finish(outcome)
                elif isinstance(outcome, Ended):
                    _discard(outcome.job)
                    if not outcome.cancelled:
                        log.warning("Easel job %s ended: %s", outcome.job.job_id, outcome.message)
            except (texturing.TexturingError, render.RenderError, ValueError) as exc:
                self.book.last_error = str(exc)
                log.warning("applying an Easel result: %s", exc)

    def _finish(self, done: Finished) -> None:
        """Apply a result that arrived; if it cannot be applied, keep it in the history. It is
        settled either way: nothing that arrived is dropped."""
        job = done.job
        try:
            if job.context.get("generation", self.generation) != self.generation:
                raise NotApplied("another file was opened while it ran; press Apply in the Easel history "
                                 "to use it in this file")
            summary = self._apply_result(job, done.images, done.seed, strict=True)
        except NotApplied as exc:
            self.book.settle(job.job_id, Status.KEPT, str(exc))
            log.info("Easel job %s: result kept: %s", job.job_id, exc)
        except (texturing.TexturingError, render.RenderError, ValueError) as exc:
            self.book.settle(job.job_id, Status.KEPT, f"could not apply it: {exc}")
            log.warning("applying Easel job %s: %s", job.job_id, exc)
        else:
            self.book.settle(job.job_id, Status.APPLIED, summary)
            _undo_push(f"Easel: {job.kind.value.replace('_', ' ')}")

    def apply_kept(self, job_id: str) -> str:
        """Apply a kept result from the history (the *Apply* button): a texture goes onto the
        objects of the names it was made for that exist in the file now. Returns what it did;
        raises :class:`NotApplied` (the result stays kept) or ``ValueError``."""
        entry = self.book.entry(job_id)
        if entry is None or not entry.can_apply:
            raise NotApplied("that result is no longer in the Easel history")
        summary = self._apply_result(entry.job, entry.images, entry.seed, strict=False)
        self.book.settle(job_id, Status.APPLIED, summary)
        _undo_push(f"Easel: apply {entry.job.kind.value.replace('_', ' ')}")
        return summary

    def _apply_result(self, job: OpenJob, images: tuple[Any, ...], seed: int, *, strict: bool) -> str:
        if not images:
            raise ValueError("the server finished the job without an image")
        result = images[0]
        if result.format is not ImageFormat.RGBA8:
            raise ValueError(f"the server sent a {result.format.value} image; this add-on reads rgba8")
        if job.kind is JobKind.TEXTURE and "run" in job.context:  # one view of a multi-view run
            return multiview.on_result(job, result.data, result.width, result.height, seed, self.submit)
        if job.kind is JobKind.TEXTURE:
            return apply_texture(job, result.data, result.width, result.height, seed, strict=strict)
        made = [render.image_from_rgba8(f"Easel refine {seed}" + (f" {index + 1}" if index else ""), item.data,
                                        item.width, item.height, job_id=job.job_id) for index, item in enumerate(images)]
        _show(made[0])
        return f"refined the render into {', '.join(repr(image.name) for image in made)}"


def _build_for(request: GenerationRequest, job_id: str, welcome: Welcome | None):
    """The job for ``request`` with its ControlNets picked from ``welcome``'s models (worker thread)."""
    if welcome is None:
        raise RequestError("the server's models are not known yet; try again")
    resolved = request.resolved(welcome.capabilities.models, welcome.capabilities.preprocessors)
    return resolved.job(job_id), resolved.payloads()


def apply_texture(job: OpenJob, data: bytes, width: int, height: int, seed: int, *, strict: bool = True) -> str:
    """Pack the result, project it onto the job's objects, and give them projection materials.
    Returns a one-line summary for the panel.

    ``strict`` (a result arriving on its own): only the very objects the job was made for (same
    session id: not a new object that took a deleted one's name). When none is left the image is
    still packed into the file and :class:`NotApplied` says so. Not strict (the user's *Apply*):
    the objects of those names in the file now; none is :class:`NotApplied`, nothing changes.
    """
    camera = job.context["camera"]
    if (width, height) != (camera.width, camera.height):
        raise ValueError(f"the server sent {width}x{height}, the depth pass was {camera.width}x{camera.height}")
    refs = [tuple(ref) if isinstance(ref, (tuple, list)) else (ref, None) for ref in job.context["objects"]]
    targets = [obj for obj in (_find(bpy.data.objects, ref, strict) for ref in refs)
               if obj is not None and obj.type == "MESH"]
    names = ", ".join(ref[0] for ref in refs)
    if not targets and not strict:
        raise NotApplied(f"none of the objects it was made for ({names}) is in this file")
    texture = _find(bpy.data.images, job.context.get("texture_image"))
    if texture is None:
        texture = render.image_from_rgba8(f"Easel texture {seed}", data, width, height, job_id=job.job_id)
        job.context["texture_image"] = (texture.name, _uid(texture))
    if not targets:
        raise NotApplied(f"the objects it was made for were deleted ({names}); the image is kept as "
                         f"'{texture.name}'")
    depth_image = _find(bpy.data.images, _image_ref(job.context.get("depth_image")))
    if depth_image is None:  # another file was opened since: the pass is rebuilt from the job's depth
        depth_image = render.depth_image_from_array("Easel depth", job.context["depth"])
        job.context["depth_image"] = (depth_image.name, _uid(depth_image))
    missing = [ref[0] for ref in refs if ref[0] not in {obj.name for obj in targets}]
    seen, unseen = [], []
    for obj in targets:
        visibility = texturing.project_object(obj, camera, job.context["depth"])
        (seen if visibility.seen_count else unseen).append(obj)
    texturing.apply_projection_materials(seen, texture, depth_image, job_id=job.job_id,
                                         shading=job.context.get("shading", "EMISSION"))
    _show(texture)
    summary = f"textured {len(seen)} object(s) with '{texture.name}'"
    if unseen:
        summary += f"; not seen by the camera, left as they were: {', '.join(o.name for o in unseen)}"
    if missing:
        summary += f"; gone before the result came: {', '.join(missing)}"
    return summary


def _image_ref(value: Any) -> tuple[str, int | None] | None:
    if not value:
        return None
    return tuple(value) if isinstance(value, (tuple, list)) else (value, None)


def _discard(job: OpenJob) -> None:
    """Remove what a job that ended without a result left behind (its depth pass image), if it is
    still that very image (after a file load, an image of the same name is someone else's)."""
    image = _find(bpy.data.images, _image_ref(job.context.get("depth_image")))
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
    if _on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load_post)


def stop() -> None:
    """Called by ``unregister()``: closes the connection and stops the timer (a timer left
    registered hangs Blender 4.5 at exit)."""
    global _runtime
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    if bpy.app.timers.is_registered(dispatch):
        bpy.app.timers.unregister(dispatch)
    if _runtime is not None:
        _runtime.close()
        _runtime = None


@bpy.app.handlers.persistent
def _on_load_post(*_args: Any) -> None:
    """``load_post`` (persistent: it stays across file loads, like the add-on)."""
    if _runtime is not None:
        _runtime.file_loaded()


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
    # Persistent: a plain timer is removed when a file is loaded, and open jobs would wait unseen.
    if not bpy.app.timers.is_registered(dispatch):
        bpy.app.timers.register(dispatch, first_interval=POLL_INTERVAL, persistent=True)


__all__ = ["Runtime", "BusyError", "NotApplied", "dispatch", "get", "start", "stop", "ensure_timer", "apply_texture",
           "PREVIEW_IMAGE"]
