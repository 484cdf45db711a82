"""Guarded Qt slots: an exception escaping a Qt slot makes Krita open a blocking traceback dialog,
so every docker slot goes through :func:`guard`, which logs it and tells the painter in a sentence."""
from __future__ import annotations

import logging
from typing import Any, Callable

from . import wording

log = logging.getLogger("easel.krita")


def guard(controller: Any, slot: Callable[..., Any]) -> Callable[..., None]:
    """``slot`` wrapped: an exception is logged and said through ``controller.say``; never raised."""
    def guarded(*args: Any) -> None:
        try:
            slot(*args)
        except Exception as exc:
            log.exception("easel: docker slot failed")
            try:
                controller.say(wording.unexpected("update the docker", exc), error=True)
            except Exception:
                pass
    return guarded
