"""What a weights file is, by its content; and whether a path still lies inside its folder.

Suffixes lie: a pickle named ``.pkl``, ``model`` or ``lora.safetensors.`` is still a pickle, and
loading one can run any code it holds. :func:`weights_kind` reads a file's first bytes:

* ``safetensors``: an 8-byte little-endian header length (at most 100 MB) followed by ``{``;
* ``pickle``: the pickle protocol 2-5 opcode (``\\x80`` and the version), what ``torch.save``'s
  legacy format and ``pickle.dump`` write;
* ``torch-zip``: a zip archive (``PK\\x03\\x04``), ``torch.save``'s default format, a pickle inside;
* ``other``: anything else (text, images, an empty file).

``safetensors`` is the only kind that is safe to read; the other two are *pickle-based* and are
read only where the operator said ``allow_unsafe_checkpoints``.

A file found in a folder by a scan may be replaced by a link to anywhere before it is opened, so
every open goes through :func:`inside`, which resolves the real path now and refuses one that
left the folder. Loaders open the path it returns (no link left to follow).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

SAFETENSORS = "safetensors"
PICKLE = "pickle"
TORCH_ZIP = "torch-zip"
OTHER = "other"
PICKLE_BASED = (PICKLE, TORCH_ZIP)
#: The largest safetensors header we accept (the format's own readers allow 100 MB).
MAX_HEADER = 100 * 1024 * 1024


class UnsafeFileError(ValueError):
    """A file that must not be read: pickle-based without permission, or outside its folder.
    ``str()`` is a sentence for the operator or the client (no secrets: paths the operator configured)."""


def weights_kind(path: str | os.PathLike[str]) -> str:
    """:data:`SAFETENSORS`, :data:`PICKLE`, :data:`TORCH_ZIP` or :data:`OTHER`, from the first
    bytes of the file. Raises ``OSError`` when it cannot be read."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (length,) = struct.unpack("<Q", head[:8])
        if 2 <= length <= MAX_HEADER and head[8:9] == b"{":
            return SAFETENSORS
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return PICKLE
    if head[:4] == b"PK\x03\x04":
        return TORCH_ZIP
    return OTHER


def is_pickle_based(path: str | os.PathLike[str]) -> bool:
    """Whether loading the file would unpickle it (unreadable files count as not)."""
    try:
        return weights_kind(path) in PICKLE_BASED
    except OSError:
        return False


def inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """The real path of ``path`` (links resolved now), which must lie inside the real ``folder``;
    raises :class:`UnsafeFileError` otherwise. Open what this returns, not ``path``."""
    real = Path(os.path.realpath(path))
    root = Path(os.path.realpath(folder))
    if not real.is_relative_to(root):
        raise UnsafeFileError(f"{path} points outside its folder {folder} (to {real}); it is not read")
    return real


def check_weights(path: str | os.PathLike[str], allow_pickle: bool, what: str) -> str:
    """The file's kind; raises :class:`UnsafeFileError` for a pickle-based one unless
    ``allow_pickle``. ``what`` names the file in the sentence (e.g. ``model 'sd'``)."""
    kind = weights_kind(path)
    if kind in PICKLE_BASED and not allow_pickle:
        raise UnsafeFileError(
            f"{what}: {Path(path).name} is pickle-based (whatever its name says), and loading it can run any "
            f"code it contains. Use a .safetensors version, or start the server with --allow-unsafe-checkpoints "
            f"if you trust the file.")
    return kind


def refuse_pickled_file(source: str, allow_pickle: bool, what: str, error: type[Exception] = UnsafeFileError) -> None:
    """For a model's configured path: when it is a file, refuse it (raising ``error``) if its
    content is pickle-based and ``allow_pickle`` is off. Folders and hub ids pass."""
    if allow_pickle or not os.path.isfile(source):
        return
    try:
        check_weights(source, False, what)
    except UnsafeFileError as exc:
        raise error(str(exc)) from None
    except OSError:
        return  # unreadable: the loader says so in its own words
