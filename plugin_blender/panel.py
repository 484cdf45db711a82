"""The sidebar panel in the 3D viewport (N panel, tab "Easel") and its job history. Imports ``bpy``."""
from __future__ import annotations

import bpy

from . import multiview, runtime
from .guides import own_control_note
from .plan import colour_note, model_for


class VIEW3D_PT_easel(bpy.types.Panel):
    bl_label = "Easel"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Easel"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.easel
        try:
            book = runtime.get().book
        except RuntimeError:
            layout.label(text="Easel is not enabled", icon="ERROR")
            return
        row = layout.row()
        if book.jobs:
            icon = "TIME"
        else:
            icon = "ERROR" if book.last_error else ("INFO" if book.notice else "LINKED")
        row.label(text=book.status, icon=icon)
        row.operator("easel.connect", text="", icon="FILE_REFRESH")

        layout.prop(settings, "model")
        layout.prop(settings, "prompt")
        layout.prop(settings, "negative_prompt")
        col = layout.column(align=True)
        col.prop(settings, "seed")
        col.prop(settings, "steps")
        col.prop(settings, "cfg_scale")
        col.prop(settings, "strength")
        col = layout.column(align=True)
        col.prop(settings, "size_mode")
        if settings.size_mode == "CUSTOM":
            col.prop(settings, "width")
            col.prop(settings, "height")
        layout.prop(settings, "depth_mode")
        layout.prop(settings, "shading")
        col = layout.column(align=True)
        col.prop(settings, "depth_guide")
        own_note = own_control_note(model_for(book.models, settings.model, settings.texture_task()))
        if settings.depth_guide == "CONTROLNET" and own_note:  # a FLUX.1 Canny-like model: no weights to set
            col.label(text=own_note, icon="INFO")
            col.prop(settings, "depth_weight")
            col.prop(settings, "line_guide")
        elif settings.depth_guide == "CONTROLNET":
            col.prop(settings, "depth_weight")
            col.prop(settings, "depth_controlnet")
            col.prop(settings, "line_guide")
            if settings.line_guide != "NONE":
                col.prop(settings, "line_weight")
                col.prop(settings, "line_controlnet")

        try:
            line = "Next: " + settings.plan(context.scene, settings.texture_task()).line()
        except ValueError as exc:  # a size no model takes
            line = str(exc)
        layout.label(text=line, icon="INFO")
        note = colour_note(context.scene.view_settings.view_transform)
        if note is not None:
            layout.label(text=note, icon="COLOR")
        col = layout.column(align=True)
        col.scale_y = 1.3
        col.operator("easel.texture_from_depth", icon="TEXTURE")
        col.operator("easel.refine_render", icon="RENDER_RESULT")
        row = layout.row(align=True)
        row.operator("easel.cancel", icon="CANCEL")
        row.operator("easel.restore_materials", icon="LOOP_BACK")


class _FoldedSubPanel:
    """A sub-panel of the Easel panel that stays folded until opened."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Easel"
    bl_parent_id = "VIEW3D_PT_easel"
    bl_options = {"DEFAULT_CLOSED"}


class VIEW3D_PT_easel_views(_FoldedSubPanel, bpy.types.Panel):
    """Several views around the objects, generated in order and baked into one UV texture each."""

    bl_label = "Views & Bake"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.easel
        col = layout.column(align=True)
        col.prop(settings, "orbit_views")
        col.prop(settings, "orbit_elevation")
        col.prop(settings, "orbit_distance")
        col.operator("easel.orbit_rig", icon="CON_CAMERASOLVER")
        cameras = multiview.view_cameras(context)
        box = layout.box()
        if not cameras:
            box.label(text="No views: select cameras or make a rig", icon="INFO")
        for index, camera in enumerate(cameras):
            row = box.row(align=True)
            row.label(text=f"{index + 1}. {camera.name}", icon="CAMERA_DATA")
            up = row.operator("easel.move_view", text="", icon="TRIA_UP")
            up.camera, up.step = camera.name, -1
            down = row.operator("easel.move_view", text="", icon="TRIA_DOWN")
            down.camera, down.step = camera.name, 1
        col = layout.column(align=True)
        col.prop(settings, "bake_uv")
        col.prop(settings, "bake_size")
        try:
            line = "Next: " + settings.plan(context.scene, settings.texture_task()).line(max(len(cameras), 1))
        except ValueError as exc:
            line = str(exc)
        layout.label(text=f"{line} · bake {settings.bake_size}²", icon="INFO")
        col = layout.column(align=True)
        col.scale_y = 1.3
        col.operator("easel.texture_views", icon="MOD_UVPROJECT")


class VIEW3D_PT_easel_style(_FoldedSubPanel, bpy.types.Panel):
    """A style reference image, sent with every view of a texture (style.py)."""

    bl_label = "Style Reference"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.easel
        self.layout.template_ID(settings, "style_reference", open="image.open")
        row = self.layout.row()
        row.active = settings.style_reference is not None
        row.prop(settings, "style_weight")


class VIEW3D_PT_easel_sampling(_FoldedSubPanel, bpy.types.Panel):
    """Sampler and batch."""

    bl_label = "Sampler & Batch"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.easel
        self.layout.prop(settings, "sampler")
        self.layout.prop(settings, "batch_size")


class VIEW3D_PT_easel_loras(_FoldedSubPanel, bpy.types.Panel):
    """Up to two LoRAs by their id on the server."""

    bl_label = "LoRAs"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.easel
        for slot in (1, 2):
            row = self.layout.row(align=True)
            row.prop(settings, f"lora_{slot}")
            row.prop(settings, f"lora_{slot}_weight")


#: Icons of the history's statuses.
STATUS_ICONS = {"received": "IMPORT", "applied": "CHECKMARK", "not applied": "PINNED", "failed": "ERROR",
                "cancelled": "CANCEL", "lost": "UNLINKED"}


class VIEW3D_PT_easel_history(bpy.types.Panel):
    """The last jobs and how they ended; a result that arrived but was not applied has an Apply button."""

    bl_label = "History"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Easel"
    bl_parent_id = "VIEW3D_PT_easel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        try:
            return bool(runtime.get().book.history)
        except RuntimeError:
            return False

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        for entry in reversed(runtime.get().book.history):
            row = layout.row()
            row.label(text=entry.label, icon=STATUS_ICONS.get(entry.status.value, "DOT"))
            if entry.can_apply:
                row.operator("easel.apply_result", text="Apply").job_id = entry.job_id
            if entry.status.value == "applied":
                row.operator("easel.discard_result", text="", icon="TRASH").job_id = entry.job_id
