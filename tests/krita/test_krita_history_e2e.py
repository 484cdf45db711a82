"""The history kept in the document, in real Krita 5.1 under Xvfb against a real ``easel serve`` on
the demo model: two results, Krita's *Save* right after the second, close, reopen the ``.kra``, and
*Apply again* on a restored entry. The scenario (``scenarios/history_persist.py``) drives the
plugin's own action and the docker's button; the assertions are here."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from krita_harness import KritaHarness, krita_available

pytestmark = [pytest.mark.krita, pytest.mark.skipif(krita_available() is not None, reason=str(krita_available()))]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def test_history_survives_saving_closing_and_reopening_the_kra(plugin_zip, backend, tmp_path):
    harness = KritaHarness(tmp_path, plugin_zip)
    result = harness.run(SCENARIOS / "history_persist.py", name="history", timeout=300,
                         settings={"easel": {"server_url": backend.url}}).check()
    seen = result.observations

    first = seen["first"]
    assert first["layer"] == "a lighthouse · seed 77" and first["modified"]
    [made] = first["history"]
    assert made["seeds"] == [77] and made["status"] == "applied" and made["images"] == 1

    # the other image: its own, empty history; nothing written into it
    assert seen["other"]["history"] == [] and seen["other"]["rows"] == []
    assert "easel.history" not in seen["other"]["annotations"]
    assert seen["back"]["rows"] == ["Generate: a lighthouse · seed 77"]

    # saved right after the second result: both entries in the file, the image saved (unmodified)
    saved = seen["saved"]
    assert [e["seeds"] for e in saved["history"]] == [[77], [78]] and not saved["modified_after"]
    assert seen["late_write"]["modified"] is False  # setAnnotation's modified flag is put back
    with zipfile.ZipFile(harness.workdir / "artifacts" / "history.kra") as kra:
        assert any(name.endswith("/annotations/easel.history") for name in kra.namelist())

    # reopened: the same entries (request, seeds, status, pixels), and opening changed nothing
    reopened = seen["reopened"]
    assert reopened["history"] == saved["history"]
    assert reopened["history"][0]["request"] == made["request"] and reopened["history"][0]["request"]["seed"] == 77
    assert not reopened["modified"]
    assert reopened["rows"] == ["Generate: a lighthouse · seed 78", "Generate: a lighthouse · seed 77"]
    assert reopened["digests"]["a lighthouse · seed 77"] == first["digest"]

    # Apply again from the restored entry: a new layer with exactly the first result's pixels
    applied = seen["applied"]
    assert applied["layer"] == "a lighthouse · seed 77" and applied["digest"] == first["digest"]
    assert applied["message"] == "Applied a lighthouse · seed 77 again as a new layer."
