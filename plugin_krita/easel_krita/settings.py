"""The plugin's saved preferences: server address, token, default model, largest working size,
and the form's last values; and the sentences the settings dialog's connection test shows.

Stored through two callables the host passes in (Krita: ``Application.readSetting`` /
``writeSetting`` under the ``easel`` group), as strings; the form is one JSON string.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable

from .request import GenerationSettings, RequestError
from .size_plan import DEFAULT_LARGEST_SIDE

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


#: The settings dialog's bounds for the largest working size (pixels a side).
LARGEST_SIDE_MIN, LARGEST_SIDE_MAX = 512, 8192


def check_largest_side(pixels: int, server_max: int = LARGEST_SIDE_MAX) -> int:
    """``pixels`` when usable, else ``ValueError`` naming the range (``server_max``: the welcome's
    ``max_image_side``)."""
    high = min(LARGEST_SIDE_MAX, server_max)
    if not LARGEST_SIDE_MIN <= pixels <= high:
        raise ValueError(f"the largest working size must be between {LARGEST_SIDE_MIN} and {high} pixels, got {pixels}")
    return pixels


def masked_token(token: str) -> str:
    """How a token is named in a sentence without showing it: ``"ab…yz" (12 characters)``."""
    if len(token) <= 6:
        return f"({len(token)} characters)"
    return f"\"{token[:2]}…{token[-2:]}\" ({len(token)} characters)"


@dataclass(frozen=True)
class ProbeResult:
    """What a connection test found: ``ok`` and the sentence to show (the server's own words on a
    refusal, :func:`connection_refused`). ``models`` (label, id) are the server's base models and
    ``max_image_side`` bounds the largest working size (0: unknown)."""

    ok: bool
    sentence: str
    models: tuple[tuple[str, str], ...] = ()
    max_image_side: int = 0


def connection_refused(url: str, token: str, code: str, message: str) -> str:
    """The connection test's sentence for a refused handshake (``Refused.code``/``message``).

    A refused token says so and names the token, so the painter knows which field to fix."""
    said = " ".join(message.split()).rstrip(".")
    if code == "unauthorized":
        if not token:
            return (f"The server at {url} needs a token (it was started with --token) and none is set: "
                    f"enter it under Token. The server said: {said}.")
        return (f"The server at {url} refused the token {masked_token(token)}: it is not the token the server "
                f"was started with (--token). Copy it again into Token. The server said: {said}.")
    if code == "version_mismatch":
        return f"The server at {url} speaks another protocol version: {said}. Update the plugin and the server together."
    return f"The server at {url} refused the connection ({code}): {said}."


#: How the transport's ``start()`` words the error of a handshake the server refused.
REFUSED_PREFIX = "the server refused the connection: "


def refusal_status(url: str, token: str, reason: str) -> str:
    """The docker's status for a failed connection whose ``reason`` is a refusal, or ``""`` when it
    is not one (then the server was not reached). A token problem is said as such — never "cannot
    reach" — and points to the settings, where the token is entered."""
    if not reason.startswith(REFUSED_PREFIX):
        return ""
    message = reason[len(REFUSED_PREFIX):]
    code = "unauthorized" if "token" in message.lower() else "refused"
    return connection_refused(url, token, code, message) + " Open the Easel settings (the gear, or Tools ▸ Scripts ▸ Easel: Settings…)."


def cannot_reach(url: str, reason: str) -> str:
    """The connection test's sentence when nothing answered at ``url``."""
    reason = " ".join(reason.split()).rstrip(".")
    return (f"Cannot reach the Easel server at {url}" + (f" ({reason})" if reason else "") +
            ". Start it with `easel serve`, or check the address.")


@dataclass
class Preferences:
    url: str = DEFAULT_URL
    token: str = ""
    form: GenerationSettings = field(default_factory=GenerationSettings)
    #: The model a new image starts with ("": the first the server lists).
    default_model: str = ""
    #: Largest side Generate works at on a big canvas (size_plan.py); beyond it the result is scaled.
    largest_side: int = DEFAULT_LARGEST_SIDE
    #: Live mode's strength, steps and seed as saved (``live.LiveSettings`` fields; checked there).
    live: dict = field(default_factory=dict)

    @classmethod
    def load(cls, read: Read) -> "Preferences":
        """Read saved values; a value that cannot be used is replaced by its default (and logged)."""
        prefs = cls()
        try:
            prefs.url = check_url(read("server_url", DEFAULT_URL) or DEFAULT_URL)
        except ValueError as exc:
            log.warning("easel: ignoring the saved server address: %s", exc)
        prefs.token = read("token", "") or ""
        prefs.default_model = read("default_model", "") or ""
        try:
            prefs.largest_side = check_largest_side(int(read("largest_side", str(DEFAULT_LARGEST_SIDE))))
        except ValueError as exc:
            log.warning("easel: ignoring the saved largest working size: %s", exc)
        try:
            live = json.loads(read("live", "") or "{}")
            prefs.live = {k: live[k] for k in ("strength", "steps", "seed") if k in live} if isinstance(live, dict) else {}
        except ValueError as exc:
            log.warning("easel: ignoring the saved live settings: %s", exc)
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
        write("default_model", self.default_model)
        write("largest_side", str(self.largest_side))
        write("live", json.dumps(self.live, separators=(",", ":")))
        write("form", json.dumps(self.form.to_dict(), separators=(",", ":")))
