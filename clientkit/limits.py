"""The server's limits as a client needs them: read from its ``welcome``, never copied.

Before a welcome arrived, :data:`UNKNOWN` holds the protocol's documented defaults (the values a
``Limits`` without fields has), so a host can check a request early and the server still has the
last word. Two bounds the welcome does not carry are fixed by the protocol itself
(``docs/protocol.md``): ControlNet units and LoRAs per job.
"""
from __future__ import annotations

from dataclasses import dataclass

from protocol import Limits, Welcome

#: Fixed by the protocol (docs/protocol.md, ``JobParams.controls`` / ``loras``), not sent in welcome.
MAX_CONTROL_UNITS = 4
MAX_LORAS = 8
MAX_UNIT_WEIGHT = 2.0
MIN_LORA_WEIGHT, MAX_LORA_WEIGHT = -2.0, 2.0


@dataclass(frozen=True)
class ServerLimits:
    max_image_side: int
    max_image_pixels: int
    max_batch_size: int
    max_client_jobs: int
    max_upload_bytes: int
    max_control_units: int = MAX_CONTROL_UNITS
    max_loras: int = MAX_LORAS
    #: References (those of the regions included) and regions one job may carry (welcome's).
    max_references: int = Limits.__dataclass_fields__["max_references"].default
    max_regions: int = Limits.__dataclass_fields__["max_regions"].default

    @classmethod
    def of(cls, limits: Limits) -> "ServerLimits":
        return cls(limits.max_image_side, limits.max_image_pixels, limits.max_batch_size,
                   limits.max_client_jobs, limits.max_upload_bytes,
                   max_references=limits.max_references, max_regions=limits.max_regions)

    @classmethod
    def from_welcome(cls, welcome: Welcome | None) -> "ServerLimits":
        """The limits ``welcome`` announced, or :data:`UNKNOWN` before one arrived."""
        return UNKNOWN if welcome is None else cls.of(welcome.limits)

    def check_image(self, width: int, height: int, what: str = "the image") -> None:
        """Raise ``ValueError`` with a sentence when an image of ``width`` x ``height`` is too big."""
        if max(width, height) > self.max_image_side:
            raise ValueError(f"{what} is {width}x{height}; the server takes at most {self.max_image_side} px a side")
        if width * height > self.max_image_pixels:
            raise ValueError(f"{what} is {width}x{height}; the server takes at most {self.max_image_pixels} pixels")


#: The protocol's defaults, until the server's welcome says otherwise.
UNKNOWN = ServerLimits.of(Limits(max_frame_bytes=0))
