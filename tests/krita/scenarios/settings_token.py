"""Inside Krita: a server started with --token, reached through the settings dialog (issue 13).

Opens Tools ▸ Scripts ▸ Easel: Settings…, tests a wrong token, then the right one, presses OK and
waits for the connection; an error on the way also shows as Krita's floating canvas message.
"""
import sys

from krita import Krita
from PyQt5.QtWidgets import QDialogButtonBox, QWidget

TOKEN = "right-token-4711"


def floating_messages(window):
    return [w for w in window.qwindow().findChildren(QWidget) if w.metaObject().className() == "KisFloatingMessage"]


def run(ctx):
    app = Krita.instance()
    ext = sys.modules["easel_krita"].extension
    controller = ext.controller
    window = app.activeWindow()
    window.qwindow().setGeometry(0, 0, 1400, 900)
    doc = app.createDocument(128, 96, "token", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield (lambda: controller.view.connection == "offline", 60)  # refused: no token yet
    ctx.record("before", {"status": controller.view.status, "connection": controller.view.connection})

    app.action("easel_settings").trigger()
    dialog = ext.settings_dialog
    yield 0.3
    ctx.record("dialog", {"shown": dialog.isVisible(), "url": dialog.url_edit.text(), "token": dialog.token_edit.text()})

    dialog.token_edit.setText("wrong-token-0000")
    dialog.test_button.click()
    yield (lambda: dialog.test_button.isEnabled(), 60)
    ctx.record("wrong", dialog.test_label.text())
    ctx.screenshot("settings_wrong_token.png")
    dialog.grab().save(f"{ctx.artifacts}/krita-settings-token.png")

    dialog.token_edit.setText(TOKEN)
    dialog.test_button.click()
    yield (lambda: dialog.test_button.isEnabled(), 60)
    ctx.record("right", {"text": dialog.test_label.text(),
                         "models": [dialog.model_combo.itemData(i) for i in range(dialog.model_combo.count())]})
    dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.Ok).click()
    yield (lambda: controller.view.connection == "online", 60)
    ctx.record("after", {"status": controller.view.status, "connection": controller.view.connection,
                         "dialog_open": dialog.isVisible(), "token_saved": app.readSetting("easel", "token", ""),
                         "url_saved": app.readSetting("easel", "server_url", "")})

    # A failure shows on the canvas too, as Krita's floating message.
    before = len(floating_messages(window))
    ext.run(sys.modules["easel_krita.request"].Action.FILL)  # no selection: refused with a sentence
    yield 0.3
    ctx.record("floating", {"message": controller.view.message, "error": controller.view.message_is_error,
                            "before": before, "after": len(floating_messages(window))})
    doc.setModified(False)
