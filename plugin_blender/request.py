"""The request model: everything needed to reproduce one generation, as one serialisable value.
No ``bpy`` here.

Operators read the scene and the settings into a :class:`GenerationRequest`; the request turns
itself into the wire's ``SubmitJob`` plus image payloads. ``to_dict``/``from_dict`` round-trip
through msgpack (images as raw bytes), so a generation can be stored and run again.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .protocol import ImageFormat, ImagePayload, JobParams, SubmitJob, Task

#: Sizes are rounded down to a multiple of this: latent diffusion models work on 8-pixel blocks.
SIZE_STEP = 8
#: Smallest and largest side this plugin asks for (the server has its own limits too).
MIN_SIDE, MAX_SIDE = 64, 4096

#: The image roles each task this plugin sends must (first) and may (second) carry.
ROLES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    Task.DEPTH2IMG: (frozenset({"depth"}), frozenset({"image"})),
    Task.IMG2IMG: (frozenset({"image"}), frozenset()),
}


class RequestError(ValueError):
    """A request that cannot be sent; the message says what to change."""


def fit_size(width: int, height: int) -> tuple[int, int]:
    """``width`` × ``height`` rounded down to multiples of :data:`SIZE_STEP`; raises
    :class:`RequestError` if a side falls outside [MIN_SIDE, MAX_SIDE]."""
    w, h = int(width) // SIZE_STEP * SIZE_STEP, int(height) // SIZE_STEP * SIZE_STEP
    for name, value in (("width", w), ("height", h)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise RequestError(f"the {name} is {value} px; use {MIN_SIDE} to {MAX_SIDE} px")
    return w, h


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: task, parameters and input images by role.

    ``None`` (or ``""`` for the model) means the server's default for the model. Construction
    validates what the plugin can know without the server (roles, sizes, image shapes) and raises
    :class:`RequestError`; the server checks the rest (ranges, model capabilities) on submit.
    """

    task: str
    width: int
    height: int
    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    strength: float | None = None
    images: Mapping[str, ImagePayload] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in ROLES:
            raise RequestError(f"this plugin sends {', '.join(sorted(ROLES))}, not {self.task!r}")
        if fit_size(self.width, self.height) != (self.width, self.height):
            raise RequestError(f"the size {self.width}x{self.height} must be a multiple of {SIZE_STEP}; "
                               f"use {fit_size(self.width, self.height)[0]}x{fit_size(self.width, self.height)[1]}")
        required, optional = ROLES[self.task]
        roles = set(self.images)
        if missing := required - roles:
            raise RequestError(f"a {self.task} request needs the image role(s) {', '.join(sorted(missing))}")
        if extra := roles - required - optional:
            raise RequestError(f"a {self.task} request takes no image role(s) {', '.join(sorted(extra))}")
        for role, image in self.images.items():
            if (image.width, image.height) != (self.width, self.height):
                raise RequestError(f"the {role} image is {image.width}x{image.height}; "
                                   f"it must match the request's {self.width}x{self.height}")
        if "depth" in self.images and self.images["depth"].format is not ImageFormat.DEPTH32F:
            raise RequestError(f"the depth image must be depth32f, got {self.images['depth'].format.value}")
        object.__setattr__(self, "images", dict(self.images))

    # -- to the wire

    def params(self) -> JobParams:
        return JobParams(prompt=self.prompt, negative_prompt=self.negative_prompt, model=self.model,
                         seed=self.seed, steps=self.steps, cfg_scale=self.cfg_scale,
                         strength=self.strength, width=self.width, height=self.height)

    def job(self, job_id: str) -> SubmitJob:
        """The ``SubmitJob`` for this request; send it with :meth:`payloads`."""
        return SubmitJob(job_id=job_id, task=self.task, params=self.params(),
                         images={role: image.id for role, image in self.images.items()})

    def payloads(self) -> list[ImagePayload]:
        return list(self.images.values())

    # -- storage

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of str, numbers, None and bytes (msgpack-ready; not JSON: images are bytes)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "images"}
        out["images"] = {role: {"format": image.format.value, "width": image.width, "height": image.height,
                                "data": image.data} for role, image in self.images.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationRequest":
        """Inverse of :meth:`to_dict`; raises :class:`RequestError` on a malformed dict."""
        try:
            images = {role: ImagePayload.build(item["format"], int(item["width"]), int(item["height"]), bytes(item["data"]))
                      for role, item in dict(data.get("images") or {}).items()}
            values = {f.name: data[f.name] for f in fields(cls) if f.name != "images" and f.name in data}
        except (KeyError, TypeError, ValueError) as exc:
            raise RequestError(f"not a stored Easel request: {exc}") from None
        except Exception as exc:  # protocol's LocalProtocolError: bytes that cannot be that image
            raise RequestError(f"a stored image is damaged: {exc}") from None
        return cls(images=images, **values)
