"""History, saved preferences and the painter-facing sentences (all host-free)."""
from __future__ import annotations

import pytest

from easel_krita import wording
from easel_krita.geometry import Rect
from easel_krita.history import History, settings_for
from easel_krita.request import Action, GenerationSettings, plan
from easel_krita.settings import DEFAULT_URL, Preferences, check_url
from protocol import ErrorCode, ImageFormat, ImagePayload

REQUEST = plan(Action.GENERATE, GenerationSettings(prompt="fox", seed=None, batch_size=2), Rect(0, 0, 64, 64), None)


def _image(n: int = 16) -> ImagePayload:
    return ImagePayload.build(ImageFormat.RGBA8, n, n, bytes(n * n * 4))


def test_history_records_the_request_with_the_seed_used():
    history = History()
    entry = history.add(REQUEST, (11, 12), (_image(), _image()))
    assert entry.request.seed == 11 and entry.request.job_params().seed == 11
    assert entry.seed_of(1) == 12
    settings = settings_for(entry, 1)
    assert settings.seed == 12 and settings.batch_size == 1 and settings.prompt == "fox"
    with pytest.raises(IndexError, match="no image 3"):
        entry.seed_of(2)
    assert history.latest() is entry and history.get(entry.id) is entry


def test_history_is_bounded_by_entries_and_bytes():
    history = History(max_entries=3, max_image_bytes=2 * 16 * 16 * 4)
    entries = [history.add(REQUEST, (i,), (_image(),)) for i in range(5)]
    assert [e.seeds[0] for e in history] == [2, 3, 4]
    with pytest.raises(KeyError, match="no longer kept"):
        history.get(entries[0].id)
    kept = [e.has_images for e in history]
    assert kept == [False, True, True] and history.image_bytes <= history.max_image_bytes
    assert history.get(entries[2].id).request.seed == 2  # settings survive the eviction


def test_preferences_round_trip_and_ignore_bad_values():
    store: dict[str, str] = {}
    prefs = Preferences(url="ws://example:1234", token="t", form=GenerationSettings(prompt="p", seed=5))
    prefs.save(store.__setitem__)
    again = Preferences.load(lambda key, default: store.get(key, default))
    assert again == prefs
    broken = Preferences.load(lambda key, default: {"server_url": "http://x", "form": "{not json"}.get(key, default))
    assert broken.url == DEFAULT_URL and broken.form == GenerationSettings()
    with pytest.raises(ValueError, match="must start with ws://"):
        check_url("localhost:9797")


def test_default_url_is_the_backends_default_port():
    config = pytest.importorskip("backend.config")
    assert DEFAULT_URL == f"ws://{config.DEFAULT_HOST}:{config.DEFAULT_PORT}"


def test_sentences_are_plain_and_helpful():
    text = wording.job_failed("Fill", ErrorCode.OUT_OF_MEMORY, "the GPU ran out of memory", "abc123")
    assert text == ("Fill failed: The GPU ran out of memory. Try a smaller selection, fewer images per batch, "
                    "or fewer steps. (Server log id abc123.)")
    assert "Traceback" not in wording.unexpected("apply", RuntimeError("boom"))
    assert wording.job_failed("Refine", "some_new_code", "") == "Refine failed: the server gave no reason."
    assert "Trying again in 4 s" in wording.cannot_connect("ws://h:1", 4.0)
    assert "reconnecting" in wording.disconnected("ws://h:1", True)
    assert wording.progress("Generate", "running", 3, 20) == "Generate: step 3 of 20"


def test_connected_status_uses_the_servers_notice_once():
    assert wording.connected("easel", "0.1", "cpu", True, "demo model: noise") == \
        "Connected to easel 0.1 on cpu. Demo model: noise."
    assert wording.connected("easel", "0.1", "cuda", True) == \
        "Connected to easel 0.1 on cuda. Demo model: it makes noise-like pictures, for trying Easel out."


def test_discard_drops_one_entry_and_names_a_gone_one():
    history = History()
    first = history.add(REQUEST, (1,), (_image(),))
    second = history.add(REQUEST, (2,), (_image(),))
    assert history.discard(first.id) is first
    assert [e.id for e in history] == [second.id]
    with pytest.raises(KeyError, match="no longer kept"):
        history.discard(first.id)
