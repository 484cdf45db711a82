"""The document annotation both kinds of marked layers are stored in (control layers in
``control.py``, regions in ``regions.py``): UTF-8 JSON ``{"version": 1, "layers": {id: entry}}``,
keys sorted so the same marks always give the same bytes. Host-free.

Reading never raises: a document saved by a newer or broken plugin gives the entries that parse
(or none), not an error that stops every job.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

ANNOTATION_VERSION = 1
#: A larger annotation is not read (a document can hold at most this many marked layers anyway).
MAX_ANNOTATION_BYTES = 256 * 1024
MAX_MARKED_LAYERS = 256


def encode_marks(entries: Mapping[str, Any], *, ensure_ascii: bool = True) -> bytes:
    """The annotation's bytes for ``entries`` (layer id → a JSON-able entry), at most
    ``MAX_MARKED_LAYERS`` of them, in id order."""
    body = {"version": ANNOTATION_VERSION, "layers": dict(sorted(entries.items())[:MAX_MARKED_LAYERS])}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=ensure_ascii).encode("utf-8")


def decode_marks(data: bytes | None) -> Iterator[tuple[str, Any]]:
    """(layer id, raw entry) pairs from an annotation's bytes; nothing for bytes that are missing,
    too large, not JSON or of another version. Each entry is the caller's to check."""
    if not data or len(data) > MAX_ANNOTATION_BYTES:
        return
    try:
        body = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(body, dict) or body.get("version") != ANNOTATION_VERSION or not isinstance(body.get("layers"), dict):
        return
    for layer_id, entry in list(body["layers"].items())[:MAX_MARKED_LAYERS]:
        yield str(layer_id), entry
