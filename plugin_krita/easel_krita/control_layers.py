"""Control layers: the layers of a document marked as control inputs (the marks are saved in the
document), the list the docker shows for the active one, and the ControlNet units a guided job
sends for them, picked for the model's family.

The controller's ``refresh_control_layers``, ``mark_active_layer``, ``set_control`` and
``guidance`` are this room's; what it shows goes back through a :class:`ControlLayersShell` (the
controller). No ``krita`` and no Qt here: the document is reached through the
:class:`~.host.CanvasHost`.
"""
from __future__ import annotations

import logging
from typing import Protocol, Sequence

from .control import ControlError, ControlInput, ControlSpec, plan_controls
from .host import CanvasHost, ControlLayer, Doc, HostError, Layer
from .protocol import ModelInfo
from .view import ViewState, control_rows

log = logging.getLogger("easel.krita")


class ControlLayersShell(Protocol):
    """What the control layers show the painter, through the controller."""

    @property
    def view(self) -> ViewState: ...
    def show_control_layers(self, layers: tuple[ControlLayer, ...]) -> None: ...
    def say(self, text: str, error: bool = False) -> None: ...


class ControlLayers:
    """The control layers of the documents. Main thread, like the controller."""

    def __init__(self, host: CanvasHost, shell: ControlLayersShell) -> None:
        self.host = host
        self.shell = shell

    def refresh(self) -> tuple[ControlLayer, ...]:
        """Read the active document's control layers into the view (the docker lists them).
        Never raises; with no usable document the list is empty."""
        try:
            layers = tuple(self.host.control_layers(self.host.active_document()))
        except HostError:
            layers = ()
        except Exception:
            log.exception("easel: reading the control layers failed")
            layers = ()
        if control_rows(layers) != control_rows(self.shell.view.control_layers):
            self.shell.show_control_layers(layers)
        return layers

    def mark_active(self, spec: ControlSpec) -> bool:
        """Mark the layer the painter selected as a control layer (or change its marking). The
        marking is saved with the document. Returns whether it was marked; the reason is said."""
        try:
            doc = self.host.active_document()
            layer = self.host.active_layer(doc)
            if layer is None:
                raise HostError("select the layer to use as a control layer first")
            name, _ = self.host.layer_info(doc, layer)
            if name.startswith("Easel preview"):
                raise HostError("that is Easel's preview of a running job; pick a layer of your own")
            self.host.mark_control(doc, layer, spec)
        except (HostError, ControlError) as exc:
            self.shell.say(str(exc), error=True)
            return False
        self.refresh()
        self.shell.say(f"{name} is a control layer: {spec.describe()}. "
                       "Its pixels guide Generate, Refine, Fill and Expand.")
        return True

    def set(self, layer_id: str, spec: ControlSpec | None) -> None:
        """Change (``None``: remove) the marking of the control layer ``layer_id`` of the active
        document. The layer itself stays as it is."""
        try:
            doc = self.host.active_document()
            match = next((c for c in self.host.control_layers(doc) if c.layer_id == layer_id), None)
            if match is None:
                raise HostError("that control layer is no longer in this image")
            self.host.mark_control(doc, match.layer, spec)
        except (HostError, ControlError) as exc:
            self.shell.say(str(exc), error=True)
            return
        self.refresh()
        if spec is None:
            self.shell.say(f"{match.name} is no longer a control layer.")

    def marked(self, doc: Doc) -> list[ControlLayer]:
        layers = list(self.host.control_layers(doc))
        if control_rows(layers) != control_rows(self.shell.view.control_layers):
            try:
                if doc == self.host.active_document():
                    self.shell.show_control_layers(tuple(layers))
            except HostError:
                pass
        return layers

    def guidance(self, doc: Doc, model: ModelInfo | None) -> tuple[list[ControlLayer], tuple[ControlInput, ...],
                                                                   tuple[Layer, ...]]:
        """``doc``'s control layers (all marked ones: none is part of the picture), the control
        inputs a guided job on ``model`` sends, and the layers of those inputs in the same order.
        Raises :class:`ControlError` (a sentence) when the server has no fitting ControlNet."""
        marked = self.marked(doc)
        controls, layers = self.plan(marked, model)
        return marked, controls, layers

    def plan(self, marked: Sequence[ControlLayer],
                       model: ModelInfo | None) -> tuple[tuple[ControlInput, ...], tuple[Layer, ...]]:
        """The job's control inputs (a ControlNet picked per layer for the model's family) and
        their layers, in the same order."""
        if not marked:
            return (), ()
        family = model.family if model is not None else ""
        inputs = plan_controls([(c.name, c.layer_id, c.spec) for c in marked], self.shell.view.server_models, family,
                               model)
        by_id = {c.layer_id: c.layer for c in marked}
        return inputs, tuple(by_id[i.layer_id] for i in inputs)
