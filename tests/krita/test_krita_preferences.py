"""Preferences the settings dialog edits (settings.py), and the welcome's steps limit."""
from __future__ import annotations

from pathlib import Path

import pytest

from easel_krita.settings import (
    Preferences, cannot_reach, check_largest_side, connection_refused, masked_token, refusal_status,
)
from easel_krita.size_plan import DEFAULT_LARGEST_SIDE


def test_default_model_and_largest_working_size_round_trip_through_krita_settings():
    store: dict[str, str] = {}
    prefs = Preferences(url="ws://10.0.0.2:9797", token="tok-123456", default_model="sdxl", largest_side=3072)
    prefs.save(store.__setitem__)
    loaded = Preferences.load(lambda key, default: store.get(key, default))
    assert (loaded.url, loaded.token, loaded.default_model, loaded.largest_side) == \
        ("ws://10.0.0.2:9797", "tok-123456", "sdxl", 3072)


def test_a_saved_largest_size_out_of_range_falls_back_to_the_default():
    loaded = Preferences.load(lambda key, default: {"largest_side": "99999"}.get(key, default))
    assert loaded.largest_side == DEFAULT_LARGEST_SIDE


def test_largest_side_is_bounded_by_the_server():
    assert check_largest_side(4096, server_max=8192) == 4096
    with pytest.raises(ValueError, match="between 512 and 2048 pixels, got 4096"):
        check_largest_side(4096, server_max=2048)


def test_a_refused_token_is_said_in_words_naming_the_token_without_showing_it():
    text = connection_refused("ws://h:1", "s3cret-value", "unauthorized", "the token is wrong.")
    assert "refused the token \"s3…ue\" (12 characters)" in text and "s3cret-value" not in text
    assert "--token" in text and text.endswith("The server said: the token is wrong.")
    missing = connection_refused("ws://h:1", "", "unauthorized", "a token is required")
    assert "needs a token" in missing and "enter it under Token" in missing
    assert masked_token("abc") == "(3 characters)"
    assert "protocol version" in connection_refused("ws://h:1", "", "version_mismatch", "v2 only")
    assert cannot_reach("ws://h:1", "connection refused") == (
        "Cannot reach the Easel server at ws://h:1 (connection refused). Start it with `easel serve`, "
        "or check the address.")


def test_the_welcome_carries_the_servers_steps_limit():
    from backend.params import STEPS_MAX
    from backend.server import limits_for
    from backend.config import ServerConfig
    from protocol import Limits

    assert Limits(max_frame_bytes=1).max_steps == STEPS_MAX == 150
    assert limits_for(ServerConfig()).max_steps == STEPS_MAX
    spec = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert f"`max_steps` {STEPS_MAX}" in spec and f"| `max_steps` | int | {STEPS_MAX} |" in spec


def test_live_settings_round_trip_and_junk_is_ignored():
    store: dict[str, str] = {}
    Preferences(live={"strength": 0.35, "steps": 3, "seed": None}).save(store.__setitem__)
    assert Preferences.load(lambda k, d: store.get(k, d)).live == {"strength": 0.35, "steps": 3, "seed": None}
    assert Preferences.load(lambda k, d: {"live": "not json"}.get(k, d)).live == {}
    assert Preferences.load(lambda k, d: {"live": '{"strength": 0.2, "evil": 1}'}.get(k, d)).live == {"strength": 0.2}


def test_a_refused_handshake_is_never_called_unreachable():
    reason = "the server refused the connection: the token is missing or wrong; copy the token the server printed at start"
    text = refusal_status("ws://h:1", "", reason)
    assert text.startswith("The server at ws://h:1 needs a token") and "Easel settings" in text
    assert "refused the token" in refusal_status("ws://h:1", "abcdefgh", reason)
    assert refusal_status("ws://h:1", "", "[Errno 111] Connect call failed") == ""
