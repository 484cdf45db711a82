"""The one listener of the plugin's link: every event the link delivers goes to the rooms that
subscribed, in order, until one takes it.

Live mode subscribes first (it takes the events of its own jobs); the controller subscribes last
and takes the rest (connection state, the model list, every other job). Nobody replaces the link's
``on_event`` to see events. No ``krita`` and no Qt here.
"""
from __future__ import annotations

import logging
from typing import Callable

from .clientkit.links import LinkEvent

log = logging.getLogger("easel.krita")

#: Offered an event; returns True when it took it (later subscribers do not see it).
Taker = Callable[[LinkEvent], bool]


class EventRouter:
    def __init__(self) -> None:
        self._takers: list[Taker] = []

    def subscribe(self, taker: Taker, *, first: bool = False) -> None:
        """Offer events to ``taker``: before every earlier subscriber with ``first``, else after them."""
        if first:
            self._takers.insert(0, taker)
        else:
            self._takers.append(taker)

    def __call__(self, event: LinkEvent) -> None:
        """Deliver ``event`` (the link's ``on_event``). Never raises: a subscriber's error is logged
        and the event goes on to the next one."""
        for taker in list(self._takers):
            try:
                if taker(event):
                    return
            except Exception:
                log.exception("easel: handling %s failed", type(event).__name__)
