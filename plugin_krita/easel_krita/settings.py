"""The plugin's saved preferences: server address, token, and the form's last values.

Stored through two callables the host passes in (Krita: ``Application.readSetting`` /
``writeSetting`` under the ``easel`` group), as strings; the form is one JSON string.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable

from .request import GenerationSettings, RequestError

log = logging.getLogger("easel.krita")

#: ``easel serve``'s default address (backend/config.py DEFAULT_HOST, DEFAULT_PORT).
DEFAULT_URL = "ws://127.0.0.1:9797"
GROUP = "easel"

Read = Callable[[str, str], str]     # (key, default) -> value
Write = Callable[[str, str], None]   # (key, value)


def check_url(url: str) -> str:
    """The URL stripped, or ``ValueError`` with a sentence when it is not a websocket address."""
    url = url.strip()
    if not (url.startswith("ws://") or url.startswith("wss://")) or len(url) <= len("ws://"):
        raise ValueError(f"the server address must start with ws:// or wss://, e.g. {DEFAULT_URL}; got {url!r}")
    return url


@dataclass
class Preferences:
    url: str = DEFAULT_URL
    token: str = ""
    form: GenerationSettings = field(default_factory=GenerationSettings)

    @classmethod
    def load(cls, read: Read) -> "Preferences":
        """Read saved values; a value that cannot be used is replaced by its default (and logged)."""
        prefs = cls()
        try:
            prefs.url = check_url(read("server_url", DEFAULT_URL) or DEFAULT_URL)
        except ValueError as exc:
            log.warning("easel: ignoring the saved server address: %s", exc)
        prefs.token = read("token", "") or ""
        raw = read("form", "") or ""
        if raw:
            try:
                prefs.form = GenerationSettings.from_dict(json.loads(raw))
            except (ValueError, RequestError, TypeError) as exc:
                log.warning("easel: ignoring the saved form: %s", exc)
        return prefs

    def save(self, write: Write) -> None:
        write("server_url", self.url)
        write("token", self.token)
        write("form", json.dumps(self.form.to_dict(), separators=(",", ":")))
