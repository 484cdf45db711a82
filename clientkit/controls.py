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


#: ``ModelInfo.kind`` of models a job names elsewhere (``ControlUnit.model``, ``ReferenceImage.model``),
#: never as its own model; every other kind (``base``, ``inpaint``, ``control``, …) runs jobs.
ADAPTER_KINDS = ("controlnet", "reference")


def job_models(models: Iterable[ModelInfo]) -> tuple[ModelInfo, ...]:
    """The server's models a job can name as its model (not ControlNets, not reference adapters)."""
    return tuple(m for m in models if m.kind not in ADAPTER_KINDS)


def loras_for(loras: Iterable[AddonInfo], family: str) -> tuple[AddonInfo, ...]:
    """The server's LoRAs that fit a model of ``family`` (same family, or family unknown)."""
    return tuple(a for a in loras if a.kind == "lora" and (not a.family or not family or a.family == family))


def unfit_loras(chosen: Sequence[str], loras: Iterable[AddonInfo], family: str) -> list[str]:
    """Ids of chosen LoRAs the server does not list for ``family`` (gone, or made for another family)."""
    fitting = {a.id for a in loras_for(loras, family)}
    return [lora_id for lora_id in chosen if lora_id not in fitting]


# -- models that take their control image themselves (kind "control": FLUX.1 Canny)

#: The (weight, start, end) of the one unit a ``control`` model takes: full strength over every step.
FULL_STRENGTH = (1.0, 0.0, 1.0)


def takes_own_control(model: ModelInfo | None) -> bool:
    """True for a model whose transformer takes the control image itself (``kind`` ``control``): a
    job on it sends exactly one unit naming the model, at :data:`FULL_STRENGTH`, and no ControlNet."""
    return model is not None and model.kind == "control"


def _fits(model: ModelInfo, control_type: str) -> bool:
    return not model.control_type or model.control_type == control_type


def check_own_control(model: ModelInfo, control_types: Sequence[str], *, what: str = "control layer",
                      other: str = "unmark it") -> None:
    """For a job on a ``control`` model: ``control_types`` (one per control the job would send) must
    be exactly one of the model's type. Raises :class:`PickError` naming the model and what to do;
    ``what`` is the host's word for a control input, ``other`` how to drop an extra one."""
    kind = model.control_type or "control"
    name = f"model {model.name or model.id!r} ({kind} control model)"
    alt = f"or pick a base model with {kind} ControlNets"
    wrong = [t for t in control_types if not _fits(model, t)]
    if wrong:
        raise PickError(f"{name} takes no {wrong[0]} ControlNet, only its own {kind} image; {other}, or pick a "
                        f"base model with {wrong[0]} ControlNets")
    if not control_types:
        raise PickError(f"{name} needs exactly one {kind} {what}; add one, {alt}")
    if len(control_types) > 1:
        raise PickError(f"{name} takes exactly one {kind} {what}, {len(control_types)} are active; keep one and "
                        f"{other}, {alt}")


def pick_control(models: Iterable[ModelInfo], job_model: ModelInfo | None, control_type: str, wanted: str = "", *,
                 how_to_add: str = "add one to its configuration (models with kind = \"controlnet\")") -> ModelInfo:
    """The model a ``control_type`` unit of a job on ``job_model`` names: the job model itself when it
    takes its control image (:func:`takes_own_control`; ``wanted`` must then be "" or its id), else
    :func:`pick_controlnet` for its family. Raises :class:`PickError` with a sentence."""
    if takes_own_control(job_model):
        if wanted and wanted != job_model.id:
            raise PickError(f"model {job_model.name or job_model.id!r} takes its control image itself, not through "
                            f"ControlNet {wanted!r}; leave the ControlNet empty or pick a base model")
        check_own_control(job_model, (control_type,))
        return job_model
    return pick_controlnet(models, job_model.family if job_model is not None else "", control_type, wanted,
                           how_to_add=how_to_add)
