"""The Easel panel's *Models* sub-panel: the model the next texture lacks on the server, a Download
button with the size, the progress bar while it runs, and how it ended. Imports ``bpy``; the logic
is :mod:`.model_setup`'s. Shown only when there is something to say."""
from __future__ import annotations

import bpy
from bpy.props import StringProperty

from . import runtime
from .clientkit.downloads import BannerState, Need
from .guides import LINE_GUIDES
from .model_setup import ModelSetup, lines


def _state() -> runtime.Runtime | None:
    try:
        return runtime.get()
    except RuntimeError:
        return None


def needs(setup: ModelSetup, settings: bpy.types.PropertyGroup) -> list[Need]:
    """What the scene's next Texture from Depth needs (its model, depth guide and line guide)."""
    controlnet = settings.depth_guide == "CONTROLNET"
    line = LINE_GUIDES.get(settings.line_guide) if controlnet else None
    return setup.needs(settings.model, settings.texture_task(), controlnet, line[1] if line else "")


def banner(state: runtime.Runtime, context: bpy.types.Context) -> BannerState:
    return state.setup.banner(needs(state.setup, context.scene.easel))


class VIEW3D_PT_easel_models(bpy.types.Panel):
    """The model the next texture lacks on the server, and its download."""

    bl_label = "Models"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Easel"
    bl_parent_id = "VIEW3D_PT_easel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = _state()
        return state is not None and bool(banner(state, context).text)

    def draw(self, context: bpy.types.Context) -> None:
        state = runtime.get()
        shown = banner(state, context)
        layout = self.layout
        icon = "ERROR" if shown.error else "IMPORT" if shown.progress is not None else "INFO"
        col = layout.column(align=True)
        for index, line in enumerate(lines(shown.text)):
            col.label(text=line, icon=icon if index == 0 else "BLANK1")
        if shown.progress is not None:
            layout.progress(factor=shown.progress, type="BAR", text=f"{shown.progress:.0%}")
        if shown.button:
            missing = state.setup.missing(needs(state.setup, context.scene.easel))
            layout.operator("easel.download_model", text=shown.button, icon="IMPORT").download = missing.offer.name
        elif shown.progress is None and state.setup.tracker.view is not None:
            layout.operator("easel.dismiss_download", text="OK", icon="CHECKMARK")


class EASEL_OT_download_model(bpy.types.Operator):
    """Ask the Easel server to download the model the panel names; the panel shows its progress and
    the model is listed when it is done"""

    bl_idname = "easel.download_model"
    bl_label = "Download Model"
    bl_options = {"REGISTER"}

    download: StringProperty(name="Download", description="The name of one of the server's downloads")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = _state()
        if state is None:
            return False
        if state.setup.running:
            cls.poll_message_set("A download is running; wait for it to finish")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            runtime.get().setup.download(self.download)
        except RuntimeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        runtime.ensure_timer()
        return {"FINISHED"}


class EASEL_OT_dismiss_download(bpy.types.Operator):
    """Hide how the last download ended"""

    bl_idname = "easel.dismiss_download"
    bl_label = "Dismiss"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        runtime.get().setup.dismiss()
        return {"FINISHED"}
