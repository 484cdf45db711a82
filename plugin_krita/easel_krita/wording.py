"""Plain sentences for the painter: server errors, connection states and progress.

The server already words its errors as sentences that say what to fix; here they get the context
a painter needs (which action failed) and, for a few codes, the next step. Nothing here ever
shows a traceback; unexpected exceptions become one sentence plus a pointer to Krita's log.
"""
from __future__ import annotations

from .protocol import ErrorCode

_HINTS = {
    ErrorCode.OUT_OF_MEMORY: "Try a smaller selection, fewer images per batch, or fewer steps.",
    ErrorCode.UNKNOWN_MODEL: "Pick a model from the list (press Connect to refresh it).",
    ErrorCode.MODEL_UNAVAILABLE: "Check the model's path in the server's settings.",
    ErrorCode.BUSY: "Wait for the running jobs to finish, or cancel some.",
    ErrorCode.SHUTTING_DOWN: "The server is stopping; start it again with `easel serve`.",
    ErrorCode.UNAUTHORIZED: "Enter the server's token in the Easel settings.",
    ErrorCode.VERSION_MISMATCH: "Update the plugin and the server to the same Easel version.",
}


def sentence(text: str) -> str:
    """``text`` as one tidy sentence: single spaces, a capital first letter, closing punctuation."""
    text = " ".join(str(text).split())
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?…" else text + "."


def job_failed(action_label: str, code: ErrorCode | str, message: str, log_id: str = "") -> str:
    """``"Fill failed: <server's sentence>. <hint> (server log id …)"``."""
    code = code if isinstance(code, ErrorCode) else ErrorCode.parse(code)
    parts = [f"{action_label} failed: {sentence(message) or 'the server gave no reason.'}"]
    hint = _HINTS.get(code)
    if hint:
        parts.append(hint)
    if log_id:
        parts.append(f"(Server log id {log_id}.)")
    return " ".join(parts)


def server_error(code: ErrorCode | str, message: str, log_id: str = "") -> str:
    """An error the server sent outside any job."""
    code = code if isinstance(code, ErrorCode) else ErrorCode.parse(code)
    text = f"The server reported a problem: {sentence(message)}"
    hint = _HINTS.get(code)
    if hint:
        text += " " + hint
    if log_id:
        text += f" (Server log id {log_id}.)"
    return text


def cannot_connect(url: str, retry_in: float | None) -> str:
    text = (f"Cannot reach the Easel server at {url}. Start it with `easel serve`, "
            "or check the server address in the Easel docker.")
    if retry_in is not None:
        text += f" Trying again in {retry_in:.0f} s."
    return text


def refused(message: str) -> str:
    return f"The Easel server refused the connection: {sentence(message)}"


def disconnected(url: str, will_retry: bool) -> str:
    if will_retry:
        return f"Lost the connection to the Easel server at {url}; reconnecting…"
    return f"Disconnected from the Easel server at {url}. Press Connect to try again."


def connected(server_name: str, server_version: str, device: str, demo: bool, notice: str = "") -> str:
    text = f"Connected to {server_name} {server_version} on {device}."
    if notice:
        text += " " + sentence(notice)
    elif demo:
        text += " Demo model: it makes noise-like pictures, for trying Easel out."
    return text


def job_lost(action_label: str, reason: str = "the server restarted while it ran") -> str:
    return (f"{action_label} was lost: {reason}. "
            "Nothing changed on the canvas; press the button again (Copy settings in the history restores the form).")


def not_applied(action_label: str, reason: str) -> str:
    """A result that arrived but could not be placed; it is kept in the history."""
    return (f"{action_label} finished but was not placed: {reason}. The result is kept in the history: "
            "select it and press Apply to current image.")


def waiting_for_connection() -> str:
    return "(waiting for the connection to the server to come back)"


def cancelled(action_label: str, reason: str) -> str:
    if reason == "requested":
        return f"{action_label} cancelled."
    if reason == "superseded":
        return f"{action_label} replaced by a newer request."
    if reason == "shutdown":
        return f"{action_label} cancelled: the server is shutting down."
    return f"{action_label} cancelled ({reason})."


def unexpected(what: str, exc: BaseException) -> str:
    """An exception this plugin did not expect: one sentence, details in Krita's log."""
    detail = sentence(str(exc)) or type(exc).__name__ + "."
    return f"Easel could not {what}: {detail} Details are in Krita's log (Settings ▸ Dockers ▸ Log Viewer)."


def progress(action_label: str, phase: str, step: int = 0, total: int = 0, queue_position: int = 0) -> str:
    if phase == "sending":
        return f"{action_label}: sending the image…"
    if phase == "queued":
        return f"{action_label}: waiting for the server ({queue_position} ahead)…" if queue_position else f"{action_label}: starting…"
    if phase == "running":
        return f"{action_label}: step {step} of {total}" if total else f"{action_label}: running…"
    if phase == "applying":
        return f"{action_label}: placing the result…"
    return f"{action_label}…"
