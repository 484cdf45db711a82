"""Errors of the wire layer, and the closed set of error codes that travel on the wire.

Whose fault is it? (the h11 split)

* :class:`RemoteProtocolError` — the peer sent something we cannot accept. It is the only
  exception :func:`protocol.codec.decode` and the sessions' ``receive_frame`` raise for bad input;
  the caller answers it with an error message (its ``code`` and ``message`` are made for that).
* :class:`LocalProtocolError` — our own code misused this layer (sent before the handshake,
  finished a job twice, built a message with a field of the wrong type). It is a bug on our side.

Every error carries an :class:`ErrorCode` and a plain sentence that says what to fix.
"""
from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """The closed set of error codes. ``docs/protocol.md`` documents each one.

    A peer that receives a code it does not know must treat it as ``internal``.
    """

    MALFORMED_FRAME = "malformed_frame"
    UNKNOWN_MESSAGE = "unknown_message"
    INVALID_MESSAGE = "invalid_message"
    UNEXPECTED_MESSAGE = "unexpected_message"
    VERSION_MISMATCH = "version_mismatch"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_JOB = "unknown_job"
    DUPLICATE_JOB = "duplicate_job"
    INVALID_PARAMETER = "invalid_parameter"
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED = "unsupported"
    UNKNOWN_IMAGE = "unknown_image"
    INVALID_IMAGE = "invalid_image"
    LIMIT_EXCEEDED = "limit_exceeded"
    BUSY = "busy"
    OUT_OF_MEMORY = "out_of_memory"
    MODEL_UNAVAILABLE = "model_unavailable"
    MODEL_MISMATCH = "model_mismatch"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"

    @classmethod
    def parse(cls, value: str) -> "ErrorCode":
        """The code for ``value``; unknown codes (from a newer peer) read as ``INTERNAL``."""
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL


class ProtocolError(Exception):
    """Base class: an error with a wire code and a sentence that says what to fix.

    ``ref`` names what the error is about, when that is known: a job id, an image id, or the tag
    of the request that failed (``offer_images``). It travels as the ``ref`` of the ``error``
    message that answers it, so the peer can tell which of its requests was refused. ``details``
    (optional) is the machine-readable context that travels as the error's ``details`` map
    (``busy``: the counts and the bound).
    """

    def __init__(self, code: ErrorCode, message: str, ref: str = "",
                 details: dict[str, bool | int | float | str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r})"


class RemoteProtocolError(ProtocolError):
    """The peer sent junk or broke the protocol's rules. Answer it; do not crash."""


class LocalProtocolError(ProtocolError):
    """Our own code misused the protocol layer. This is a bug on this side of the wire."""
