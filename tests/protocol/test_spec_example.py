"""docs/protocol.md is checked against the code, and its example client is run against a server.

* The minimal client of section 13 is cut out of the page exactly as written, and runs jobs
  against the loopback server (a real ``ServerSession`` behind websockets): upload with chunks,
  results checked byte for byte, no second upload of a held image, failures, refusal, and the
  script's ``__main__``.
* Every message and value type has a section whose field table matches the dataclass (names,
  types, defaults), and whose JSON example decodes with our codec into that message.
* The error table lists exactly the ``ErrorCode``s, and the id test vectors are right.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import pathlib
import re
import subprocess
import sys
import types
import typing
from typing import Any

import msgpack
import pytest

from protocol import MAX_CHUNK_BYTES, MESSAGES, ErrorCode, ImageFormat, decode, image_id
from protocol import messages as wire
from protocol_support import FAIL, LoopbackServer, invert, rgba

SPEC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
TEXT = SPEC.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the example client

def example_source() -> str:
    marker = TEXT.index("<!-- example: minimal-client -->")
    match = re.compile(r"```python\n(.*?)\n```", re.S).search(TEXT, marker)
    assert match, "the example's code block is missing"
    return match.group(1) + "\n"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("spec") / "easel_min.py"
    path.write_text(example_source())
    spec = importlib.util.spec_from_file_location("easel_min", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__file__ = str(path)
    return module


def test_example_uses_only_websockets_and_msgpack() -> None:
    imports = set(re.findall(r"^(?:import|from) (\w+)", example_source(), re.M))
    assert imports <= {"hashlib", "sys", "msgpack", "websockets"}, imports


def test_example_client_runs_jobs_against_a_server(example: Any, capsys: pytest.CaptureFixture) -> None:
    big = rgba(1100, 1000, seed=6)  # 4.4 MB: two chunks
    # The server would deflate if asked: the example must not ask.
    with LoopbackServer(compression="deflate") as server:
        client = example.Client(server.url)
        assert client.models[0]["id"] == "demo"

        results, finished = client.run("job-1", "txt2img", {"prompt": "a lighthouse", "width": 64, "height": 48, "seed": 3})
        assert results == [("rgba8", 64, 48, rgba(64, 48, seed=3).data)]
        assert finished["seeds"] == [3] and finished["timings"] == {"total": 0.01}

        results, _ = client.run("job-2", "img2img", {"prompt": "in snow", "strength": 0.5}, {"image": ("rgba8", 1100, 1000, big.data)})
        assert results == [("rgba8", 1100, 1000, invert(big).data)]
        assert [image.id for image in server.uploads] == [big.id] and server.uploads[0].data == big.data
        assert server.chunk_sizes == [MAX_CHUNK_BYTES, len(big.data) - MAX_CHUNK_BYTES]

        results, _ = client.run("job-3", "img2img", {}, {"image": ("rgba8", 1100, 1000, big.data)})
        assert len(server.uploads) == 1 and len(server.chunk_sizes) == 2  # held: not sent again

        with pytest.raises(RuntimeError) as caught:
            client.run("job-4", FAIL, {})
        assert "invalid_parameter" in str(caught.value) and "strength must be between 0 and 1" in str(caught.value)
        client.close()
        assert server.errors == []  # the server never had to complain about a frame
    assert server.request_extensions == [None] and server.negotiated == [[]]
    out = capsys.readouterr().out
    assert "job-1: started, seed 3" in out and "step 2/2" in out


def test_example_client_is_refused_with_a_wrong_token(example: Any) -> None:
    with LoopbackServer(token="sesame") as server:
        with pytest.raises(RuntimeError) as caught:
            example.Client(server.url, token="wrong")
        assert "refused: unauthorized" in str(caught.value)
        example.Client(server.url, token="sesame").close()


def test_example_script_writes_its_result(example: Any, tmp_path: pathlib.Path) -> None:
    with LoopbackServer() as server:
        run = subprocess.run([sys.executable, example.__file__, server.url, "a lighthouse at dusk"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    pam = (tmp_path / "result-0.pam").read_bytes()
    header = b"P7\nWIDTH 512\nHEIGHT 512\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n"
    assert pam == header + rgba(512, 512, seed=0).data
    assert "seeds [7]" in run.stdout


# --------------------------------------------------------------------------- the tables agree with the code

def type_name(hint: Any) -> str:
    """A field's type as the spec's tables write it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {int: "int", float: "float", str: "str", bool: "bool", bytes: "bin"}
    if hint in simple:
        return simple[hint]
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        inner = "scalar" if set(members) == {bool, int, float, str} else " | ".join(type_name(m) for m in members)
        return f"{inner} | nil" if len(members) < len(args) else inner
    if origin is tuple:
        return f"[{type_name(args[0])}]"
    if origin is dict:
        return f"{{str: {type_name(args[1])}}}"
    if isinstance(hint, type) and (issubclass(hint, enum.Enum) or dataclasses.is_dataclass(hint)):
        return hint.__name__
    raise TypeError(hint)


def default_text(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return f'"{value.value}"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[]"
    if dataclasses.is_dataclass(value):
        return "{}"
    return repr(value)


def section(heading: str) -> str:
    """The text from ``heading`` (a whole line) to the next heading."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#{{1,4}} )", TEXT, re.S | re.M)
    assert match, f"docs/protocol.md has no section {heading!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.append(cells)
    return rows


VALUE_TYPES = [wire.ImageInfo, wire.Limits, wire.ModelInfo, wire.AddonInfo, wire.Capabilities, wire.Margins,
               wire.ControlUnit, wire.LoraWeight, wire.JobParams]


@pytest.mark.parametrize("cls", [*VALUE_TYPES, *MESSAGES.values()], ids=lambda c: getattr(c, "TAG", "") or c.__name__)
def test_field_tables_match_the_code(cls: type) -> None:
    tag = getattr(cls, "TAG", "")
    heading = next((line for line in TEXT.splitlines()
                    if line.startswith(f"### `{tag}` ")), None) if tag else f"#### {cls.__name__}"
    assert heading, f"docs/protocol.md has no section for {tag}"
    hints = typing.get_type_hints(cls)
    expected = [[f"`{f.name}`", type_name(hints[f.name]), default_text(f)] for f in dataclasses.fields(cls)]
    got = [row[:3] for row in table_rows(section(heading))]
    assert got == expected
    for row in table_rows(section(heading)):
        assert len(row) == 4, row


@pytest.mark.parametrize("cls", list(MESSAGES.values()), ids=lambda c: c.TAG)
def test_message_examples_decode(cls: type) -> None:
    heading = next(line for line in TEXT.splitlines() if line.startswith(f"### `{cls.TAG}` "))
    match = re.search(r"```json\n(.*?)\n```", section(heading), re.S)
    assert match, f"{cls.TAG} has no example"

    def binary(value: Any) -> Any:
        if isinstance(value, str) and (m := re.fullmatch(r"<bin (\d+) bytes>", value)):
            return bytes(int(m.group(1)))
        if isinstance(value, dict):
            return {k: binary(v) for k, v in value.items()}
        if isinstance(value, list):
            return [binary(v) for v in value]
        return value
    body = binary(json.loads(match.group(1)))
    message = decode(msgpack.packb(body, use_bin_type=True))
    assert type(message) is cls
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(body) - {"type"} <= fields  # no made-up fields in the examples


def test_error_table_lists_every_code() -> None:
    rows = table_rows(section("## 8. Errors"))
    assert [row[0].strip("`") for row in rows] == [code.value for code in ErrorCode]
    assert all(row[1] and row[2] for row in rows)


def test_id_test_vectors() -> None:
    rows = table_rows(section("### 6.1 Content ids").replace("| rgba8", "| `rgba8").replace("| grey8", "| `grey8"))
    assert len(rows) == 3
    for fmt, width, height, data, digest in rows:
        raw = bytes.fromhex(data.strip("`").replace(" ", ""))
        assert image_id(ImageFormat(fmt.strip("`")), int(width), int(height), raw) == digest.strip("`")


def test_the_spec_states_the_fixed_numbers() -> None:
    assert f"`max_chunk_bytes` | int | {MAX_CHUNK_BYTES}" in TEXT
    assert "`protocol_version` is **1**" in TEXT and wire.PROTOCOL_VERSION == 1
    for task in wire.Task.ALL:
        assert f"`{task}`" in section("## 11. Tasks")


def test_the_spec_states_the_wire_facts_the_code_enforces() -> None:
    from protocol import RemoteProtocolError
    from protocol.session import MAX_ID_LENGTH, RECENTLY_DROPPED

    encoding = section("## 2. Encoding")
    # An int field sent as a float is refused, even a whole one (JS encoders send 2 as an int).
    assert "a float is refused (`invalid_message`), even a whole one such as `2.0`" in encoding
    frame = msgpack.packb({"type": "submit_job", "job_id": "j", "task": "txt2img", "params": {"steps": 2.0}},
                          use_bin_type=True)
    with pytest.raises(RemoteProtocolError) as caught:
        decode(frame)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE and caught.value.ref == "j"
    # JavaScript clients: the two settings that make @msgpack/msgpack and ws talk to the server.
    assert "{useBigInt64: true}" in encoding and "perMessageDeflate: false" in encoding and "maxPayload" in encoding
    # A broken upload: how many dropped ids the server remembers, and that images may interleave.
    chunking = section("### 6.4 Chunking rules")
    assert f"the last {RECENTLY_DROPPED} dropped ids" in chunking
    assert "Chunks of different images may\n   interleave" in chunking and "do not interleave" not in TEXT
    # Ids: opaque strings within the fixed bound.
    assert f"| `job_id`, `client_id` | 1 … {MAX_ID_LENGTH} characters" in section("## 9. Limits")

