"""Typed failures of a job, raised by :class:`backend.engine.Engine` and caught by the worker.

A :class:`JobError` carries a wire :class:`~protocol.errors.ErrorCode` and a plain sentence that
says what to fix; the worker turns it into ``JobFailed`` as is. A :class:`JobCancelledError` means
the job stopped because ``Progress.cancelled()`` said so — it is not a failure.
Anything else escaping the engine is a bug: the worker logs it and answers ``internal``.
"""
from __future__ import annotations

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


def invalid(message: str, **details: Scalar) -> JobError:
    """Shorthand for the most common error: a parameter the user must change."""
    return JobError(ErrorCode.INVALID_PARAMETER, message, details or None)
