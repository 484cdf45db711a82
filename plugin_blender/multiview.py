"""Texturing whole objects from several views, one after another, then baking. Imports ``bpy``.

A run (:class:`Run`) holds the views' cameras in order, the objects, the settings as they were at
the click, and the views done so far. :func:`start` renders the first view's depth pass and sends
its job; each result comes back through the runtime's dispatcher to :func:`on_result`, which keeps
it (its pixels that earlier views had already textured are kept exactly as sent) and sends the
next view — depth pass, plus what the earlier views textured seen from the new camera as the start
image and a mask of only the new pixels (:func:`.blend.reproject`). After the last view every
object is baked (:func:`.bake.bake_object`).

Views are the selected cameras, or else the cameras of the collection :data:`RIG_COLLECTION` that
:func:`make_orbit_rig` fills; either way in the order of their :data:`ORDER_KEY` (then name),
which the panel's arrows change.
"""
from __future__ import annotations

import math
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import bpy
import numpy as np
from mathutils import Matrix, Vector

from . import bake, render
from .blend import View, reproject
from .depth import EmptyDepthError, normalise_depth
from .guides import LINE_GUIDES, keep_known, snapshot, texture_request
from .jobs import BusyError, JobKind, OpenJob
from .orbit import fit_distance, orbit
from .pixels import rgba8_rows
from .request import ReferenceInput, RequestError
from .style import reference_of

RIG_COLLECTION = "Easel Views"
#: On a view camera: its place in the order of views.
ORDER_KEY = "easel_view_order"

Submit = Callable[..., OpenJob]


class ViewsError(ValueError):
    """The views cannot be set up or run as asked; the message says what to change. A ``ValueError``,
    so a result whose next view cannot be sent is kept in the history with this message."""


@dataclass(eq=False)
class Run:
    """One multi-view texturing run (module docstring)."""

    run_id: str
    cameras: list[str]
    objects: list[tuple[str, int]]
    settings: Any
    width: int
    height: int
    uv_mode: str
    bake_size: int
    url: str
    token: str = ""
    #: Selected objects that are not meshes, named in the summary ("Label (font)").
    skipped: str = ""
    #: The style reference read when the run started (style.py), sent with every view.
    reference: ReferenceInput | None = None
    views: list[View] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def targets(self) -> list[bpy.types.Object]:
        found = (bpy.data.objects.get(name) for name, _uid in self.objects)
        return [obj for obj, (_name, uid) in zip(found, self.objects)
                if obj is not None and obj.session_uid == uid and obj.type == "MESH"]


# --------------------------------------------------------------------------- cameras

def view_cameras(context: bpy.types.Context) -> list[bpy.types.Object]:
    """The views: selected cameras, else the rig's cameras; by their order, then name."""
    cameras = [obj for obj in context.selected_objects if obj.type == "CAMERA"]
    if not cameras:
        collection = bpy.data.collections.get(RIG_COLLECTION)
        cameras = [obj for obj in collection.objects if obj.type == "CAMERA"] if collection else []
    return sorted(cameras, key=lambda obj: (obj.get(ORDER_KEY, 1 << 30), obj.name))


def move_view(cameras: list[bpy.types.Object], name: str, step: int) -> None:
    """Move the camera ``name`` ``step`` places in the order (renumbers the views 0..n-1)."""
    names = [camera.name for camera in cameras]
    if name not in names:
        raise ViewsError(f"{name} is not one of the views")
    index = names.index(name)
    target = min(max(index + step, 0), len(names) - 1)
    names.insert(target, names.pop(index))
    for order, camera_name in enumerate(names):
        bpy.data.objects[camera_name][ORDER_KEY] = order


def selection_sphere(objects: list[bpy.types.Object]) -> tuple[np.ndarray, float]:
    """Centre and radius of a sphere around the objects' world bounding boxes."""
    corners = np.array([tuple(obj.matrix_world @ Vector(corner)) for obj in objects for corner in obj.bound_box])
    if not len(corners):
        raise ViewsError("select the objects to texture")
    centre = (corners.min(axis=0) + corners.max(axis=0)) / 2
    return centre, max(float(np.linalg.norm(corners - centre, axis=1).max()), 1e-3)


def make_orbit_rig(context: bpy.types.Context, objects: list[bpy.types.Object], count: int, elevation_deg: float,
                   distance_factor: float) -> list[bpy.types.Object]:
    """Replace the cameras of :data:`RIG_COLLECTION` with ``count`` new ones orbiting the objects
    at ``elevation_deg``, at ``distance_factor`` × the distance at which the objects fill the view."""
    if not objects:
        raise ViewsError("select the objects to texture; the rig circles around them")
    centre, radius = selection_sphere(objects)
    scene = context.scene
    collection = bpy.data.collections.get(RIG_COLLECTION)
    if collection is None:
        collection = bpy.data.collections.new(RIG_COLLECTION)
        scene.collection.children.link(collection)
    for obj in list(collection.objects):
        if obj.type == "CAMERA":
            data = obj.data
            bpy.data.objects.remove(obj)
            if data.users == 0:
                bpy.data.cameras.remove(data)
    probe = bpy.data.cameras.new("Easel View")
    width, height = scene.render.resolution_x, scene.render.resolution_y
    half = math.tan(probe.angle / 2)  # the sensor-fit angle spans the longer side
    narrow = 2 * math.atan(half * min(width, height) / max(width, height))
    bpy.data.cameras.remove(probe)
    distance = fit_distance(radius, narrow) * distance_factor
    cameras = []
    for index, matrix in enumerate(orbit(centre, distance, count, elevation_deg)):
        data = bpy.data.cameras.new(f"Easel View {index + 1:02d}")
        data.clip_end = max(data.clip_end, distance + 4 * radius)
        camera = bpy.data.objects.new(data.name, data)
        collection.objects.link(camera)
        camera.matrix_world = Matrix([list(row) for row in matrix])
        camera[ORDER_KEY] = index
        cameras.append(camera)
    return cameras


# --------------------------------------------------------------------------- the run

def start(context: bpy.types.Context, objects: list[bpy.types.Object], cameras: list[bpy.types.Object], *,
          width: int, height: int, uv_mode: str, bake_size: int, submit: Submit, url: str, token: str = "",
          skipped: str = "") -> OpenJob:
    """Send the first view of a new run. Raises :class:`ViewsError`, :class:`.render.RenderError`,
    :class:`.depth.EmptyDepthError` and the request's errors."""
    if not cameras:
        raise ViewsError("no views: select cameras, or make an orbit rig first")
    if not objects:
        raise ViewsError("select the meshes to texture")
    if uv_mode == "EXISTING":
        for obj in objects:
            bake.prepare_uv(obj, "EXISTING")  # refuse now, not after every view was generated
    run = Run(uuid.uuid4().hex[:8], [camera.name for camera in cameras],
              [(obj.name, obj.session_uid) for obj in objects], snapshot(context.scene.easel),
              width, height, uv_mode, bake_size, url, token, skipped, reference=reference_of(context.scene.easel))
    return _send(context.scene, context.view_layer, run, 0, submit)


def _send(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, run: Run, index: int, submit: Submit) -> OpenJob:
    camera = bpy.data.objects.get(run.cameras[index])
    if camera is None or camera.type != "CAMERA":
        raise ViewsError(f"the view camera {run.cameras[index]} was deleted; run the views again")
    previous = scene.camera
    scene.camera = camera
    try:
        with tempfile.TemporaryDirectory(prefix="easel-view-") as folder:
            depth, _exr = render.render_depth(scene, view_layer, run.width, run.height, folder)
            lines = None
            if run.settings.depth_guide == "CONTROLNET" and run.settings.line_guide in LINE_GUIDES:
                lines = render.render_workbench_rgba8(scene, view_layer, run.width, run.height, folder)
        projection = render.camera_projection(scene, run.width, run.height)
    finally:
        scene.camera = previous
    start_image = mask = None
    if run.views:
        start_image, mask = reproject(run.views, projection, depth)
    request = texture_request(run.settings, run.width, run.height, normalise_depth(depth, run.settings.depth_mode),
                              lines, start_image, mask, run.reference)
    return submit(JobKind.TEXTURE, request,
                  {"objects": list(run.objects), "camera": projection, "depth": depth, "run": run, "view": index,
                   "start": start_image, "mask": mask},
                  url=run.url, token=run.token)


def on_result(job: OpenJob, data: bytes, width: int, height: int, seed: int, submit: Submit) -> str:
    """Keep one view's result and send the next view, or bake after the last. Returns the summary."""
    run: Run = job.context["run"]
    index: int = job.context["view"]
    camera = job.context["camera"]
    if (width, height) != (camera.width, camera.height):
        raise ValueError(f"the server sent {width}x{height}, the depth pass was {camera.width}x{camera.height}")
    generated = rgba8_rows(data, width, height)[::-1].astype(np.float32) / 255.0
    if job.context.get("mask") is not None:
        generated = keep_known(generated, job.context["start"], job.context["mask"])
    run.views.append(View(camera, job.context["depth"], generated))
    image = bpy.data.images.new(f"Easel view {index + 1} {seed}", width, height, alpha=True)
    image.pixels.foreach_set(np.clip(generated, 0, 1).reshape(-1))
    image.update()
    image.pack()
    render.keep_generated(image, job.job_id)
    run.images.append(image.name)
    if index + 1 < len(run.cameras):
        scene = bpy.context.scene
        try:
            following = _send(scene, bpy.context.view_layer, run, index + 1, submit)
        except (render.RenderError, EmptyDepthError, RequestError, BusyError) as exc:
            raise ViewsError(f"view {index + 1} of {len(run.cameras)} arrived, but view {index + 2} could not be "
                             f"sent: {exc}") from None
        return f"view {index + 1} of {len(run.cameras)} done; sent view {index + 2} ({following.job_id})"
    return bake_run(run, job.job_id)


def bake_run(run: Run, job_id: str) -> str:
    """Bake a finished run onto its objects; returns the summary."""
    targets = run.targets()
    if not targets:
        raise ViewsError("the objects of this run were deleted; nothing to bake onto")
    depsgraph = bpy.context.evaluated_depsgraph_get()
    results = []
    for obj in targets:
        uv_name = bake.prepare_uv(obj, run.uv_mode)
        depsgraph.update()
        result = bake.bake_object(obj, run.views, uv_name, run.bake_size, name=f"Easel bake {obj.name}",
                                  job_id=job_id, depsgraph=bpy.context.evaluated_depsgraph_get())
        results.append((obj, result))
    covered = sum(r.covered for _o, r in results)
    seen = sum(r.seen for _o, r in results)
    names = ", ".join(obj.name for obj, _r in results)
    summary = (f"baked {len(run.views)} views onto {names} ({run.bake_size}² each; {100 * seen / max(covered, 1):.1f} % "
               "of texels seen, the rest filled)")
    return summary + (f"; skipped (not meshes): {run.skipped}" if run.skipped else "")
