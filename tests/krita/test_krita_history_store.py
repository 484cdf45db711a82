"""The history kept in the document (``history_store.py``, host-free): the annotation's format,
its bounds and what it does with bytes it cannot read; then the controller keeping one history per
document, writing it into the document's annotation and restoring it — on the STUB HOST
(``krita_fake_host.FakeCanvas``, whose annotations are a dict and which counts their writes)
against a real ``easel serve``. Real Krita (save, close, reopen a ``.kra``; the modified flag):
``test_krita_history_e2e.py``."""
from __future__ import annotations

import io
import json
import logging
import random
import struct
from dataclasses import replace

import pytest
from PIL import Image

from easel_krita import history_store
from easel_krita.controller import Controller
from easel_krita.geometry import Rect
from easel_krita.history import APPLIED, LOST, NOT_APPLIED, History
from easel_krita.history_store import (
    ANNOTATION_TYPE, MAGIC, BlobCache, decode_history, decode_png, encode_history, encode_png,
)
from easel_krita.request import Action, GenerationSettings, plan
from krita_jobs_kit import connect, finish, painted_doc, pump
from protocol import ImageFormat, ImagePayload

SELECTION = Rect(2, 3, 6, 5)
REQUEST = plan(Action.GENERATE, GenerationSettings(prompt="a lighthouse", steps=4), Rect(0, 0, 16, 16), SELECTION)


def _image(seed: int, width: int = 8, height: int = 8) -> ImagePayload:
    data = random.Random(seed).randbytes(width * height * 4)  # noise: compresses like a photo, barely
    return ImagePayload.build(ImageFormat.RGBA8, width, height, data)


def _mask() -> bytes:
    crop = REQUEST.placement.crop
    return bytes((i * 37) % 256 for i in range(crop.width * crop.height))


def _history() -> History:
    history = History()
    history.add(REQUEST, (11,), (_image(11),), _mask(), {"total": 1.5})
    history.add(REQUEST, (), (), status=LOST, detail="the server restarted while it ran")
    history.add(replace(REQUEST, settings=replace(REQUEST.settings, batch_size=2)), (12, 13),
                (_image(12), _image(13)), None, status=NOT_APPLIED, detail="the image was closed")
    return history


def _key(entry) -> tuple:
    return (entry.request, entry.seeds, entry.images, entry.mask, entry.timings, entry.status, entry.detail)


def test_round_trip_keeps_requests_seeds_statuses_pixels_and_masks():
    history = _history()
    data = encode_history(list(history))
    assert data.startswith(MAGIC)
    restored = decode_history(data)
    assert [_key(e) for e in restored] == [_key(e) for e in history]
    # the same history gives the same bytes (a save of an unchanged history changes nothing)
    assert encode_history(list(history)) == data
    # into a History again: new ids, the entries as they were
    again = History()
    for item in restored:
        again.restore(item.request, item.seeds, item.images, item.mask, item.timings, item.status, item.detail)
    assert [_key(e) for e in again] == [_key(e) for e in history]
    assert again.latest().status_text() == "not applied: the image was closed"


def test_images_are_stored_as_png_any_viewer_reads():
    image = _image(5, 9, 7)
    blob = encode_png(image.data, 9, 7, 4)
    with Image.open(io.BytesIO(blob)) as png:
        assert png.mode == "RGBA" and png.size == (9, 7) and png.tobytes() == image.data
    assert decode_png(blob, 4) == (9, 7, image.data)
    grey = bytes(range(12))
    with Image.open(io.BytesIO(encode_png(grey, 4, 3, 1))) as png:
        assert png.mode == "L" and png.tobytes() == grey
    # a PNG with row filters (Pillow's) is not ours: refused, not misread
    buffer = io.BytesIO()
    Image.frombytes("RGBA", (9, 7), image.data).save(buffer, "PNG")
    with pytest.raises(history_store.HistoryFormatError):
        decode_png(buffer.getvalue(), 4)


def test_live_results_are_never_stored():
    history = History()
    history.add(replace(REQUEST, live=True), (1,), (_image(1),))
    history.add(REQUEST, (2,), (_image(2),))
    assert [e.seeds for e in decode_history(encode_history(list(history)))] == [(2,)]


def test_only_the_newest_entries_are_stored():
    history = History()
    for seed in range(1, 8):
        history.add(REQUEST, (seed,), (_image(seed),))
    restored = decode_history(encode_history(list(history), max_entries=3))
    assert [e.seeds for e in restored] == [(5,), (6,), (7,)]


def test_past_the_byte_cap_the_oldest_lose_their_pixels_first():
    history = History()
    for seed in range(1, 6):
        history.add(REQUEST, (seed,), (_image(seed, 32, 32),))
    one = len(encode_png(_image(1, 32, 32).data, 32, 32, 4))
    everything = encode_history(list(history))
    cap = len(everything) - 2 * one + one // 2  # room for all but one and a half images
    data = encode_history(list(history), max_bytes=cap)
    assert len(data) <= cap
    restored = decode_history(data, max_bytes=cap)
    assert [e.seeds for e in restored] == [(1,), (2,), (3,), (4,), (5,)]  # every entry, its settings
    with_pixels = [bool(e.images) for e in restored]
    assert with_pixels[-3:] == [True, True, True] and not any(with_pixels[:2])  # newest keep pixels


def test_a_header_over_the_cap_drops_the_oldest_entries():
    history = History()
    for seed in range(1, 30):
        history.add(REQUEST, (seed,), ())
    one_entry = len(encode_history(list(history)[:1]))
    data = encode_history(list(history), max_bytes=one_entry * 4)
    assert len(data) <= one_entry * 4
    seeds = [e.seeds for e in decode_history(data, max_bytes=one_entry * 4)]
    assert seeds and seeds[-1] == (29,) and len(seeds) < 29


def test_the_cache_encodes_each_image_once(monkeypatch):
    history = _history()
    cache = BlobCache()
    encode_history(list(history), cache)
    calls = []
    real = history_store.encode_png
    monkeypatch.setattr(history_store, "encode_png", lambda *a: calls.append(a) or real(*a))
    history.add(REQUEST, (20,), (_image(20),), _mask())
    encode_history(list(history), cache)
    assert len(calls) == 2  # the new image and its mask only


@pytest.mark.parametrize("data, why", [
    (b"not a history at all", "not in Easel's history format"),
    (MAGIC + struct.pack(">I", 10) + b"{}", "cut short"),
    (MAGIC + struct.pack(">I", 5) + b"{nope", "not JSON"),
    (MAGIC + struct.pack(">I", 2) + b"[]", "not a map"),
])
def test_bytes_it_cannot_read_give_no_history_and_a_log_line(caplog, data, why):
    with caplog.at_level(logging.WARNING, logger="easel.krita"):
        assert decode_history(data) == []
    assert why in caplog.text and "was not restored" in caplog.text


def test_a_newer_format_is_ignored_with_a_log_line(caplog):
    header = json.dumps({"version": 2, "entries": []}).encode()
    with caplog.at_level(logging.WARNING, logger="easel.krita"):
        assert decode_history(MAGIC + struct.pack(">I", len(header)) + header) == []
    assert "format version 2" in caplog.text and "newer Easel" in caplog.text


def test_a_broken_entry_is_skipped_and_a_broken_image_only_loses_its_pixels(caplog):
    data = encode_history(list(_history()))
    (length,) = struct.unpack_from(">I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(data[start:start + length])
    header["entries"][1]["request"]["action"] = "paint a masterpiece"   # unreadable request: skipped
    blobs = bytearray(data[start + length:])
    first = header["entries"][0]["images"][0]
    blobs[first["offset"] + 40] ^= 0xFF                                  # CRC mismatch in entry 1's image
    body = json.dumps(header).encode()
    with caplog.at_level(logging.WARNING, logger="easel.krita"):
        restored = decode_history(MAGIC + struct.pack(">I", len(body)) + body + bytes(blobs))
    assert [e.seeds for e in restored] == [(11,), (12, 13)]
    assert not restored[0].images and restored[0].mask is None and restored[0].status == APPLIED
    assert restored[1].images == (_image(12), _image(13))
    assert "skipped" in caplog.text and "lost its pixels" in caplog.text


def test_garbage_never_raises():
    rng = random.Random(7)
    good = encode_history(list(_history()))
    for _ in range(300):
        broken = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            broken[rng.randrange(len(broken))] = rng.randrange(256)
        decode_history(bytes(broken[:rng.randint(0, len(broken))]))  # never raises


# ---------------------------------------------------------------- controller (stub host) + real server


def test_each_document_keeps_its_own_history_stored_in_it_and_restored(backend):
    first = painted_doc(Rect(10, 8, 40, 32))
    controller, host = connect(backend.url, first, seed=77)
    second = painted_doc()
    try:
        controller.start(Action.GENERATE)
        finish(controller)
        pump(controller, lambda: ANNOTATION_TYPE in first.annotations)
        assert host.annotation_writes == [ANNOTATION_TYPE]
        entry = controller.history.latest()
        assert entry.seeds == (77,) and entry.status == APPLIED

        host.doc = second  # another image becomes active: its own (empty) history
        controller.follow_active_document()
        assert len(controller.history) == 0 and controller.view.history_size == 0
        controller.settings = replace(controller.settings, prompt="a boat", seed=78)
        controller.start(Action.GENERATE)
        finish(controller)
        assert [e.seeds for e in controller.history] == [(78,)]
        host.doc = first
        controller.follow_active_document()
        assert [e.seeds for e in controller.history] == [(77,)]  # the histories never mix

        # the painter reopens the file: a fresh plugin reads the annotation back
        reopened = painted_doc()
        reopened.annotations = dict(first.annotations)
        fresh, fresh_host = connect(backend.url, reopened)
        try:
            restored = fresh.history.latest()
            assert _key(restored)[:2] == (entry.request, entry.seeds) and restored.status == APPLIED
            assert restored.images == entry.images and restored.mask == entry.mask
            assert fresh_host.annotation_writes == []  # opening (and showing its history) writes nothing
            fresh.apply_history(restored.id)
            pump(fresh, lambda: len(reopened.layers) == 2)
            original = next(layer for layer in first.layers if layer.name == "a lighthouse · seed 77")
            assert reopened.layers[-1].name == original.name and reopened.layers[-1].data == original.data
        finally:
            fresh.connection.close()
    finally:
        controller.connection.close()


def test_a_save_right_after_a_result_holds_it(backend):
    doc = painted_doc()
    controller, _ = connect(backend.url, doc, seed=5)
    try:
        controller.start(Action.GENERATE)
        pump(controller, lambda: len(controller.history) == 1)
        controller.flush_history(doc)  # what the save guard does before Krita copies the image
        assert [e.seeds for e in decode_history(doc.annotations[ANNOTATION_TYPE])] == [(5,)]
        stored = doc.annotations[ANNOTATION_TYPE]
        finish(controller)
        pump(controller, lambda: not any(d.writing for d in controller.documents.open))
        assert doc.annotations[ANNOTATION_TYPE] == stored  # written once, not again after the save
        writes = list(controller.host.annotation_writes)
        assert writes == [ANNOTATION_TYPE]
        controller.flush_history(doc)  # saved again with nothing new: nothing written
        controller.follow_active_document()
        assert controller.host.annotation_writes == writes
    finally:
        controller.connection.close()


def test_a_broken_annotation_opens_with_an_empty_history(backend, caplog):
    doc = painted_doc()
    doc.annotations[ANNOTATION_TYPE] = MAGIC + b"\xff\xff\xff\xff"
    with caplog.at_level(logging.WARNING, logger="easel.krita"):
        controller, _ = connect(backend.url, doc)
    try:
        assert len(controller.history) == 0 and controller.host.annotation_writes == []
        assert "was not restored" in caplog.text
        controller.start(Action.GENERATE)  # and the history works from there, replacing the broken bytes
        finish(controller)
        pump(controller, lambda: decode_history(doc.annotations[ANNOTATION_TYPE]) != [])
    finally:
        controller.connection.close()


def test_controller_uses_the_given_history_as_the_template():
    from easel_krita.clientkit.links import AsyncLink
    from krita_fake_host import FakeCanvas

    doc = painted_doc()
    controller = Controller(FakeCanvas(doc), AsyncLink(lambda e: None, client_name="krita", client_version="test"),
                            History(max_entries=2))
    try:
        assert controller.history.max_entries == 2
    finally:
        controller.connection.close()
