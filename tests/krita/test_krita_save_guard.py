"""The save guard around closing an image and quitting Krita: the live layer stays out of the
file Krita writes when "save it?" is answered Yes, and comes back only once Krita's close (or quit)
handling has returned.

Host stubbed, Qt real: ``save_guard_offscreen.py`` runs the plugin's ``SaveGuard`` on real
``QMdiSubWindow``s and a real ``QAction`` offscreen under Debian's Python with PyQt5 (Krita 5's
binding), with stand-ins for Krita's view, whose close handling does what ``KisView::queryClose``
does — including processing events while the save waits for the image, which is what let the old
guard put the live layer back before Krita copied the image (the flaky
``test_krita_live_e2e.py::test_live_layer_in_real_krita_guidance_saving_and_deletion``) — and for
Krita's window, whose Quit handler asks about every image first as ``KisPart::closeSession`` does.
The real-Krita test checks Cancel, Yes, No and Quit in Krita itself. The assertions are here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "save_guard_offscreen.py"
PACKAGE = ROOT / "plugin_krita" / "easel_krita"
LIVE = "Easel live"


def _python_with_pyqt5() -> str | None:
    for path in ("/usr/bin/python3", shutil.which("python3") or ""):
        if path and subprocess.run([path, "-c", "import PyQt5.QtWidgets"], capture_output=True,
                                   timeout=120).returncode == 0:
            return path
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    python = _python_with_pyqt5()
    if python is None:
        pytest.skip("PyQt5 is not installed (apt-get install python3-pyqt5)")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    run = subprocess.run([python, str(SCRIPT), str(PACKAGE)], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path_factory.mktemp("save-guard"))
    lines = [line for line in run.stdout.splitlines() if line.startswith("REPORT ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


def steps(seen: dict) -> list[str]:
    return [step[0] for step in seen["trace"]]


def live_back_before_close_returned(seen: dict) -> list[list]:
    """Every step up to the close's return at which the image held the live layer."""
    names = steps(seen)
    until = names.index("close returned")
    return [step for step in seen["trace"][:until + 1] if any(isinstance(part, list) and LIVE in part
                                                              for part in step)]


def test_yes_saves_a_file_without_the_live_layer_and_live_turns_off(report):
    seen = report["yes"]
    assert seen["accepted"] and not seen["image_open"]
    assert seen["prompts"] == [["Background", "Paint"]]  # out at the prompt
    assert seen["files"] == [["Background", "Paint"]]  # the copy Krita writes has no live layer
    assert live_back_before_close_returned(seen) == []  # Krita processed events while saving: still out
    assert steps(seen)[-1] == "live off: image closed" and "put back" not in steps(seen)


def test_cancel_keeps_the_image_open_and_puts_the_live_layer_back_after_the_close(report):
    seen = report["cancel"]
    assert not seen["accepted"] and seen["image_open"] and seen["modified"]
    assert seen["prompts"] == [["Background", "Paint"]] and seen["files"] == []
    assert live_back_before_close_returned(seen) == []
    assert steps(seen)[-1] == "put back" and seen["layers"] == ["Background", "Paint", LIVE]


def test_no_closes_without_saving(report):
    seen = report["no"]
    assert seen["accepted"] and not seen["image_open"] and seen["files"] == []
    assert seen["prompts"] == [["Background", "Paint"]]
    assert live_back_before_close_returned(seen) == []
    assert steps(seen)[-1] == "live off: image closed"


def test_closing_another_image_puts_the_live_layer_back_once_that_view_is_gone(report):
    seen = report["other image closes"]
    assert seen["accepted"] and not seen["image_open"] and seen["prompts"] == []
    assert live_back_before_close_returned(seen) == []
    assert steps(seen)[-1] == "put back" and seen["layers"] == ["Background", "Paint", LIVE]


def test_quit_asks_without_the_live_layer_and_saves_none(report):
    """Krita's Quit asks about every modified image before any view closes (no close event then):
    the guard wraps the Quit action's handler."""
    assert "file_quit" in report["guarded"]
    seen = report["quit"]
    assert seen["accepted"] and not seen["image_open"]
    assert seen["prompts"] == [["Background"]] and seen["files"] == [["Background"]]
    assert live_back_before_close_returned(seen) == []
    assert steps(seen)[-1] == "live off: image closed"


def test_quit_cancelled_puts_the_live_layer_back_after_the_quit_handler_returned(report):
    seen = report["quit cancelled"]
    assert not seen["accepted"] and seen["image_open"] and seen["modified"] and seen["files"] == []
    assert seen["prompts"] == [["Background"]]
    assert live_back_before_close_returned(seen) == []
    assert steps(seen)[-1] == "put back" and seen["layers"] == ["Background", LIVE]
