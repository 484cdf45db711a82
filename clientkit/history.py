"""The bounded history of ended jobs: one shape for every host.

Each entry holds what the host needs to act on it again (``request``: the host's own serialisable
request, opaque here), the result images as received, the seeds, the selection mask, timings, and
a :class:`Status` with a short ``detail``. Hosts keep only their own persistence (Krita stores the
history in the document; Blender keeps it in memory for the session).

The history is bounded twice: by the number of entries, and by the bytes of result images it
keeps. Older entries lose their images first and keep their request, so their settings and seeds
stay usable. A result that arrived and was not placed (``not applied``) — or not yet
(``received``) — is the user's only copy: it goes last. Not thread-safe: use it on one thread.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, Iterator, TypeVar

from protocol import ImagePayload

R = TypeVar("R")


class Status(str, Enum):
    """How a job ended, as the history shows it."""

    RECEIVED = "received"        # the result is here; the host has not placed it yet
    APPLIED = "applied"          # placed (on the canvas, on the objects)
    NOT_APPLIED = "not applied"  # the result is here but could not be placed; ``detail`` says why
    KEPT = "not applied"         # the same (Blender's word for it)
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"                # the result will never come; ``detail`` says why


#: The statuses an entry may have, as stored.
STATUSES = tuple(dict.fromkeys(s.value for s in Status))

#: Appended to an unplaced entry's detail when its images had to go.
DROPPED = "its image was dropped from memory (too many results held)"


@dataclass
class HistoryEntry(Generic[R]):
    """One ended job. ``images`` is empty once evicted to stay inside the byte budget (or when the
    job brought no result); ``mask`` is the selection over the result's place (grey8), if any.
    Only its history changes it (:meth:`History.set_status`, eviction), in place: a host holding
    an entry sees its newest status."""

    id: int
    request: R
    seeds: tuple[int, ...] = ()
    images: tuple[ImagePayload, ...] = ()
    mask: bytes | None = None
    timings: dict[str, float] = field(default_factory=dict)
    status: Status = Status.APPLIED
    detail: str = ""

    @property
    def has_images(self) -> bool:
        return bool(self.images)

    @property
    def seed(self) -> int:
        return self.seeds[0] if self.seeds else 0

    @property
    def nbytes(self) -> int:
        return sum(len(image.data) for image in self.images) + len(self.mask or b"")

    @property
    def can_apply(self) -> bool:
        """A result that arrived and was not placed, still held here."""
        return self.status is Status.NOT_APPLIED and self.has_images

    @property
    def waiting(self) -> bool:
        """The user's only copy of a result: received and not placed yet, or not placed."""
        return self.status is Status.RECEIVED or self.can_apply

    def seed_of(self, index: int = 0) -> int:
        if not 0 <= index < len(self.seeds):
            raise IndexError(f"this result has {len(self.seeds)} image(s); there is no image {index + 1}")
        return self.seeds[index]

    def status_text(self) -> str:
        """``""`` for an applied result, else e.g. ``"not applied: the image was closed"``."""
        if self.status is Status.APPLIED:
            return ""
        return f"{self.status.value}: {self.detail}" if self.detail else self.status.value


def status_of(value: str | Status) -> Status:
    """A stored status; ``ValueError`` for an unknown one."""
    try:
        return Status(value)
    except ValueError:
        raise ValueError(f"unknown history status {value!r}") from None


class History(Generic[R]):
    """Bounded, newest last."""

    def __init__(self, max_entries: int = 100, max_image_bytes: int = 1024 ** 3, *,
                 ids: Iterator[int] | None = None) -> None:
        """``ids`` hands out entry ids; histories that share one (one per document) never reuse an id."""
        if max_entries < 1 or max_image_bytes < 0:
            raise ValueError("the history needs room for at least one entry")
        self.max_entries = max_entries
        self.max_image_bytes = max_image_bytes
        self._entries: OrderedDict[int, HistoryEntry[R]] = OrderedDict()
        self._ids = ids if ids is not None else itertools.count(1)

    def sibling(self) -> "History[R]":
        """An empty history with the same bounds, drawing ids from the same counter."""
        return type(self)(self.max_entries, self.max_image_bytes, ids=self._ids)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[HistoryEntry[R]]:
        return iter(self._entries.values())

    def __reversed__(self) -> Iterator[HistoryEntry[R]]:
        return reversed(self._entries.values())

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._entries

    @property
    def image_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def add(self, request: R, seeds: tuple[int, ...] = (), images: tuple[ImagePayload, ...] = (),
            mask: bytes | None = None, timings: dict[str, float] | None = None, *,
            status: Status | str = Status.APPLIED, detail: str = "") -> HistoryEntry[R]:
        """Record an ended job; returns its entry. A job with images needs a seed per image."""
        if images and not seeds:
            raise ValueError("a result needs at least one seed")
        entry = HistoryEntry(next(self._ids), request, tuple(seeds), tuple(images), mask, dict(timings or {}),
                             status_of(status), detail)
        return self.put(entry)

    def put(self, entry: HistoryEntry[R]) -> HistoryEntry[R]:
        """Keep an existing entry (moved from another history, or read back) as the newest, with its id."""
        self._entries.pop(entry.id, None)
        self._entries[entry.id] = entry
        self._trim()
        return self._entries.get(entry.id, entry)

    def new_id(self) -> int:
        return next(self._ids)

    def set_status(self, entry_id: int, status: Status | str, detail: str = "") -> HistoryEntry[R]:
        """Change an entry's status (e.g. applied at last); raises ``KeyError`` when it is gone."""
        entry = self.get(entry_id)
        entry.status, entry.detail = status_of(status), detail
        self._trim()
        return entry

    def get(self, entry_id: int) -> HistoryEntry[R]:
        """Raises ``KeyError`` with a sentence when the entry is gone."""
        try:
            return self._entries[entry_id]
        except KeyError:
            raise KeyError(f"history entry {entry_id} is no longer kept") from None

    def discard(self, entry_id: int) -> HistoryEntry[R]:
        """Drop an entry (the painter's Discard); raises ``KeyError`` when it is gone already."""
        entry = self.get(entry_id)
        del self._entries[entry_id]
        return entry

    def latest(self) -> HistoryEntry[R] | None:
        return next(reversed(self._entries.values()), None)

    def clear(self) -> None:
        self._entries.clear()

    def _trim(self) -> None:
        """Drop the oldest entries over the count, then the oldest images over the byte budget.
        Results still waiting to be placed go last."""
        while len(self._entries) > self.max_entries:
            victim = next((k for k, e in self._entries.items() if not e.waiting), next(iter(self._entries)))
            del self._entries[victim]
        total = self.image_bytes
        for spare_waiting in (True, False):
            for entry_id, entry in list(self._entries.items()):
                if total <= self.max_image_bytes:
                    return
                if (spare_waiting and entry.waiting) or not (entry.has_images or entry.mask):
                    continue
                total -= entry.nbytes
                detail = entry.detail
                if entry.waiting:
                    detail = f"{detail}; {DROPPED}" if detail else DROPPED
                entry.images, entry.mask, entry.detail = (), None, detail
