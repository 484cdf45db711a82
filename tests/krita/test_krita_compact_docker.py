"""The compact Easel docker in real Krita 5.1 under Xvfb, against a real ``easel serve`` (issue 13).

At the default dock size (260×240 content) and at 240 px wide, during a Generate job: nothing wider
than the dock, and the primary button, the progress bar and the whole message line inside it; the
steps field stops at the server's welcome limit (150); idle, the same fit and the big-canvas plan on the
message line (the 320×240 canvas is over twice the demo model's area). Screenshots (idle and during
the job, at both sizes) land in ``artifacts/krita/``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from krita_harness import KritaHarness, keep_artifacts, krita_available

pytestmark = [pytest.mark.krita, pytest.mark.skipif(krita_available() is not None, reason=str(krita_available()))]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def test_the_compact_docker_keeps_progress_in_view_in_a_small_dock(plugin_zip, backend, tmp_path):
    harness = KritaHarness(tmp_path, plugin_zip)
    result = harness.run(SCENARIOS / "compact_docker.py", name="compact", timeout=400,
                         settings={"easel": {"server_url": backend.url}})
    keep_artifacts(harness)
    result.check()
    seen = result.observations
    assert seen["first_button"] == "Generate"  # 100 % at first use: generate, not "Refine 50 %"
    assert seen["limits"]["steps_max"] == 150 and seen["steps_after_200"] == 150  # from the welcome
    assert set(seen["docker"]) == {"default", "narrow"}
    for where, docker in seen["docker"].items():
        width, _ = docker["size"]
        assert docker["jobs"] == 1 and docker["progress_value"] > 0, where  # measured during the job
        assert docker["min_width"] <= width and docker["extras_fit"] and not docker["hbar"], where
        assert docker["primary"] and docker["progress"] and docker["message"] and docker["message_whole"], where
        assert docker["message_text"].startswith("Generate"), where
    # idle, before the click: the same fit, and the big-canvas plan said on the message line
    for where, docker in seen["idle"].items():
        assert docker["min_width"] <= seen["docker"][where]["size"][0], where
        assert docker["extras_fit"] and not docker["hbar"], where
        assert docker["primary"] and docker["message"] and docker["message_whole"], where
        assert docker["message_text"].splitlines()[-1].startswith("Big canvas: Generate makes "), where
        assert "tiled pass" in docker["message_text"], where
