"""Easel for Blender: texture the scene from its depth with Stable Diffusion on a local server.

This module only registers and unregisters; see ``docs/blender.md`` for the layout.
"""
import bpy

from . import render, runtime
from .operators import (
    EASEL_OT_apply_result, EASEL_OT_cancel, EASEL_OT_connect, EASEL_OT_discard_result, EASEL_OT_move_view,
    EASEL_OT_orbit_rig, EASEL_OT_refine_render, EASEL_OT_restore_materials, EASEL_OT_texture_from_depth,
    EASEL_OT_texture_views,
)
from .panel import (
    VIEW3D_PT_easel, VIEW3D_PT_easel_history, VIEW3D_PT_easel_loras, VIEW3D_PT_easel_sampling, VIEW3D_PT_easel_views,
)
from .panel import VIEW3D_PT_easel_style
from .preferences import EaselPreferences
from .properties import EaselSettings
from .setup_panel import EASEL_OT_dismiss_download, EASEL_OT_download_model, VIEW3D_PT_easel_models

CLASSES = (
    EaselPreferences,
    EaselSettings,
    EASEL_OT_texture_from_depth,
    EASEL_OT_refine_render,
    EASEL_OT_cancel,
    EASEL_OT_restore_materials,
    EASEL_OT_connect,
    EASEL_OT_apply_result,
    EASEL_OT_discard_result,
    EASEL_OT_orbit_rig,
    EASEL_OT_move_view,
    EASEL_OT_texture_views,
    EASEL_OT_download_model,
    EASEL_OT_dismiss_download,
    VIEW3D_PT_easel,
    VIEW3D_PT_easel_models,
    VIEW3D_PT_easel_views,
    VIEW3D_PT_easel_style,
    VIEW3D_PT_easel_sampling,
    VIEW3D_PT_easel_loras,
    VIEW3D_PT_easel_history,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.easel = bpy.props.PointerProperty(type=EaselSettings)
    render.watch_renders()
    runtime.start()


def unregister() -> None:
    runtime.stop()
    render.unwatch_renders()
    del bpy.types.Scene.easel
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
