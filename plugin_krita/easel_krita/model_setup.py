"""Missing models in Krita: what the painter's next job lacks on the server, and the download that
brings it, with its progress.

:mod:`clientkit.downloads` judges and tracks; this room binds it to the controller. It reads the
server's ``model_list`` (the controller asks for it on every connect) and the painter's set-up
(the model, the marked control layers) and keeps one ``BannerState`` for the docker's banner:
the missing model named with a *Download (size)* button, or the download's progress, or how it
ended. A finished download makes the link list the models again, so the new model is in the model
list and a control layer's ControlNet is picked for the next job, without a restart.

A base model is reported missing only on a server that offers downloads (or has no model at all):
on a demo server without them, the welcome's notice already says the pictures are noise.
No ``krita`` and no Qt here.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from .clientkit.downloads import (
    BannerState, DownloadTracker, Missing, Need, banner_state, base_model, controlnet, first_missing,
)
from .references import is_reference
from .protocol import ModelList
from .protocol.transport import Connected

log = logging.getLogger("easel.krita")


class ModelSetup:
    """One per Krita window set (the extension owns it, beside the controller). Main thread only."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller
        link = controller.connection
        self.tracker = DownloadTracker(link.download, link.list_models, lambda _: self._refresh())
        self.missing: Missing | None = None
        self.banner = BannerState()
        self._listed = False  # a model_list of the server connected now has arrived
        self._dismissed: Need | None = None
        self._listeners: list[Callable[[BannerState], None]] = []
        controller.router.subscribe(self._take, first=True)
        controller.subscribe(lambda _: self._refresh())
        controller.watch_settings(lambda _: self._refresh())

    def subscribe(self, listener: Callable[[BannerState], None]) -> None:
        self._listeners.append(listener)
        listener(self.banner)

    def needs(self) -> list[Need]:
        """What the next job needs, most important first: a real model, then a ControlNet of each
        marked control layer's type for the chosen model's family."""
        listing = self.tracker.listing
        out = [base_model()] if listing.downloads or not listing.models else []
        model = self.controller.current_model()
        if model is not None:
            for layer in self.controller.view.control_layers:
                if layer.spec.strength > 0 and not is_reference(layer.spec.type):  # references need no ControlNet
                    out.append(controlnet(layer.spec.type, model.family, f"the control layer “{layer.name}”"))
        return out

    # -- the painter's actions (the banner's buttons)

    def download(self) -> None:
        """Download what the banner names. Says why not when it cannot."""
        missing = self.missing
        if missing is None or missing.offer is None:
            self.controller.say("Nothing to download: the server has what the next job needs.")
            return
        try:
            self.tracker.start(missing.offer)
        except RuntimeError as exc:
            self.controller.say(str(exc), error=True)

    def dismiss(self) -> None:
        """Close the banner: an ended download's sentence, or the missing model (until something else is missing)."""
        if self.tracker.view is not None and not self.tracker.running:
            self.tracker.dismiss()
        elif self.missing is not None:
            self._dismissed = self.missing.need
            self._refresh()

    # -- events and state

    def _take(self, event: Any) -> bool:
        if isinstance(event, Connected):
            self._listed = False  # until this server's list arrives, the last one's offers would mislead
        took = self.tracker.handle(event)
        if isinstance(event, ModelList):
            self._listed = True
            self._refresh()
        return took

    def _refresh(self) -> None:
        online = self._listed and self.controller.view.connection == "online"
        missing = first_missing(self.tracker.listing, self.needs()) if online else None
        if missing is not None and missing.need == self._dismissed:
            missing = None
        self.missing = missing
        banner = banner_state(missing, self.tracker.view)
        if banner == self.banner:
            return
        self.banner = banner
        for listener in list(self._listeners):
            try:
                listener(banner)
            except Exception:
                log.exception("easel: a model banner listener failed")
