"""Missing models in Blender: what the next Texture from Depth lacks on the server, and the download
that brings it, with progress. No ``bpy`` here (the sub-panel and operators: ``setup_panel.py``).

:mod:`clientkit.downloads` judges and tracks; this module binds it to the runtime's link. On each
connect it asks for the model list (the downloads a server offers come only with it), reads every
event the dispatcher polls, and answers what the panel shows for the scene's settings: a real base
model (on a server that offers downloads, or has no model at all — a demo server without downloads
already says so in the status line), and with *Depth Guide: ControlNet Depth* a depth ControlNet
(and one for the line guide) of the chosen model's family. A finished download lists the models
again, so the next job finds the new model or ControlNet without a restart.
"""
from __future__ import annotations

import textwrap
from typing import Any, Callable, Iterable

from .clientkit.downloads import (
    BannerState, DownloadTracker, Missing, Need, banner_state, base_model, controlnet, first_missing,
)
from .clientkit.events import ConnectFailed, DownloadNotSent
from .plan import model_for
from .protocol import ModelList
from .protocol.transport import Connected, Disconnected

#: Characters of a panel line (the sidebar's default width); longer sentences wrap.
LINE_CHARS = 42
NOT_CONNECTED = "not connected to the Easel server; press the refresh button next to the status"


class ModelSetup:
    """One per runtime. ``link()`` gives the runtime's current connection (or ``None``). Main thread only."""

    def __init__(self, link: Callable[[], Any]) -> None:
        self._link = link
        self.tracker = DownloadTracker(self._send, self._list_models)
        self._listed_by: Any = None  # the link whose server's model_list arrived
        self._awaiting_list = False

    @property
    def listed(self) -> bool:
        """The model list of the server connected now has arrived (a new URL's link has none yet)."""
        return self._listed_by is not None and self._listed_by is self._link()

    @property
    def running(self) -> bool:
        return self.tracker.running

    @property
    def busy(self) -> bool:
        """A download runs, or a model list asked for has not come yet (the dispatcher keeps polling)."""
        return self.tracker.running or self._awaiting_list

    def handle(self, events: Iterable[Any]) -> None:
        """Every event the dispatcher polled (the job book sees them too)."""
        for event in events:
            if isinstance(event, Connected):
                self._listed_by = None  # another server's offers would mislead until its list arrives
                self._list_models()
            elif isinstance(event, ConnectFailed) or isinstance(event, Disconnected) and not event.will_retry:
                self._awaiting_list = False  # no list comes on this connection
            self.tracker.handle(event)
            if isinstance(event, ModelList):
                self._listed_by, self._awaiting_list = self._link(), False

    def needs(self, model_id: str, task: str, depth_controlnet: bool, line_type: str = "") -> list[Need]:
        """What a texture job of ``task`` on ``model_id`` ("" the server's default) needs, most
        important first; ``line_type`` is the line guide's control type ("" none)."""
        listing = self.tracker.listing
        out = [base_model()] if listing.downloads or not listing.models else []
        model = model_for(listing.models, model_id, task)
        if depth_controlnet and model is not None:
            out.append(controlnet("depth", model.family, "Texture from Depth's depth guide"))
            if line_type:
                out.append(controlnet(line_type, model.family, "the line guide"))
        return out

    def missing(self, needs: list[Need]) -> Missing | None:
        """The first of ``needs`` the server lacks (``None`` until its model list arrived)."""
        return first_missing(self.tracker.listing, needs) if self.listed else None

    def banner(self, needs: list[Need]) -> BannerState:
        """What the panel shows for ``needs`` (``text`` "": nothing)."""
        return banner_state(self.missing(needs), self.tracker.view)

    def download(self, name: str) -> str:
        """Ask the server for its download ``name`` (``model_list.downloads``). Raises
        ``RuntimeError`` (a sentence) while one runs or when the server does not offer it."""
        offer = next((d for d in self.tracker.listing.downloads if d.name == name), None)
        if offer is None:
            raise RuntimeError(f"the server offers no download named {name!r}; press the refresh button")
        return self.tracker.start(offer)

    def dismiss(self) -> None:
        """Hide an ended download's sentence."""
        self.tracker.dismiss()

    def _send(self, download_id: str, name: str) -> None:
        link = self._link()
        if link is None:
            self.tracker.handle(DownloadNotSent(download_id, NOT_CONNECTED))
        else:
            link.download(download_id, name)

    def _list_models(self) -> None:
        link = self._link()
        if link is not None:
            self._awaiting_list = True
            link.list_models()


def lines(text: str, width: int = LINE_CHARS) -> list[str]:
    """``text`` wrapped for panel labels (Blender does not wrap them)."""
    return textwrap.wrap(text, width) or [""]
