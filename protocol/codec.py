"""msgpack codec: a frame is one msgpack map ``{"type": TAG, field: value, ...}``.

``decode`` raises only :class:`RemoteProtocolError`; anything else escaping it is a bug (the fuzz
tests assert exactly that). ``encode`` raises :class:`LocalProtocolError` when our own code built a
message with a field of the wrong type.

Field types come from the dataclass annotations and are compiled once into converters: ``int``,
``float`` (an int is accepted), ``str``, ``bool``, ``bytes``, ``X | None``, ``tuple[X, ...]``,
``dict[str, X]``, str enums and nested dataclasses. Unknown keys are ignored, and an error code
this version does not know reads as ``internal`` (:meth:`ErrorCode.parse`): both keep an older
peer talking to a newer one.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Callable

import msgpack

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .messages import MESSAGES, Message

#: Deepest nesting of containers a frame may have (our messages need 4).
MAX_DEPTH = 8
#: msgpack integers are 64-bit: signed down to -2**63, unsigned up to 2**64 - 1.
INT_MIN, INT_MAX = -(2 ** 63), 2 ** 64 - 1
#: Most items one array or map may hold. msgpack allocates a container before it reads its
#: items, so a header claiming millions would cost memory before anything could be checked.
MAX_CONTAINER_ITEMS = 2 ** 16
#: Most items all the arrays and maps of one frame may hold together. Without it a 5 MiB frame of
#: empty arrays decodes into ~5 million objects (~370 MB, a second of CPU); with it, decoding
#: stops after the cap (the largest real message, a model list, holds a few thousand).
MAX_FRAME_ITEMS = 2 ** 18

#: A compiled converter: takes a value, returns it checked (decoding: the Python value; encoding:
#: the wire value), or raises :class:`_Invalid`.
_Convert = Callable[[Any], Any]


class _Invalid(Exception):
    """A field failed its check. ``text`` is the sentence after the field's name; ``path`` the
    field's place (``.name`` and ``[i]`` parts), filled in innermost first as the error passes each
    container, so no path string is built while values are fine."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.path: list[str] = []

    def where(self, root: str) -> str:
        where = root + "".join(reversed(self.path))
        return where[1:] if not root and where.startswith(".") else where

    def sentence(self, root: str) -> str:
        return f"{self.where(root)}{self.text}"


def _describe(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: Any) -> int:
    if type(value) is int:
        if INT_MIN <= value <= INT_MAX:
            return value
        raise _Invalid(f" must fit in 64 bits (-2**63 to 2**64-1), got {_describe(value)}")
    raise _Invalid(f" must be an integer, got {_describe(value)}")


def _exact(kind: type, name: str, widened: type | None = None) -> _Convert:
    """A converter that takes values of exactly ``kind`` (a bool is no int), and converts those of
    type ``widened`` to ``kind`` (an int where a float goes, a bytearray where bytes go)."""
    def convert(value: Any) -> Any:
        if type(value) is kind:
            return value
        if type(value) is widened:
            return kind(value)
        raise _Invalid(f" must be {name}, got {_describe(value)}")
    return convert


_float = _exact(float, "a number", int)
_str = _exact(str, "a string")
_bool = _exact(bool, "true or false")
_bytes = _exact(bytes, "binary (msgpack bin)", bytearray)


def _bytes_in(value: Any) -> Any:
    """Decoding: also a memoryview, which only ``decode(borrow=True)`` itself puts there."""
    if type(value) is memoryview:
        return value
    return _bytes(value)


def _chunk_data_out(value: Any) -> Any:
    """Encoding an ``image_chunk``'s ``data``: bytes, or a memoryview of bytes left uncopied (the
    frame's join copies it once; a :class:`SplitFrame` keeps it as it is)."""
    if type(value) is memoryview:
        if value.ndim != 1 or value.itemsize != 1 or not value.c_contiguous:
            raise _Invalid(f" must be binary (msgpack bin): a flat, contiguous buffer of bytes, got {value.ndim}-dimensional "
                           f"items of {value.itemsize} bytes")
        return value
    return _bytes(value)


_SCALARS: dict[Any, _Convert] = {int: _int, float: _float, str: _str, bool: _bool, bytes: _bytes}
_SCALARS_IN: dict[Any, _Convert] = {**_SCALARS, bytes: _bytes_in}


def _any_scalar(value: Any) -> Any:
    if type(value) is int:
        return _int(value)
    if type(value) in (bool, float, str):
        return value
    raise _Invalid(f" must be a number, string or boolean, got {_describe(value)}")


def _optional(inner: _Convert) -> _Convert:
    def convert(value: Any) -> Any:
        return None if value is None else inner(value)
    return convert


def _first_bad(inner: _Convert, items: Any, exc: _Invalid) -> _Invalid:
    """The error of the first item ``inner`` refuses, with its index in the path (the error path
    only: converters are pure, so running them again finds the same item)."""
    for i, item in enumerate(items):
        try:
            inner(item)
        except _Invalid as found:
            found.path.append(f"[{i}]")
            return found
    return exc


def _sequence(inner: _Convert, out: type) -> _Convert:
    def convert(value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f" must be an array, got {_describe(value)}")
        try:
            return out(map(inner, value))
        except _Invalid as exc:
            raise _first_bad(inner, value, exc) from None
    return convert


def _mapping(inner: _Convert) -> _Convert:
    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(f" must be a map, got {_describe(value)}")
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Invalid(f" keys must be strings, got {_describe(key)}")
            try:
                out[key] = inner(item)
            except _Invalid as exc:
                exc.path.append(f".{key}")
                raise
        return out
    return convert


def _enum(kind: type[enum.Enum]) -> _Convert:
    """Decoding: a member from its value (looked up in a table, not by calling the enum)."""
    allowed = ", ".join(member.value for member in kind)
    members = {member.value: member for member in kind}

    def convert(value: Any) -> Any:
        if type(value) is str:
            member = members.get(value)
            if member is not None:
                return member
        if isinstance(value, kind):
            return value
        try:
            return kind(value)
        except (ValueError, TypeError):
            raise _Invalid(f" must be one of {allowed}, got {_describe(value)}") from None
    return convert


def _enum_out(kind: type[enum.Enum]) -> _Convert:
    """Encoding: a member, or a value one of them has, as the member's value."""
    to_member = _enum(kind)

    def convert(value: Any) -> Any:
        if type(value) is kind:
            return value.value
        return to_member(value).value
    return convert


def _error_code(value: Any) -> ErrorCode:
    # Lenient on purpose: a newer peer may send codes this version lacks; they read as internal.
    if type(value) is str:
        return _ERROR_CODES.get(value) or ErrorCode.parse(value)
    if isinstance(value, ErrorCode):
        return value
    raise _Invalid(f" must be an error code (a string), got {_describe(value)}")


_ERROR_CODES = {code.value: code for code in ErrorCode}


class _Schema:
    """Compiled converters for one dataclass, both ways: ``load`` checks a decoded map and builds
    the instance; ``dump`` checks an instance our code built and gives its wire map (the same
    checks, so what is sent is exactly what the peer's decoder will read)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        self.names = tuple(f.name for f in fields)
        # Per field: its name, a type whose values decode as they are (no call), the converter for
        # any other value, and whether the field is required.
        self.load_fields = tuple((f.name, *_load_plan(hints[f.name]),
                                  f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                                 for f in fields)
        self.dump_fields = tuple((f.name, _converter(hints[f.name], out=True)) for f in fields)

    def load(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _Invalid(f" must be a map, got {_describe(data)}")
        kwargs = {}
        name = ""
        try:
            for name, same, convert, required in self.load_fields:
                if name in data:
                    value = data[name]
                    kwargs[name] = value if type(value) is same else convert(value)
                elif required:
                    raise _Invalid(" is missing")
        except _Invalid as exc:
            exc.path.append(f".{name}")
            raise
        return self.cls(**kwargs)

    def dump(self, obj: Any) -> dict[str, Any]:
        out = {}
        name = ""
        try:
            for name, convert in self.dump_fields:
                out[name] = convert(getattr(obj, name))
        except _Invalid as exc:
            exc.path.append(f".{name}")
            raise
        return out


_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = _Schema(cls)
    return schema


#: Types whose decoded values need no conversion. Every int msgpack decodes fits in 64 bits, so the
#: range check of :func:`_int` is for encoding only.
_AS_IS = (int, float, str, bool, bytes)


def _load_plan(hint: Any) -> tuple[type | None, _Convert]:
    """For decoding a field of type ``hint``: the type whose values are taken as they are, and the
    converter for every other value (which also says what is wrong with a bad one)."""
    if hint in _AS_IS:
        return hint, _converter(hint, out=False)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1 and len(members) < len(typing.get_args(hint)):  # X | None: None as it is
            return type(None), _converter(members[0], out=False)
    return None, _converter(hint, out=False)


def _converter(hint: Any, out: bool) -> _Convert:
    """The converter for a field of type ``hint``: decoding (``out`` false) or encoding."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _SCALARS:
        return (_SCALARS if out else _SCALARS_IN)[hint]
    if hint is ErrorCode:
        # Only decoding is lenient about codes; our own code must use real ones.
        return _enum_out(ErrorCode) if out else _error_code
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) < len(args):  # X | None
            inner = members[0] if len(members) == 1 else typing.Union[tuple(members)]
            return _optional(_converter(inner, out))
        if set(members) <= {bool, int, float, str}:
            return _any_scalar
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _sequence(_converter(args[0], out), list if out else tuple)
    if origin is dict and args and args[0] is str:
        return _mapping(_converter(args[1], out))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_out(hint) if out else _enum(hint)
    if dataclasses.is_dataclass(hint):
        schema = _schema(hint)
        if not out:
            return schema.load

        def nested(value: Any) -> Any:
            if isinstance(value, hint):  # our own instance, checked and dumped
                return schema.dump(value)
            return schema.dump(schema.load(value))  # a map in its place: checked as if decoded
        return nested
    raise TypeError(f"the codec cannot carry a field of type {hint!r}")


for _cls in MESSAGES.values():
    _schema(_cls)
_IMAGE_CHUNK = MESSAGES["image_chunk"]
_SCHEMAS[_IMAGE_CHUNK].dump_fields = tuple((name, _chunk_data_out if name == "data" else convert)
                                           for name, convert in _SCHEMAS[_IMAGE_CHUNK].dump_fields)
#: Per message class: its tag and compiled schema, looked up once per ``encode``.
_ENCODERS = {cls: (cls.TAG, _SCHEMAS[cls]) for cls in MESSAGES.values()}


def _bin_header(size: int) -> bytes:
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


class SplitFrame:
    """One ``image_chunk`` frame as the two pieces it is written in: ``head``, the msgpack map up to
    and including the bin header of its ``data`` (a few hundred bytes), and ``data``, the chunk's
    bytes (in practice a memoryview slice of the image, not a copy). ``bytes(frame)`` is exactly
    what :func:`encode` gives for the message, ``len(frame)`` its size in bytes: a writer that puts
    the two pieces on the wire one after the other sends the same frame without the copy that
    joins them (``protocol/transport_send.py``)."""

    __slots__ = ("head", "data")

    def __init__(self, head: bytes, data: Any) -> None:
        self.head = head
        self.data = data

    def __len__(self) -> int:
        return len(self.head) + len(self.data)

    def __bytes__(self) -> bytes:
        return b"".join((self.head, self.data))

    def __repr__(self) -> str:
        return f"SplitFrame({len(self.head)} + {len(self.data)} bytes)"


def _pack_with_trailing_bin(body: dict[str, Any], name: str, data: Any) -> SplitFrame | bytes:
    """``packb({**body, name: data})``, byte for byte, as a :class:`SplitFrame` whose ``data`` is
    ``data`` itself, not copied: msgpack would copy it into its buffer, then out into the result.
    For image chunks, whose ``data`` may be a memoryview slice of the image."""
    head = msgpack.packb(body, use_bin_type=True)
    if not 0x80 <= head[0] < 0x8F:  # a fixmap of at most 14 entries, so one more still fits
        return msgpack.packb({**body, name: bytes(data)}, use_bin_type=True)
    return SplitFrame(b"".join((bytes((head[0] + 1,)), memoryview(head)[1:], msgpack.packb(name), _bin_header(len(data)))), data)


def encode(message: Message) -> bytes:
    """One frame for ``message``. Raises ``LocalProtocolError`` if a field has the wrong type.

    An ``image_chunk``'s ``data`` may be a memoryview (a slice of the image, as
    :func:`~protocol.session.chunk_image` cuts it): its bytes are copied once, into the frame."""
    frame = encode_split(message)
    return frame if type(frame) is bytes else bytes(frame)


def encode_split(message: Message) -> bytes | SplitFrame:
    """As :func:`encode`, but an ``image_chunk`` comes back as a :class:`SplitFrame` (its head and
    its ``data`` uncopied) for a writer that sends the pieces without joining them; any other
    message as its frame (bytes)."""
    cls = type(message)
    found = _ENCODERS.get(cls)
    if found is None:
        raise LocalProtocolError(ErrorCode.INVALID_MESSAGE, f"{cls.__name__} is not a wire message")
    tag, schema = found
    try:
        body = {"type": tag, **schema.dump(message)}
    except _Invalid as exc:
        raise LocalProtocolError(ErrorCode.INVALID_MESSAGE, f"cannot encode {cls.__name__}: {exc.sentence(tag)}") from None
    try:
        if cls is _IMAGE_CHUNK:
            return _pack_with_trailing_bin(body, "data", body.pop("data"))
        return msgpack.packb(body, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
        raise LocalProtocolError(ErrorCode.INVALID_MESSAGE,
                                 f"cannot encode {cls.__name__}: msgpack refused a value ({type(exc).__name__}: {exc})") from None


def _too_deep(value: Any, limit: int) -> bool:
    """Whether containers in ``value`` nest more than ``limit`` levels.

    Iterative on purpose: the C unpacker builds values up to ~1000 levels deep, which would
    overflow Python's recursion limit here.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _ref_of(body: dict) -> str:
    """The job id a bad frame was about, if it names one, for the ``ref`` of the error answering it."""
    ref = body.get("job_id")
    return ref if isinstance(ref, str) and len(ref) <= 128 else ""


_EXTENSION = "the frame uses a msgpack extension type; Easel frames use none"


def _reject_ext(code: int, data: bytes) -> Any:
    raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, _EXTENSION)


_TOO_MANY_ITEMS = f"the frame holds more than {MAX_FRAME_ITEMS} values in its arrays and maps; Easel messages need a few dozen"


class _Counter:
    """A msgpack ``list_hook``/``object_hook`` (:meth:`hook`) that counts the items of every
    container decoded so far and stops the decoder once a frame's total passes
    :data:`MAX_FRAME_ITEMS`; ``containers`` is how many containers the frame held."""

    __slots__ = ("total", "containers")

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.containers = 0

    def hook(self, container: Any) -> Any:
        self.total += len(container) + 1
        self.containers += 1
        if self.total > MAX_FRAME_ITEMS:
            raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED, _TOO_MANY_ITEMS)
        # msgpack decodes the timestamp extension (-1) itself, without asking ext_hook: refused here,
        # in whatever field it is (a map's keys are strings: strict_map_key).
        if _TIMESTAMP in map(type, container.values() if type(container) is dict else container):
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, _EXTENSION)
        return container


_TIMESTAMP = msgpack.Timestamp
#: How the last entry of an ``image_chunk`` frame from our encoder starts: the key "data" and a
#: bin 32 header (chunks of 64 KiB or more; a smaller chunk's copy costs little anyway).
_DATA_BIN32 = b"\xa4data\xc6"


def _unpack(frame: Any, counter: _Counter) -> Any:
    return msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True, ext_hook=_reject_ext,
                           list_hook=counter.hook, object_hook=counter.hook,
                           max_array_len=MAX_CONTAINER_ITEMS, max_map_len=MAX_CONTAINER_ITEMS)


#: Frame types ``decode(borrow=True)`` leaves the chunk data in: immutable bytes, and the transport's
#: bytearrays, which nothing writes to once received.
_BORROWABLE = (bytes, bytearray)


def _unpack_borrowing(frame: bytes | bytearray) -> tuple[Any, _Counter] | None:
    """The map in ``frame`` with its trailing ``"data"`` bin left in place, as a read-only
    memoryview into ``frame`` (msgpack would copy it into a new bytes object), when the frame ends
    with that entry; ``None`` otherwise, or when anything about it is unusual (the caller then
    decodes the frame the ordinary way, which says what is wrong).

    Exact: if the frame without its last entry (the map's count one less) is one msgpack map that
    ends where that entry starts, msgpack's unique decoding makes it the frame's map less the
    entry, so the result equals ``unpackb(frame)`` but for the copy. Duplicate keys resolve as
    there (the last one wins), and the counts cover the same items."""
    if len(frame) < 0x10000 or not 0x81 <= frame[0] <= 0x8F:
        return None
    pos = frame.find(_DATA_BIN32, 1, 1024)
    while pos != -1:
        start = pos + len(_DATA_BIN32) + 4
        if start + int.from_bytes(frame[start - 4:start], "big") == len(frame):
            counter = _Counter(total=1)  # the entry taken off the map
            try:
                body = _unpack(bytes((frame[0] - 1,)) + frame[1:pos], counter)
            except Exception:  # noqa: BLE001 - any doubt: the ordinary path decodes the frame and names the fault
                return None
            if type(body) is not dict:
                return None
            body["data"] = memoryview(frame)[start:].toreadonly()
            return body, counter
        pos = frame.find(_DATA_BIN32, pos + 1, 1024)
    return None


def decode(frame: bytes, *, check_type: Callable[[type[Message]], None] | None = None, borrow: bool = False) -> Message:
    """The message in ``frame``. Raises only ``RemoteProtocolError``:

    ``malformed_frame`` (not one msgpack map with a string ``type``), ``unknown_message`` (a tag
    this version does not know), ``invalid_message`` (a field missing or of the wrong type) or
    ``limit_exceeded`` (a container over :data:`MAX_CONTAINER_ITEMS` items, or a frame over
    :data:`MAX_FRAME_ITEMS` in all: refused before the items are built).

    ``check_type`` (optional) gets the message class as soon as the tag is known, before any field
    is read, and may raise ``RemoteProtocolError`` itself: the sessions refuse a message from the
    wrong side (or the wrong state) that way, whatever its fields hold.

    ``borrow``: an ``image_chunk``'s ``data`` may come back as a read-only memoryview into
    ``frame`` (a ``bytes`` frame, or a ``bytearray`` the caller never changes afterwards: the
    transport's own frame buffers, :mod:`.transport_frames`) instead of a copy, to be copied once
    where it is kept.
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "frames must be binary websocket messages holding msgpack, not text")
    borrowed = _unpack_borrowing(frame) if borrow and type(frame) in _BORROWABLE else None
    if borrowed is not None:
        body, counter = borrowed
    else:
        counter = _Counter()
        try:
            body = _unpack(frame, counter)
        except RemoteProtocolError:
            raise
        except ValueError as exc:
            if "exceeds max_" in str(exc):  # msgpack's own check of a container's announced length
                raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                          f"the frame announces an array or map of more than {MAX_CONTAINER_ITEMS} items; "
                                          f"Easel messages need a few dozen") from None
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME,
                                      f"the frame is not one valid msgpack value ({type(exc).__name__}); send one msgpack map per binary frame") from None
        except Exception as exc:  # msgpack raises many types for bad input (ValueError, ExtraData, ...)
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME,
                                      f"the frame is not one valid msgpack value ({type(exc).__name__}); send one msgpack map per binary frame") from None
    if type(body) is msgpack.Timestamp:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, _EXTENSION)
    if not isinstance(body, dict):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"the frame must be a msgpack map, got {_describe(body)}")
    tag = body.get("type")
    if not isinstance(tag, str):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, 'the frame map must have a string "type" naming the message')
    cls = MESSAGES.get(tag)
    if cls is None:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {_describe(tag)}; see docs/protocol.md for the list",
                                  tag if len(tag) <= 64 else "")
    if check_type is not None:
        check_type(cls)
    if counter.containers > MAX_DEPTH and _too_deep(body, MAX_DEPTH):  # fewer cannot nest deeper
        raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, f"{tag} is nested deeper than {MAX_DEPTH} levels", _ref_of(body))
    try:
        return _SCHEMAS[cls].load(body)
    except _Invalid as exc:
        raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, f"{tag}: {exc.sentence('')}", _ref_of(body)) from None
    except RemoteProtocolError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, f"{tag}: a field has a value this message cannot hold ({type(exc).__name__})",
                                  _ref_of(body)) from None
