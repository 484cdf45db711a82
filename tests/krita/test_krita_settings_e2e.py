"""The settings dialog in real Krita 5.1 under Xvfb against a real ``easel serve --token`` (issue 13).

The scenario (``scenarios/settings_token.py``) starts with no token (refused), opens the dialog
from Tools ▸ Scripts ▸ Easel: Settings…, tests a wrong token and the right one, presses OK and
waits for the connection; then a refused action must also show Krita's floating canvas message.
Screenshots land in ``artifacts/krita/``.
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
from krita_backend import SERVER_TOKEN as TOKEN


def test_a_token_server_is_reached_through_the_settings_dialog(plugin_zip, token_server, tmp_path):
    harness = KritaHarness(tmp_path, plugin_zip)
    result = harness.run(SCENARIOS / "settings_token.py", name="settings", timeout=300,
                         settings={"easel": {"server_url": token_server.url}})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for path in (harness.workdir / "artifacts").glob("*.png"):
        shutil.copy2(path, ARTIFACTS / path.name)
    result.check()
    seen = result.observations
    before = seen["before"]  # issue 13: this said "Cannot reach … Start it with `easel serve`"
    assert before["connection"] == "offline" and before["status"].startswith(f"The server at {token_server.url} needs a token")
    assert "Cannot reach" not in before["status"] and "Easel settings" in before["status"]
    assert seen["dialog"] == {"shown": True, "url": token_server.url, "token": ""}
    assert f"refused the token \"wr…00\" (16 characters)" in seen["wrong"]
    assert "wrong-token-0000" not in seen["wrong"] and "Start it with" not in seen["wrong"]
    assert seen["right"]["text"].startswith("Connected to ") and len(seen["right"]["models"]) >= 2
    after = seen["after"]
    assert after["connection"] == "online" and not after["dialog_open"]
    assert after["token_saved"] == TOKEN and after["url_saved"] == token_server.url  # in Krita's settings
    floating = seen["floating"]
    assert floating["error"] and floating["message"].startswith("Fill repaints the selection")
    assert floating["after"] > floating["before"]  # Krita's floating message on the canvas
