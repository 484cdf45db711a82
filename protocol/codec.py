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

_Convert = Callable[[Any, str], Any]


class _Invalid(Exception):
    """A field failed its check; carries the sentence for the error message."""


def _describe(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _scalar(kind: type, name: str) -> _Convert:
    def convert(value: Any, where: str) -> Any:
        if type(value) is kind:
            if kind is int and not INT_MIN <= value <= INT_MAX:
                raise _Invalid(f"{where} must fit in 64 bits (-2**63 to 2**64-1), got {_describe(value)}")
            return value
        if kind is float and type(value) is int:
            return float(value)
        if kind is bytes and type(value) is bytearray:
            return bytes(value)
        raise _Invalid(f"{where} must be {name}, got {_describe(value)}")
    return convert


_SCALARS: dict[Any, _Convert] = {
    int: _scalar(int, "an integer"),
    float: _scalar(float, "a number"),
    str: _scalar(str, "a string"),
    bool: _scalar(bool, "true or false"),
    bytes: _scalar(bytes, "binary (msgpack bin)"),
}


def _any_scalar(value: Any, where: str) -> Any:
    if type(value) is int:
        return _SCALARS[int](value, where)
    if type(value) in (bool, float, str):
        return value
    raise _Invalid(f"{where} must be a number, string or boolean, got {_describe(value)}")


def _optional(inner: _Convert) -> _Convert:
    def convert(value: Any, where: str) -> Any:
        return None if value is None else inner(value, where)
    return convert


def _sequence(inner: _Convert) -> _Convert:
    def convert(value: Any, where: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f"{where} must be an array, got {_describe(value)}")
        return tuple(inner(item, f"{where}[{i}]") for i, item in enumerate(value))
    return convert


def _mapping(inner: _Convert) -> _Convert:
    def convert(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(f"{where} must be a map, got {_describe(value)}")
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Invalid(f"{where} keys must be strings, got {_describe(key)}")
            out[key] = inner(item, f"{where}.{key}")
        return out
    return convert


def _enum(kind: type[enum.Enum]) -> _Convert:
    allowed = ", ".join(member.value for member in kind)

    def convert(value: Any, where: str) -> Any:
        if isinstance(value, kind):
            return value
        try:
            return kind(value)
        except (ValueError, TypeError):
            raise _Invalid(f"{where} must be one of {allowed}, got {_describe(value)}") from None
    return convert


def _error_code(value: Any, where: str) -> ErrorCode:
    # Lenient on purpose: a newer peer may send codes this version lacks; they read as internal.
    if isinstance(value, ErrorCode):
        return value
    if type(value) is str:
        return ErrorCode.parse(value)
    raise _Invalid(f"{where} must be an error code (a string), got {_describe(value)}")


class _Schema:
    """Compiled converters for one dataclass: decode a map into it, or check an instance."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        hints = typing.get_type_hints(cls)
        self.fields: list[tuple[str, _Convert, bool]] = []
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            self.fields.append((f.name, _converter(hints[f.name]), required))

    def from_map(self, data: Any, where: str) -> Any:
        if not isinstance(data, dict):
            raise _Invalid(f"{where} must be a map, got {_describe(data)}")
        kwargs = {}
        for name, convert, required in self.fields:
            if name in data:
                kwargs[name] = convert(data[name], f"{where}.{name}" if where else name)
            elif required:
                raise _Invalid(f"{where + '.' if where else ''}{name} is missing")
        return self.cls(**kwargs)

    def dump(self, obj: Any, where: str) -> dict[str, Any]:
        """``obj``'s fields as wire values, each checked (and normalised) by its converter first,
        so what is sent is exactly what the peer's decoder will read."""
        out = {}
        for name, convert, _ in self.fields:
            value = getattr(obj, name)
            if convert is _error_code and not isinstance(value, ErrorCode):
                # Only decoding is lenient about codes; our own code must use real ones.
                value = _enum(ErrorCode)(value, f"{where}.{name}")
            out[name] = _to_wire(convert(value, f"{where}.{name}"))
        return out


_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = _Schema(cls)
    return schema


def _converter(hint: Any) -> _Convert:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if hint is ErrorCode:
        return _error_code
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) < len(args):  # X | None
            inner = members[0] if len(members) == 1 else typing.Union[tuple(members)]
            return _optional(_converter(inner))
        if set(members) <= {bool, int, float, str}:
            return _any_scalar
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _sequence(_converter(args[0]))
    if origin is dict and args and args[0] is str:
        return _mapping(_converter(args[1]))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    if dataclasses.is_dataclass(hint):
        schema = _schema(hint)

        def nested(value: Any, where: str) -> Any:
            if isinstance(value, hint):  # encoding: our own instance, checked and dumped
                return schema.dump(value, where)
            return schema.from_map(value, where)
        return nested
    raise TypeError(f"the codec cannot carry a field of type {hint!r}")


for _cls in MESSAGES.values():
    _schema(_cls)
_IMAGE_CHUNK = MESSAGES["image_chunk"]


def _to_wire(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _bin_header(size: int) -> bytes:
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def _pack_with_trailing_bin(body: dict[str, Any], name: str, data: bytes) -> bytes:
    """``packb({**body, name: data})``, byte for byte, copying ``data`` once instead of twice
    (msgpack copies it into its buffer, then out into the result). For image chunks."""
    head = msgpack.packb(body, use_bin_type=True)
    if not 0x80 <= head[0] < 0x8F:  # a fixmap of at most 14 entries, so one more still fits
        return msgpack.packb({**body, name: data}, use_bin_type=True)
    return b"".join((bytes((head[0] + 1,)), memoryview(head)[1:], msgpack.packb(name), _bin_header(len(data)), data))


def encode(message: Message) -> bytes:
    """One frame for ``message``. Raises ``LocalProtocolError`` if a field has the wrong type."""
    cls = type(message)
    if MESSAGES.get(getattr(cls, "TAG", None)) is not cls:
        raise LocalProtocolError(ErrorCode.INVALID_MESSAGE, f"{cls.__name__} is not a wire message")
    schema = _SCHEMAS[cls]
    try:
        body = {"type": cls.TAG, **schema.dump(message, cls.TAG)}
    except _Invalid as exc:
        raise LocalProtocolError(ErrorCode.INVALID_MESSAGE, f"cannot encode {cls.__name__}: {exc}") from None
    try:
        if cls is _IMAGE_CHUNK:
            data = body.pop("data")
            return _pack_with_trailing_bin(body, "data", data)
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


def _item_counter() -> Callable[[Any], Any]:
    """A msgpack ``list_hook``/``object_hook`` that counts the items of every container decoded so
    far and stops the decoder once a frame's total passes :data:`MAX_FRAME_ITEMS`."""
    total = 0

    def count(container: Any) -> Any:
        nonlocal total
        total += len(container) + 1
        if total > MAX_FRAME_ITEMS:
            raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED, _TOO_MANY_ITEMS)
        # msgpack decodes the timestamp extension (-1) itself, without asking ext_hook: refused here,
        # in whatever field it is (a map's keys are strings: strict_map_key).
        if any(type(item) is msgpack.Timestamp for item in (container.values() if type(container) is dict else container)):
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, _EXTENSION)
        return container
    return count


def decode(frame: bytes, *, check_type: Callable[[type[Message]], None] | None = None) -> Message:
    """The message in ``frame``. Raises only ``RemoteProtocolError``:

    ``malformed_frame`` (not one msgpack map with a string ``type``), ``unknown_message`` (a tag
    this version does not know), ``invalid_message`` (a field missing or of the wrong type) or
    ``limit_exceeded`` (a container over :data:`MAX_CONTAINER_ITEMS` items, or a frame over
    :data:`MAX_FRAME_ITEMS` in all: refused before the items are built).

    ``check_type`` (optional) gets the message class as soon as the tag is known, before any field
    is read, and may raise ``RemoteProtocolError`` itself: the sessions refuse a message from the
    wrong side (or the wrong state) that way, whatever its fields hold.
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "frames must be binary websocket messages holding msgpack, not text")
    count = _item_counter()
    try:
        body = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True, ext_hook=_reject_ext,
                               list_hook=count, object_hook=count,
                               max_array_len=MAX_CONTAINER_ITEMS, max_map_len=MAX_CONTAINER_ITEMS)
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
    if _too_deep(body, MAX_DEPTH):
        raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, f"{tag} is nested deeper than {MAX_DEPTH} levels", _ref_of(body))
    try:
        return _SCHEMAS[cls].from_map(body, "")
    except _Invalid as exc:
        raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, f"{tag}: {exc}", _ref_of(body)) from None
    except RemoteProtocolError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, f"{tag}: a field has a value this message cannot hold ({type(exc).__name__})",
                                  _ref_of(body)) from None
