"""LoRAs with no host: the painter's choices (id + weight), which of the server's LoRAs fit the
chosen model, and what goes on the wire (``JobParams.loras``).

The server lists its LoRAs in ``ModelList.loras`` (``AddonInfo``: id, name, family, trigger
words). The docker offers those of the current model's family; a LoRA whose family the server
could not tell (``""``) is offered for every model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .clientkit.controls import loras_for, unfit_loras  # noqa: F401 - loras_for: the docker takes it from here
from .clientkit.limits import MAX_LORA_WEIGHT, MAX_LORAS, MIN_LORA_WEIGHT
from .protocol import AddonInfo, LoraWeight

#: The weight range (the protocol's; negative weights invert a LoRA's effect).
MIN_WEIGHT, MAX_WEIGHT = MIN_LORA_WEIGHT, MAX_LORA_WEIGHT


class LoraError(ValueError):
    """A LoRA choice the server would refuse; the message says what to change."""


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA in the form: the server's id and its weight."""

    id: str
    weight: float = 1.0

    def check(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise LoraError("a LoRA needs the id the server listed")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise LoraError(f"LoRA {self.id}: the weight must be a number, got {self.weight!r}")
        if not MIN_WEIGHT <= self.weight <= MAX_WEIGHT:
            raise LoraError(f"LoRA {self.id}: the weight must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g}, got {self.weight:g}")

    def wire(self) -> LoraWeight:
        return LoraWeight(self.id, float(self.weight))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "weight": self.weight}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LoraChoice":
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
            raise LoraError(f"a LoRA must be a map with an id, got {data!r}")
        weight = data.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise LoraError(f"LoRA {data['id']}: the weight must be a number, got {weight!r}")
        return cls(data["id"], float(weight))


def check_choices(choices: Sequence[LoraChoice]) -> None:
    """Raise :class:`LoraError` for too many LoRAs, a LoRA chosen twice, or a bad weight."""
    if len(choices) > MAX_LORAS:
        raise LoraError(f"{len(choices)} LoRAs are chosen; at most {MAX_LORAS} apply to one job")
    seen: set[str] = set()
    for choice in choices:
        choice.check()
        if choice.id in seen:
            raise LoraError(f"LoRA {choice.id} is chosen twice; set one weight instead")
        seen.add(choice.id)


def unfit(choices: Sequence[LoraChoice], loras: Iterable[AddonInfo], family: str) -> list[str]:
    """Ids of chosen LoRAs the server does not list for ``family`` (gone, or made for another
    family); the controller refuses a job that names one, with a sentence."""
    return unfit_loras([c.id for c in choices], loras, family)
