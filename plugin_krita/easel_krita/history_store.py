"""The history kept inside the document: a document annotation's bytes, and back.

Krita saves a document's annotations in the ``.kra`` file and reads them back on open (5.1.5:
``Document.setAnnotation`` → ``<image>/annotations/<type>`` in the zip, byte for byte), so the
docker's history is stored there under :data:`ANNOTATION_TYPE` and comes back when the painter
reopens the file. No ``krita`` here: the adapter reads and writes the bytes.

The format (version :data:`FORMAT_VERSION`), all lengths big-endian::

    b"EASEL-HISTORY\\n"  uint32 header length  header (UTF-8 JSON)  blobs

The header is ``{"version": 1, "entries": [...]}``, oldest first; each entry holds its request
(:meth:`GenerationRequest.to_dict`), seeds, status, detail, timings, and for each image and the
mask where its blob starts and ends in ``blobs``. An ``rgba8`` result and the ``grey8`` mask are
stored as PNG (no filter, zlib), an already encoded ``png``/``jpeg`` result as it came; other
formats are not stored (the entry keeps its settings). No pickle: JSON and PNG only.

Bounds: at most :data:`MAX_ENTRIES` entries, the newest, and at most :data:`MAX_BYTES` in all. Past
the byte cap the oldest entries lose their pixels first (their request, seeds and status stay, as
in the docker's in-memory history); should the header alone not fit, the oldest entries go.
Live results are never stored. Reading never raises: bytes that are not this format, a newer
version, a broken header or a broken image give no history (or the entry without its pixels) and a
log line — the document itself always opens.
"""
from __future__ import annotations

import json
import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, MutableMapping, Sequence

from .history import STATUSES, HistoryEntry
from .protocol import ImageFormat, ImagePayload
from .request import GenerationRequest, RequestError

log = logging.getLogger("easel.krita")

ANNOTATION_TYPE = "easel.history"
ANNOTATION_DESCRIPTION = "Easel history"
MAGIC = b"EASEL-HISTORY\n"
FORMAT_VERSION = 1
#: The newest entries stored per document.
MAX_ENTRIES = 50
#: The most bytes the annotation may take (header and images); older entries lose pixels first.
MAX_BYTES = 64 * 1024 * 1024
#: Largest image side read back; a bigger one is treated as broken.
MAX_SIDE = 16384
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEAD = struct.Struct(">I")
_REF_BYTES = 128


class HistoryFormatError(ValueError):
    """The bytes are not a history this plugin can read; the message says why (for the log)."""


@dataclass(frozen=True)
class StoredEntry:
    """One entry read back: everything :class:`HistoryEntry` has except its id (the history gives one)."""

    request: GenerationRequest
    seeds: tuple[int, ...]
    images: tuple[ImagePayload, ...]
    mask: bytes | None
    timings: dict[str, float]
    status: str
    detail: str


# -- PNG (8-bit RGBA or grey, unfiltered rows): enough for our own pixels, readable by any viewer

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def encode_png(data: bytes, width: int, height: int, channels: int) -> bytes:
    """PNG of ``data`` (``channels`` 4: RGBA8, 1: grey8), every row with filter 0."""
    stride = width * channels
    if len(data) != stride * height or width < 1 or height < 1:
        raise ValueError(f"{len(data)} bytes are not a {width}x{height} image with {channels} channel(s)")
    view = memoryview(data)
    raw = b"".join(b"\x00" + view[y * stride:(y + 1) * stride].tobytes() for y in range(height))
    colour = {4: 6, 1: 0}[channels]
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def decode_png(blob: bytes, channels: int) -> tuple[int, int, bytes]:
    """``(width, height, pixels)`` of a PNG written by :func:`encode_png` with ``channels``.
    Raises :class:`HistoryFormatError` for anything else (other filters, bit depths, colour types,
    bad CRCs, a size that does not match)."""
    if not blob.startswith(_PNG_SIGNATURE):
        raise HistoryFormatError("an image is not a PNG")
    pos, header, idat = len(_PNG_SIGNATURE), None, []
    while pos + 12 <= len(blob):
        (length,) = struct.unpack_from(">I", blob, pos)
        kind, body = blob[pos + 4:pos + 8], blob[pos + 8:pos + 8 + length]
        end = pos + 12 + length
        if end > len(blob) or struct.unpack_from(">I", blob, end - 4)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise HistoryFormatError("an image's PNG chunk is cut short or its CRC does not match")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos = end
    if header is None:
        raise HistoryFormatError("an image's PNG has no header")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour != {4: 6, 1: 0}[channels] or interlace or not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise HistoryFormatError(f"an image's PNG is not the {width}x{height} 8-bit kind Easel writes")
    stride = width * channels
    expected = (stride + 1) * height
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), expected + 1)  # bounded: never more than the image
    except zlib.error as exc:
        raise HistoryFormatError(f"an image's PNG data is broken ({exc})") from None
    if len(raw) != expected:
        raise HistoryFormatError("an image's PNG data does not match its size")
    if raw[::stride + 1].strip(b"\x00"):
        raise HistoryFormatError("an image's PNG uses row filters Easel does not write")
    view = memoryview(raw)
    return width, height, b"".join(view[y * (stride + 1) + 1:(y + 1) * (stride + 1)] for y in range(height))


# -- entries

def _image_blob(image: ImagePayload) -> bytes | None:
    if image.format is ImageFormat.RGBA8:
        return encode_png(image.data, image.width, image.height, 4)
    if image.format in (ImageFormat.PNG, ImageFormat.JPEG):
        return image.data
    return None


class BlobCache:
    """Encoded images per entry id, so a history written again encodes only its new images.
    Entries never change their images (a status change keeps them), hence the id as key. Bounded:
    :meth:`keep` drops what is no longer in the history."""

    def __init__(self) -> None:
        self._blobs: MutableMapping[int, tuple[tuple[bytes | None, ...], bytes | None]] = {}

    def blobs(self, entry: HistoryEntry) -> tuple[tuple[bytes | None, ...], bytes | None]:
        """The entry's image blobs (``None`` for a format not stored) and its mask's PNG."""
        cached = self._blobs.get(entry.id)
        if cached is None or len(cached[0]) != len(entry.images):
            mask = None
            if entry.mask is not None:
                crop = entry.request.placement.crop
                if len(entry.mask) == crop.width * crop.height:
                    mask = encode_png(entry.mask, crop.width, crop.height, 1)
            cached = (tuple(_image_blob(image) for image in entry.images), mask)
            self._blobs[entry.id] = cached
        return cached

    def keep(self, ids: Iterable[int]) -> None:
        wanted = set(ids)
        for entry_id in list(self._blobs):  # list() first: a worker thread may be adding blobs
            if entry_id not in wanted:
                self._blobs.pop(entry_id, None)


def storable(entries: Iterable[HistoryEntry], max_entries: int = MAX_ENTRIES) -> list[HistoryEntry]:
    """The entries a document keeps: not live, the newest ``max_entries``, oldest first."""
    kept = [entry for entry in entries if not entry.request.live]
    return kept[-max_entries:] if max_entries > 0 else []


def encode_history(entries: Sequence[HistoryEntry], cache: BlobCache | None = None, *,
                   max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> bytes:
    """The annotation's bytes for ``entries`` (oldest first), inside the bounds above. Encoding
    the images is the slow part: pass the same ``cache`` each time, and call it off the main
    thread when it may have new images to encode."""
    cache = cache if cache is not None else BlobCache()
    chosen = storable(entries, max_entries)
    while True:
        records: list[dict[str, Any]] = [{
            "request": entry.request.to_dict(), "seeds": list(entry.seeds), "status": entry.status.value,
            "detail": entry.detail, "timings": {k: float(v) for k, v in entry.timings.items()},
            "images": [], "mask": None} for entry in chosen]
        header_bytes = len(json.dumps({"version": FORMAT_VERSION, "entries": records}))
        if len(MAGIC) + _HEAD.size + header_bytes <= max_bytes or not chosen:
            break
        chosen = chosen[1:]  # even without pixels the header is too large: the oldest entry goes
    budget = max_bytes - len(MAGIC) - _HEAD.size - header_bytes
    blobs: list[bytes] = []
    offset = 0
    for record, entry in reversed(list(zip(records, chosen))):  # the newest keep their pixels first
        if budget <= 0:
            break
        images, mask = cache.blobs(entry)
        if not images or any(blob is None for blob in images):
            continue
        # the blobs, and their references in the header (each well under _REF_BYTES of JSON)
        size = sum(len(blob) for blob in images if blob) + len(mask or b"") + _REF_BYTES * (len(images) + 1)
        if size > budget:
            budget = 0  # this one and every older one keep their settings only
            continue
        budget -= size
        for image, blob in zip(entry.images, images):
            record["images"].append({"format": image.format.value, "width": image.width, "height": image.height,
                                     "offset": offset, "length": len(blob)})
            blobs.append(blob)
            offset += len(blob)
        if mask is not None:
            crop = entry.request.placement.crop
            record["mask"] = {"width": crop.width, "height": crop.height, "offset": offset, "length": len(mask)}
            blobs.append(mask)
            offset += len(mask)
    cache.keep(entry.id for entry in entries)
    header = json.dumps({"version": FORMAT_VERSION, "entries": records}, separators=(",", ":")).encode("utf-8")
    return MAGIC + _HEAD.pack(len(header)) + header + b"".join(blobs)


def decode_history(data: bytes | None, *, max_bytes: int = MAX_BYTES) -> list[StoredEntry]:
    """The entries stored in an annotation's bytes, oldest first. Never raises: bytes it cannot
    read give ``[]`` (an entry it cannot read is skipped, a broken image leaves the entry without
    pixels), each with a log line saying why."""
    if not data:
        return []
    try:
        return _decode(bytes(data), max_bytes)
    except HistoryFormatError as exc:
        log.warning("easel: the history stored in this document was not restored: %s", exc)
        return []
    except Exception:  # a bug here must not stop a document from opening
        log.exception("easel: reading the history stored in this document failed")
        return []


def _decode(data: bytes, max_bytes: int) -> list[StoredEntry]:
    if len(data) > max_bytes + len(MAGIC) + _HEAD.size + 16 * 1024 * 1024:
        raise HistoryFormatError(f"it is {len(data)} bytes, more than this plugin ever writes")
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEAD.size:
        raise HistoryFormatError("it is not in Easel's history format")
    (length,) = _HEAD.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _HEAD.size
    if start + length > len(data):
        raise HistoryFormatError("its header is cut short")
    try:
        header = json.loads(data[start:start + length].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HistoryFormatError(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise HistoryFormatError("its header is not a map")
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise HistoryFormatError(f"it is format version {version!r}; this plugin reads version {FORMAT_VERSION} "
                                 "(a newer Easel wrote it)")
    records = header.get("entries")
    if not isinstance(records, list):
        raise HistoryFormatError("its header has no entry list")
    blobs = memoryview(data)[start + length:]
    entries = []
    for number, record in enumerate(records[-MAX_ENTRIES:]):
        try:
            entries.append(_entry(record, blobs))
        except (HistoryFormatError, RequestError, TypeError, ValueError, KeyError) as exc:
            log.warning("easel: stored history entry %d was skipped: %s", number + 1, exc)
    return entries


def _blob(blobs: memoryview, ref: Any) -> bytes:
    offset, length = ref["offset"], ref["length"]
    if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset and 0 < length
            and offset + length <= len(blobs)):
        raise HistoryFormatError("an image lies outside the stored bytes")
    return blobs[offset:offset + length].tobytes()


def _entry(record: Any, blobs: memoryview) -> StoredEntry:
    if not isinstance(record, dict):
        raise HistoryFormatError("an entry is not a map")
    request = GenerationRequest.from_dict(record["request"])
    seeds = record.get("seeds", [])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise HistoryFormatError("seeds must be a list of integers")
    status, detail = record.get("status"), record.get("detail", "")
    if status not in STATUSES or not isinstance(detail, str):
        raise HistoryFormatError(f"unknown status {status!r}")
    timings = record.get("timings", {})
    if not isinstance(timings, dict):
        raise HistoryFormatError("timings must be a map")
    timings = {str(k): float(v) for k, v in timings.items()}
    images: tuple[ImagePayload, ...] = ()
    mask = None
    try:
        loaded = []
        for ref in record.get("images", []):
            fmt = ImageFormat(ref["format"])
            blob = _blob(blobs, ref)
            if fmt is ImageFormat.RGBA8:
                width, height, pixels = decode_png(blob, 4)
                loaded.append(ImagePayload.build(fmt, width, height, pixels))
            elif fmt in (ImageFormat.PNG, ImageFormat.JPEG):
                loaded.append(ImagePayload.build(fmt, ref["width"], ref["height"], blob))
            else:
                raise HistoryFormatError(f"images in {fmt.value} are not stored")
        if record.get("mask") is not None:
            crop = request.placement.crop
            width, height, mask = decode_png(_blob(blobs, record["mask"]), 1)
            if (width, height) != (crop.width, crop.height):
                raise HistoryFormatError("the selection mask does not match the result's area")
        if len(loaded) > len(seeds):
            raise HistoryFormatError("more images than seeds")
        images = tuple(loaded)
    except Exception as exc:  # the settings are still worth having without the pixels
        log.warning("easel: a stored history entry lost its pixels: %s", exc)
        images, mask = (), None
    return StoredEntry(request, tuple(seeds), images, mask if images else None, timings, status, detail)
