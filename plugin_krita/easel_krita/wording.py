"""Plain sentences for the painter. The shared ones (server errors by code, connection states,
progress, how a job ended) are :mod:`clientkit.wording`'s; here only what is Krita's own: the
canvas, the history's *Apply* button, Krita's log viewer. Nothing here ever shows a traceback.
"""
from __future__ import annotations

from .clientkit.wording import (  # noqa: F401 - the shared sentences, as the plugin's modules use them
    cancelled, cannot_connect, connected, disconnected, job_failed, progress, refused, sentence, server_error,
    waiting_for_connection,
)
from .clientkit import wording as _kit


def job_lost(action_label: str, reason: str = _kit.SERVER_RESTARTED) -> str:
    return _kit.job_lost(action_label, reason, "Nothing changed on the canvas; press the button again "
                                               "(Copy settings in the history restores the form)")


def not_applied(action_label: str, reason: str) -> str:
    """A result that arrived but could not be placed; it is kept in the history."""
    return (f"{action_label} finished but was not placed: {reason}. The result is kept in the history: "
            "select it and press Apply to current image.")


def unexpected(what: str, exc: BaseException) -> str:
    """An exception this plugin did not expect: one sentence, details in Krita's log."""
    detail = sentence(str(exc)) or type(exc).__name__ + "."
    return f"Easel could not {what}: {detail} Details are in Krita's log (Settings ▸ Dockers ▸ Log Viewer)."
