"""Guarded Qt slots: an exception escaping a Qt slot makes Krita open a blocking traceback dialog,
so every docker slot goes through :func:`guard`, which logs it and tells the painter in a sentence."""
from __future__ import annotations

import logging
from typing import Any, Callable

from . import wording

log = logging.getLogger("easel.krita")

#: What PyQt's ``RuntimeError`` says when a slot touches a widget Qt has deleted.
DELETED = "has been deleted"


def guard(controller: Any, slot: Callable[..., Any]) -> Callable[..., None]:
    """``slot`` wrapped: an exception is logged and said through ``controller.say``; never raised.

    A slot whose widgets Qt has deleted (the docker of a Krita window that closed, still listening
    to the controller) goes quiet instead: saying so would call the same dead docker again, and
    again (seen when quitting Krita with live on: megabytes of chained tracebacks in the log)."""
    gone = False

    def guarded(*args: Any) -> None:
        nonlocal gone
        if gone:
            return
        try:
            slot(*args)
        except RuntimeError as exc:
            if DELETED not in str(exc):
                _report(controller, exc)
                return
            gone = True
            log.info("easel: a docker slot's widget is gone (%s); that slot stays quiet from now on", exc)
        except Exception as exc:
            _report(controller, exc)
    return guarded


def _report(controller: Any, exc: Exception) -> None:
    """Log ``exc`` (the one being handled) and tell the painter in a sentence."""
    log.exception("easel: docker slot failed")
    try:
        controller.say(wording.unexpected("update the docker", exc), error=True)
    except Exception:
        pass
