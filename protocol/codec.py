"""msgpack codec: a frame is one msgpack map ``{"type": TAG, field: value, ...}``.

``decode`` raises only :class:`RemoteProtocolError`; anything else escaping it is a bug (the fuzz
tests assert exactly that). ``encode`` raises :class:`LocalProtocolError` when our own code built a
message with a field of the wrong type.

Field types come from the dataclass annotations and are compiled once into converters: ``int``,
``float`` (an int is accepted), ``str``, ``bool``, ``bytes``, ``X | None``, ``tuple[X, ...]``,
``dict[str, X]``, str enums and nested dataclasses. Unknown keys are ignored.
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
    if type(value) in (bool, int, float, str):
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

    def check(self, obj: Any, where: str) -> None:
        for name, convert, _ in self.fields:
            convert(getattr(obj, name), f"{where}.{name}")


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
            if isinstance(value, hint):
                schema.check(value, where)
                return value
            return schema.from_map(value, where)
        return nested
    raise TypeError(f"the codec cannot carry a field of type {hint!r}")


for _cls in MESSAGES.values():
    _schema(_cls)


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


def encode(message: Message) -> bytes:
    """One frame for ``message``. Raises ``LocalProtocolError`` if a field has the wrong type."""
    cls = type(message)
    if MESSAGES.get(getattr(cls, "TAG", None)) is not cls:
        raise LocalProtocolError(ErrorCode.INVALID_MESSAGE, f"{cls.__name__} is not a wire message")
    schema = _SCHEMAS[cls]
    try:
        schema.check(message, cls.TAG)
    except _Invalid as exc:
        raise LocalProtocolError(ErrorCode.INVALID_MESSAGE, f"cannot encode {cls.__name__}: {exc}") from None
    body = {"type": cls.TAG}
    for name, _, _ in schema.fields:
        body[name] = _to_wire(getattr(message, name))
    return msgpack.packb(body, use_bin_type=True)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of containers in ``value``, stopping early once it passes ``limit``."""
    if isinstance(value, dict):
        children = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return 0
    deepest = 0
    for child in children:
        deepest = max(deepest, _depth(child, limit))
        if deepest > limit:
            break
    return deepest + 1


def _reject_ext(code: int, data: bytes) -> Any:
    raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "the frame uses a msgpack extension type; Easel frames use none")


def decode(frame: bytes) -> Message:
    """The message in ``frame``. Raises only ``RemoteProtocolError``:

    ``malformed_frame`` (not one msgpack map with a string ``type``), ``unknown_message`` (a tag
    this version does not know) or ``invalid_message`` (a field missing or of the wrong type).
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "frames must be binary websocket messages holding msgpack, not text")
    try:
        body = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True,
                               ext_hook=_reject_ext)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for bad input (ValueError, ExtraData, ...)
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME,
                                  f"the frame is not one valid msgpack value ({type(exc).__name__}); send one msgpack map per binary frame") from None
    if not isinstance(body, dict):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"the frame must be a msgpack map, got {_describe(body)}")
    tag = body.get("type")
    if not isinstance(tag, str):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, 'the frame map must have a string "type" naming the message')
    cls = MESSAGES.get(tag)
    if cls is None:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {_describe(tag)}; see docs/protocol.md for the list")
    if _depth(body, MAX_DEPTH) > MAX_DEPTH:
        raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, f"{tag} is nested deeper than {MAX_DEPTH} levels")
    try:
        return _SCHEMAS[cls].from_map(body, "")
    except _Invalid as exc:
        raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, f"{tag}: {exc}") from None
    except RemoteProtocolError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE, f"{tag}: a field has a value this message cannot hold ({type(exc).__name__})") from None
