"""The docker's history: every result with the full request that made it.

From an entry the painter can apply an image again (a new layer, as the first time), reuse its seed,
or copy all its settings back into the form. The history is bounded twice: by the number of
entries, and by the bytes of result images it keeps (older entries lose their images first, and
keep their request, so their settings and seeds stay usable).

Every entry has a status. A result that arrived is kept with its pixels even when it could not
be placed (the image was closed): its status says so and *Apply* puts it on the current image.
A job whose result will never come (the server restarted while it ran) is kept as ``lost``, so
the painter sees what happened to it and can copy its settings to run it again.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Iterator

#: Entry statuses. ``APPLIED``: on the canvas. ``NOT_APPLIED``: the result is here (pixels kept)
#: but could not be placed; ``detail`` says why. ``LOST``: the job ended without a result that
#: can be recovered; ``detail`` says why.
APPLIED = "applied"
NOT_APPLIED = "not applied"
LOST = "lost"
STATUSES = (APPLIED, NOT_APPLIED, LOST)

from .protocol import ImagePayload
from .request import GenerationRequest, GenerationSettings


@dataclass(frozen=True)
class HistoryEntry:
    """One finished job.

    ``request`` carries the seed the server used (``request.seed``); ``seeds`` holds every image's
    seed. ``images`` are the results as received (RGBA8 at the generated size) and ``mask`` the
    selection mask over the placement's crop (grey8, ``None`` without a selection): together they
    rebuild the layer exactly. ``images`` is empty once evicted to stay inside the byte budget.
    ``status`` is one of :data:`STATUSES`; ``detail`` a short reason for the other two.
    """

    id: int
    request: GenerationRequest
    seeds: tuple[int, ...]
    images: tuple[ImagePayload, ...]
    mask: bytes | None
    timings: dict[str, float]
    status: str = APPLIED
    detail: str = ""

    @property
    def has_images(self) -> bool:
        return bool(self.images)

    @property
    def nbytes(self) -> int:
        return sum(len(image.data) for image in self.images) + len(self.mask or b"")

    def settings_for(self, index: int = 0) -> GenerationSettings:
        """The form's settings that reproduce image ``index``: its seed fixed, batch of one."""
        return replace(self.request.settings, seed=self.seed_of(index), batch_size=1)

    def seed_of(self, index: int = 0) -> int:
        if not 0 <= index < len(self.seeds):
            raise IndexError(f"this result has {len(self.seeds)} image(s); there is no image {index + 1}")
        return self.seeds[index]

    def title(self) -> str:
        if not self.seeds:
            return self.request.layer_name(self.request.effective_seed or 0) if self.request.effective_seed is not None \
                else (" ".join(self.request.settings.prompt.split())[:48] or self.request.action.label)
        return self.request.layer_name(self.seeds[0])

    def status_text(self) -> str:
        """``""`` for an applied result, else e.g. ``"not applied: the image was closed"``."""
        if self.status == APPLIED:
            return ""
        return f"{self.status}: {self.detail}" if self.detail else self.status


class History:
    """Bounded, newest last. Not thread-safe: use it on the main thread."""

    def __init__(self, max_entries: int = 100, max_image_bytes: int = 1024 ** 3, *,
                 ids: Iterator[int] | None = None) -> None:
        """``ids`` hands out entry ids; histories that share one (one per document) never reuse an id."""
        if max_entries < 1 or max_image_bytes < 0:
            raise ValueError("the history needs room for at least one entry")
        self.max_entries = max_entries
        self.max_image_bytes = max_image_bytes
        self._entries: OrderedDict[int, HistoryEntry] = OrderedDict()
        self._ids = ids if ids is not None else itertools.count(1)

    def sibling(self) -> "History":
        """An empty history with the same bounds, drawing ids from the same counter."""
        return History(self.max_entries, self.max_image_bytes, ids=self._ids)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[HistoryEntry]:
        return iter(self._entries.values())

    @property
    def image_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def add(self, request: GenerationRequest, seeds: tuple[int, ...], images: tuple[ImagePayload, ...],
            mask: bytes | None = None, timings: dict[str, float] | None = None, *,
            status: str = APPLIED, detail: str = "") -> HistoryEntry:
        """Record a finished job; returns its entry. ``request`` gets the first seed fixed. A job
        with images needs a seed per image; a ``LOST`` one may have none."""
        if status not in STATUSES:
            raise ValueError(f"unknown history status {status!r}")
        if images and not seeds:
            raise ValueError("a result needs at least one seed")
        fixed = request.with_seed(seeds[0]) if seeds else request
        entry = HistoryEntry(next(self._ids), fixed, tuple(seeds), tuple(images), mask, dict(timings or {}),
                             status, detail)
        self._entries[entry.id] = entry
        self._trim()
        return self._entries.get(entry.id, entry)

    def put(self, entry: HistoryEntry) -> HistoryEntry:
        """Keep an existing entry (moved from another history) as the newest, with its id."""
        self._entries.pop(entry.id, None)
        self._entries[entry.id] = entry
        self._trim()
        return self._entries.get(entry.id, entry)

    def restore(self, request: GenerationRequest, seeds: tuple[int, ...], images: tuple[ImagePayload, ...],
                mask: bytes | None, timings: dict[str, float], status: str, detail: str) -> HistoryEntry:
        """Keep an entry read back from a document, as it was stored (a new id; the request as is)."""
        return self.put(HistoryEntry(next(self._ids), request, tuple(seeds), tuple(images), mask, dict(timings),
                                     status, detail))

    def set_status(self, entry_id: int, status: str, detail: str = "") -> HistoryEntry:
        """Change an entry's status (e.g. applied at last); raises ``KeyError`` when it is gone."""
        if status not in STATUSES:
            raise ValueError(f"unknown history status {status!r}")
        entry = replace(self.get(entry_id), status=status, detail=detail)
        self._entries[entry_id] = entry
        return entry

    def get(self, entry_id: int) -> HistoryEntry:
        """Raises ``KeyError`` with a sentence when the entry is gone."""
        try:
            return self._entries[entry_id]
        except KeyError:
            raise KeyError(f"history entry {entry_id} is no longer kept") from None

    def latest(self) -> HistoryEntry | None:
        return next(reversed(self._entries.values()), None)

    def clear(self) -> None:
        self._entries.clear()

    def _trim(self) -> None:
        """Drop the oldest entries over the count, then the oldest images over the byte budget. A
        result that was never placed (``NOT_APPLIED``) is the painter's only copy: it goes last."""
        while len(self._entries) > self.max_entries:
            victim = next((k for k, e in self._entries.items() if e.status != NOT_APPLIED or not e.has_images),
                          next(iter(self._entries)))
            del self._entries[victim]
        total = self.image_bytes
        for spare_unplaced in (True, False):
            for entry_id, entry in list(self._entries.items()):
                if total <= self.max_image_bytes:
                    return
                if (spare_unplaced and entry.status == NOT_APPLIED) or not (entry.has_images or entry.mask):
                    continue
                total -= entry.nbytes
                self._entries[entry_id] = replace(entry, images=(), mask=None)
