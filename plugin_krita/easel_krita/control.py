"""Control layers with no host: what a marking says, how it is stored in a document, which of the
server's ControlNets and preprocessors serve it, and how it becomes a ``ControlUnit``.

A painter marks any layer as a *control layer*: its pixels guide every job (Generate, Refine,
Fill, Expand) through a ControlNet of the layer's *type* (canny, depth, pose, …), with a strength
and an optional start/end range of the steps. The marking lives in the document, so it survives
saving and loading: Krita keeps document annotations and layer ids in ``.kra`` files (checked in
real Krita 5.1.5 by ``tests/krita/test_krita_control_e2e.py``), and this module writes the
annotation's bytes (:func:`encode_annotation`) and reads them back (:func:`decode_annotation`).

Which ControlNet a layer uses is decided per job (:func:`pick_controlnet`): the server's
ControlNet of the layer's type for the job model's family. So the same document works with an SD
1.5 model and an SDXL model, as long as the server has a ControlNet of that type for both. A
model of kind ``control`` (FLUX.1 Canny) takes its control image itself: its one control layer's
unit names the model, at full strength over every step (the layer's strength and range set
nothing there, and the docker says so).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .clientkit.controls import (
    FULL_STRENGTH, PickError, check_own_control, controlnets, pick_controlnet as _pick, takes_own_control,
)
from .clientkit.limits import MAX_CONTROL_UNITS, MAX_UNIT_WEIGHT
from .layer_marks import decode_marks, encode_marks
from .protocol import ControlUnit, ModelInfo

#: Annotation type under which a document keeps its control layers (Krita: ``Document.setAnnotation``).
ANNOTATION_TYPE = "easel.controls"
ANNOTATION_DESCRIPTION = "Easel control layers"
#: Control layers one job may use (the protocol takes 4 control units per job).
MAX_CONTROL_LAYERS = MAX_CONTROL_UNITS
#: Largest strength the form offers (the protocol accepts weights 0..2).
MAX_STRENGTH = MAX_UNIT_WEIGHT


class ControlError(ValueError):
    """A control layer cannot be used as asked; the message is a sentence for the painter."""


@dataclass(frozen=True)
class ControlType:
    """A kind of control input: its id (the servers' ``ModelInfo.control_type``), a label for the
    docker, and the preprocessors that make it from a picture, best first."""

    id: str
    label: str
    preprocessors: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


#: The control types the docker offers, in its order. Ids match the reference server's
#: ``backend.models.CONTROL_TYPES``; a server may list others, which are offered too.
CONTROL_TYPES: tuple[ControlType, ...] = (
    ControlType("scribble", "Scribble", ("scribble_hed",), ("sketch",)),
    ControlType("lineart", "Line art", ("lineart_standard", "lineart", "lineart_coarse", "lineart_anime"),
                ("line art", "line_art", "line-art")),
    ControlType("canny", "Canny edges", ("canny",)),
    ControlType("softedge", "Soft edges", ("softedge_hed", "softedge_pidi"), ("hed", "pidi")),
    ControlType("depth", "Depth", ("depth_midas", "depth_zoe"), ("midas", "zoe")),
    ControlType("normal", "Normal map", ("normal_bae",)),
    ControlType("openpose", "Pose", ("openpose", "openpose_full"), ("pose", "dwpose")),
    ControlType("mlsd", "Straight lines (M-LSD)", ("mlsd",)),
    ControlType("segmentation", "Segmentation", (), ("seg",)),
    ControlType("shuffle", "Shuffle (style)", ("shuffle",)),
    ControlType("tile", "Tile (detail)", ()),
    # References guide through the server's reference adapter, not a ControlNet (references.py).
    ControlType("reference", "Reference image", (), ("ip-adapter", "ipadapter", "redux")),
    ControlType("reference_face", "Reference: face", ()),
)
_BY_ID = {t.id: t for t in CONTROL_TYPES}


def control_type(name: str) -> ControlType:
    """The control type named ``name`` (its id, an alias or its label, any case). A name this
    plugin does not know is taken as a server's own type id (``ModelInfo.control_type``) and kept
    as it is. Raises :class:`ControlError` for an empty name."""
    key = " ".join(str(name).split()).lower()
    if not key:
        raise ControlError("pick a control type (canny, depth, pose, …)")
    for known in CONTROL_TYPES:
        if key == known.id or key in known.aliases or key == known.label.lower():
            return known
    if len(key) > 40 or not all(c.isalnum() or c in "_-" for c in key):
        raise ControlError(f"{name!r} is not a control type; use one of {', '.join(t.id for t in CONTROL_TYPES)}")
    return ControlType(key, key)


def preprocessor_type(name: str) -> str:
    """The control type a preprocessor makes (``depth_zoe`` → ``depth``); "" when unknown.
    Names this plugin does not list are matched by their first word (``depth_anything`` → depth)."""
    for known in CONTROL_TYPES:
        if name in known.preprocessors:
            return known.id
    head = name.split("_", 1)[0].lower()
    for known in CONTROL_TYPES:
        if head == known.id or head in known.aliases:
            return known.id
    return ""


def preprocessors_for(type_id: str, available: Iterable[str]) -> tuple[str, ...]:
    """The server's preprocessors (``available``, from ``Capabilities.preprocessors``) that make
    ``type_id`` images, best first: this plugin's preference order, then any others of that type."""
    available = tuple(available)
    known = _BY_ID.get(type_id)
    ordered = [p for p in (known.preprocessors if known else ()) if p in available]
    ordered += [p for p in available if p not in ordered and preprocessor_type(p) == type_id]
    return tuple(ordered)


@dataclass(frozen=True)
class ControlSpec:
    """What marks a layer as a control input: its type, how strongly it guides (the ControlNet
    weight, 0..2) and which part of the steps it guides (``start`` < ``end``, fractions 0..1)."""

    type: str
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", control_type(self.type).id)
        for name in ("strength", "start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ControlError(f"the control {name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.strength <= MAX_STRENGTH:
            raise ControlError(f"the control strength must be between 0 and {MAX_STRENGTH:g}, got {self.strength:g}")
        if not (0.0 <= self.start < self.end <= 1.0):
            raise ControlError(f"the control range must have 0 ≤ start < end ≤ 1, got {self.start:g} to {self.end:g}")

    @property
    def label(self) -> str:
        return control_type(self.type).label

    def describe(self) -> str:
        """``"canny 0.8"``, plus the range when it is not the whole job: ``"depth 1 (0–0.6)"``."""
        text = f"{self.type} {self.strength:g}"
        if (self.start, self.end) != (0.0, 1.0):
            text += f" ({self.start:g}–{self.end:g})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "strength": self.strength, "start": self.start, "end": self.end}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ControlSpec":
        """Raises :class:`ControlError` when ``data`` is not a valid marking."""
        if not isinstance(data, Mapping):
            raise ControlError("a control marking must be a map")
        kind = data.get("type")
        if not isinstance(kind, str):
            raise ControlError("a control marking needs a type")
        return cls(kind, data.get("strength", 1.0), data.get("start", 0.0), data.get("end", 1.0))


# -- the document annotation

def encode_annotation(marks: Mapping[str, ControlSpec]) -> bytes:
    """The annotation's bytes for ``marks`` (layer id → spec): UTF-8 JSON, keys sorted, so the
    same marks always give the same bytes."""
    return encode_marks({layer_id: spec.to_dict() for layer_id, spec in marks.items()})


def decode_annotation(data: bytes | None) -> dict[str, ControlSpec]:
    """Marks (layer id → spec) from an annotation's bytes. Never raises: a document saved by a
    newer or broken plugin gives no marks (or just the entries that parse), not an error that
    stops every job."""
    marks: dict[str, ControlSpec] = {}
    for layer_id, entry in decode_marks(data):
        try:
            marks[layer_id] = ControlSpec.from_dict(entry)
        except ControlError:
            continue
    return marks


# -- ControlNets

def pick_controlnet(models: Iterable[ModelInfo], family: str, type_id: str) -> ModelInfo:
    """The server's ControlNet for control type ``type_id`` and model family ``family``
    (:func:`clientkit.controls.pick_controlnet`). Raises :class:`ControlError` naming what the
    server has instead, so the painter knows whether to pick another model or type."""
    try:
        return _pick(models, family, type_id, how_to_add="add one to its configuration "
                                                         "(models with kind = \"controlnet\"), or unmark the layer")
    except PickError as exc:
        raise ControlError(str(exc)) from None


def offered_types(models: Iterable[ModelInfo], model: ModelInfo | None = None) -> tuple[str, ...]:
    """Control types worth offering for a server: this plugin's list in its order, then any type
    the server's ControlNets name that the list lacks. (Types without a ControlNet stay offered:
    a layer can be marked before a ControlNet is configured; the job then says what is missing.)
    For a chosen ``model`` of kind ``control`` of a known type: that type only."""
    if takes_own_control(model) and model.control_type:
        return (model.control_type,)
    ids = [t.id for t in CONTROL_TYPES]
    ids += sorted({n.control_type for n in controlnets(models) if n.control_type and n.control_type not in ids})
    return tuple(ids)


@dataclass(frozen=True)
class ControlInput:
    """One control layer as a job uses it: the layer's name and id (for the history and the
    docker), its marking, and the ControlNet picked for the job's model. Serialisable; the pixels
    travel separately (they are read from the layer when the job is sent)."""

    layer_name: str
    layer_id: str
    spec: ControlSpec
    model: str

    def unit(self, image_id: str) -> ControlUnit:
        """The wire unit for this input with its uploaded image's id."""
        return ControlUnit(self.model, image_id, self.spec.strength, self.spec.start, self.spec.end)

    def to_dict(self) -> dict[str, Any]:
        return {"layer_name": self.layer_name, "layer_id": self.layer_id, "model": self.model, **self.spec.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ControlInput":
        if not isinstance(data, Mapping):
            raise ControlError("a control input must be a map")
        name, layer_id, model = data.get("layer_name", ""), data.get("layer_id", ""), data.get("model", "")
        if not all(isinstance(v, str) for v in (name, layer_id, model)):
            raise ControlError("a control input's layer_name, layer_id and model must be text")
        return cls(name, layer_id, ControlSpec.from_dict(data), model)


def describe(spec: ControlSpec, model: ModelInfo | None = None) -> str:
    """A control layer's row text (:meth:`ControlSpec.describe`); on a ``control`` model, which
    uses it at full strength whatever the layer says, that instead."""
    if takes_own_control(model) and spec.strength > 0:
        return f"{spec.type}, full strength (set by {model.name or model.id})"
    return spec.describe()


def plan_controls(layers: Sequence[tuple[str, str, ControlSpec]], models: Iterable[ModelInfo],
                  family: str, model: ModelInfo | None = None) -> tuple[ControlInput, ...]:
    """The control inputs of a job whose model is of ``family``, from the document's marked layers
    (``(name, id, spec)``, bottom first). Layers at strength 0 guide nothing and are left out.
    Raises :class:`ControlError` when a layer's type has no ControlNet for that family, or when
    more layers are marked than one job takes. On a ``model`` of kind ``control`` the one active
    layer of its type names the model itself at full strength (anything else: a sentence)."""
    from .references import is_reference  # references guide through adapters (references.py)

    used = [(name, layer_id, spec) for name, layer_id, spec in layers if spec.strength > 0 and not is_reference(spec.type)]
    if len(used) > MAX_CONTROL_LAYERS:
        raise ControlError(f"{len(used)} control layers are active, at most {MAX_CONTROL_LAYERS} guide one job; "
                           f"set the strength of the others to 0 or unmark them")
    if takes_own_control(model):
        try:
            check_own_control(model, [spec.type for _name, _id, spec in used],
                              other="set the others' strength to 0 or unmark them")
        except PickError as exc:
            raise ControlError(str(exc)) from None
        name, layer_id, spec = used[0]
        return (ControlInput(name, layer_id, ControlSpec(spec.type, *FULL_STRENGTH), model.id),)
    models = tuple(models)
    out = []
    for name, layer_id, spec in used:
        try:
            net = pick_controlnet(models, family, spec.type)
        except ControlError as exc:
            raise ControlError(f"control layer {name!r}: {exc}") from None
        out.append(ControlInput(name, layer_id, spec, net.id))
    return tuple(out)
