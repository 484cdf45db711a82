"""The compact Easel docker in Krita: :class:`~.ui.docker_body.DockerBody` bound to the extension.

The body is host-free; this file is the binding: the painter's actions go to the extension, the
controller and live mode; their views come back into the body. Every slot is guarded (an exception
escaping a Qt slot opens Krita's blocking dialog).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable

from krita import DockWidget

from .slots import guard
from .control import ControlError, ControlSpec, control_type, describe, offered_types
from .controller import ViewState
from .history import History
from .live import LiveSettings, LiveView
from .loras import loras_for
from .qt import QtCore
from .request import GenerationSettings, RequestError
from .ui.docker_body import LIVE, UPSCALE, Actions, ControlRow, DockerBody
from .ui.history_grid import thumbs_of
from .ui.regions_panel import attach_regions
from .ui.model_banner import attach_banner

log = logging.getLogger("easel.krita")

COMPACT_DOCKER_ID = "easel_docker"


def make_compact_docker_class(extension: Any) -> type:
    """A ``DockWidget`` class bound to ``extension`` (Krita calls it with no arguments)."""

    class EaselCompactDocker(DockWidget):
        def __init__(self) -> None:
            super().__init__()
            self.setWindowTitle("Easel")
            self.extension = extension
            self.controller = extension.controller
            self.live = extension.live
            guard = self._guard
            self.body = DockerBody(Actions(
                run=guard(extension.run), cancel=guard(extension.cancel),
                settings_changed=guard(lambda s: self.controller.set_settings(s, notify=False)),
                open_settings=guard(extension.open_settings),
                workspace_changed=guard(lambda _: self._show_view(self.controller.view)),
                live_toggled=guard(self._live_toggled), live_keep=guard(lambda: self.live.keep()),
                live_settings_changed=guard(self._live_settings),
                preview=guard(extension.history_preview.toggle),
                apply=guard(self._apply),
                discard=guard(self._discard),
                reuse_seed=guard(self.controller.reuse_seed), copy_settings=guard(self.controller.copy_settings),
                make_control_layer=guard(self._make_control_layer),
                mark_control_layer=guard(self._mark_control_layer),
                set_control_strength=guard(self._set_control_strength),
                remove_control_layer=guard(lambda i: self.controller.set_control(i, None)),
            ))
            self.setWidget(self.body)
            self.regions = attach_regions(self.body, self.controller, guard)  # region layers (ui/regions_panel.py)
            self.banner = attach_banner(self.body, extension.model_setup, self._guard)
            #: What Generate would do on the active image when it is much larger than the model's
            #: size ("Big canvas: Generate makes 176×136, then ×3.6 in a tiled pass."): said before the click.
            self.plan_text = ""
            self._plan_shown: tuple[str, bool] = ("", True)
            self.body.load_settings(self.controller.settings)
            live = self.live.settings
            self.body.load_live_settings(live.strength, live.steps, live.seed)
            self.controller.subscribe(guard(self._show_view))
            self.controller.subscribe_history(guard(self._show_history))
            self.controller.subscribe_settings(guard(self.body.load_settings))
            # Live mode and the history (Reuse seed, Copy settings) change the form too: follow every
            # change, so this body never writes back a stale form.
            self.controller.watch_settings(guard(self._follow_settings))
            self.live.subscribe(guard(self._show_live))
            self._show_view(self.controller.view)
            self._show_history(self.controller.history)
            # Krita 5.1 has no "layers changed" signal: control layers are re-read while shown.
            self.control_timer = QtCore.QTimer(self)
            self.control_timer.timeout.connect(guard(self._poll))
            self.control_timer.start(1000)

        def canvasChanged(self, canvas: Any) -> None:
            self._guard(self._poll)()

        def _guard(self, slot: Callable[..., Any]) -> Callable[..., None]:
            return guard(self.controller, slot)

        # -- views in

        def _show_view(self, view: ViewState) -> None:
            body = self.body
            if body.workspace == LIVE:
                text, error = self.live.view.status, self.live.view.error
            elif view.connection != "online" and not view.message:
                text, error = view.status, view.connection == "offline"
            elif view.jobs_open and not view.message_is_error:
                text, error = view.progress_text or view.message, False
            elif not view.message_is_error and self.plan_text and (body.primary_is_generate() or body.workspace == UPSCALE):
                # what the button will do now comes with the last notice ("Generate done: …")
                text, error = "\n".join(filter(None, (view.message, self.plan_text))), False
            else:
                text, error = view.message or view.status, view.message_is_error
            body.show_progress(view.progress, text, error, view.jobs_open)
            body.set_models([(m.name or m.id, m.id) for m in view.models], view.samplers)
            welcome = extension.connection.welcome
            if welcome is not None:
                body.set_limits(getattr(welcome.limits, "max_steps", 150), welcome.limits.max_batch_size)
            model = self.controller.current_model()
            body.set_control_types([(control_type(t).label, t) for t in offered_types(view.server_models, model)])
            body.show_control_layers([ControlRow(c.layer_id, f"{c.name}: {describe(c.spec, model)}", c.spec.strength)
                                      for c in view.control_layers])
            offered = loras_for(view.loras, model.family if model is not None else "")
            body.set_loras([(a.name + (f" ({a.trigger})" if a.trigger else ""), a.id) for a in offered])

        def _follow_settings(self, settings: GenerationSettings) -> None:
            if settings != self.body.form_settings():
                self.body.load_settings(settings)

        def _show_history(self, history: History) -> None:
            self.body.history.show_thumbs(thumbs_of(history))

        def _show_live(self, view: LiveView) -> None:
            self.body.show_live(view.enabled, view.can_keep)
            if self.body.workspace == LIVE:
                self._show_view(self.controller.view)

        # -- actions out

        def _live_toggled(self, on: bool) -> None:
            extension.history_preview.hide()
            if on:
                self.live.enable()
            else:
                self.live.disable()
            self._show_live(self.live.view)

        def _live_settings(self, strength: float, steps: int, seed: int | None) -> None:
            try:
                self.live.set_settings(LiveSettings(strength=strength, steps=steps, seed=seed))
            except RequestError as exc:
                self.controller.say(str(exc), error=True)

        def _set_control_strength(self, layer_id: str, value: float) -> None:
            current = next((c for c in self.controller.view.control_layers if c.layer_id == layer_id), None)
            if current is not None:
                self.controller.set_control(layer_id, replace(current.spec, strength=value))

        def _mark_control_layer(self, type_id: str, strength: float, start: float, end: float) -> None:
            try:
                spec = ControlSpec(type_id, strength, start, end)
            except ControlError as exc:
                self.controller.say(str(exc), error=True)
                return
            self.controller.mark_active_layer(spec)

        def _make_control_layer(self, type_id: str, from_layer: bool) -> None:
            extension.history_preview.hide()  # it reads the visible image
            self.controller.make_control_layer(type_id, from_layer=from_layer)

        def _apply(self, entry_id: int, index: int) -> None:
            extension.history_preview.hide()
            self.controller.apply_history(entry_id, index)

        def _discard(self, entry_id: int, index: int) -> None:
            extension.history_preview.forget(entry_id)
            self.controller.discard_history(entry_id)

        def _poll(self, *_: Any) -> None:
            if self.isVisible():
                self.controller.refresh_control_layers()
                self.controller.follow_active_document()
                self._show_plan()

        def _show_plan(self) -> None:
            text = self.controller.big_canvas.describe_active()
            if self.body.workspace == UPSCALE:  # the reference and region layers it leaves out
                text = self.controller.guides.unused_by_upscale()
            shown = (text, self.body.primary_is_generate(), self.body.workspace)
            if shown != self._plan_shown:
                self.plan_text, self._plan_shown = text, shown
                self._show_view(self.controller.view)

    return EaselCompactDocker

