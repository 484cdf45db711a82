"""The sentences users read: server errors by code, connection states, how a job ended.

The server already words its errors as sentences that say what to fix; here they get the context a
user needs (which action failed) and, for a few codes, the next step. Hosts add only their own
words (where their settings live, their log viewer). Nothing here ever shows a traceback.
"""
from __future__ import annotations

from protocol import ErrorCode

_HINTS = {
    ErrorCode.OUT_OF_MEMORY: "Try a smaller selection, fewer images per batch, or fewer steps.",
    ErrorCode.UNKNOWN_MODEL: "Pick a model from the list (press Connect to refresh it).",
    ErrorCode.MODEL_UNAVAILABLE: "Check the model's path in the server's settings.",
    ErrorCode.BUSY: "Wait for the running jobs to finish, or cancel some.",
    ErrorCode.SHUTTING_DOWN: "The server is stopping; start it again with `easel serve`.",
    ErrorCode.UNAUTHORIZED: "Enter the server's token in the Easel settings.",
    ErrorCode.VERSION_MISMATCH: "Update the plugin and the server to the same Easel version.",
}

#: Why a job's result will not come, by what happened (the fragments :func:`job_lost` completes).
SERVER_RESTARTED = "the server restarted while it ran"
CONNECTION_CLOSED = "the connection to the server closed"


def hint(code: ErrorCode | str) -> str:
    """The next step for an error ``code``, or ``""``."""
    return _HINTS.get(code if isinstance(code, ErrorCode) else ErrorCode.parse(code), "")


def sentence(text: str) -> str:
    """``text`` as one tidy sentence: single spaces, a capital first letter, closing punctuation."""
    text = " ".join(str(text).split())
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?…" else text + "."


def job_failed(action_label: str, code: ErrorCode | str, message: str, log_id: str = "") -> str:
    """``"Fill failed: <server's sentence>. <hint> (Server log id …)"``."""
    parts = [f"{action_label} failed: {sentence(message) or 'the server gave no reason.'}"]
    if hint(code):
        parts.append(hint(code))
    if log_id:
        parts.append(f"(Server log id {log_id}.)")
    return " ".join(parts)


def server_error(code: ErrorCode | str, message: str, log_id: str = "") -> str:
    """An error the server sent outside any job."""
    text = f"The server reported a problem: {sentence(message)}"
    if hint(code):
        text += " " + hint(code)
    if log_id:
        text += f" (Server log id {log_id}.)"
    return text


def not_sent(action_label: str, message: str) -> str:
    return f"{action_label} was not sent: {message}"


def cannot_connect(url: str, retry_in: float | None, where: str = "the Easel docker") -> str:
    text = (f"Cannot reach the Easel server at {url}. Start it with `easel serve`, "
            f"or check the server address in {where}.")
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


def left_behind(url: str) -> str:
    return f"Easel switched to the server at {url} while it ran"


def job_lost(action_label: str, reason: str = SERVER_RESTARTED,
             next_step: str = "Nothing changed; run it again") -> str:
    """A job whose result will never come; ``next_step`` is the host's own advice."""
    return f"{action_label} was lost: {reason}. {sentence(next_step)}"


def cancelled(action_label: str, reason: str) -> str:
    if reason == "requested":
        return f"{action_label} cancelled."
    if reason == "superseded":
        return f"{action_label} replaced by a newer request."
    if reason == "shutdown":
        return f"{action_label} cancelled: the server is shutting down."
    return f"{action_label} cancelled ({reason})."


def waiting_for_connection() -> str:
    return "(waiting for the connection to the server to come back)"


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


# -- references and regions (clientkit/guides.py)

def too_many_references(count: int, most: int) -> str:
    return (f"{count} reference images are in use, the server takes at most {most} in one job; "
            f"set the weight of the others to 0 or remove them")


def too_many_regions(count: int, most: int) -> str:
    return f"{count} regions are marked, the server takes at most {most} in one job; unmark some"


def empty_reference(name: str) -> str:
    return f"the reference {name!r} has no pixels; paint or paste a picture into it, or remove it"


def no_region_prompt(name: str) -> str:
    return f"the region {name!r} needs a prompt: what to make where it is painted"
