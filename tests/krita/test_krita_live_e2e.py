"""Live mode in real Krita 5.1 under Xvfb, against a real ``easel serve`` on the demo model.

The scenario (``scenarios/live_mode.py``) turns live mode on through the docker's Live section on
a painted two-layer document with a selection, makes undoable changes (a new painted layer,
Ctrl+Z, Ctrl+Shift+Z, a burst of layers), keeps a live result, and turns live mode off; the
assertions are here: the live layer comes and goes without undo entries and leaves every layer
byte-identical, the plugin's own live-layer updates never trigger a live job, only the newest
result reaches the live layer, and Keep is one undo step.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from krita_harness import KritaHarness, krita_available

pytestmark = [pytest.mark.krita, pytest.mark.skipif(krita_available() is not None, reason=str(krita_available()))]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
ARTIFACTS = ROOT / "artifacts" / "krita"
SEL = [24, 16, 96, 80]
LIVE = "Easel live"


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> KritaHarness:
    import importlib.util

    spec = importlib.util.spec_from_file_location("easel_krita_build", ROOT / "plugin_krita" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)  # type: ignore[union-attr]
    plugin_zip = build.build(tmp_path_factory.mktemp("zip") / "easel-krita.zip")
    return KritaHarness(tmp_path_factory.mktemp("krita-live"), plugin_zip)


def test_live_mode_in_real_krita(harness, backend):
    result = harness.run(SCENARIOS / "live_mode.py", name="live", timeout=600,
                         settings={"easel": {"server_url": backend.url}})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for path in (harness.workdir / "artifacts").glob("*live*.png"):
        shutil.copy2(path, ARTIFACTS / path.name)
    result.check()
    assert "EASEL-LIVE-START" in result.log
    live_log = result.log.split("EASEL-LIVE-START", 1)[1]
    assert "SAFE ASSERT" not in live_log, live_log[-3000:]  # Krita's own consistency checks held
    seen = result.observations
    before = seen["before_on"]

    on = seen["on"]
    assert on["enabled"], on["status"]
    assert on["names"] == [name for name, _ in before["layers"]] + [LIVE]  # on top of the painter's layers
    assert on["rows"] == before["rows"]  # adding the live layer left no undo entry
    assert on["active"] == before["active"] == "Paint"  # the painter's active layer stays active
    assert on["locked"] is True
    assert on["live_box"] == SEL  # the live image covers the selection
    assert on["selection"] == SEL
    assert seen["projection_shows_live"]  # and the canvas shows it
    assert (on["changes"], on["jobs"]) == (0, 1)
    if seen["wired"]["docker"]:
        assert on["toggle_checked"] is True
    # Writing the live layer (previews and the result) never looked like a change of the document.
    idle = seen["idle_after_result"]
    assert (idle["changes"], idle["jobs"]) == (0, 1) and idle["previews"] >= 1

    changes = seen["after_changes"]
    # add, undo, redo: one job each, nothing else (Krita resets the Undo History model more than
    # once per change; the debounce makes one job of them)
    assert changes["jobs"] == 3 and changes["changes"] >= 3
    assert changes["names"][-1] == LIVE

    burst = seen["burst"]
    assert burst["shown"].endswith(burst["newest_suffix"])
    assert burst["drawn"][-1] == burst["shown"]
    numbers = [int(job_id.rsplit("-", 1)[1]) for job_id in burst["drawn"]]
    assert numbers == sorted(numbers)  # never an older result after a newer one
    assert burst["layer_is_shown_result"]  # the layer holds exactly the newest result

    keep = seen["keep"]
    assert keep["rows_added"] == 1 and keep["kept_name"].endswith("seed 4321 (live)")
    assert keep["names"][-1] == LIVE and keep["names"][-2] == keep["kept_name"]
    assert keep["kept_is_live"]
    assert keep["kept_name"] not in seen["keep_undone"]  # Ctrl+Z removes it

    off = seen["off"]
    painter, after = off["painter"], off["after"]
    assert after["layers"] == painter["layers"]  # every layer byte-identical, same stack, no live layer
    assert LIVE not in [name for name, _ in after["layers"]]
    assert after["rows"] == painter["rows"]  # turning live off left no undo entry either
    # Every entry is the painter's own: the stroke layer, four burst layers, the (undone) keep.
    assert after["rows"] == before["rows"] + 6
    assert after["active"] == painter["active"] and after["selection"] == painter["selection"] == SEL
    assert after["enabled"] is False
    assert seen["after_off_jobs"] == 0
