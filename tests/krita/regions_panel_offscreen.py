"""Build the docker body with its Regions list offscreen, drive the list, report what it did as JSON.

    python regions_panel_offscreen.py PLUGIN_DIR OUT_DIR [--block-pyqt5]

Run by ``test_krita_regions_panel.py`` under Debian's Python with PyQt5 (Krita 5's binding) and
under the project venv with PyQt6 (Krita 6's). The controller is a stand-in holding region marks in
a dict (the real room, ``guides.py``, is driven by ``test_krita_guides.py`` and in real Krita).
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

from easel_krita.host import HostError  # noqa: E402
from easel_krita.qt import QT_API, QtCore, QtWidgets  # noqa: E402
from easel_krita.regions import RegionLayer, check_prompt  # noqa: E402
from easel_krita.request import GenerationSettings  # noqa: E402
from easel_krita.ui.docker_body import Actions, DockerBody  # noqa: E402
from easel_krita.ui.regions_panel import attach_regions  # noqa: E402

if QT_API == "PyQt6":
    from PyQt6.QtTest import QTest
else:
    from PyQt5.QtTest import QTest

app = QtWidgets.QApplication([])


class Guides:
    def __init__(self) -> None:
        self.marks: dict[str, tuple[str, str]] = {}

    def region_layers(self, doc):
        return [RegionLayer(None, name, key, prompt) for key, (name, prompt) in self.marks.items()]

    def mark_region(self, doc, layer, prompt):
        if layer is None:
            raise HostError("select the layer (or group) to use as a region first")
        self.marks[layer] = (layer.title(), check_prompt(prompt))
        return layer.title()

    def set_region(self, doc, key, prompt):
        name = self.marks[key][0]
        if prompt is None:
            del self.marks[key]
        else:
            self.marks[key] = (name, check_prompt(prompt))
        return name


class Controller:
    def __init__(self) -> None:
        self.selected = "door"
        self.host = types.SimpleNamespace(active_document=lambda: "doc", active_layer=lambda doc: self.selected)
        self.guides = Guides()
        self.said: list[tuple[str, bool]] = []
        self.settings = GenerationSettings()
        self.watchers: list = []

    def set_settings(self, settings, notify=True):  # the real controller's: watchers hear a change
        changed, self.settings = settings != self.settings, settings
        for watcher in self.watchers if changed else ():
            watcher(settings)

    def watch_settings(self, watcher):
        self.watchers.append(watcher)

    def say(self, text, error=False):
        self.said.append((text, error))


def settle() -> None:
    for _ in range(5):
        app.processEvents()
        QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)


controller = Controller()
body = DockerBody(Actions())
panel = attach_regions(body, controller, lambda slot: slot)
body.regions_fold.button.setChecked(True)
body.resize(240, 600)
body.show()
settle()
report: dict = {"qt_api": QT_API, "empty_shown": not panel.empty.isHidden()}
panel.prompt_edit.setText("a red  door")
panel.mark_button.click()
controller.selected = "cat"
panel.prompt_edit.setText("a cat")
panel.prompt_edit.returnPressed.emit()
controller.selected = None
panel.prompt_edit.setText("a bird")
panel.mark_button.click()
settle()
report["after_marks"] = {"rows": [[label.text(), edit.text()] for label, edit in panel.rows.values()],
                         "prompt_field": panel.prompt_edit.text(), "said": controller.said[:]}
_, door_edit = panel.rows["door"]
door_edit.setText("a blue door")
door_edit.editingFinished.emit()
row_buttons = panel.rows["cat"][1].parentWidget().findChildren(QtWidgets.QToolButton)
row_buttons[0].click()
settle()
report["after_edits"] = {"marks": {k: list(v) for k, v in controller.guides.marks.items()},
                         "rows": [[label.text(), edit.text()] for label, edit in panel.rows.values()],
                         "said": controller.said[-2:]}
apart = {"default": [panel.apart.isChecked(), controller.settings.region_mode]}
panel.apart.click()
apart["unchecked"] = [panel.apart.isChecked(), controller.settings.region_mode]
controller.set_settings(GenerationSettings(region_mode="separate"))  # what Copy settings does
apart["copied"] = [panel.apart.isChecked(), controller.settings.region_mode]
QTest.mouseClick(panel.apart_label, QtCore.Qt.MouseButton.LeftButton)  # the label toggles it like a box's own text
apart["label_click"] = [panel.apart.isChecked(), controller.settings.region_mode]
apart["label"] = panel.apart_label.text()
report["apart"] = apart
extras = body.scroll.widget()
report["fits"] = extras.width() <= body.scroll.viewport().width()
body.grab().save(str(out_dir / f"regions-panel-{QT_API}.png"))
print("REPORT " + json.dumps(report))
