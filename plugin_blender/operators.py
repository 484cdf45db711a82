"""The add-on's actions. Imports ``bpy``.

Each operator reads the scene and the settings, builds one :class:`~.request.GenerationRequest`,
and hands it to the runtime, which sends it off the main thread; results arrive later through
the runtime's dispatcher. Errors the user can fix are reported with ``self.report``.
"""
from __future__ import annotations

import tempfile

import bpy

from . import render, runtime, texturing
from .depth import EmptyDepthError, normalise_depth
from .jobs import BusyError, JobKind
from .pixels import depth_to_depth32f
from .preferences import preferences
from .protocol import ImageFormat, ImagePayload, Task
from .request import GenerationRequest, RequestError


def _targets(context: bpy.types.Context) -> list[bpy.types.Object]:
    return [obj for obj in context.selected_objects if obj.type == "MESH"]


def _runtime_or_none() -> runtime.Runtime | None:
    try:
        return runtime.get()
    except RuntimeError:
        return None


def _common(settings) -> dict:
    return dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt, model=settings.model,
                seed=settings.seed_or_none(), steps=settings.steps, cfg_scale=settings.cfg_scale)


class EASEL_OT_texture_from_depth(bpy.types.Operator):
    """Render the depth pass from the active camera, generate an image that follows it, and project
    it onto the selected meshes with a new material (the original materials are kept)"""

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
            width, height = settings.resolution(scene)
            with tempfile.TemporaryDirectory(prefix="easel-depth-") as folder:
                depth, exr = render.render_depth(scene, context.view_layer, width, height, folder)
                normalised = normalise_depth(depth, settings.depth_mode)
                depth_image = bpy.data.images.load(str(exr), check_existing=False)
                depth_image.name = "Easel depth"
                depth_image.colorspace_settings.name = "Non-Color"
                depth_image.pack()
            camera = render.camera_projection(scene, width, height)
            request = GenerationRequest(
                task=Task.DEPTH2IMG, width=width, height=height, **_common(settings),
                images={"depth": ImagePayload.build(ImageFormat.DEPTH32F, width, height, depth_to_depth32f(normalised))})
            prefs = preferences(context)
            job = runtime.get().submit(
                JobKind.TEXTURE, request,
                {"objects": [obj.name for obj in targets], "camera": camera, "depth": depth,
                 "depth_image": depth_image.name, "shading": settings.shading},
                url=prefs.server_url, token=prefs.token)
        except (render.RenderError, EmptyDepthError, RequestError, BusyError) as exc:
            if depth_image is not None and depth_image.users == 0:
                bpy.data.images.remove(depth_image)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Easel: texturing {len(targets)} object(s) at {width}x{height} ({job.job_id})")
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
            width, height = settings.resolution(scene)
            with tempfile.TemporaryDirectory(prefix="easel-render-") as folder:
                data, width, height = render.render_result_rgba8(scene, folder, size=(width, height))
            request = GenerationRequest(
                task=Task.IMG2IMG, width=width, height=height, strength=settings.strength, **_common(settings),
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
    """Put the original materials back on the selected objects (the generated images stay in the file)"""

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
