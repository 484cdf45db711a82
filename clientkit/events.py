"""Events the links add to the transport's: what happened on this side of the wire."""
from __future__ import annotations

from dataclasses import dataclass

from protocol import SubmitJob


@dataclass(frozen=True)
class ConnectFailed:
    """A connection attempt to ``url`` failed; ``reason`` is for the user. ``retry_in`` is the
    wait before the next attempt (``None``: no retry — the server refused us, or retrying is off)."""

    url: str
    reason: str
    retry_in: float | None = None


@dataclass(frozen=True)
class SubmitFailed:
    """A job could not be sent (not connected, or the client refused it); it never reached the server."""

    job_id: str
    message: str


@dataclass(frozen=True)
class Submitted:
    """``job`` was handed to the transport, exactly as it goes to the server."""

    job_id: str
    job: SubmitJob


@dataclass(frozen=True)
class JobLeftBehind:
    """A job open on the server this client was connected to when it switched to another server
    (``url``): its result will not come here."""

    job_id: str
    url: str


@dataclass(frozen=True)
class DownloadNotSent:
    """A ``download_model`` could not be sent (not connected); the server never heard of it."""

    download_id: str
    message: str
