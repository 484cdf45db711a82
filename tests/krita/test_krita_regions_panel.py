"""The docker's Regions list (ui/regions_panel.py) offscreen under Krita 5's PyQt5 and Krita 6's
PyQt6, built from the plugin zip: marking the selected layer, editing a prompt in place, unmarking,
a sentence when nothing is selected, and "Keep regions apart" setting and following the form's
``region_mode``, in a 240 px wide docker. The controller is a stand-in
(``regions_panel_offscreen.py``); the real region room is tested in test_krita_guides(_e2e).py."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from test_krita_widgets import ARTIFACTS, _interpreter, plugin_dir  # noqa: F401  (the zip, unpacked once)

SCRIPT = Path(__file__).resolve().parent / "regions_panel_offscreen.py"


@pytest.mark.parametrize("binding", ["PyQt5", "PyQt6"])
def test_the_regions_list_marks_edits_and_unmarks_under_both_qt_bindings(binding, plugin_dir, tmp_path):  # noqa: F811
    command = _interpreter(binding)
    if command is None:
        pytest.skip(f"{binding} is not installed")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    run = subprocess.run([command[0], str(SCRIPT), str(plugin_dir), str(ARTIFACTS), *command[1:]],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    lines = [line for line in run.stdout.splitlines() if line.startswith("REPORT ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["qt_api"] == binding and report["empty_shown"]
    marks = report["after_marks"]
    assert marks["rows"] == [["Door", "a red door"], ["Cat", "a cat"]]
    assert marks["prompt_field"] == "a bird"  # not marked: kept for another try
    assert [error for _, error in marks["said"]] == [False, False, True]
    assert marks["said"][0][0].startswith("Door is a region")
    assert marks["said"][2][0] == "select the layer (or group) to use as a region first"
    edits = report["after_edits"]
    assert edits["marks"] == {"door": ["Door", "a blue door"]}
    assert edits["rows"] == [["Door", "a blue door"]]
    assert edits["said"] == [["The region Door now asks for “a blue door”.", False], ["Cat is no longer a region.", False]]
    assert report["apart"] == {"default": [True, "separate"], "unchecked": [False, "attention"],
                               "copied": [True, "separate"], "label_click": [False, "attention"],
                               "label": "Keep regions apart (slower)"}
    assert report["fits"]
