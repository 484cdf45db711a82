"""Pixel order conversions between Blender and the wire. No ``bpy`` here.

Blender's ``Image.pixels`` is a flat float array, RGBA (or ``channels`` wide), rows bottom-up.
The wire (``protocol.images``) carries raw images rows top-down: RGBA8 bytes, or little-endian
float32 for depth. Every function states which order it takes and gives.
"""
from __future__ import annotations

import numpy as np


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")


def blender_to_rows(pixels: np.ndarray, width: int, height: int, channels: int = 4) -> np.ndarray:
    """Flat Blender pixels → (height, width, channels) float32, rows still bottom-up."""
    _check_size(width, height)
    flat = np.asarray(pixels, dtype=np.float32).reshape(-1)
    if flat.size != width * height * channels:
        raise ValueError(f"{width}x{height} with {channels} channels needs {width * height * channels} "
                         f"values, got {flat.size}")
    return flat.reshape(height, width, channels)


def blender_to_rgba8(pixels: np.ndarray, width: int, height: int, channels: int = 4) -> bytes:
    """Flat Blender float pixels (0..1, bottom-up) → RGBA8 bytes, rows top-down.

    Values are clipped to [0, 1] and rounded; a 3-channel image gets alpha 255, a 1-channel one
    is spread to grey.
    """
    rows = blender_to_rows(pixels, width, height, channels)[::-1]
    if channels == 1:
        rows = np.repeat(rows, 3, axis=2)
    if rows.shape[2] == 3:
        rows = np.concatenate([rows, np.ones((height, width, 1), np.float32)], axis=2)
    elif rows.shape[2] != 4:
        raise ValueError(f"cannot make RGBA from {channels} channels")
    return (np.clip(rows, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).tobytes()


def rgba8_to_blender(data: bytes, width: int, height: int) -> np.ndarray:
    """RGBA8 bytes (rows top-down) → flat float32 Blender pixels (0..1, rows bottom-up).

    Exact both ways: ``blender_to_rgba8(rgba8_to_blender(b, w, h), w, h) == b``.
    """
    _check_size(width, height)
    if len(data) != width * height * 4:
        raise ValueError(f"an RGBA8 image of {width}x{height} has {width * height * 4} bytes, got {len(data)}")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 4)[::-1]
    return (rows.astype(np.float32) / 255.0).reshape(-1)


def rgba8_rows(data: bytes, width: int, height: int) -> np.ndarray:
    """RGBA8 bytes → (height, width, 4) uint8, rows top-down (a view, no copy)."""
    _check_size(width, height)
    if len(data) != width * height * 4:
        raise ValueError(f"an RGBA8 image of {width}x{height} has {width * height * 4} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 4)


def depth_to_depth32f(depth: np.ndarray) -> bytes:
    """(height, width) depth, rows bottom-up (as rendered) → little-endian float32 bytes, rows top-down."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"a depth map is a 2-D array, got shape {depth.shape}")
    return np.ascontiguousarray(depth[::-1], dtype="<f4").tobytes()


def depth32f_to_depth(data: bytes, width: int, height: int) -> np.ndarray:
    """Little-endian float32 bytes, rows top-down → (height, width) float32, rows bottom-up."""
    _check_size(width, height)
    if len(data) != width * height * 4:
        raise ValueError(f"a depth32f image of {width}x{height} has {width * height * 4} bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<f4").reshape(height, width)[::-1].astype(np.float32)


def unit_to_grey8(values: np.ndarray) -> bytes:
    """(height, width) values in [0, 1], rows bottom-up (as rendered) → grey8 bytes, rows top-down.

    Values are clipped and rounded to the nearest of 256 levels (0 → 0, 1 → 255). This is how a
    normalised depth map (near bright, background 0) becomes a ControlNet-depth control image.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"a grey image is a 2-D array, got shape {values.shape}")
    return (np.clip(values[::-1], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).tobytes()
