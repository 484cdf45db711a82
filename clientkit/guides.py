"""References and regions as a client builds them: the host-free parts every plugin shares.

A *reference* is a picture that guides a job ("in the style of this", "this face"): the plugin
reads it, crops it to what is painted (:func:`opaque_bounds`), bounds its size
(:func:`fit_within`) and sends it as a :class:`~protocol.ReferenceImage` naming the server's
adapter for it (:func:`pick_reference_model`: ``""`` is the server's default for the family).
A *region* is a part of the picture with its own prompt; its mask is the coverage (alpha) of
what the painter painted (:func:`coverage_mask`), as ``grey8`` at the size control images have.
:func:`check_counts` holds both to the limits the server's ``welcome`` announced, in sentences
from :mod:`.wording`; :func:`with_guides` puts them into a ``SubmitJob``.

Standard library and ``protocol`` only; pixel buffers are plain ``bytes``.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterable, Sequence

from protocol import ImagePayload, ModelInfo, ReferenceImage, Region, SubmitJob

from . import wording
from .controls import PickError
from .limits import ServerLimits

#: ``ModelInfo.kind`` of the server's reference adapters (IP-Adapter, Flux Redux).
REFERENCE_KIND = "reference"
#: Largest side a reference image is sent at: the adapters' image encoders see 224–384 px, so more
#: only costs upload time.
REFERENCE_MAX_SIDE = 1024


class GuideError(ValueError):
    """A reference or region cannot be used as asked; the message is a sentence for the user."""


def reference_models(models: Iterable[ModelInfo]) -> tuple[ModelInfo, ...]:
    """The server's reference adapters, in its order."""
    return tuple(m for m in models if m.kind == REFERENCE_KIND)


def pick_reference_model(models: Iterable[ModelInfo], family: str, variant: str = "") -> str:
    """The id of the server's reference adapter of ``variant`` (``face``, ``plus``, …: its
    ``control_type`` or a word of it — the reference server says ``ip_adapter_face`` — or a word of
    its id) for a base model of ``family``; ``""`` for no
    variant: the server's default adapter for the family. Raises :class:`PickError` naming what
    the server lists instead."""
    if not variant:
        return ""
    adapters = reference_models(models)
    for adapter in adapters:
        words = re.split(r"[^a-z0-9]+", f"{adapter.control_type} {adapter.id}".lower())
        if adapter.family == family and (adapter.control_type == variant or variant in words):
            return adapter.id
    listed = sorted({a.control_type or a.id for a in adapters if a.family == family})
    if listed:
        raise PickError(f"the server has no {variant} reference adapter for {family} models (it has: "
                        f"{', '.join(listed)}); pick the plain reference type")
    raise PickError(f"the server has no {variant} reference adapter for {family or 'this'} models; "
                    f"pick the plain reference type, or add one to the server")


def coverage_mask(pixels: bytes, width: int, height: int) -> bytes:
    """The coverage of a 4-byte-per-pixel buffer (RGBA or BGRA, straight alpha) as a ``grey8``
    mask: its alpha, 255 = fully painted. Raises ``ValueError`` for a buffer of another size."""
    if len(pixels) != width * height * 4:
        raise ValueError(f"a {width}x{height} RGBA buffer holds {width * height * 4} bytes, got {len(pixels)}")
    return bytes(pixels[3::4])


def is_empty(mask: bytes) -> bool:
    """Whether a ``grey8`` mask covers nothing."""
    return not mask.strip(b"\x00")


def opaque_bounds(pixels: bytes, width: int, height: int) -> tuple[int, int, int, int] | None:
    """``(x, y, width, height)`` of the smallest box holding every pixel with alpha > 0 of a
    4-byte-per-pixel buffer, or ``None`` when nothing is painted."""
    alpha = coverage_mask(pixels, width, height)
    top = bottom = -1
    left, right = width, 0
    for y in range(height):
        row = alpha[y * width:(y + 1) * width]
        stripped = row.lstrip(b"\x00")
        if not stripped:
            continue
        top = y if top < 0 else top
        bottom = y
        left = min(left, width - len(stripped))
        right = max(right, len(row.rstrip(b"\x00")))
    if top < 0:
        return None
    return left, top, right - left, bottom + 1 - top


def fit_within(width: int, height: int, max_side: int = REFERENCE_MAX_SIDE) -> tuple[int, int]:
    """``width`` x ``height`` scaled down (aspect kept, at least 1 px a side) so no side exceeds
    ``max_side``; unchanged when it fits."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_counts(references: int, regions: int, limits: ServerLimits) -> None:
    """Raise :class:`GuideError` when a job with ``references`` reference images (the regions'
    own included) or ``regions`` regions exceeds what the server announced."""
    if references > limits.max_references:
        raise GuideError(wording.too_many_references(references, limits.max_references))
    if regions > limits.max_regions:
        raise GuideError(wording.too_many_regions(regions, limits.max_regions))


def with_guides(job: SubmitJob, images: Sequence[ImagePayload], references: Sequence[ReferenceImage],
                regions: Sequence[Region], pictures: Iterable[ImagePayload]) -> tuple[SubmitJob, list[ImagePayload]]:
    """``job`` carrying ``references`` and ``regions``, and its images plus ``pictures`` (the
    references' images and the regions' masks), each content id once. Nothing is copied when
    there is nothing to add, so a job without guides stays exactly as it was."""
    if not references and not regions:
        return job, list(images)
    params = replace(job.params, references=tuple(references), regions=tuple(regions))
    out = list(images)
    seen = {image.id for image in out}
    for picture in pictures:
        if picture.id not in seen:
            seen.add(picture.id)
            out.append(picture)
    return replace(job, params=params), out
