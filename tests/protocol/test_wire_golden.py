"""The bytes ``encode`` writes, pinned: a fixed corpus of messages against frames recorded with the
codec as it was before its fast paths (main at 6c7fb16), and every message hypothesis can build
against a plain reference encoder written out here.

The codec compiles per-class encoders and decoders for speed; these tests prove the wire did not
move by a byte (protocol v1: a peer built against ``docs/protocol.md`` must read the same frames).
The corpus covers every message with its defaults, with values at msgpack's size boundaries, and
with the loose inputs ``encode`` normalises (an ``int`` for a ``float``, an enum's string, a
``bytearray``, a list for a tuple).

If the wire changes on purpose (a new field), record the corpus again and say so in the commit:

    .venv/bin/python tests/protocol/test_wire_golden.py --write
"""
from __future__ import annotations

import dataclasses
import enum
import json
import random
import sys
import types
import typing
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, strategies as st

from protocol import MESSAGES, ErrorCode, decode, encode
from protocol.messages import Message
from protocol_support import PROPERTY, any_message

GOLDEN = Path(__file__).with_name("wire_golden.json")

_INTS = (0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 2 ** 32, -(2 ** 31) - 1, 2 ** 63 - 1, 2 ** 64 - 1, -(2 ** 63))
_FLOATS = (0.0, 1.5, -2.25, 1e300, 7.0, 0.1)
_STRS = ("", "a", "é-ünïcode ✓", "x" * 40, "job-1", "s" * 300)


def _sample(hint: Any, rng: random.Random, loose: bool) -> Any:
    """A value of type ``hint``; with ``loose``, in the forms ``encode`` accepts and normalises."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return rng.random() < 0.5
    if hint is int:
        return rng.choice(_INTS)
    if hint is float:
        return rng.choice((0, 3, -7)) if loose and rng.random() < 0.5 else rng.choice(_FLOATS)
    if hint is str:
        return rng.choice(_STRS)
    if hint is bytes:
        data = bytes(rng.randrange(256) for _ in range(rng.choice((0, 5, 31, 300))))
        return bytearray(data) if loose else data
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) < len(args) and rng.random() < 0.3:
            return None
        return _sample(rng.choice(members), rng, loose)
    if origin is tuple:
        items = [_sample(args[0], rng, loose) for _ in range(rng.randrange(4))]
        return items if loose else tuple(items)
    if origin is dict:
        return {f"k{i}": _sample(args[1], rng, loose) for i in range(rng.randrange(4))}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        member = rng.choice(list(hint))
        return member.value if loose else member
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _sample(hints[f.name], rng, loose) for f in dataclasses.fields(hint)})
    raise TypeError(f"no sample for {hint!r}")


def corpus() -> dict[str, Message]:
    """Named messages: per class its required fields only, four strict samples and two loose ones."""
    out: dict[str, Message] = {}
    for tag, cls in sorted(MESSAGES.items()):
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        rng = random.Random(tag)
        out[f"{tag}/required"] = cls(**{f.name: _sample(hints[f.name], rng, False) for f in fields
                                       if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING})
        for variant in range(6):
            loose = variant >= 4
            out[f"{tag}/{'loose' if loose else 'strict'}{variant}"] = cls(
                **{f.name: _sample(hints[f.name], rng, loose) for f in fields})
    return out


def _fields_recorded() -> dict[str, list[str]]:
    return {tag: [f.name for f in dataclasses.fields(cls)] for tag, cls in sorted(MESSAGES.items())}


def _nested_fields(cls: type) -> dict[str, list[str]]:
    out = {cls.__name__: [f.name for f in dataclasses.fields(cls)]}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for arg in (hints[f.name], *typing.get_args(hints[f.name]), *(a for t in typing.get_args(hints[f.name]) for a in typing.get_args(t))):
            if dataclasses.is_dataclass(arg):
                out.update(_nested_fields(arg))
    return out


def _shape() -> dict[str, list[str]]:
    """Every message's and nested type's field names: the corpus is only comparable while they stand."""
    shape: dict[str, list[str]] = {}
    for cls in MESSAGES.values():
        shape.update(_nested_fields(cls))
    return dict(sorted(shape.items()))


def test_corpus_encodes_to_the_recorded_bytes() -> None:
    recorded = json.loads(GOLDEN.read_text())
    if recorded["shape"] != _shape():
        pytest.fail("a message gained or lost a field since wire_golden.json was recorded; if the wire change is "
                    "intended, record it again: .venv/bin/python tests/protocol/test_wire_golden.py --write")
    frames = {name: encode(message).hex() for name, message in corpus().items()}
    assert frames.keys() == recorded["frames"].keys()
    changed = [name for name in frames if frames[name] != recorded["frames"][name]]
    assert not changed, f"encode writes other bytes than recorded for {changed[:10]}"
    assert len(frames) == 7 * len(MESSAGES)


def test_corpus_decodes_back_to_its_messages() -> None:
    for name, message in corpus().items():
        again = decode(encode(message))
        assert encode(again) == encode(message), name
        if "strict" in name or "required" in name:
            assert again == message, name


# --------------------------------------------------------------------------- a reference encoder

def _reference_wire(value: Any) -> Any:
    """The wire form of a value, written the slow, obvious way."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {f.name: _reference_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_reference_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _reference_wire(v) for k, v in value.items()}
    return value


def reference_encode(message: Message) -> bytes:
    return msgpack.packb({"type": message.TAG, **_reference_wire(message)}, use_bin_type=True)


@PROPERTY
@given(data=st.data())
def test_every_message_encodes_as_the_reference_encoder_would(data: st.DataObject) -> None:
    message = data.draw(any_message())
    assert encode(message) == reference_encode(message)


def test_reference_encoder_agrees_with_the_recorded_corpus() -> None:
    # Proves the reference itself: on strict inputs it writes what the recorded codec wrote.
    recorded = json.loads(GOLDEN.read_text())["frames"]
    for name, message in corpus().items():
        if "loose" not in name:
            assert reference_encode(message).hex() == recorded[name], name


def test_loose_inputs_are_normalised_as_before() -> None:
    # An int for a float goes out as a msgpack float; a bytearray as bin; an enum's string as the string.
    job = MESSAGES["job_failed"]("j", "busy", "m", "", {"a": 1})  # type: ignore[arg-type]
    assert decode(encode(job)).code is ErrorCode.BUSY
    chunk = MESSAGES["image_chunk"]("i", "rgba8", 1, 1, 4, 0, 1, bytearray(b"\0\0\0\xff"))  # type: ignore[arg-type]
    body = msgpack.unpackb(encode(chunk), raw=False)
    assert body["data"] == b"\0\0\0\xff" and body["format"] == "rgba8"
    started = MESSAGES["step_preview"]("j", 1, 2, 3, 4, bytearray(b"jpg"))  # type: ignore[arg-type]
    assert type(msgpack.unpackb(encode(started), raw=False)["jpeg"]) is bytes


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_wire_golden.py --write  (records the corpus's frames with the protocol/ on sys.path)")
    GOLDEN.write_text(json.dumps({"shape": _shape(), "frames": {name: encode(m).hex() for name, m in corpus().items()}},
                                 indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} with the protocol/ at {sys.modules['protocol'].__file__}")
