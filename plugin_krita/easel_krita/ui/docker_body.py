"""The compact Easel docker: what a painter needs in a ~260×240 dock, the rest folded away.

Top to bottom: the workspace switch (Generate · Upscale · Live), the model and the settings gear
in one row, the prompt (the negative prompt unfolds under it), the workspace's one slider row, ONE primary
button, and the progress bar and message line directly under it. Those rows never scroll: they
stay in view in the smallest dock, so every error and every job's progress is seen. Below them,
in a scroll area that never scrolls sideways: the workspace's extras (Advanced with sampler, steps,
CFG, seed, batch and context folded; control layers and LoRAs as compact lists; Live's settings),
then the history's thumbnails.

The primary button's meaning follows the strength slider, as painters know from the peers: at
100 % it generates into the selection (or the canvas), below it refines what is there at that
strength. In Upscale it upscales; in Live it turns live mode on and off.

Host-free: values in through ``load_settings``/``show_*``/``set_*``, the painter's actions out
through the :class:`Actions` callables. Field limits (steps, batch, size) come from the server's
``welcome`` through :meth:`DockerBody.set_limits`. The widgets are built in ``docker_layout.py``
(from the small ones in ``widgets.py``); this module is what they do.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from ..loras import LoraChoice
from ..qt import Qt, QtWidgets
from ..request import Action, GenerationSettings
from .docker_layout import (  # noqa: F401  (UPSCALE: the workspace names are this module's API too)
    GENERATE, LIVE, SEED_MAX, UPSCALE, WORKSPACE_LABELS, WORKSPACES, DockerLayout,
)
from .history_grid import HistoryGrid
from .widgets import fill, select


def _nothing(*_: Any) -> None:
    return None


@dataclass
class Actions:
    """What the docker asks of its host. Every callable runs on the main thread from a Qt slot:
    the host catches its own exceptions (one escaping a slot opens Krita's blocking dialog)."""

    run: Callable[[Action], None] = _nothing                       # Generate, Refine, Fill, Expand, Upscale
    cancel: Callable[[], None] = _nothing
    settings_changed: Callable[[GenerationSettings], None] = _nothing
    open_settings: Callable[[], None] = _nothing
    workspace_changed: Callable[[str], None] = _nothing
    live_toggled: Callable[[bool], None] = _nothing
    live_keep: Callable[[], None] = _nothing
    live_settings_changed: Callable[[float, int, int | None], None] = _nothing  # strength, steps, seed
    preview: Callable[[int, int], None] = _nothing                  # history entry id, image index
    apply: Callable[[int, int], None] = _nothing
    discard: Callable[[int, int], None] = _nothing
    reuse_seed: Callable[[int, int], None] = _nothing
    copy_settings: Callable[[int, int], None] = _nothing
    mark_control_layer: Callable[[str, float, float, float], None] = _nothing  # type, strength, start, end
    make_control_layer: Callable[[str, bool], None] = _nothing      # control type, from the selected layer
    set_control_strength: Callable[[str, float], None] = _nothing   # layer id, strength (0: unused)
    remove_control_layer: Callable[[str], None] = _nothing          # layer id


@dataclass(frozen=True)
class ControlRow:
    """One control layer of the active image, as the compact list shows it."""

    layer_id: str
    text: str
    strength: float


def primary_action(workspace: str, strength: float) -> Action | None:
    """What the primary button does: Generate at 100 %, Refine below; Upscale; ``None`` in Live
    (the button toggles live mode there)."""
    if workspace == UPSCALE:
        return Action.UPSCALE
    if workspace == LIVE:
        return None
    return Action.GENERATE if strength >= 0.995 else Action.REFINE


def primary_text(workspace: str, strength: float, live_on: bool = False) -> str:
    action = primary_action(workspace, strength)
    if action is None:
        return "Stop live" if live_on else "Start live"
    if action == Action.REFINE:
        return f"Refine {round(strength * 100)} %"
    return action.label



class DockerBody(DockerLayout):
    """The docker's whole content; a ``DockWidget`` sets it as its widget."""

    def __init__(self, actions: Actions | None = None, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.actions = actions or Actions()
        self.workspace = GENERATE
        self._loading = False
        self._live_on = False
        self._settings = GenerationSettings()
        self._members: dict[str, list[QtWidgets.QWidget]] = {name: [] for name in WORKSPACES}

        outer = QtWidgets.QVBoxLayout(self)
        outer.setContentsMargins(1, 1, 1, 1)
        outer.setSpacing(2)
        outer.addLayout(self._build_switch())
        outer.addLayout(self._build_prompt())
        outer.addWidget(self._build_sliders())
        outer.addLayout(self._build_primary())
        outer.addLayout(self._build_progress())
        self.message_label = QtWidgets.QLabel()
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message_label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        outer.addWidget(self.message_label)

        extras = QtWidgets.QWidget()
        extras_layout = QtWidgets.QVBoxLayout(extras)
        extras_layout.setContentsMargins(0, 0, 0, 0)
        extras_layout.setSpacing(3)
        self._build_extras(extras_layout)
        self.history = HistoryGrid(lambda e, i: self.actions.preview(e, i), lambda e, i: self.actions.apply(e, i),
                                   lambda e, i: self.actions.discard(e, i),
                                   reuse_seed=lambda e, i: self.actions.reuse_seed(e, i),
                                   copy_settings=lambda e, i: self.actions.copy_settings(e, i))
        extras_layout.addWidget(self.history, 1)
        self._member(self.history, GENERATE, UPSCALE)
        self.scroll = QtWidgets.QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # wrap, never sideways
        self.scroll.setWidget(extras)
        self.scroll.setMinimumHeight(1)  # the rows above it come first in a short dock; this part scrolls
        outer.addWidget(self.scroll, 1)
        self.setMinimumWidth(0)
        self._connect_form()
        self.set_workspace(GENERATE)

    def _connect_form(self) -> None:
        self.strength_slider.valueChanged.connect(lambda *_: self._strength_moved())
        for signal in (self.prompt_edit.textChanged, self.negative_edit.textChanged, self.seed_random.toggled,
                       self.seed_spin.valueChanged, self.steps_spin.valueChanged, self.cfg_spin.valueChanged,
                       self.batch_spin.valueChanged, self.context_spin.valueChanged,
                       self.model_combo.currentIndexChanged, self.sampler_combo.currentIndexChanged,
                       self.upscale_factor_spin.valueChanged, self.upscale_strength_spin.valueChanged):
            signal.connect(lambda *_: self._store())
        for signal in (self.live_strength_slider.valueChanged, self.live_steps_spin.valueChanged,
                       self.live_seed_spin.valueChanged):
            signal.connect(lambda *_: self._live_moved())

    # -- the painter's actions

    def _switch(self, workspace: str) -> None:
        self.set_workspace(workspace)
        self.actions.workspace_changed(workspace)

    def set_workspace(self, workspace: str) -> None:
        """Show ``workspace``'s controls only (``ValueError`` for an unknown name)."""
        if workspace not in WORKSPACES:
            raise ValueError(f"unknown workspace {workspace!r}; one of {', '.join(WORKSPACES)}")
        self.workspace = workspace
        self.workspace_actions[workspace].setChecked(True)
        self.workspace_button.setText(WORKSPACE_LABELS[workspace] + " ▾")
        shown = set(map(id, self._members[workspace]))
        for name in WORKSPACES:
            for widget in self._members[name]:
                widget.setVisible(id(widget) in shown)
        self._show_primary()

    def _primary(self) -> None:
        action = primary_action(self.workspace, self.strength_slider.value() / 100)
        if action is None:
            self.actions.live_toggled(not self._live_on)
        else:
            self.actions.run(action)

    def _strength_moved(self) -> None:
        self.strength_label.setText(f"{self.strength_slider.value()} %")
        self._show_primary()
        self._store()

    def _live_moved(self) -> None:
        self.live_strength_label.setText(f"{self.live_strength_slider.value()} %")
        if not self._loading:
            seed = self.live_seed_spin.value()
            self.actions.live_settings_changed(self.live_strength_slider.value() / 100, self.live_steps_spin.value(),
                                               None if seed < 0 else seed)

    def primary_is_generate(self) -> bool:
        """Whether the primary button generates now (the Generate workspace at 100 %)."""
        return primary_action(self.workspace, self.strength_slider.value() / 100) is Action.GENERATE

    def _show_primary(self) -> None:
        strength = self.strength_slider.value() / 100
        self.primary_button.setText(primary_text(self.workspace, strength, self._live_on))
        self.primary_button.setCheckable(self.workspace == LIVE)
        self.primary_button.setChecked(self.workspace == LIVE and self._live_on)

    def _add_lora(self) -> None:
        lora_id = self.lora_combo.currentData()
        if lora_id and lora_id not in dict(self.loras.values()):
            self._show_loras(self._lora_choices() + (LoraChoice(lora_id, 1.0),))
            self._store()

    def _remove_lora(self, lora_id: str) -> None:
        self._show_loras(tuple(c for c in self._lora_choices() if c.id != lora_id))
        self._store()

    def _show_loras(self, choices: Sequence[LoraChoice]) -> None:
        self.loras.show_rows([(c.id, c.id, c.weight) for c in choices])

    def _lora_choices(self) -> tuple[LoraChoice, ...]:
        return tuple(LoraChoice(key, value) for key, value in self.loras.values())

    def _store(self) -> None:
        if not self._loading:
            self.seed_spin.setEnabled(not self.seed_random.isChecked())
            self._settings = self.form_settings()
            self.actions.settings_changed(self._settings)

    # -- values in and out

    def form_settings(self) -> GenerationSettings:
        """The form as settings (Expand's margins and anything the docker does not show kept from
        the last :meth:`load_settings`)."""
        return replace(
            self._settings,
            prompt=self.prompt_edit.toPlainText(),
            negative_prompt=self.negative_edit.toPlainText(),
            model=self.model_combo.currentData() or "",
            seed=None if self.seed_random.isChecked() else self.seed_spin.value(),
            steps=self.steps_spin.value() or None,
            cfg_scale=self.cfg_spin.value() or None,
            sampler=self.sampler_combo.currentData() or "",
            strength=self.strength_slider.value() / 100,
            batch_size=self.batch_spin.value(),
            context=self.context_spin.value(),
            loras=self._lora_choices(),
            upscale_factor=self.upscale_factor_spin.value(),
            upscale_strength=self.upscale_strength_spin.value(),
        )

    def load_settings(self, settings: GenerationSettings) -> None:
        """Show ``settings`` without reporting them back."""
        self._loading = True
        try:
            self._settings = settings
            if self.prompt_edit.toPlainText() != settings.prompt:
                self.prompt_edit.setPlainText(settings.prompt)
            if self.negative_edit.toPlainText() != settings.negative_prompt:
                self.negative_edit.setPlainText(settings.negative_prompt)
                if settings.negative_prompt:
                    self.negative_button.setChecked(True)
            self.seed_random.setChecked(settings.seed is None)
            self.seed_spin.setEnabled(settings.seed is not None)
            if settings.seed is not None:
                self.seed_spin.setValue(min(settings.seed, SEED_MAX))
            self.steps_spin.setValue(min(settings.steps or 0, self.steps_spin.maximum()))
            self.cfg_spin.setValue(settings.cfg_scale or 0.0)
            self.strength_slider.setValue(round(settings.strength * 100))
            self.strength_label.setText(f"{self.strength_slider.value()} %")
            self.batch_spin.setValue(min(settings.batch_size, self.batch_spin.maximum()))
            self.context_spin.setValue(settings.context)
            self.upscale_factor_spin.setValue(settings.upscale_factor)
            self.upscale_strength_spin.setValue(settings.upscale_strength)
            if self._lora_choices() != settings.loras:
                self._show_loras(settings.loras)
            select(self.model_combo, settings.model)
            select(self.sampler_combo, settings.sampler)
            self._show_primary()
        finally:
            self._loading = False

    def load_live_settings(self, strength: float, steps: int, seed: int | None) -> None:
        self._loading = True
        try:
            self.live_strength_slider.setValue(round(strength * 100))
            self.live_strength_label.setText(f"{self.live_strength_slider.value()} %")
            self.live_steps_spin.setValue(steps)
            self.live_seed_spin.setValue(-1 if seed is None else min(seed, SEED_MAX))
        finally:
            self._loading = False

    def set_limits(self, max_steps: int, max_batch: int) -> None:
        """The server's bounds from its welcome: the fields stop where the server would refuse."""
        self.steps_spin.setMaximum(max(1, max_steps))
        self.batch_spin.setMaximum(max(1, max_batch))

    def set_models(self, models: Sequence[tuple[str, str]], samplers: Sequence[str] = ()) -> None:
        """``models`` as (label, id); ``samplers`` by name (the first entry is the model's default)."""
        self._loading = True
        try:
            fill(self.model_combo, list(models), self._settings.model, None)
            fill(self.sampler_combo, [(s, s) for s in samplers], self._settings.sampler, "default")
        finally:
            self._loading = False
        if not self._settings.model and self.model_combo.count():
            self._store()  # the first model the server lists becomes the form's

    def set_control_types(self, types: Sequence[tuple[str, str]]) -> None:
        fill(self.control_type_combo, list(types), self.control_type_combo.currentData() or "canny", None)
        self.mark_layer_button.setEnabled(self.control_type_combo.count() > 0)
        self.make_control_button.setEnabled(self.control_type_combo.count() > 0)

    def show_control_layers(self, rows: Sequence[ControlRow]) -> None:
        self.controls.show_rows([(row.layer_id, row.text, row.strength) for row in rows])

    def set_loras(self, loras: Sequence[tuple[str, str]]) -> None:
        fill(self.lora_combo, list(loras), self.lora_combo.currentData() or "", None)
        self.lora_add_button.setEnabled(self.lora_combo.count() > 0)

    def show_progress(self, progress: float | None, message: str, error: bool = False, jobs_open: int = 0) -> None:
        """The progress bar (``None``: idle), the message line under the button, Cancel's state."""
        self.progress_bar.setValue(0 if progress is None else int(max(0.0, min(1.0, progress)) * 1000))
        self.message_label.setText(message)
        self.message_label.setToolTip(message)  # a sentence longer than a short dock shows stays readable
        self.message_label.setStyleSheet("color: #d04040;" if error else "")
        self.cancel_button.setEnabled(jobs_open > 0)

    def show_live(self, enabled: bool, can_keep: bool) -> None:
        self._live_on = enabled
        self.keep_button.setEnabled(enabled and can_keep)
        self._show_primary()

