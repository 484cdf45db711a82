"""Image payloads: size validation, PNG/JPEG header dimensions, content ids, chunking."""
from __future__ import annotations

import hashlib
import io
import struct

import pytest
from hypothesis import given, strategies as st

from protocol import (
    MAX_CHUNK_BYTES, ErrorCode, ImageFormat, ImagePayload, LocalProtocolError, RemoteProtocolError, chunk_image,
    image_id,
)
from protocol.images import MAX_SIDE, encoded_dimensions, image_hasher
from protocol.session import MIN_CHUNK_BYTES
from protocol_support import PROPERTY

PIL = pytest.importorskip("PIL.Image", reason="Pillow makes the real PNG/JPEG files these tests read")


def encoded(fmt: str, width: int, height: int, **options: object) -> bytes:
    out = io.BytesIO()
    PIL.new("RGB", (width, height), (200, 30, 90)).save(out, format=fmt, **options)
    return out.getvalue()


# --------------------------------------------------------------------------- content ids

def test_id_test_vector_from_the_spec() -> None:
    # docs/protocol.md gives these; a client written from the spec must get the same ids.
    assert image_id(ImageFormat.RGBA8, 1, 1, b"\x00\x00\x00\xff") == \
        "557e5383645269e074eceed32650a99fd22784fb67825cab5061ddcb7bc45998"
    assert image_id(ImageFormat.RGBA8, 1, 1, b"\x00\x00\x00\xff") == \
        hashlib.sha256(b"rgba8 1 1\n" + b"\x00\x00\x00\xff").hexdigest()
    assert image_id(ImageFormat.GREY8, 2, 2, bytes([0, 64, 128, 255])) == \
        "0faa04a4a36138ee329730ddff73769d7b5a1576f516a33c37da8934d90937c1"
    assert image_id(ImageFormat.RGBA8, 2, 1, bytes([255, 0, 0, 255, 0, 0, 255, 128])) == \
        "fd3ebcc89c9467d71e6b3c8a0edc3c07626c31c0c01da9c73fc5c1d6fcf49590"


def test_id_depends_on_format_and_shape_not_only_bytes() -> None:
    data = bytes(range(16))
    ids = {image_id(ImageFormat.RGBA8, 2, 2, data), image_id(ImageFormat.RGBA8, 4, 1, data),
           image_id(ImageFormat.RGBA8, 1, 4, data), image_id(ImageFormat.GREY8, 4, 4, data),
           image_id(ImageFormat.DEPTH32F, 2, 2, data)}
    assert len(ids) == 5


@PROPERTY
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8),
       fmt=st.sampled_from([ImageFormat.RGBA8, ImageFormat.GREY8, ImageFormat.PNG]))
def test_incremental_hash_in_any_pieces_is_the_one_shot_id(data: bytes, cuts: list[int], fmt: ImageFormat) -> None:
    digest = image_hasher(fmt, 7, 3)
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    for start, end in zip(bounds, bounds[1:]):
        digest.update(data[start:end])  # empty pieces included
    assert digest.hexdigest() == image_id(fmt, 7, 3, data)


def test_a_payload_built_with_its_id_keeps_it_without_hashing(monkeypatch) -> None:
    data = bytes([0, 64, 128, 255])
    known = image_id(ImageFormat.GREY8, 2, 2, data)
    monkeypatch.setattr("protocol.images.image_id", lambda *args: pytest.fail("the payload hashed its bytes again"))
    image = ImagePayload.hashed(ImageFormat.GREY8, 2, 2, data, known)
    assert image.id == known and image == ImagePayload(ImageFormat.GREY8, 2, 2, data)
    with pytest.raises(RemoteProtocolError):  # the shape is still checked
        ImagePayload.hashed(ImageFormat.GREY8, 3, 2, data, known)


def test_payload_id_is_computed_once_and_matches_image_id() -> None:
    image = ImagePayload.build("grey8", 2, 2, bytes([0, 64, 128, 255]))
    assert image.id == image_id(ImageFormat.GREY8, 2, 2, image.data)
    assert image.id is image.id  # remembered, not re-hashed
    assert image == ImagePayload(ImageFormat.GREY8, 2, 2, bytearray([0, 64, 128, 255]))
    assert hash(image) == hash(ImagePayload.build("grey8", 2, 2, bytes([0, 64, 128, 255])))
    assert image != ImagePayload.build("grey8", 4, 1, bytes([0, 64, 128, 255]))


# --------------------------------------------------------------------------- raw formats

@pytest.mark.parametrize("fmt, channels", [("rgba8", 4), ("grey8", 1), ("depth32f", 4)])
def test_raw_sizes_must_be_width_times_height_times_bytes_per_pixel(fmt: str, channels: int) -> None:
    right = 3 * 5 * channels
    ImagePayload.build(fmt, 3, 5, bytes(right))
    for wrong in sorted({0, right - 1, right + 1, 3 * 5, 3 * 5 * 3} - {right}):
        with pytest.raises(RemoteProtocolError) as caught:
            ImagePayload(ImageFormat(fmt), 3, 5, bytes(wrong))
        assert caught.value.code is ErrorCode.INVALID_IMAGE
        assert f"must have {right} bytes" in caught.value.message and f"got {wrong}" in caught.value.message
        with pytest.raises(LocalProtocolError):  # from our own code it is our bug
            ImagePayload.build(fmt, 3, 5, bytes(wrong))


@pytest.mark.parametrize("width, height", [(0, 1), (1, 0), (-1, 4), (MAX_SIDE + 1, 1), (1, MAX_SIDE + 1)])
def test_sides_out_of_range(width: int, height: int) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        ImagePayload(ImageFormat.GREY8, width, height, b"")
    assert caught.value.code is ErrorCode.INVALID_IMAGE and "out of range" in caught.value.message


def test_depth_is_little_endian_float32() -> None:
    values = [0.0, 0.5, 1.0, 123.25]
    depth = ImagePayload.build("depth32f", 2, 2, struct.pack("<4f", *values))
    assert list(struct.unpack("<4f", depth.data)) == values
    assert ImageFormat.DEPTH32F.bytes_per_pixel == 4 and ImageFormat.DEPTH32F.is_raw


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        ImagePayload.build("webp", 1, 1, b"12345678")


@PROPERTY
@given(st.sampled_from(["rgba8", "grey8", "depth32f"]), st.integers(1, 40), st.integers(1, 40), st.integers(-5, 5))
def test_raw_validation_property(fmt: str, width: int, height: int, delta: int) -> None:
    size = width * height * ImageFormat(fmt).bytes_per_pixel + delta
    if size < 0:
        return
    if delta == 0:
        assert len(ImagePayload.build(fmt, width, height, bytes(size)).data) == size
    else:
        with pytest.raises(LocalProtocolError):
            ImagePayload.build(fmt, width, height, bytes(size))


# --------------------------------------------------------------------------- encoded formats

@pytest.mark.parametrize("width, height", [(1, 1), (17, 5), (640, 480), (300, 1000)])
def test_png_header_dimensions(width: int, height: int) -> None:
    data = encoded("PNG", width, height)
    assert encoded_dimensions(ImageFormat.PNG, data) == (width, height)
    assert ImagePayload.build("png", width, height, data).width == width
    with pytest.raises(RemoteProtocolError) as caught:
        ImagePayload(ImageFormat.PNG, height + 1, width, data)
    assert caught.value.code is ErrorCode.INVALID_IMAGE and f"header says {width}x{height}" in caught.value.message


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"quality": 20, "subsampling": 0}],
                         ids=["baseline", "progressive", "444"])
@pytest.mark.parametrize("width, height", [(1, 1), (33, 7), (512, 384)])
def test_jpeg_header_dimensions(width: int, height: int, options: dict) -> None:
    data = encoded("JPEG", width, height, **options)
    assert encoded_dimensions(ImageFormat.JPEG, data) == (width, height)
    ImagePayload.build("jpeg", width, height, data)
    with pytest.raises(LocalProtocolError):
        ImagePayload.build("jpeg", width + 1, height, data)


def test_jpeg_with_exif_and_icc_segments_before_the_frame_header() -> None:
    exif = PIL.Exif()
    exif[0x010E] = "a description " * 50
    out = io.BytesIO()
    PIL.new("RGB", (40, 30)).save(out, format="JPEG", exif=exif.tobytes(), icc_profile=b"\0" * 3000)
    assert encoded_dimensions(ImageFormat.JPEG, out.getvalue()) == (40, 30)


@pytest.mark.parametrize("fmt, data", [
    ("png", b"GIF89a" + b"\0" * 30),
    ("png", b"\x89PNG\r\n\x1a\n" + b"\0" * 4 + b"IHDR"),        # cut off inside IHDR
    ("png", b"\x89PNG\r\n\x1a\n" + b"\0" * 16),                 # no IHDR
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\0" * 20),      # no frame header
    ("jpeg", b"\xff\xd8\xff\xc0\x00\x11\x08\x00"),              # frame header cut off
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x01" + b"\0" * 10),         # segment length < 2
    ("jpeg", b"\xff\xd8\x00\x00\x00\x00\x00\x00\x00\x00"),      # not a marker
    ("jpeg", b"BM" + b"\0" * 30),
    ("png", b"1234567"),                                        # shorter than any real image
])
def test_unreadable_encoded_images(fmt: str, data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        ImagePayload(ImageFormat(fmt), 1, 1, data)
    assert caught.value.code is ErrorCode.INVALID_IMAGE


@PROPERTY
@given(st.binary(max_size=200), st.sampled_from(["png", "jpeg"]))
def test_encoded_header_parsing_never_crashes(data: bytes, fmt: str) -> None:
    for candidate in (data, (b"\x89PNG\r\n\x1a\n" if fmt == "png" else b"\xff\xd8\xff") + data):
        try:
            encoded_dimensions(ImageFormat(fmt), candidate)
        except RemoteProtocolError as exc:
            assert exc.code is ErrorCode.INVALID_IMAGE


@PROPERTY
@given(st.data())
def test_truncated_real_jpeg_never_crashes(data: st.DataObject) -> None:
    jpeg = JPEG_SAMPLE
    cut = data.draw(st.integers(0, len(jpeg)))
    try:
        assert encoded_dimensions(ImageFormat.JPEG, jpeg[:cut]) == (64, 48)
    except RemoteProtocolError:
        pass


JPEG_SAMPLE = encoded("JPEG", 64, 48)


# --------------------------------------------------------------------------- chunking

@pytest.mark.parametrize("size_px, chunk_bytes", [
    ((1, 1), MAX_CHUNK_BYTES), ((1024, 1024), MAX_CHUNK_BYTES), ((1025, 1024), MAX_CHUNK_BYTES),
    ((2048, 2048), MAX_CHUNK_BYTES), ((300, 300), MIN_CHUNK_BYTES), ((128, 128), MIN_CHUNK_BYTES),
])
def test_chunks_follow_the_rules(size_px: tuple[int, int], chunk_bytes: int) -> None:
    width, height = size_px
    image = ImagePayload.build("rgba8", width, height, bytes(range(256)) * (width * height * 4 // 256) + bytes(width * height * 4 % 256))
    chunks = chunk_image(image, chunk_bytes)
    assert len(chunks) == max(1, -(-len(image.data) // chunk_bytes))
    assert b"".join(c.data for c in chunks) == image.data
    for i, chunk in enumerate(chunks):
        assert (chunk.id, chunk.format, chunk.width, chunk.height, chunk.size, chunk.index, chunk.count) == \
            (image.id, ImageFormat.RGBA8, width, height, len(image.data), i, len(chunks))
        assert len(chunk.data) <= chunk_bytes
        if i < len(chunks) - 1:
            assert len(chunk.data) >= MIN_CHUNK_BYTES


@pytest.mark.parametrize("size_px, chunk_bytes, expected_mib", [
    ((2048, 2048), MAX_CHUNK_BYTES, [4, 4, 4, 2, 1, 0.5, 0.5]),  # the last 4 MiB in halving pieces
    ((2048, 1536), MAX_CHUNK_BYTES, [4, 4, 2, 1, 0.5, 0.5]),
    ((1024, 1024), MAX_CHUNK_BYTES, [2, 1, 0.5, 0.5]),  # one chunk's worth is tapered too
    ((1024, 1024), 2 * 1024 * 1024, [2, 1, 0.5, 0.5]),
    ((512, 256), MAX_CHUNK_BYTES, [0.5]),  # at most twice the smallest piece: left whole
    ((1025, 1024), MAX_CHUNK_BYTES, [4, 0.00390625]),  # a last chunk already small stays as it is
])
def test_tapered_chunks_follow_the_rules_and_end_small(size_px: tuple[int, int], chunk_bytes: int,
                                                       expected_mib: list[float]) -> None:
    width, height = size_px
    image = ImagePayload.build("rgba8", width, height, bytes(range(256)) * (width * height * 4 // 256))
    chunks = chunk_image(image, chunk_bytes, taper=True)
    assert [len(c.data) / 2 ** 20 for c in chunks] == expected_mib
    assert b"".join(c.data for c in chunks) == image.data
    for i, chunk in enumerate(chunks):
        assert (chunk.id, chunk.size, chunk.index, chunk.count) == (image.id, len(image.data), i, len(chunks))
        assert len(chunk.data) <= chunk_bytes and (i == len(chunks) - 1 or len(chunk.data) >= MIN_CHUNK_BYTES)


@pytest.mark.parametrize("chunk_bytes", [MIN_CHUNK_BYTES - 1, MAX_CHUNK_BYTES + 1, 0])
def test_chunk_size_out_of_range_is_our_bug(chunk_bytes: int) -> None:
    with pytest.raises(LocalProtocolError):
        chunk_image(ImagePayload.build("grey8", 1, 1, b"\0"), chunk_bytes)
