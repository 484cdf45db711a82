"""clientkit.history: the one bounded history shape both plugins keep their results in."""
from __future__ import annotations

import pytest

from clientkit.history import DROPPED, STATUSES, History, Status, status_of
from protocol import ImageFormat, ImagePayload


def image(value: int = 0, side: int = 8) -> ImagePayload:
    return ImagePayload.build(ImageFormat.RGBA8, side, side, bytes([value]) * side * side * 4)


def test_entries_keep_request_seeds_images_and_a_status_changed_in_place():
    history: History[str] = History()
    entry = history.add("request", (3, 4), (image(1), image(2)), b"\xff" * 64, {"total": 1.5},
                        status=Status.NOT_APPLIED, detail="the image was closed")
    assert entry.can_apply and entry.waiting and entry.seed == 3 and entry.seed_of(1) == 4
    assert entry.status_text() == "not applied: the image was closed" and entry.nbytes == 2 * 256 + 64
    with pytest.raises(IndexError, match="there is no image 3"):
        entry.seed_of(2)
    assert history.set_status(entry.id, "applied") is entry and entry.status is Status.APPLIED
    assert entry.status_text() == "" and not entry.can_apply
    with pytest.raises(KeyError, match="no longer kept"):
        history.get(entry.id + 1)
    with pytest.raises(ValueError, match="unknown history status 'kept'"):
        status_of("kept")
    assert Status.KEPT is Status.NOT_APPLIED and "not applied" in STATUSES and len(STATUSES) == 6


def test_bounded_by_count_and_bytes_giving_up_waiting_results_last():
    history: History[str] = History(max_entries=3, max_image_bytes=2 * 256)
    kept = history.add("kept", (1,), (image(),), status=Status.NOT_APPLIED, detail="closed")
    received = history.add("received", (2,), (image(),), status=Status.RECEIVED)
    applied = [history.add(f"applied{i}", (i,), (image(),)) for i in range(3)]
    # Five entries, room for three: the oldest applied ones go, the waiting ones stay.
    assert [e.request for e in history] == ["kept", "received", "applied2"]
    # Room for two results' bytes: the applied one drops its image first.
    assert [e.has_images for e in history] == [True, True, False] and applied[2].images == ()
    more = history.add("more", (9,), (image(),))  # applied: its image is in the document, it goes first
    assert more.images == () and kept.has_images and received.has_images
    assert list(reversed(history))[0] is more
    # Only waiting results left over the budget: the oldest gives up its image, and says so.
    waiting: History[str] = History(max_image_bytes=256)
    old = waiting.add("old", (1,), (image(),), status=Status.NOT_APPLIED, detail="closed")
    new = waiting.add("new", (2,), (image(),), status=Status.NOT_APPLIED)
    assert old.images == () and old.detail == f"closed; {DROPPED}" and not old.can_apply and new.can_apply


def test_siblings_share_ids_and_keep_their_class():
    class Named(History[str]):
        pass

    first = Named(max_entries=2)
    second = first.sibling()
    assert isinstance(second, Named) and second.max_entries == 2
    ids = [first.add("a").id, second.add("b").id, first.add("c").id]
    assert len(set(ids)) == 3
    moved = second.put(first.get(ids[0]))
    assert moved.id == ids[0] and second.latest() is moved
