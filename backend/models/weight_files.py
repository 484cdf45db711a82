"""The weight formats of single transformer files, read from their headers (no torch, no tensors),
and how each one loads.

* **fp8** — a ``.safetensors`` whose weights are ``float8_e4m3fn`` / ``float8_e5m2`` (the "fp8"
  Flux files model sites share). They load upcast to the server's compute dtype (every fp8
  value is exact in float16, bfloat16 and float32): the download is half the size, the memory on
  the device is that of the compute dtype.
* **GGUF** — a ``.gguf`` file (magic ``GGUF``) of quantized tensors (``Q8_0``, ``Q4_K``, …, as
  city96's Flux files). diffusers keeps them quantized on the device and dequantizes each layer
  as it runs (``GGUFQuantizationConfig``); reading them needs the ``gguf`` package.

:func:`gguf_header` turns a GGUF file's tensor table into the shape of a safetensors header
(name → ``{"dtype", "shape"}``, shapes in PyTorch order) so the family detectors read both alike.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from protocol.errors import ErrorCode

from ..errors import JobError
from .facts import safetensors_header

GGUF_MAGIC = b"GGUF"
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
#: ggml tensor types by number (the ones diffusers reads, and the plain ones).
GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K", 11: "Q3_K",
              12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 20: "IQ4_NL", 23: "IQ4_XS", 30: "BF16"}
INSTALL_GGUF = "pip install gguf"
#: Bounds on what a GGUF header may declare before it is refused as broken.
_MAX_TENSORS, _MAX_KEYS, _MAX_STRING, _MAX_DIMS = 200_000, 100_000, 1 << 20, 8
#: Byte sizes of GGUF metadata value types (8 string, 9 array are read apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def is_gguf(path: Path) -> bool:
    """True when ``path`` starts with the GGUF magic (whatever its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_header(path: Path) -> dict[str, Any]:
    """The tensor table of a ``.safetensors`` or GGUF file (see the module docstring).
    Raises ValueError (or OSError) for a file that is neither, or is cut short."""
    return gguf_header(path) if is_gguf(path) else safetensors_header(path)


def gguf_header(path: Path) -> dict[str, Any]:
    """A GGUF file's tensors as ``{name: {"dtype": "Q8_0", "shape": [...]}}``, plus
    ``"__metadata__": {"format": "gguf"}``; metadata values are skipped, no tensor data is read."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError("not a GGUF file (no GGUF magic)")
        version, tensors, keys = struct.unpack("<IQQ", _exactly(f, 20))
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not one this server reads (2 or 3)")
        if tensors > _MAX_TENSORS or keys > _MAX_KEYS:
            raise ValueError(f"GGUF header declares {tensors} tensors and {keys} keys: too many")
        for _ in range(keys):
            _string(f)
            (kind,) = struct.unpack("<I", _exactly(f, 4))
            _skip_value(f, kind)
        header: dict[str, Any] = {"__metadata__": {"format": "gguf"}}
        for _ in range(tensors):
            name = _string(f)
            (dims,) = struct.unpack("<I", _exactly(f, 4))
            if dims > _MAX_DIMS:
                raise ValueError(f"tensor {name!r} declares {dims} dimensions")
            shape = list(struct.unpack(f"<{dims}Q", _exactly(f, 8 * dims)))
            kind, _offset = struct.unpack("<IQ", _exactly(f, 12))
            # ggml lists the innermost dimension first; PyTorch (and safetensors) the outermost
            header[name] = {"dtype": GGML_TYPES.get(kind, f"type {kind}"), "shape": shape[::-1]}
    return header


def _exactly(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise ValueError("the GGUF header is cut short")
    return data


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _exactly(f, 8))
    if length > _MAX_STRING:
        raise ValueError(f"a GGUF string of {length} bytes")
    return _exactly(f, length).decode("utf-8", errors="replace")


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind in _SCALARS:
        _exactly(f, struct.calcsize("<" + _SCALARS[kind]))
    elif kind == 8:
        _string(f)
    elif kind == 9:
        inner, count = struct.unpack("<IQ", _exactly(f, 12))
        if inner in _SCALARS:
            _exactly(f, struct.calcsize("<" + _SCALARS[inner]) * count)
        else:
            for _ in range(count):
                _skip_value(f, inner)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def weights_bytes(source: str, element: int) -> int:
    """Bytes the weights of ``source`` (a ``.safetensors`` file, or a folder of them such as a
    ControlNet's) take at ``element`` bytes per value, from their headers; 0 when not known here
    (a hub id, no ``.safetensors``, a broken header)."""
    path = Path(source).expanduser() if source else None
    if path is None or not path.exists():
        return 0
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    count = 0
    try:
        for file in files:
            for name, entry in safetensors_header(file).items():
                if name != "__metadata__" and isinstance(entry, dict):
                    count += math.prod(int(side) for side in entry.get("shape", ()))
    except (OSError, ValueError, struct.error):
        return 0
    return count * element


def weights_format(header: Mapping[str, Any]) -> str:
    """``gguf Q8_0`` (the most common quantized type), ``fp8`` (any float8 tensor), or "" for plain weights."""
    dtypes = [entry.get("dtype", "") for name, entry in header.items()
              if name != "__metadata__" and isinstance(entry, dict)]
    if (header.get("__metadata__") or {}).get("format") == "gguf":
        quantized = [d for d in dtypes if d not in ("F32", "F16", "BF16")]
        return "gguf " + (max(set(quantized), key=quantized.count) if quantized else "F16")
    return "fp8" if any(d in FP8_DTYPES for d in dtypes) else ""


def transformer_file_kwargs(source: str, dtype: Any) -> dict[str, Any]:
    """The ``from_single_file`` arguments a transformer file at ``source`` needs for its format:
    a GGUF file gets diffusers' ``GGUFQuantizationConfig`` computing in ``dtype`` (raises
    JobError(model_unavailable) naming the package to install when ``gguf`` is missing); an fp8 file
    is upcast to ``dtype`` by ``torch_dtype`` like any other, and needs nothing more."""
    path = Path(source)
    if not is_gguf(path):
        return {}
    try:
        import gguf  # noqa: F401 - diffusers imports it to read the file
    except ImportError:
        raise JobError(ErrorCode.MODEL_UNAVAILABLE,
                       f"{path.name} is a GGUF file, and reading one needs the gguf package, which is not installed "
                       f"here; install it with `{INSTALL_GGUF}` in the server's environment and load the model again") \
            from None
    from diffusers import GGUFQuantizationConfig

    return {"quantization_config": GGUFQuantizationConfig(compute_dtype=dtype)}
