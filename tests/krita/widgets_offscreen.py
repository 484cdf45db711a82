"""Build the plugin's new widgets offscreen and report what they do, as JSON.

    python widgets_offscreen.py PLUGIN_DIR OUT_DIR [--block-pyqt5]

PLUGIN_DIR holds ``easel_krita/`` as the plugin zip installs it (protocol and msgpack copied in);
the package is imported without its ``__init__`` (which registers with Krita). ``--block-pyqt5``
makes ``import PyQt5`` fail, as in Krita 6, so the compatibility module takes PyQt6. Run by
``test_krita_widgets.py`` once under Debian's Python with PyQt5 (Krita 5's binding) and once under
the project venv with PyQt6 from PyPI. Screenshots of each widget go to OUT_DIR.
"""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

plugin_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
if "--block-pyqt5" in sys.argv:
    sys.modules["PyQt5"] = None  # type: ignore[assignment]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["MSGPACK_PUREPYTHON"] = "1"
package = types.ModuleType("easel_krita")
package.__path__ = [str(plugin_dir / "easel_krita")]  # type: ignore[attr-defined]
sys.modules["easel_krita"] = package

from easel_krita.geometry import Placement, Rect  # noqa: E402
from easel_krita.history import NOT_APPLIED, History  # noqa: E402
from easel_krita.protocol import ImageFormat, ImagePayload  # noqa: E402
from easel_krita.qt import QT_API, Qt, QtCore, QtWidgets  # noqa: E402
from easel_krita.request import Action, GenerationRequest, GenerationSettings  # noqa: E402
from easel_krita.settings import Preferences, ProbeResult, connection_refused  # noqa: E402
from easel_krita.geometry import Margins  # noqa: E402
from easel_krita.ui.expand_dialog import ExpandDialog  # noqa: E402
from easel_krita.ui.docker_body import LIVE, UPSCALE, WORKSPACES, Actions, DockerBody  # noqa: E402
from easel_krita.ui.history_grid import HistoryGrid, Thumb, thumbs_of  # noqa: E402
from easel_krita.ui.settings_dialog import SettingsDialog  # noqa: E402

if QT_API == "PyQt6":
    from PyQt6.QtTest import QTest
else:
    from PyQt5.QtTest import QTest

app = QtWidgets.QApplication([])
report: dict = {"qt_api": QT_API}
calls: list = []


def settle() -> None:
    for _ in range(5):
        app.processEvents()


def inside(widget: QtWidgets.QWidget, root: QtWidgets.QWidget) -> bool:
    """Whether ``widget`` is shown and lies entirely inside ``root``'s rectangle."""
    if not widget.isVisible():
        return False
    corner = widget.mapTo(root, QtCore.QPoint(0, 0))
    rect = QtCore.QRect(corner, widget.size())
    return root.rect().contains(rect)


# -- the compact docker at the default dock size and at 240 px wide, during a job
actions = Actions(run=lambda a: calls.append(("run", a.value)), cancel=lambda: calls.append(("cancel",)),
                  settings_changed=lambda s: calls.append(("settings", s.strength, s.steps)),
                  live_toggled=lambda on: calls.append(("live", on)),
                  live_settings_changed=lambda *v: calls.append(("live_settings",) + v),
                  open_settings=lambda: calls.append(("gear",)))
body = DockerBody(actions)
dock = QtWidgets.QWidget()  # stands in for the dock: the body gets exactly the dock's size, no more
dock_layout = QtWidgets.QVBoxLayout(dock)
dock_layout.setContentsMargins(0, 0, 0, 0)
dock_layout.addWidget(body)
body.set_models([("A model with a really very long name that would not fit", "m1"), ("Second", "m2")],
                ["euler", "dpmpp_2m_karras"])
body.set_limits(150, 4)
body.set_loras([("detail-tweaker", "detail-tweaker")])
body.load_settings(GenerationSettings(prompt="a lighthouse at dusk", strength=1.0, steps=20, loras=()))
sizes = {}
for name, (width, height) in (("default", (260, 240)), ("narrow", (240, 240))):
    for workspace in WORKSPACES:
        body.set_workspace(workspace)
        dock.setFixedSize(width, height)
        dock.show()
        body.show_progress(0.4, "Generate failed: steps must be between 1 and 150, got 200.", error=True,
                           jobs_open=1)
        settle()
        scroll = body.scroll
        extras = scroll.widget()
        sizes[f"{name}/{workspace}"] = {
            "size": [body.width(), body.height()],
            "min_size": [body.minimumSizeHint().width(), body.minimumSizeHint().height()],
            "extras_fit": extras.width() <= scroll.viewport().width(),
            "progress_in_view": inside(body.progress_bar, dock),
            "message_in_view": inside(body.message_label, dock),
            # the whole message shows: the label is as tall as its wrapped text needs
            "message_whole": body.message_label.height() >= body.message_label.heightForWidth(
                body.message_label.width()),
            "switch_fits": body.workspace_button.width() >= body.workspace_button.sizeHint().width(),
            "primary_in_view": inside(body.primary_button, dock),
            "cancel_enabled": body.cancel_button.isEnabled(),
            "bottom_of_message": body.message_label.mapTo(body, QtCore.QPoint(0, body.message_label.height())).y(),
        }
        dock.grab().save(str(out_dir / f"docker_{name}_{workspace}.png"))
report["docker"] = sizes

body.set_workspace("generate")
settle()
texts = {}
for value in (100, 60):
    body.strength_slider.setValue(value)
    texts[value] = body.primary_button.text()
    body.primary_button.click()
body.set_workspace(UPSCALE)
texts["upscale"] = body.primary_button.text()
body.primary_button.click()
body.set_workspace(LIVE)
texts["live"] = body.primary_button.text()
body.primary_button.click()
body.show_live(True, True)
texts["live_on"] = body.primary_button.text()
body.live_strength_slider.setValue(35)
body.set_workspace("generate")
body.fill_button.click()
body.expand_button.click()
body.gear_button.click()
report["primary"] = texts
report["steps_max"] = body.steps_spin.maximum()
report["batch_max"] = body.batch_spin.maximum()
body.steps_spin.setValue(200)
report["steps_after_200"] = body.steps_spin.value()
report["advanced_folded"] = body.advanced.folded and not body.steps_spin.isVisible()
report["negative_hidden"] = not body.negative_edit.isVisible()
body.negative_button.click()
settle()
report["negative_shown"] = body.negative_edit.isVisible()
body.lora_add_button.click()
report["loras"] = [list(v) for v in body.loras.values()]
report["form_loras"] = [c.id for c in body.form_settings().loras]
report["calls"] = [list(c) for c in calls]

# -- the settings dialog: a refused token, then a working test
probes: list = []
dialog = SettingsDialog(Preferences(url="ws://127.0.0.1:9797", token="wrong-token-123"),
                        lambda url, token, done: probes.append((url, token, done)),
                        models=[("Demo", "demo")])
dialog.show()
dialog.test_connection()
report["testing_text"] = dialog.test_label.text()
report["test_enabled_while_testing"] = dialog.test_button.isEnabled()
url, token, done = probes[-1]
done(ProbeResult(False, connection_refused(url, token, "unauthorized", "wrong token")))
settle()
report["refused_text"] = dialog.test_label.text()
report["refused_whole"] = dialog.test_label.height() >= dialog.test_label.heightForWidth(dialog.test_label.width())
dialog.grab().save(str(out_dir / "settings_refused.png"))
dialog.token_edit.setText("right-token")
dialog.test_connection()
stale = probes[-1][2]
dialog.token_edit.textEdited.emit("right-token!")  # edited while the test runs: its answer is dropped
stale(ProbeResult(True, "Connected (stale)."))
report["stale_dropped"] = dialog.test_label.text() == ""
dialog.test_connection()
probes[-1][2](ProbeResult(True, "Connected to easel 1.0 on cpu.", models=(("Demo", "demo"), ("SDXL", "sdxl")),
                          max_image_side=4096))
report["ok_text"] = dialog.test_label.text()
report["models"] = [dialog.model_combo.itemData(i) for i in range(dialog.model_combo.count())]
dialog.model_combo.setCurrentIndex(dialog.model_combo.findData("sdxl"))
report["largest_max"] = dialog.largest_spin.maximum()
values = dialog.values()
report["values"] = [values.url, values.token, values.default_model, values.largest_side]
dialog.url_edit.setText("http://wrong")
dialog.findChild(QtWidgets.QDialogButtonBox).accepted.emit()
report["bad_url_text"] = dialog.error_label.text()
report["still_open"] = dialog.isVisible()
dialog.grab().save(str(out_dir / "settings_ok.png"))
dialog.close()

# -- the history grid: thumbnails, hover text, click previews, double-click applies, discard
history = History()
canvas = Rect(0, 0, 64, 48)
for seed, colour in ((11, (255, 0, 0, 255)), (22, (0, 0, 255, 255))):
    request = GenerationRequest(Action.GENERATE, GenerationSettings(prompt=f"prompt {seed}"), canvas,
                                Placement(canvas, canvas), (64, 48))
    images = tuple(ImagePayload(ImageFormat.RGBA8, 64, 48, bytes(c) * (64 * 48))
                   for c in (colour, (0, 255, 0, 255)))
    history.add(request, (seed, seed + 1), images)
events: list = []
grid = HistoryGrid(lambda e, i: events.append(("preview", e, i)), lambda e, i: events.append(("apply", e, i)),
                   lambda e, i: events.append(("discard", e, i)))
grid.resize(260, 160)
grid.show()
grid.show_thumbs(thumbs_of(history))
settle()
report["grid_keys"] = [list(k) for k in grid.keys()]
first = grid.list.item(0)
report["grid_tooltip"] = first.toolTip()
report["unplaced_tooltip"] = Thumb(9, 0, None, "a cat", 5, "Generate", NOT_APPLIED, "the image was closed").tooltip()
report["grid_icon_colour"] = grid.list.item(2).icon().pixmap(56, 56).toImage().pixelColor(28, 28).name()
rect = grid.list.visualItemRect(first)
viewport, left, plain = grid.list.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
interval = QtWidgets.QApplication.instance().doubleClickInterval()
QTest.mouseClick(viewport, left, plain, rect.center())  # one click: a preview, once no second click came
report["grid_events_at_once"] = len(events)
QTest.qWait(interval + 150)
report["grid_events_after_click"] = [list(e) for e in events]
second = grid.list.visualItemRect(grid.list.item(1)).center()
# a double click as X delivers it: press, release, double-click, release (a second "click")
QTest.mouseClick(viewport, left, plain, second)
QTest.mouseDClick(viewport, left, plain, second)
QTest.mouseClick(viewport, left, plain, second)
QTest.qWait(interval + 150)
grid.list.setCurrentRow(0)
grid.discard_button.click()
report["grid_events"] = [list(e) for e in events]
report["grid_rows"] = len({grid.list.visualItemRect(grid.list.item(i)).y() for i in range(grid.list.count())})
grid.grab().save(str(out_dir / "history_grid.png"))

# -- Expand asks first, prefilled with the margins used last
expand = ExpandDialog(Margins(64, 0, 32, 0), (1024, 768))
expand.show()
report["expand_prefilled"] = [expand.margins().left, expand.margins().top, expand.margins().right,
                              expand.margins().bottom]
report["expand_size_text"] = expand.size_label.text()
expand.spins["top"].setValue(128)
report["expand_after"] = [expand.margins().left, expand.margins().top, expand.margins().right,
                          expand.margins().bottom]
report["expand_size_after"] = expand.size_label.text()
for spin in expand.spins.values():
    spin.setValue(0)
report["expand_ok_enabled_at_zero"] = expand.buttons.button(
    QtWidgets.QDialogButtonBox.StandardButton.Ok).isEnabled()
expand.spins["left"].setValue(96)
expand.grab().save(str(out_dir / "expand_dialog.png"))
expand.close()

print("REPORT " + json.dumps(report))
