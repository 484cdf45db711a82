"""The new docker, settings dialog and history grid, built offscreen under PyQt5 (Krita 5's binding:
Debian's python3-pyqt5, as Krita uses it) and under PyQt6 (Krita 6's, from PyPI), from the plugin
zip as Krita installs it. ``widgets_offscreen.py`` does the building in a fresh interpreter per
binding; the assertions are here. Screenshots land in ``artifacts/krita/widgets-<binding>/``.

No Krita here (the widgets take plain values and callables); the real-Krita tests of the wired
docker are the ``krita``-marked ones.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "widgets_offscreen.py"
ARTIFACTS = ROOT / "artifacts" / "krita"


def _interpreter(binding: str) -> list[str] | None:
    """The command that runs the script under ``binding``, or ``None`` when it is not installed."""
    if binding == "PyQt6":
        candidates = [[sys.executable, "--block-pyqt5"]]
    else:  # Krita 5 runs Debian's Python with python3-pyqt5
        candidates = [[path] for path in ("/usr/bin/python3", shutil.which("python3") or "") if path]
    for command in candidates:
        probe = subprocess.run([command[0], "-c", f"import {binding}.QtWidgets, {binding}.QtTest"],
                               capture_output=True, timeout=120)
        if probe.returncode == 0:
            return command
    return None


@pytest.fixture(scope="module")
def plugin_dir(plugin_zip: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(folder)
    return folder


@pytest.mark.parametrize("binding", ["PyQt5", "PyQt6"])
def test_the_new_widgets_build_and_work_under_both_qt_bindings(binding: str, plugin_dir: Path, tmp_path: Path):
    command = _interpreter(binding)
    if command is None:
        pytest.skip(f"{binding} is not installed (PyQt5: apt-get install python3-pyqt5; PyQt6: pip install PyQt6)")
    out = ARTIFACTS / f"widgets-{binding}"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    run = subprocess.run([command[0], str(SCRIPT), str(plugin_dir), str(out), *command[1:]],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    lines = [line for line in run.stdout.splitlines() if line.startswith("REPORT ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["qt_api"] == binding  # every Qt import went through easel_krita/qt.py

    # At the default dock size and at 240 px wide, in every workspace, during a job: nothing wider
    # than the dock, and the primary button, the progress bar and the whole message line in view.
    assert len(report["docker"]) == 6
    for where, seen in report["docker"].items():
        width, height = seen["size"]
        assert seen["min_size"][0] <= width, where
        assert seen["extras_fit"] and seen["switch_fits"], where
        assert seen["primary_in_view"] and seen["progress_in_view"] and seen["message_in_view"], where
        assert seen["message_whole"], where
        assert seen["bottom_of_message"] <= height, where
        assert seen["cancel_enabled"], where
    for name in ("docker_default_generate", "docker_narrow_upscale", "settings_refused", "history_grid"):
        assert (out / f"{name}.png").stat().st_size > 0

    # One primary button whose meaning follows the strength slider and the workspace.
    assert report["primary"] == {"100": "Generate", "60": "Refine 60 %", "upscale": "Upscale",
                                 "live": "Start live", "live_on": "Stop live"}
    calls = [tuple(c) for c in report["calls"]]
    runs = [c[1] for c in calls if c[0] == "run"]
    assert runs == ["generate", "refine", "upscale", "fill", "expand"]
    assert ("live", True) in calls and ("gear",) in calls
    assert ("live_settings", 0.35, 4, None) in calls
    # Field limits from the welcome: steps stop at the server's 150, batch at its 4.
    assert report["steps_max"] == 150 and report["steps_after_200"] == 150 and report["batch_max"] == 4
    assert report["advanced_folded"] and report["negative_hidden"] and report["negative_shown"]
    assert report["loras"] == [["detail-tweaker", 1.0]] and report["form_loras"] == ["detail-tweaker"]

    # The settings dialog: a refused token is said in words naming the token; stale answers dropped.
    assert report["testing_text"].startswith("Connecting to ws://127.0.0.1:9797")
    assert not report["test_enabled_while_testing"]
    assert "refused the token" in report["refused_text"] and "wrong token" in report["refused_text"]
    assert "wrong-token-123" not in report["refused_text"]  # named, never shown whole
    assert report["refused_whole"]
    assert report["stale_dropped"]
    assert report["ok_text"] == "Connected to easel 1.0 on cpu."
    assert report["models"] == ["", "demo", "sdxl"] and report["largest_max"] == 4096
    assert report["values"] == ["ws://127.0.0.1:9797", "right-token", "sdxl", 4096]
    assert report["bad_url_text"].startswith("The server address must start with ws://") and report["still_open"]

    # The history grid: newest first, one thumbnail per image, hover text, click/double-click/discard.
    assert report["grid_keys"] == [[2, 0], [2, 1], [1, 0], [1, 1]]
    assert "prompt 22" in report["grid_tooltip"] and "seed 22" in report["grid_tooltip"]
    assert report["unplaced_tooltip"].split("\n")[:3] == ["Generate: a cat", "seed 5", "not applied: the image was closed"]
    assert report["grid_icon_colour"] == "#ff0000"  # the thumbnail shows the result's pixels
    # a click previews once the double-click interval passed; a double click applies and never previews
    assert report["grid_events_at_once"] == 0 and report["grid_events_after_click"] == [["preview", 2, 0]]
    assert report["grid_events"] == [["preview", 2, 0], ["apply", 2, 1], ["discard", 2, 0]]
    assert report["grid_rows"] == 2  # wraps in a 260 px dock instead of scrolling sideways

    # Expand asks before it grows anything, prefilled with the margins used last.
    assert report["expand_prefilled"] == [64, 0, 32, 0]
    assert report["expand_size_text"] == "1024×768\n→ 1120×768"
    assert report["expand_after"] == [64, 128, 32, 0] and report["expand_size_after"].endswith("→ 1120×896")
    assert report["expand_ok_enabled_at_zero"] is False
