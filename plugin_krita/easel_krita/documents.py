"""Each open document's history, and how much of it the document holds.

One :class:`~.history.History` per open document (found by ``==``, as Krita's document wrappers
compare), restored from the document's annotation when first seen and written back into it (the
images encoded on a worker thread) after every change; a save writes it first (:meth:`Documents.flush`,
called by the save guard). Results whose image was closed — and anything while no image is open —
wait in the loose history; the next image shown takes them in, so "Apply to current image" finds
them there. No ``krita`` and no Qt here: the document is reached through the :class:`~.host.CanvasHost`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .history import History
from .history_store import ANNOTATION_DESCRIPTION as HISTORY_DESCRIPTION, ANNOTATION_TYPE as HISTORY_TYPE
from .history_store import BlobCache, decode_history, encode_history
from .host import CanvasHost, Doc

log = logging.getLogger("easel.krita")

#: Runs a coroutine on the plugin's loop (the link's ``spawn``).
Spawn = Callable[[Awaitable[Any], str], Any]


@dataclass(eq=False)
class DocumentHistory:
    """One open document's history and how much of it the document holds. ``version`` counts the
    changes, ``written`` is the version last stored in the document's annotation."""

    doc: Doc
    history: History
    cache: BlobCache = field(default_factory=BlobCache)
    version: int = 0
    written: int = 0
    writing: bool = False


class Documents:
    """The histories of the open documents and the loose one. Main thread only."""

    def __init__(self, host: CanvasHost, loose: History, spawn: Spawn,
                 measure: Callable[[str, float], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.loose = loose
        self.open: list[DocumentHistory] = []
        self._spawn = spawn
        self._measure = measure
        self.clock = clock

    def holding(self, entry_id: int) -> DocumentHistory | None:
        """The open document whose history holds entry ``entry_id`` (a loose entry an image took in)."""
        return next((d for d in self.open if entry_id in d.history), None)

    def known(self, doc: Doc) -> DocumentHistory:
        """``doc``'s history, restored from its annotation the first time it is seen. Loose results
        (their image was closed) move into it."""
        self.open = [d for d in self.open if d.doc is doc or self.still_open(d.doc)]
        for known in self.open:
            if known.doc is doc or known.doc == doc:
                break
        else:
            known = DocumentHistory(doc, self.loose.sibling())
            try:
                stored = decode_history(self.host.read_annotation(doc, HISTORY_TYPE))
            except Exception:
                log.exception("easel: reading the history stored in the image failed")
                stored = []
            for item in stored:
                known.history.restore(item.request, item.seeds, item.images, item.mask, item.timings,
                                      item.status, item.detail)
            self.open.append(known)
        if len(self.loose):  # results whose image was closed: the image shown now takes them in
            for entry in list(self.loose):
                known.history.put(entry)
            self.loose.clear()
        return known

    def still_open(self, doc: Doc) -> bool:
        try:
            return bool(self.host.is_open(doc))
        except Exception:
            return False

    def of(self, doc: Doc) -> tuple[History, DocumentHistory | None]:
        """Where a job's entry goes: its image's history, or the loose one once the image is closed."""
        if not self.still_open(doc):
            return self.loose, None
        known = self.known(doc)
        return known.history, known

    def store(self, known: DocumentHistory | None) -> None:
        """The document's history changed: write it into the document soon (the images are
        encoded on a worker thread); a save in the meantime writes it first (:meth:`flush`)."""
        if known is None:
            return
        known.version += 1
        if not known.writing:
            known.writing = True
            self._spawn(self._write(known), "store the history in the image")

    async def _write(self, known: DocumentHistory) -> None:
        try:
            while known.written < known.version:
                version = known.version
                data = await asyncio.to_thread(encode_history, list(known.history), known.cache)
                if known.version == version and known.written < version:
                    self._put(known, data, version)
        except Exception:
            log.exception("easel: storing the history in the image failed")
        finally:
            known.writing = False

    def _put(self, known: DocumentHistory, data: bytes, version: int) -> None:
        if self.still_open(known.doc):
            started = self.clock()
            self.host.write_annotation(known.doc, HISTORY_TYPE, HISTORY_DESCRIPTION, data)
            self._measure("store history", started)
        known.written = version

    def flush(self, doc: Doc = None) -> None:
        """Write every history change not yet in its document (only ``doc``'s, when given) right
        now: the save guard calls this before Krita saves, so the file holds the newest history.
        A document whose history has not changed is not touched. Never raises."""
        for known in list(self.open):
            try:
                if known.written < known.version and (doc is None or known.doc is doc or known.doc == doc):
                    self._put(known, encode_history(list(known.history), known.cache), known.version)
            except Exception:
                log.exception("easel: storing the history in the image before saving failed")
