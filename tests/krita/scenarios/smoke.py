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

    # the change hook live mode builds on: fires after undoable changes, stops when unwatched
    changes = []
    stop = controller.host.watch_changes(window, lambda: changes.append(1))
    doc = ctx.app.createDocument(64, 64, "hook", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    ctx.app.setActiveDocument(doc)
    yield 0.3
    before = len(changes)
    doc.rootNode().addChildNode(doc.createNode("stroke", "paintlayer"), None)
    yield 0.2
    after_add = len(changes)
    stop()
    doc.rootNode().addChildNode(doc.createNode("stroke 2", "paintlayer"), None)
    yield 0.2
    ctx.record("change_hook", {"fired_on_change": after_add > before, "silent_after_stop": len(changes) == after_add})
