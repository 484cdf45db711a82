"""Region layers with no host: what marks a layer as a region, how the marks are stored in a
document, and how a region travels in a request.

A painter marks a paint layer or a group as a *region* and gives it a prompt: where the layer is
painted (its alpha, a group's merged alpha) that prompt applies, and the job's own prompt covers
the rest. The marks live in a document annotation keyed by layer id, like the control layers'
(``control.py``), so they are saved in the ``.kra`` file and come back when it is opened.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .layer_marks import decode_marks, encode_marks

#: Annotation type under which a document keeps its region marks.
ANNOTATION_TYPE = "easel.regions"
ANNOTATION_DESCRIPTION = "Easel region layers"
#: Longest region prompt (characters); the server applies its own token limits.
MAX_REGION_PROMPT_CHARS = 1000


class RegionMarkError(ValueError):
    """A region cannot be marked as asked; the message is a sentence for the painter."""


def check_prompt(prompt: str) -> str:
    """The prompt with its spaces tidied; raises :class:`RegionMarkError` for an empty or too
    long one."""
    text = " ".join(str(prompt).split())
    if not text:
        raise RegionMarkError("type the region's prompt first: what to make where the layer is painted")
    if len(text) > MAX_REGION_PROMPT_CHARS:
        raise RegionMarkError(f"a region's prompt may have {MAX_REGION_PROMPT_CHARS} characters, "
                              f"this one has {len(text)}; shorten it")
    return text


def encode_annotation(marks: Mapping[str, str]) -> bytes:
    """The annotation's bytes for ``marks`` (layer id → prompt): UTF-8 JSON, keys sorted."""
    return encode_marks({layer_id: {"prompt": prompt} for layer_id, prompt in marks.items()}, ensure_ascii=False)


def decode_annotation(data: bytes | None) -> dict[str, str]:
    """Marks (layer id → prompt) from an annotation's bytes. Never raises: a broken or newer
    annotation gives the entries that parse (or none), not an error that stops every job."""
    marks = {}
    for layer_id, entry in decode_marks(data):
        prompt = entry.get("prompt") if isinstance(entry, dict) else None
        if isinstance(prompt, str) and prompt.strip() and len(prompt) <= MAX_REGION_PROMPT_CHARS:
            marks[layer_id] = prompt
    return marks


@dataclass(frozen=True)
class RegionLayer:
    """A layer marked as a region, as the docker lists it (``layer`` is the host's handle)."""

    layer: Any
    name: str
    layer_id: str
    prompt: str


@dataclass(frozen=True)
class RegionInput:
    """One region as a job uses it: its layer's name and id and its prompt. Serialisable; the
    mask travels separately (read from the layer when the job is sent)."""

    layer_name: str
    layer_id: str
    prompt: str

    def to_dict(self) -> dict[str, Any]:
        return {"layer_name": self.layer_name, "layer_id": self.layer_id, "prompt": self.prompt}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RegionInput":
        """Raises :class:`RegionMarkError` when ``data`` is not a stored region."""
        if not isinstance(data, Mapping):
            raise RegionMarkError("a region must be a map")
        values = [data.get(key) for key in ("layer_name", "layer_id", "prompt")]
        if not all(isinstance(v, str) for v in values):
            raise RegionMarkError("a region's layer_name, layer_id and prompt must be text")
        return cls(*values)
