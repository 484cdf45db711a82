"""Inside Krita: the plugin loaded, its actions and docker exist."""
import sys

from PyQt5.QtWidgets import QDockWidget


def run(ctx):
    plugin = sys.modules.get("easel_krita")
    ctx.record("plugin_loaded", plugin is not None)
    controller = plugin.extension.controller
    ctx.record("vendored", {name: sys.modules[name].__file__ for name in
                            ("easel_krita.protocol", "easel_krita._vendor.msgpack", "easel_krita._vendor.websockets")})
    ctx.record("top_level_msgpack", "msgpack" in sys.modules)
    ctx.record("top_level_websockets", "websockets" in sys.modules)
    ctx.record("shortcuts", {name: ctx.app.action(name).shortcut().toString() if ctx.app.action(name) else None
                             for name in ("easel_generate", "easel_refine", "easel_fill", "easel_expand", "easel_cancel")})
    window = ctx.app.activeWindow()
    ctx.record("dockers", [d.windowTitle() for d in window.qwindow().findChildren(QDockWidget) if d.windowTitle() == "Easel"])
    yield (lambda: "Cannot reach" in controller.view.status or controller.view.connection == "online", 30)
    ctx.record("status", controller.view.status)
