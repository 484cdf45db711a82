"""Typed failures of a job, raised by :class:`backend.engine.Engine` and caught by the worker.

A :class:`JobError` carries a wire :class:`~protocol.errors.ErrorCode` and a plain sentence that
says what to fix; the worker turns it into ``JobFailed`` as is. A :class:`JobCancelledError` means
the job stopped because ``Progress.cancelled()`` said so — it is not a failure.
Anything else escaping the engine is a bug: the worker logs it and answers ``internal``.
"""
from __future__ import annotations

from enum import Enum

from protocol.errors import ErrorCode
from protocol.messages import Scalar


class JobError(Exception):
    """A job failed for a reason the user can act on (bad parameter, missing model, out of memory)."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Scalar] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"JobError({self.code.value!r}, {self.message!r})"


class JobCancelledError(Exception):
    """The job was cancelled (``Progress.cancelled()`` returned true); no result was produced."""

    def __init__(self, step: int = 0, total: int = 0) -> None:
        super().__init__(f"cancelled after step {step} of {total}")
        self.step = step
        self.total = total


#: Longest string sent back as a ``details`` value (a client's string may be long; the sentence names it anyway).
MAX_DETAIL_CHARS = 128


def invalid(message: str, *, value: object = None, **details: Scalar) -> JobError:
    """Shorthand for the most common error: a parameter the user must change.

    ``details`` name the ``field``; ``value`` is the offending value as the client sent it, added
    to the details when it is a scalar (a str enum as its string, a string cut to
    :data:`MAX_DETAIL_CHARS`), so a client can point at the wrong value without parsing the sentence.
    """
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str):
        details["value"] = value[:MAX_DETAIL_CHARS]
    elif isinstance(value, (bool, int, float)):
        details["value"] = value
    return JobError(ErrorCode.INVALID_PARAMETER, message, details or None)
