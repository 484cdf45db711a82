"""Image payloads: raw pixels (RGBA8, grey8 masks, float32 depth) and encoded PNG/JPEG.

Raw formats cost nothing to encode on loopback; PNG and JPEG exist for remote links and previews.
Raw rows run top to bottom, pixels left to right; ``depth32f`` is little-endian IEEE float32.

An image's id is content-addressed (see :func:`image_id`), so an unchanged layer is never sent
twice: the client offers ids, the server asks only for those it lacks.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import Enum

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError


class ImageFormat(str, Enum):
    RGBA8 = "rgba8"
    GREY8 = "grey8"
    DEPTH32F = "depth32f"
    PNG = "png"
    JPEG = "jpeg"

    @property
    def bytes_per_pixel(self) -> int | None:
        """Bytes per pixel of a raw format; ``None`` for encoded formats."""
        return _BYTES_PER_PIXEL.get(self)

    @property
    def is_raw(self) -> bool:
        return self in _BYTES_PER_PIXEL


_BYTES_PER_PIXEL = {ImageFormat.RGBA8: 4, ImageFormat.GREY8: 1, ImageFormat.DEPTH32F: 4}

#: Largest width or height any peer may announce, before any configured limit applies.
MAX_SIDE = 65535

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def image_id(fmt: ImageFormat, width: int, height: int, data: bytes) -> str:
    """The content address of an image: lowercase hex SHA-256 of a header line and the bytes.

    The header is ``f"{format} {width} {height}\\n"`` in ASCII, so the same bytes with another
    shape or format get another id. Example: an RGBA8 1×1 image of bytes ``00 00 00 ff`` has the
    id ``sha256(b"rgba8 1 1\\n" + b"\\x00\\x00\\x00\\xff")``.
    """
    digest = image_hasher(fmt, width, height)
    digest.update(data)
    return digest.hexdigest()


def image_hasher(fmt: ImageFormat, width: int, height: int) -> "hashlib._Hash":
    """A SHA-256 already fed the header line of :func:`image_id`: ``update`` it with the image's
    bytes in any number of pieces, in order, and its ``hexdigest()`` is the image's id. Lets a
    receiver hash each chunk as it arrives instead of the whole image after the last one."""
    return hashlib.sha256(f"{fmt.value} {width} {height}\n".encode("ascii"))


def expected_size(fmt: ImageFormat, width: int, height: int) -> int | None:
    """Exact byte size of a raw image, or ``None`` for PNG/JPEG (whose size is not fixed)."""
    bpp = fmt.bytes_per_pixel
    return None if bpp is None else width * height * bpp


def check_shape(fmt: ImageFormat, width: int, height: int, size: int, error=RemoteProtocolError) -> None:
    """Raise ``error`` unless ``size`` bytes can be a ``fmt`` image of ``width`` × ``height``.

    Cheap: it looks at numbers only, so it runs before any buffer is allocated.
    """
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise error(ErrorCode.INVALID_IMAGE,
                    f"image size {width}x{height} is out of range; width and height must be 1 to {MAX_SIDE}")
    want = expected_size(fmt, width, height)
    if want is not None and size != want:
        raise error(ErrorCode.INVALID_IMAGE,
                    f"a {fmt.value} image of {width}x{height} must have {want} bytes "
                    f"({width}*{height}*{fmt.bytes_per_pixel}), got {size}")
    if want is None and size < 8:
        raise error(ErrorCode.INVALID_IMAGE, f"a {fmt.value} image cannot be {size} bytes long")


def encoded_dimensions(fmt: ImageFormat, data: bytes) -> tuple[int, int]:
    """Width and height read from a PNG or JPEG header; raises ``RemoteProtocolError`` if unreadable."""
    if fmt is ImageFormat.PNG:
        if data[:8] != _PNG_MAGIC or data[12:16] != b"IHDR" or len(data) < 24:
            raise RemoteProtocolError(ErrorCode.INVALID_IMAGE, "the png bytes do not start with a PNG signature and IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if fmt is ImageFormat.JPEG:
        return _jpeg_dimensions(data)
    raise LocalProtocolError(ErrorCode.INVALID_IMAGE, f"{fmt.value} is not an encoded format")


def _jpeg_dimensions(data: bytes) -> tuple[int, int]:
    bad = RemoteProtocolError(ErrorCode.INVALID_IMAGE, "the jpeg bytes hold no readable JPEG frame header")
    if data[:3] != _JPEG_MAGIC:
        raise bad
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise bad
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            raise bad
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                raise bad
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    raise bad


@dataclass(frozen=True, eq=False)
class ImagePayload:
    """An image and its bytes. Construction validates the size; ``id`` is computed once, lazily.

    Raises ``RemoteProtocolError`` (``invalid_image``) when the bytes cannot be such an image — use
    :meth:`build` from our own code to get ``LocalProtocolError`` instead.
    """

    format: ImageFormat
    width: int
    height: int
    data: bytes = field(repr=False)
    _id: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.format, ImageFormat):
            object.__setattr__(self, "format", ImageFormat(self.format))
        if not isinstance(self.data, bytes):
            object.__setattr__(self, "data", bytes(self.data))
        check_shape(self.format, self.width, self.height, len(self.data))
        if not self.format.is_raw:
            dims = encoded_dimensions(self.format, self.data)
            if dims != (self.width, self.height):
                raise RemoteProtocolError(
                    ErrorCode.INVALID_IMAGE,
                    f"the {self.format.value} header says {dims[0]}x{dims[1]} but the message says "
                    f"{self.width}x{self.height}; send the encoded image's own size")

    @classmethod
    def build(cls, fmt: ImageFormat | str, width: int, height: int, data: bytes) -> "ImagePayload":
        """Like the constructor, but a bad shape is our own bug: raises ``LocalProtocolError``."""
        try:
            return cls(ImageFormat(fmt), width, height, data)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(exc.code, exc.message) from None

    @classmethod
    def hashed(cls, fmt: ImageFormat, width: int, height: int, data: bytes, id: str) -> "ImagePayload":
        """Like the constructor, for bytes whose id the caller has just computed (a receiver that
        checked an upload against its id while it arrived): ``id`` is kept instead of hashing
        ``data`` a second time. Passing anything but ``image_id(fmt, width, height, data)`` is a bug."""
        payload = cls(fmt, width, height, data)
        payload._id.append(id)
        return payload

    @property
    def id(self) -> str:
        """Content address (:func:`image_id`); hashed on first use, then remembered."""
        if not self._id:
            self._id.append(image_id(self.format, self.width, self.height, self.data))
        return self._id[0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImagePayload):
            return NotImplemented
        return (self.format, self.width, self.height, self.data) == (other.format, other.width, other.height, other.data)

    def __hash__(self) -> int:
        return hash(self.id)
