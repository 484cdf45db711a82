"""The docker's history: every result with the full request that made it.

The history itself is :class:`clientkit.history.History` (bounded by entries and by image bytes;
results that were never placed go last); here is what only Krita adds: the request is a
:class:`~.request.GenerationRequest` whose seed is fixed to the result's, and the words the docker
shows. From an entry the painter can apply an image again (a new layer, as the first time), reuse
its seed, or copy all its settings back into the form. The document keeps its history in an
annotation (:mod:`.history_store`).

Statuses: ``APPLIED`` (on the canvas), ``NOT_APPLIED`` (the result is here, pixels kept, but could
not be placed; ``detail`` says why; *Apply* puts it on the current image), ``LOST`` (the job ended
without a result that can be recovered; ``detail`` says why).
"""
from __future__ import annotations

from dataclasses import replace

from .clientkit import history as _kit
from .clientkit.history import STATUSES, HistoryEntry, Status
from .protocol import ImagePayload
from .request import GenerationRequest, GenerationSettings

APPLIED, NOT_APPLIED, LOST = Status.APPLIED, Status.NOT_APPLIED, Status.LOST

__all__ = ["APPLIED", "NOT_APPLIED", "LOST", "STATUSES", "History", "HistoryEntry", "settings_for", "title"]

Entry = HistoryEntry[GenerationRequest]


class History(_kit.History[GenerationRequest]):
    """One document's results (or the loose ones), newest last. Use it on the main thread."""

    def add(self, request: GenerationRequest, seeds: tuple[int, ...] = (), images: tuple[ImagePayload, ...] = (),
            mask: bytes | None = None, timings: dict[str, float] | None = None, *,
            status: Status | str = APPLIED, detail: str = "") -> Entry:
        """Record a finished job; ``request`` gets the first seed fixed. A ``LOST`` job may have no seed."""
        fixed = request.with_seed(seeds[0]) if seeds else request
        return super().add(fixed, seeds, images, mask, timings, status=status, detail=detail)

    def restore(self, request: GenerationRequest, seeds: tuple[int, ...], images: tuple[ImagePayload, ...],
                mask: bytes | None, timings: dict[str, float], status: Status | str, detail: str) -> Entry:
        """Keep an entry read back from a document, as it was stored (a new id; the request as is)."""
        return self.put(HistoryEntry(self.new_id(), request, tuple(seeds), tuple(images), mask, dict(timings),
                                     _kit.status_of(status), detail))


def settings_for(entry: Entry, index: int = 0) -> GenerationSettings:
    """The form's settings that reproduce image ``index`` of ``entry``: its seed fixed, batch of one."""
    return replace(entry.request.settings, seed=entry.seed_of(index), batch_size=1)


def title(entry: Entry) -> str:
    """The entry's name in the docker: the layer name its first image got, or the prompt."""
    request = entry.request
    if not entry.seeds:
        if request.effective_seed is not None:
            return request.layer_name(request.effective_seed)
        return " ".join(request.settings.prompt.split())[:48] or request.action.label
    return request.layer_name(entry.seeds[0])
