"""The docker's history: every result with the full request that made it.

From an entry the painter can apply an image again (a new layer, as the first time), reuse its seed,
or copy all its settings back into the form. The history is bounded twice: by the number of
entries, and by the bytes of result images it keeps (older entries lose their images first, and
keep their request, so their settings and seeds stay usable).
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Iterator

from .protocol import ImagePayload
from .request import GenerationRequest, GenerationSettings


@dataclass(frozen=True)
class HistoryEntry:
    """One finished job.

    ``request`` carries the seed the server used (``request.seed``); ``seeds`` holds every image's
    seed. ``images`` are the results as received (RGBA8 at the generated size) and ``mask`` the
    selection mask over the placement's crop (grey8, ``None`` without a selection): together they
    rebuild the layer exactly. ``images`` is empty once evicted to stay inside the byte budget.
    """

    id: int
    request: GenerationRequest
    seeds: tuple[int, ...]
    images: tuple[ImagePayload, ...]
    mask: bytes | None
    timings: dict[str, float]

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
        return self.request.layer_name(self.seeds[0] if self.seeds else 0)


class History:
    """Bounded, newest last. Not thread-safe: use it on the main thread."""

    def __init__(self, max_entries: int = 100, max_image_bytes: int = 1024 ** 3) -> None:
        if max_entries < 1 or max_image_bytes < 0:
            raise ValueError("the history needs room for at least one entry")
        self.max_entries = max_entries
        self.max_image_bytes = max_image_bytes
        self._entries: OrderedDict[int, HistoryEntry] = OrderedDict()
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[HistoryEntry]:
        return iter(self._entries.values())

    @property
    def image_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def add(self, request: GenerationRequest, seeds: tuple[int, ...], images: tuple[ImagePayload, ...],
            mask: bytes | None = None, timings: dict[str, float] | None = None) -> HistoryEntry:
        """Record a finished job; returns its entry. ``request`` gets the first seed fixed."""
        if not seeds:
            raise ValueError("a result needs at least one seed")
        entry = HistoryEntry(next(self._ids), request.with_seed(seeds[0]), tuple(seeds), tuple(images), mask,
                             dict(timings or {}))
        self._entries[entry.id] = entry
        self._trim()
        return self._entries.get(entry.id, entry)

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
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        total = self.image_bytes
        for entry_id, entry in list(self._entries.items()):
            if total <= self.max_image_bytes:
                break
            if entry.has_images or entry.mask:
                total -= entry.nbytes
                self._entries[entry_id] = replace(entry, images=(), mask=None)
