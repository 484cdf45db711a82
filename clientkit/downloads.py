"""Missing models, said for a painter, and the one download a client follows at a time.

What a feature needs is a :class:`Need`: a base model to paint with, a ControlNet of a control
type for the chosen model's family, a preprocessor's annotator weights, TAESD for sharp previews.
:func:`check` reads the server's ``model_list`` (``models`` and ``downloads``, docs/protocol.md
5.2 and 5.6) and answers ``None`` (it is there) or a :class:`Missing`: one sentence naming what
is missing, and either the server's :class:`~protocol.DownloadInfo` that brings it (a server
started with ``--allow-downloads`` offers them) or the ``easel download …`` command to run on the
server's machine. A server that offers no downloads does not say whether it has annotator weights
or TAESD, so those two are only reported missing from its offers' ``have``.

:class:`DownloadTracker` sends ``download_model`` through the host's link, turns
``download_progress`` / ``download_finished`` / ``download_failed`` (and a connection that drops
meanwhile) into a :class:`DownloadView` the host shows, and asks for the model list again when a
download finished, so the feature works without a restart. Main thread only; no I/O here.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from protocol import DownloadFailed, DownloadFinished, DownloadInfo, DownloadProgress, ErrorCode, ModelInfo, ModelList
from protocol.transport import Disconnected

from .events import DownloadNotSent
from .wording import sentence

BASE = "base"
PREPROCESSORS = "preprocessors"
PREVIEWS = "previews"

#: How painters call the families (``ModelInfo.family``).
FAMILY_NAMES = {"sd15": "SD 1.5", "sd2": "SD 2.1", "sdxl": "SDXL", "sd3": "SD 3.5", "flux": "Flux", "demo": "demo"}
#: The reference server's download presets by (feature, family), for the command to run when a
#: server offers no downloads (``easel download NAME``; a test holds this to ``backend.download.PRESETS``).
PRESETS = {
    (BASE, "sd15"): "sd15", (BASE, "sd2"): "sd2", (BASE, "sdxl"): "sdxl",
    ("controlnet-canny", "sd15"): "sd15-canny", ("controlnet-depth", "sd15"): "sd15-depth",
    ("controlnet-lineart", "sd15"): "sd15-lineart",
    ("controlnet-canny", "sdxl"): "sdxl-canny", ("controlnet-depth", "sdxl"): "sdxl-depth",
    (PREPROCESSORS, ""): "annotators", (PREVIEWS, "sd15"): "taesd", (PREVIEWS, "sdxl"): "taesdxl",
}
#: Preprocessors that are plain image operations (no weights; ``backend.preprocessors``).
WEIGHTLESS_PREPROCESSORS = frozenset({"canny", "lineart_standard", "shuffle"})
#: Families whose previews TAESD for SD 1.x serves.
_TAESD_FAMILY = {"sd15": "sd15", "sd2": "sd15", "sdxl": "sdxl"}


def family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, family or "this")


def size_text(size: int) -> str:
    """``size`` bytes for people: ``"723 MB"``, ``"4.3 GB"``."""
    if size >= 10 ** 9:
        return f"{size / 10 ** 9:.1f} GB"
    if size >= 10 ** 6:
        return f"{size / 10 ** 6:.0f} MB"
    return f"{max(size, 0) / 10 ** 3:.0f} kB"


@dataclass(frozen=True)
class Need:
    """What a feature needs. ``feature`` is a ``DownloadInfo.feature`` (``base``,
    ``controlnet-<type>``, ``preprocessors``, ``previews``); ``family`` the model family it is for
    ("" for the annotators); ``detail`` a control type or a preprocessor's name; ``purpose`` what
    the painter is doing, as the host says it (``"the Depth control layer"``)."""

    feature: str
    family: str = ""
    detail: str = ""
    purpose: str = ""


def base_model() -> Need:
    return Need(BASE, purpose="painting pictures")


def controlnet(control_type: str, family: str, purpose: str = "") -> Need:
    return Need(f"controlnet-{control_type}", family, control_type, purpose or f"a {control_type} control layer")


def preprocessor(name: str, purpose: str = "") -> Need:
    return Need(PREPROCESSORS, "", name, purpose or f"the {name} preprocessor")


def previews(family: str) -> Need:
    return Need(PREVIEWS, _TAESD_FAMILY.get(family, family), purpose="sharp step previews")


@dataclass(frozen=True)
class Missing:
    """What ``need`` lacks on the server. ``message`` names it in a sentence; ``offer`` is the
    server's download that brings it (``None`` when the server offers none), ``command`` what to
    run on the server's machine instead ("" when no preset brings it)."""

    need: Need
    message: str
    offer: DownloadInfo | None = None
    command: str = ""

    @property
    def button_text(self) -> str:
        """``"Download (723 MB)"``; "" when there is nothing to download here."""
        return f"Download ({size_text(self.offer.size)})" if self.offer is not None else ""

    @property
    def fix(self) -> str:
        """The next step, as a sentence."""
        if self.offer is not None:
            return f"Get {self.offer.description}:"
        if self.command:
            return (f"Run `{self.command}` on the server's machine, or start it with --allow-downloads to "
                    f"download from here.")
        if self.need.feature == BASE:
            return "Put a checkpoint into the server's models folder (easel serve --models-dir DIR)."
        if self.need.feature.startswith("controlnet-"):
            return (f"Put a {self.need.detail} ControlNet for {family_name(self.need.family)} into the server's "
                    f"ControlNet folder, or pick a model of another family.")
        return "The server's `easel models --missing` says what to add."

    @property
    def text(self) -> str:
        """``message`` and ``fix`` together."""
        return f"{self.message} {self.fix}"


def real_models(models: Iterable[ModelInfo]) -> tuple[ModelInfo, ...]:
    """The models that paint (not ControlNets, not the demo model's noise)."""
    return tuple(m for m in models if m.kind != "controlnet" and not m.demo)


def check(listing: ModelList, need: Need) -> Missing | None:
    """``None`` when the server has what ``need`` asks for (or cannot say), else what is missing."""
    offers = [d for d in listing.downloads if d.feature == need.feature and not d.have
              and (need.feature in (BASE, PREPROCESSORS) or d.family == need.family)]
    offer = offers[0] if offers else None
    command = "" if offer is not None else _command(need)
    if need.feature == BASE:
        if real_models(listing.models):
            return None
        if any(m.demo for m in listing.models):
            message = "The server has only the demo model, which paints noise."
        else:
            message = "The server has no model to paint with."
        return Missing(need, message, offer, command)
    if need.feature.startswith("controlnet-"):
        nets = [m for m in listing.models if m.kind == "controlnet"]
        if any(m.control_type == need.detail and m.family == need.family for m in nets):
            return None
        message = (f"{_capital(need.purpose)} needs a {need.detail} ControlNet for "
                   f"{family_name(need.family)} models; the server has none.")
        return Missing(need, message, offer, command)
    if need.feature == PREPROCESSORS:
        if need.detail in WEIGHTLESS_PREPROCESSORS or offer is None:
            return None  # no offer: the server did not say whether it has them
        return Missing(need, f"{_capital(need.purpose)} needs the annotator weights, which are not on the server.",
                       offer)
    if need.feature == PREVIEWS:
        if offer is None:
            return None
        return Missing(need, f"Sharp step previews for {family_name(need.family)} need TAESD, which is not on the "
                             f"server (previews are blurry without it).", offer)
    return None


def first_missing(listing: ModelList, needs: Sequence[Need]) -> Missing | None:
    """The first of ``needs`` that is missing (hosts list them most important first)."""
    for need in needs:
        missing = check(listing, need)
        if missing is not None:
            return missing
    return None


def _command(need: Need) -> str:
    name = PRESETS.get((need.feature, need.family if need.feature != PREPROCESSORS else ""))
    if name is None and need.feature == BASE:
        name = PRESETS[(BASE, "sd15")]
    return f"easel download {name}" if name else ""


# --------------------------------------------------------------------------- the download a client follows


RUNNING, FINISHED, FAILED = "running", "finished", "failed"


@dataclass(frozen=True)
class DownloadView:
    """What a host shows of its download: ``state`` (``running``, ``finished``, ``failed``),
    ``fraction`` done (0..1), and one sentence."""

    download_id: str
    name: str
    state: str
    fraction: float
    text: str

    @property
    def running(self) -> bool:
        return self.state == RUNNING


class DownloadTracker:
    """The download this client asked for, from ``download_model`` to its one end.

    ``send(download_id, name)`` hands the request to the host's link (whose events come back
    through :meth:`handle`); ``refresh()`` asks for the model list again (called when a download
    finished). ``on_change`` hears every new :class:`DownloadView`. One download at a time, as the
    server runs them: :meth:`start` refuses a second while one runs.
    """

    def __init__(self, send: Callable[[str, str], None], refresh: Callable[[], None],
                 on_change: Callable[[DownloadView | None], None] = lambda view: None, prefix: str = "") -> None:
        self._send = send
        self._refresh = refresh
        self.on_change = on_change
        self._prefix = prefix or f"dl-{os.urandom(3).hex()}"
        self._ids = itertools.count(1)
        self.listing = ModelList(())
        self.view: DownloadView | None = None
        self._offer: DownloadInfo | None = None

    @property
    def running(self) -> bool:
        return self.view is not None and self.view.running

    def start(self, offer: DownloadInfo) -> str:
        """Ask for ``offer``; returns its download id. Raises ``RuntimeError`` (a sentence) while
        another download runs."""
        if self.running:
            raise RuntimeError(f"{self._offer.description if self._offer else 'a download'} is still downloading; "
                               "wait for it to finish")
        download_id = f"{self._prefix}-{next(self._ids)}"
        self._offer = offer
        self._show(DownloadView(download_id, offer.name, RUNNING, 0.0,
                                f"Asking the server to download {offer.description}…"))
        self._send(download_id, offer.name)
        return download_id

    def dismiss(self) -> None:
        """Forget an ended download's view (the host's close button)."""
        if self.view is not None and not self.view.running:
            self._show(None)

    def handle(self, event: Any) -> bool:
        """Follow one event from the link. Returns True when it was this tracker's own (a download
        event of its download); a ``model_list`` is read (its offers) and left to others."""
        if isinstance(event, ModelList):
            self.listing = event
            return False
        if isinstance(event, Disconnected) and self.running:
            # The server goes on with the download but drops its events (docs/protocol.md 5.6).
            self._end(FAILED, f"The connection closed during the download of {self._description}; the server goes "
                              f"on with it. Connect again: its model list shows it once it is done.")
            return False
        download_id = getattr(event, "download_id", None)
        if download_id is None or self.view is None or download_id != self.view.download_id:
            return False
        if isinstance(event, DownloadProgress):
            if self.running:
                self._show(self._progress(event))
        elif isinstance(event, DownloadFinished):
            pick = " Pick it in the model list." if self._offer is not None and self._offer.feature == BASE else ""
            self._end(FINISHED, f"{_capital(self._description)} is on the server now.{pick}", 1.0)
            self._refresh()
        elif isinstance(event, DownloadFailed):
            self._end(FAILED, download_failed(self._description, event.code, event.message, event.log_id))
        elif isinstance(event, DownloadNotSent):
            self._end(FAILED, f"The download of {self._description} was not sent: {sentence(event.message)}")
        else:
            return False
        return True

    @property
    def _description(self) -> str:
        return self._offer.description if self._offer is not None else "the model"

    def _progress(self, event: DownloadProgress) -> DownloadView:
        files = max(event.files, 1)
        part = event.done / event.total if event.total > 0 else 0.0
        fraction = min(1.0, (min(event.file_index, files - 1) + min(part, 1.0)) / files)
        text = f"Downloading {self._description}: {size_text(event.done)} of {size_text(event.total)}"
        if files > 1:
            text += f" (file {event.file_index + 1} of {files})"
        assert self.view is not None
        return DownloadView(self.view.download_id, self.view.name, RUNNING, fraction, text + ".")

    def _end(self, state: str, text: str, fraction: float | None = None) -> None:
        assert self.view is not None
        view = self.view
        self._show(DownloadView(view.download_id, view.name, state, view.fraction if fraction is None else fraction, text))

    def _show(self, view: DownloadView | None) -> None:
        self.view = view
        self.on_change(view)


# --------------------------------------------------------------------------- what a host shows


@dataclass(frozen=True)
class BannerState:
    """What the banner shows: ``text`` ("" hides it), the button's text ("" hides the button),
    the progress (``None``: no bar) and whether ``text`` is an error."""

    text: str = ""
    button: str = ""
    progress: float | None = None
    error: bool = False


def banner_state(missing: Missing | None, download: DownloadView | None) -> BannerState:
    """The banner for what is missing and the download followed: a running download shows its
    progress; a failed one its sentence (and offers to try again); the missing model next; a
    finished download's sentence when nothing else is missing."""
    if download is not None and download.running:
        return BannerState(download.text, "", download.fraction)
    if download is not None and download.state != FINISHED:
        retry = missing.button_text.replace("Download", "Try again", 1) if missing is not None else ""
        return BannerState(download.text, retry, None, True)
    if missing is not None:
        return BannerState(missing.text, missing.button_text)
    if download is not None:
        return BannerState(download.text)
    return BannerState()


def download_failed(description: str, code: ErrorCode | str, message: str, log_id: str = "") -> str:
    """``"The download of SDXL failed: <the server's sentence, which says what to do> (Server log id …)"``.
    ``code`` is kept for hosts that word some codes their own way."""
    text = f"The download of {description} failed: {sentence(message) or 'the server gave no reason.'}"
    if log_id:
        text += f" (Server log id {log_id}.)"
    return text


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
