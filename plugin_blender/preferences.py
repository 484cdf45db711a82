"""Add-on preferences: where the Easel server is. Imports ``bpy``."""
from __future__ import annotations

import bpy
from bpy.props import StringProperty

#: ``easel serve`` listens here by default.
DEFAULT_URL = "ws://127.0.0.1:9797"


class EaselPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    server_url: StringProperty(
        name="Server URL", default=DEFAULT_URL,
        description="The Easel server's websocket address (start it with `easel serve`)")
    token: StringProperty(
        name="Token", default="", subtype="PASSWORD",
        description="The server's access token, if it was started with one")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "server_url")
        layout.prop(self, "token")


def preferences(context: bpy.types.Context) -> EaselPreferences:
    return context.preferences.addons[__package__].preferences
