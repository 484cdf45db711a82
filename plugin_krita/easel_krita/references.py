"""Reference layers with no host: a reference is a control layer of a reference type.

A painter marks any layer as a reference the way a control layer is marked (``control.py``: the
docker's control-layer list, a type, a strength, a step range), with the type *Reference image*
(the server's default adapter for the model's family: IP-Adapter for SD, Redux for Flux) or
*Reference: face* (its face adapter). The layer's picture then guides every job by example,
through the adapter, instead of through a ControlNet; the strength is the reference's weight.
Like every marked layer it is kept out of the picture a job reads, and saved with the document.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from .clientkit.controls import PickError
from .clientkit.guides import pick_reference_model
from .control import ControlError, ControlInput, ControlSpec
from .protocol import ModelInfo, ReferenceImage

#: The control type ids that mark a reference (``reference``, ``reference_<variant>``).
REFERENCE = "reference"


def is_reference(type_id: str) -> bool:
    return type_id == REFERENCE or type_id.startswith(REFERENCE + "_")


def variant(type_id: str) -> str:
    """``reference_face`` → ``face``; ``reference`` → ``""`` (the server's default adapter)."""
    return type_id[len(REFERENCE) + 1:] if type_id.startswith(REFERENCE + "_") else ""


def plan_references(layers: Sequence[tuple[str, str, ControlSpec]], models: Iterable[ModelInfo],
                    family: str) -> tuple[ControlInput, ...]:
    """The reference inputs of a job whose model is of ``family``, from the document's marked
    layers (``(name, id, spec)``, bottom first; other control types are skipped, and so are
    references at strength 0). Each names the adapter picked for the family (``model``; ``""``:
    the server's default). Raises :class:`ControlError` when the server has no such adapter."""
    models = tuple(models)
    out = []
    for name, layer_id, spec in layers:
        if not is_reference(spec.type) or spec.strength <= 0:
            continue
        try:
            model = pick_reference_model(models, family, variant(spec.type))
        except PickError as exc:
            raise ControlError(f"reference layer {name!r}: {exc}") from None
        out.append(ControlInput(name, layer_id, spec, model))
    return tuple(out)


def reference_image(reference: ControlInput, image_id: str) -> ReferenceImage:
    """The wire reference for a planned reference input with its uploaded image's id."""
    spec = reference.spec
    return ReferenceImage(image_id, spec.strength, spec.start, spec.end, reference.model)
