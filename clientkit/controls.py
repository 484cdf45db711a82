"""ControlNet and LoRA picking for a model's family, from the server's own lists.

The server lists its ControlNets among its models (``kind == "controlnet"``, with ``control_type``
and ``family``) and its LoRAs in ``ModelList.loras`` (``AddonInfo``). A job names a ControlNet of
the base model's family; a LoRA whose family the server could not tell (``""``) fits every model.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from protocol import AddonInfo, ModelInfo


class PickError(ValueError):
    """Nothing the server lists fits; the message is a sentence that says what to change."""


def controlnets(models: Iterable[ModelInfo]) -> tuple[ModelInfo, ...]:
    """The server's ControlNets (``kind`` ``controlnet``), in its order."""
    return tuple(m for m in models if m.kind == "controlnet")


def pick_controlnet(models: Iterable[ModelInfo], family: str, control_type: str, wanted: str = "", *,
                    how_to_add: str = "add one to its configuration (models with kind = \"controlnet\")") -> ModelInfo:
    """The server's ControlNet of ``control_type`` for a base model of ``family``: ``wanted`` (an id)
    checked, or else the first listed that matches. Raises :class:`PickError` naming what the server
    has instead; ``how_to_add`` is the host's advice when it has no ControlNet of that type at all."""
    nets = controlnets(models)
    if wanted:
        net = next((m for m in nets if m.id == wanted), None)
        if net is None:
            raise PickError(f"the server has no ControlNet {wanted!r}; pick one from the list or leave it empty")
        if net.control_type and net.control_type != control_type:
            raise PickError(f"ControlNet {wanted!r} is for {net.control_type}, not {control_type}; pick a "
                            f"{control_type} ControlNet or leave the field empty")
        if net.family != family:
            raise PickError(f"ControlNet {wanted!r} is for {net.family} models, the base model is {family}")
        return net
    for net in nets:
        if net.control_type == control_type and net.family == family:
            return net
    same_type = sorted({n.family for n in nets if n.control_type == control_type})
    if same_type:
        raise PickError(f"the server has a {control_type} ControlNet only for {', '.join(same_type)} models, and the "
                        f"chosen model is {family or 'unknown'}; pick a {', '.join(same_type)} model or another control type")
    for_family = sorted({n.control_type or "unknown" for n in nets if n.family == family})
    if for_family:
        raise PickError(f"the server has no {control_type} ControlNet for {family} models (it has: "
                        f"{', '.join(for_family)}); {how_to_add}")
    raise PickError(f"the server has no {control_type} ControlNet for {family or 'this'} models; {how_to_add}")


def loras_for(loras: Iterable[AddonInfo], family: str) -> tuple[AddonInfo, ...]:
    """The server's LoRAs that fit a model of ``family`` (same family, or family unknown)."""
    return tuple(a for a in loras if a.kind == "lora" and (not a.family or not family or a.family == family))


def unfit_loras(chosen: Sequence[str], loras: Iterable[AddonInfo], family: str) -> list[str]:
    """Ids of chosen LoRAs the server does not list for ``family`` (gone, or made for another family)."""
    fitting = {a.id for a in loras_for(loras, family)}
    return [lora_id for lora_id in chosen if lora_id not in fitting]
