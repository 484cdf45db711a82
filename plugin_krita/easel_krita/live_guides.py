"""Live mode's references and regions: the document's reference layers and region layers guide
every live job exactly as they guide Refine (``guides.py`` plans them and reads their pixels), and
what the chosen model cannot take is left out with one sentence instead of failing every stroke.

A live job carries the same :class:`~.protocol.ReferenceImage`\\ s and :class:`~.protocol.Region`\\ s a
Refine of the live area would: each reference the layer's painted box (at most 1024 px a side),
each region mask the layer's coverage over the live area at the live job's size. The images are
content-addressed like the live picture and the control images: an unchanged reference or mask
keeps its id, so the live loop names it again and never uploads it again, and a live job whose
picture, masks and references did not change is not sent at all (the job's parameters name them).

What the model cannot take, live mode learns twice over: before sending, from the server's model
list (references need an adapter of ``kind`` ``reference`` for the model's family,
:data:`~.clientkit.guides.REFERENCE_KIND`), and from the server's own answer (a live job that
fails ``unsupported``, ``unknown_model`` or ``model_mismatch`` with ``details.field``
``references`` or ``regions``). From then on the live jobs on that model go without that field,
the message line says so once, and every *done* line keeps a short reminder. No ``krita`` and no Qt
here.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable, Protocol, Sequence

from .clientkit.guides import reference_models
from .clientkit.links import AsyncLink
from .guides import Guides
from .host import ControlLayer, Doc, Layer
from .protocol import ErrorCode, JobFailed, ModelInfo
from .references import is_reference
from .request import GenerationRequest
from .view import ViewState

log = logging.getLogger("easel.krita.live")

REFERENCES, REGIONS = "references", "regions"
#: Failures of a live job that say its model cannot take a field (``details.field``).
_REFUSING = (ErrorCode.UNSUPPORTED, ErrorCode.UNKNOWN_MODEL, ErrorCode.MODEL_MISMATCH)
_WHAT = {REFERENCES: "reference layers", REGIONS: "region layers"}


class GuidesForm(Protocol):
    """What live guides need of the controller."""

    guides: Guides
    connection: AsyncLink
    view: ViewState


class LiveGuides:
    """The references and regions of live mode's jobs (one per live mode). Main thread."""

    def __init__(self, form: GuidesForm, notice: Callable[[str], None]) -> None:
        self.form = form
        self._notice = notice
        #: What the server refused: (model as the form names it, field) → its sentence.
        self.refused: dict[tuple[str, str], str] = {}
        self._said: set[tuple[str, str, str]] = set()
        #: What the newest live job left out, as the *done* line's reminder ("" when nothing).
        self.left_out = ""

    def plan(self, request: GenerationRequest, doc: Doc, marked: Sequence[ControlLayer],
             model: ModelInfo | None) -> tuple[GenerationRequest, tuple[Layer, ...]]:
        """The live ``request`` with ``doc``'s references and regions that ``model`` takes, and
        their layers (as :meth:`Guides.plan` gives them). Raises what :meth:`Guides.plan` raises
        (a missing face adapter, too many references or regions): live is held back with that
        sentence, like Refine."""
        skip = {field: reason for field in (REFERENCES, REGIONS)
                if (reason := self.why_not(field, request.settings.model, model))}
        if REFERENCES in skip:
            if not any(is_reference(c.spec.type) and c.spec.strength > 0 for c in marked):
                del skip[REFERENCES]  # nothing marked: nothing left out
            marked = [c for c in marked if not is_reference(c.spec.type)]
        request, layers = self.form.guides.plan(request, doc, marked, model, self.form.view.server_models,
                                                self.form.connection.welcome)
        if REGIONS in skip and request.regions:
            request, layers = replace(request, regions=()), layers[:len(request.references)]
        elif REGIONS in skip:
            del skip[REGIONS]  # nothing marked: nothing left out
        self.left_out = "; ".join(f"without the {_WHAT[field]}: {reason}" for field, reason in skip.items())
        for field, reason in skip.items():
            self._say_once(field, request.settings.model, reason)
        return request, layers

    def why_not(self, field: str, form_model: str, model: ModelInfo | None) -> str:
        """Why live jobs on ``model`` go without ``field`` (``""``: they carry it)."""
        refused = self.refused.get((form_model, field))
        if refused:
            return refused
        if field == REFERENCES and model is not None:
            listed = self.form.view.server_models
            adapters = reference_models(listed)
            # An adapter of unknown family may fit: only a list with none that can is trusted.
            if listed and not any(a.family in (model.family, "") for a in adapters):
                return f"the server has no reference adapter for {model.family or 'this'} models"
        return ""

    def learn(self, request: GenerationRequest, event: Any) -> bool:
        """A live job failed: when the server said its model cannot take references or regions,
        remember it (the next live jobs on that model go without them) and return True."""
        if not isinstance(event, JobFailed) or event.code not in _REFUSING:
            return False
        field = (event.details or {}).get("field")
        if field not in (REFERENCES, REGIONS) or not getattr(request, field):
            return False
        self.refused[(request.settings.model, field)] = event.message.rstrip(".")
        log.info("easel live: %s left out of live jobs on %r: %s", field, request.settings.model, event.message)
        return True

    def _say_once(self, field: str, form_model: str, reason: str) -> None:
        key = (form_model, field, reason)
        if key not in self._said:
            self._said.add(key)
            self._notice(f"Live goes on without the {_WHAT[field]}: {reason}.")
