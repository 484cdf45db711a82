"""The sidebar panel in the 3D viewport (N panel, tab "Easel"). Imports ``bpy``."""
from __future__ import annotations

import bpy

from . import runtime


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
        col.prop(settings, "use_scene_resolution")
        sub = col.column(align=True)
        sub.enabled = not settings.use_scene_resolution
        sub.prop(settings, "width")
        sub.prop(settings, "height")
        layout.prop(settings, "depth_mode")
        layout.prop(settings, "shading")

        col = layout.column(align=True)
        col.scale_y = 1.3
        col.operator("easel.texture_from_depth", icon="TEXTURE")
        col.operator("easel.refine_render", icon="RENDER_RESULT")
        row = layout.row(align=True)
        row.operator("easel.cancel", icon="CANCEL")
        row.operator("easel.restore_materials", icon="LOOP_BACK")
