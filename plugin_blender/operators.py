"""The add-on's actions. Imports ``bpy``.

Each operator reads the scene and the settings, builds one :class:`~.request.GenerationRequest`,
and hands it to the runtime, which sends it off the main thread; results arrive later through
the runtime's dispatcher. Errors the user can fix are reported with ``self.report``.
"""
from __future__ import annotations

import tempfile

import bpy

from . import multiview, render, runtime, texturing
from .depth import EmptyDepthError, normalise_depth
from .jobs import BusyError, JobKind
from .guides import LINE_GUIDES, common, texture_request
from .preferences import preferences
from .protocol import ImageFormat, ImagePayload, Task
from .request import GenerationRequest, RequestError
from .style import reference_of

def _targets(context: bpy.types.Context) -> list[bpy.types.Object]:
    return [obj for obj in context.selected_objects if obj.type == "MESH"]


def _runtime_or_none() -> runtime.Runtime | None:
    try:
        return runtime.get()
    except RuntimeError:
        return None


class EASEL_OT_texture_from_depth(bpy.types.Operator):
    """Render the depth pass from the active camera, generate an image that follows it (with a depth
    model, or a depth ControlNet and an optional line guide), and project it onto the selected
    meshes with a new material (the original materials are kept)"""

    bl_idname = "easel.texture_from_depth"
    bl_label = "Texture from Depth"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = _runtime_or_none()
        if state is None:
            return False
        if context.scene.camera is None:
            cls.poll_message_set("The scene needs an active camera")
            return False
        if not _targets(context):
            cls.poll_message_set("Select the meshes to texture")
            return False
        if state.book.busy(JobKind.TEXTURE):
            cls.poll_message_set("A texture is being generated; wait or cancel it")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene, settings = context.scene, context.scene.easel
        targets = _targets(context)
        depth_image = None
        try:
            texturing.check_unmodified(targets)
            width, height = settings.resolution(scene, settings.texture_task())
            with tempfile.TemporaryDirectory(prefix="easel-depth-") as folder:
                depth, exr = render.render_depth(scene, context.view_layer, width, height, folder)
                normalised = normalise_depth(depth, settings.depth_mode)
                lines = None
                if settings.depth_guide == "CONTROLNET" and settings.line_guide in LINE_GUIDES:
                    lines = render.render_workbench_rgba8(scene, context.view_layer, width, height, folder)
                depth_image = bpy.data.images.load(str(exr), check_existing=False)
                depth_image.name = "Easel depth"
                depth_image.colorspace_settings.name = "Non-Color"
                depth_image.pack()
            camera = render.camera_projection(scene, width, height)
            request = texture_request(settings, width, height, normalised, lines, reference=reference_of(settings))
            prefs = preferences(context)
            job = runtime.get().submit(
                JobKind.TEXTURE, request,
                {"objects": [(obj.name, obj.session_uid) for obj in targets], "camera": camera, "depth": depth,
                 "depth_image": (depth_image.name, depth_image.session_uid), "shading": settings.shading},
                url=prefs.server_url, token=prefs.token)
        except (render.RenderError, EmptyDepthError, RequestError, BusyError, texturing.TexturingError) as exc:
            if depth_image is not None and depth_image.users == 0:
                bpy.data.images.remove(depth_image)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        how = "depth2img" if request.task == Task.DEPTH2IMG else \
            " + ".join(f"ControlNet {c.control_type}" for c in request.controls)
        skipped = _skipped(context)
        note = f"; skipped (not meshes): {skipped}" if skipped else ""
        self.report({"INFO"}, f"Easel: texturing {len(targets)} object(s) at {width}x{height}, {how} ({job.job_id}){note}")
        return {"FINISHED"}


class EASEL_OT_refine_render(bpy.types.Operator):
    """Repaint the last render with the prompt (img2img) into a new image; the render is kept"""

    bl_idname = "easel.refine_render"
    bl_label = "Refine Render"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = _runtime_or_none()
        if state is None:
            return False
        if bpy.data.images.get("Render Result") is None:
            cls.poll_message_set("Render an image first (F12)")
            return False
        if state.book.busy(JobKind.REFINE):
            cls.poll_message_set("A refine is running; wait or cancel it")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene, settings = context.scene, context.scene.easel
        try:
            width, height = settings.resolution(scene, Task.IMG2IMG)
            with tempfile.TemporaryDirectory(prefix="easel-render-") as folder:
                data, width, height = render.render_result_rgba8(scene, folder, size=(width, height))
            request = GenerationRequest(
                task=Task.IMG2IMG, width=width, height=height, strength=settings.strength,
                batch_size=settings.batch_size, **common(settings),
                images={"image": ImagePayload.build(ImageFormat.RGBA8, width, height, data)})
            prefs = preferences(context)
            job = runtime.get().submit(JobKind.REFINE, request, {}, url=prefs.server_url, token=prefs.token)
        except (render.RenderError, RequestError, BusyError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Easel: refining the render at {width}x{height} ({job.job_id})")
        return {"FINISHED"}


class EASEL_OT_cancel(bpy.types.Operator):
    """Cancel the running Easel jobs"""

    bl_idname = "easel.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = _runtime_or_none()
        return state is not None and state.book.busy()

    def execute(self, context: bpy.types.Context) -> set[str]:
        count = runtime.get().cancel_all()
        self.report({"INFO"}, f"Easel: cancelled {count} job(s)")
        return {"FINISHED"}


class EASEL_OT_restore_materials(bpy.types.Operator):
    """Put the original materials back on the selected objects (the generated images stay in the file
    until discarded in the Easel history)"""

    bl_idname = "easel.restore_materials"
    bl_label = "Restore Materials"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if any(texturing.has_projection(obj) for obj in context.selected_objects):
            return True
        cls.poll_message_set("Select objects textured by Easel")
        return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        count = sum(texturing.restore_materials(obj) for obj in context.selected_objects)
        self.report({"INFO"}, f"Easel: restored {count} material slot(s)")
        return {"FINISHED"}


class EASEL_OT_connect(bpy.types.Operator):
    """Connect to the Easel server and fetch its models"""

    bl_idname = "easel.connect"
    bl_label = "Connect"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _runtime_or_none() is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences(context)
        runtime.get().connect(prefs.server_url, prefs.token)
        return {"FINISHED"}


class EASEL_OT_apply_result(bpy.types.Operator):
    """Apply a result from the Easel history that was kept instead of applied (its objects were
    gone, or another file was opened while it ran): a texture goes onto the objects of the names it
    was made for, seen from the camera as it was when the job started"""

    bl_idname = "easel.apply_result"
    bl_label = "Apply"
    bl_options = {"REGISTER"}

    job_id: bpy.props.StringProperty(name="Job", options={"HIDDEN", "SKIP_SAVE"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = _runtime_or_none()
        if state is None or not state.book.kept():
            cls.poll_message_set("No result is waiting in the Easel history")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        state = runtime.get()
        job_id = self.job_id or state.book.kept()[0].job_id
        try:
            summary = state.apply_kept(job_id)
        except (runtime.NotApplied, texturing.TexturingError, render.RenderError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Easel: {summary}")
        return {"FINISHED"}


class EASEL_OT_orbit_rig(bpy.types.Operator):
    """Place cameras in a circle around the selected meshes (collection 'Easel Views'), replacing the
    rig's previous cameras"""

    bl_idname = "easel.orbit_rig"
    bl_label = "Make Orbit Rig"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not _targets(context):
            cls.poll_message_set("Select the meshes to circle")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.easel
        try:
            cameras = multiview.make_orbit_rig(context, _targets(context), settings.orbit_views,
                                               settings.orbit_elevation, settings.orbit_distance)
        except (multiview.ViewsError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Easel: {len(cameras)} views around the selection in '{multiview.RIG_COLLECTION}'")
        return {"FINISHED"}


class EASEL_OT_move_view(bpy.types.Operator):
    """Move this view earlier or later: earlier views are generated first, later ones fill in around them"""

    bl_idname = "easel.move_view"
    bl_label = "Move View"
    bl_options = {"REGISTER", "UNDO"}

    camera: bpy.props.StringProperty(name="Camera", options={"HIDDEN", "SKIP_SAVE"})
    step: bpy.props.IntProperty(name="Step", default=-1, options={"HIDDEN", "SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            multiview.move_view(multiview.view_cameras(context), self.camera, self.step)
        except multiview.ViewsError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class EASEL_OT_texture_views(bpy.types.Operator):
    """Texture the selected meshes from every view in order (each later view inpaints only what the
    earlier ones did not see), then bake all views into one UV texture per object with a Principled
    BSDF material (the original materials are kept)"""

    bl_idname = "easel.texture_views"
    bl_label = "Texture All Views"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = _runtime_or_none()
        if state is None:
            return False
        if not _targets(context):
            cls.poll_message_set("Select the meshes to texture")
            return False
        if not multiview.view_cameras(context):
            cls.poll_message_set("Select cameras, or make an orbit rig")
            return False
        if state.book.busy(JobKind.TEXTURE):
            cls.poll_message_set("A texture is being generated; wait or cancel it")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.easel
        targets, cameras = _targets(context), multiview.view_cameras(context)
        skipped = _skipped(context)
        try:
            width, height = settings.resolution(context.scene, settings.texture_task())
            prefs = preferences(context)
            job = multiview.start(context, targets, cameras, width=width, height=height, uv_mode=settings.bake_uv,
                                  bake_size=int(settings.bake_size), submit=runtime.get().submit,
                                  url=prefs.server_url, token=prefs.token, skipped=skipped)
        except (render.RenderError, EmptyDepthError, RequestError, BusyError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        note = f"; skipped (not meshes): {skipped}" if skipped else ""
        self.report({"INFO"}, f"Easel: texturing {len(targets)} object(s) from {len(cameras)} views at "
                              f"{width}x{height}, then a {settings.bake_size}² bake ({job.job_id}){note}")
        return {"FINISHED"}


def _skipped(context: bpy.types.Context) -> str:
    """The selected objects that are not meshes (text, curves, ...) and cameras aside: named for the report."""
    return ", ".join(f"{obj.name} ({obj.type.lower()})" for obj in context.selected_objects
                     if obj.type not in ("MESH", "CAMERA", "LIGHT", "EMPTY"))


class EASEL_OT_discard_result(bpy.types.Operator):
    """Let go of the images this job made: removed now if nothing uses them, otherwise they go once
    unused (generated images are otherwise kept in the file, across saves)"""

    bl_idname = "easel.discard_result"
    bl_label = "Discard"
    bl_options = {"REGISTER", "UNDO"}

    job_id: bpy.props.StringProperty(name="Job", options={"HIDDEN", "SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        removed, released = render.discard_images(self.job_id)
        self.report({"INFO"}, f"Easel: removed {removed} image(s); {released} still in use go once unused")
        return {"FINISHED"}
