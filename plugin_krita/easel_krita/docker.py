"""The Easel docker: Qt widgets bound to the controller, nothing more.

The form writes :class:`~.request.GenerationSettings` into the controller as the painter edits it;
the controller's :class:`~.controller.ViewState` drives the status, progress, message and lists.
Slots catch their own exceptions (an exception escaping a Qt slot opens a blocking dialog).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable

from krita import DockWidget
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
    QLineEdit, QListWidget, QListWidgetItem, QPlainTextEdit, QProgressBar, QPushButton, QScrollArea,
    QVBoxLayout, QWidget,
)

from .slots import guard
from .ui.widgets import dspin as _dspin, spin as _spin
from .control import MAX_STRENGTH, ControlError, ControlSpec, control_type, offered_types, preprocessors_for
from .controller import ViewState
from .geometry import Margins
from .history import NOT_APPLIED, History, title
from .live_docker import build_live_section
from .loras import MAX_LORAS, MAX_WEIGHT, MIN_WEIGHT, LoraChoice, loras_for
from .request import FORM_ACTIONS, MAX_STEPS, UPSCALE_MAX, UPSCALE_MIN, Action, GenerationSettings
from .settings import check_url

log = logging.getLogger("easel.krita")

#: Every field at once ("Easel: all settings"); the compact docker (compact_docker.py) is "Easel".
DOCKER_ID = "easel_docker_full"


def make_docker_class(extension: Any) -> type:
    """A ``DockWidget`` class bound to ``extension`` (Krita creates one docker per window and calls
    the class with no arguments)."""

    class EaselDocker(DockWidget):
        def __init__(self) -> None:
            super().__init__()
            self.setWindowTitle("Easel: all settings")
            self.extension = extension
            self.controller = extension.controller
            self._loading = False
            self._build()
            self._load_form(self.controller.settings)
            self.controller.subscribe(self._guard(self._show_view))
            self.controller.subscribe_history(self._guard(self._show_history))
            self.controller.subscribe_settings(self._guard(self._load_form))
            # The compact docker edits the same form: follow its changes (never write back a stale form).
            self.controller.watch_settings(self._guard(
                lambda settings: self._load_form(settings) if settings != self.form_settings() else None))
            # Krita 5.1 has no "layers changed" signal: the control-layer list is re-read now and
            # then (a cheap annotation read) while the docker is shown.
            self.control_timer = QTimer(self)
            self.control_timer.timeout.connect(self._guard(self._poll_control_layers))
            self.control_timer.start(1000)

        # Krita calls this when the window's canvas changes; the controller reads the active document.
        def canvasChanged(self, canvas: Any) -> None:
            self._guard(self._poll_control_layers)()
            self._guard(self.controller.follow_active_document)()

        # -- building

        def _build(self) -> None:
            root = QWidget()
            layout = QVBoxLayout(root)

            connection = QGroupBox("Server")
            grid = QGridLayout(connection)
            self.url_edit = QLineEdit(extension.prefs.url)
            self.url_edit.setMinimumWidth(80)
            self.connect_button = QPushButton("Connect")
            self.gear_button = QPushButton("⚙")
            self.gear_button.setToolTip("Easel settings: server address, token, default model, largest working size")
            self.gear_button.setMaximumWidth(self.gear_button.fontMetrics().horizontalAdvance("⚙") + 24)
            self.status_label = QLabel()
            self.status_label.setWordWrap(True)
            grid.addWidget(self.url_edit, 0, 0, 1, 2)
            grid.addWidget(self.connect_button, 1, 0)
            grid.addWidget(self.gear_button, 1, 1)
            grid.addWidget(self.status_label, 2, 0, 1, 2)
            layout.addWidget(connection)

            form = QFormLayout()
            form.setRowWrapPolicy(QFormLayout.WrapLongRows)  # labels above fields in a narrow dock
            self.model_combo = QComboBox()
            self.model_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            self.model_combo.setMinimumContentsLength(8)
            self.prompt_edit = QPlainTextEdit()
            self.prompt_edit.setPlaceholderText("What to paint")
            self.prompt_edit.setMaximumHeight(80)
            self.negative_edit = QPlainTextEdit()
            self.negative_edit.setPlaceholderText("What to avoid")
            self.negative_edit.setMaximumHeight(48)
            self.strength_spin = _dspin(0.0, 1.0, 0.5, 0.05)
            seed_row = QHBoxLayout()
            self.seed_random = QCheckBox("random")
            self.seed_spin = _spin(0, 2 ** 31 - 1, 0)
            seed_row.addWidget(self.seed_random)
            seed_row.addWidget(self.seed_spin, 1)
            self.steps_spin = _spin(0, MAX_STEPS, 0, "model default")
            self.cfg_spin = _dspin(0.0, 30.0, 0.0, 0.5, "model default")
            self.sampler_combo = QComboBox()
            self.sampler_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            self.sampler_combo.setMinimumContentsLength(8)
            self.batch_spin = _spin(1, 8, 1)
            self.context_spin = _spin(0, 1024, 64)
            margins_row = QGridLayout()
            self.margin_spins = [_spin(0, 4096, 0) for _ in range(4)]
            for i, (label, spin) in enumerate(zip(("left", "top", "right", "bottom"), self.margin_spins)):
                spin.setSuffix(f" {label}")
                margins_row.addWidget(spin, i // 2, i % 2)
            form.addRow("Model", self.model_combo)
            form.addRow("Prompt", self.prompt_edit)
            form.addRow("Negative", self.negative_edit)
            form.addRow("Refine strength", self.strength_spin)
            form.addRow("Seed", seed_row)
            form.addRow("Steps", self.steps_spin)
            form.addRow("CFG", self.cfg_spin)
            form.addRow("Sampler", self.sampler_combo)
            form.addRow("Batch", self.batch_spin)
            form.addRow("Fill context (px)", self.context_spin)
            form.addRow("Expand by", margins_row)
            layout.addLayout(form)

            buttons = QGridLayout()
            self.action_buttons: dict[Action, QPushButton] = {}
            for i, action in enumerate(FORM_ACTIONS):
                button = QPushButton(action.label)
                button.clicked.connect(self._guard(lambda *_, a=action: extension.run(a)))
                buttons.addWidget(button, i // 2, i % 2)
                self.action_buttons[action] = button
            self.cancel_button = QPushButton("Cancel")
            buttons.addWidget(self.cancel_button, 2, 0, 1, 2)
            layout.addLayout(buttons)
            self._build_guidance(layout)

            self.progress_bar = QProgressBar()
            self.progress_bar.setRange(0, 1000)
            self.progress_label = QLabel()
            self.message_label = QLabel()
            self.message_label.setWordWrap(True)
            self.message_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
            layout.addWidget(self.progress_bar)
            layout.addWidget(self.progress_label)
            layout.addWidget(self.message_label)
            # Live mode's own section (live_docker.py): toggle, Keep, live settings, live status.
            self.live_box = build_live_section(extension.live, self._guard)
            layout.addWidget(self.live_box)

            history = QGroupBox("History")
            history_layout = QVBoxLayout(history)
            self.history_list = QListWidget()
            self.history_list.setMinimumHeight(80)
            self.history_list.currentItemChanged.connect(self._guard(self._history_selected))
            history_buttons = QGridLayout()
            self.apply_again_button = QPushButton("Apply again")
            self.reuse_seed_button = QPushButton("Reuse seed")
            self.copy_settings_button = QPushButton("Copy settings")
            history_buttons.addWidget(self.apply_again_button, 0, 0, 1, 2)
            history_buttons.addWidget(self.reuse_seed_button, 1, 0)
            history_buttons.addWidget(self.copy_settings_button, 1, 1)
            history_layout.addWidget(self.history_list)
            history_layout.addLayout(history_buttons)
            layout.addWidget(history)
            layout.addStretch(1)

            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # narrow docks wrap, never scroll sideways
            root.setMinimumWidth(0)
            scroll.setWidget(root)
            self.setWidget(scroll)

            self.connect_button.clicked.connect(self._guard(self._connect))
            self.gear_button.clicked.connect(self._guard(lambda *_: extension.open_settings()))
            self.cancel_button.clicked.connect(self._guard(lambda *_: extension.cancel()))
            self.apply_again_button.clicked.connect(self._guard(lambda *_: self._on_history(self.controller.apply_history)))
            self.reuse_seed_button.clicked.connect(self._guard(lambda *_: self._on_history(self.controller.reuse_seed)))
            self.copy_settings_button.clicked.connect(self._guard(lambda *_: self._on_history(self.controller.copy_settings)))
            for signal in (self.prompt_edit.textChanged, self.negative_edit.textChanged,
                           self.strength_spin.valueChanged, self.seed_random.toggled, self.seed_spin.valueChanged,
                           self.steps_spin.valueChanged, self.cfg_spin.valueChanged, self.batch_spin.valueChanged,
                           self.context_spin.valueChanged, self.model_combo.currentIndexChanged,
                           self.sampler_combo.currentIndexChanged, *(s.valueChanged for s in self.margin_spins)):
                signal.connect(self._guard(self._store_form))

        # -- slots

        def _guard(self, slot: Callable[..., Any]) -> Callable[..., None]:
            return guard(self.controller, slot)

        def _connect(self, *_: Any) -> None:
            try:
                url = check_url(self.url_edit.text())
            except ValueError as exc:
                self.controller.say(str(exc)[0].upper() + str(exc)[1:] + ".", error=True)
                return
            extension.reconnect(url, extension.prefs.token)

        def _on_history(self, method: Callable[[int, int], None]) -> None:
            item = self.history_list.currentItem()
            if item is None:
                self.controller.say("Select a result in the history first.", error=True)
                return
            entry_id, index = item.data(Qt.UserRole)
            method(entry_id, index)

        def form_settings(self) -> GenerationSettings:
            """The form's values as settings."""
            model = self.model_combo.currentData() or ""
            sampler = self.sampler_combo.currentData() or ""
            return GenerationSettings(
                prompt=self.prompt_edit.toPlainText(),
                negative_prompt=self.negative_edit.toPlainText(),
                model=model,
                seed=None if self.seed_random.isChecked() else self.seed_spin.value(),
                steps=self.steps_spin.value() or None,
                cfg_scale=self.cfg_spin.value() or None,
                sampler=sampler,
                strength=self.strength_spin.value(),
                batch_size=self.batch_spin.value(),
                context=self.context_spin.value(),
                margins=Margins(*(spin.value() for spin in self.margin_spins)),
                loras=self._lora_choices(),
                upscale_factor=self.upscale_factor_spin.value(),
                upscale_strength=self.upscale_strength_spin.value(),
            )

        def _store_form(self, *_: Any) -> None:
            if not self._loading:
                self.seed_spin.setEnabled(not self.seed_random.isChecked())
                self.controller.set_settings(self.form_settings(), notify=False)

        def _load_form(self, settings: GenerationSettings) -> None:
            self._loading = True
            try:
                if self.prompt_edit.toPlainText() != settings.prompt:
                    self.prompt_edit.setPlainText(settings.prompt)
                if self.negative_edit.toPlainText() != settings.negative_prompt:
                    self.negative_edit.setPlainText(settings.negative_prompt)
                self.seed_random.setChecked(settings.seed is None)
                self.seed_spin.setEnabled(settings.seed is not None)
                if settings.seed is not None:
                    self.seed_spin.setValue(min(settings.seed, self.seed_spin.maximum()))
                self.steps_spin.setValue(settings.steps or 0)
                self.cfg_spin.setValue(settings.cfg_scale or 0.0)
                self.strength_spin.setValue(settings.strength)
                self.batch_spin.setValue(settings.batch_size)
                self.context_spin.setValue(settings.context)
                m = settings.margins
                for spin, value in zip(self.margin_spins, (m.left, m.top, m.right, m.bottom)):
                    spin.setValue(value)
                self._select(self.model_combo, settings.model)
                self._select(self.sampler_combo, settings.sampler)
                self._load_guidance(settings)
            finally:
                self._loading = False

        @staticmethod
        def _select(combo: QComboBox, value: str) -> None:
            index = combo.findData(value)
            if index >= 0:
                combo.setCurrentIndex(index)

        def _show_view(self, view: ViewState) -> None:
            if self.controller.url and self.controller.url != getattr(self, "_shown_url", ""):
                self._shown_url = self.controller.url  # the settings dialog may have changed it
                self.url_edit.setText(self.controller.url)
            self.status_label.setText(view.status)
            self.message_label.setText(view.message)
            self.message_label.setStyleSheet("color: #d04040;" if view.message_is_error else "")
            if view.progress is None:
                self.progress_bar.setValue(0)
            else:
                self.progress_bar.setValue(int(view.progress * 1000))
            self.progress_label.setText(view.progress_text)
            self.cancel_button.setEnabled(view.jobs_open > 0)
            welcome = extension.connection.welcome
            if welcome is not None:  # the fields stop where the server would refuse
                self.steps_spin.setMaximum(getattr(welcome.limits, "max_steps", MAX_STEPS))
                self.batch_spin.setMaximum(welcome.limits.max_batch_size)
            self._fill_combo(self.model_combo, [(m.name or m.id, m.id) for m in view.models],
                             self.controller.settings.model, None)
            self._fill_combo(self.sampler_combo, [(s, s) for s in view.samplers],
                             self.controller.settings.sampler, "default")
            self._show_guidance(view)

        def _fill_combo(self, combo: QComboBox, items: list[tuple[str, str]], current: str,
                        default_label: str | None) -> None:
            wanted = ([(default_label, "")] if default_label else []) + items
            have = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]
            if have == wanted:
                return
            self._loading = True
            try:
                combo.clear()
                for text, data in wanted:
                    combo.addItem(text, data)
                self._select(combo, current)
            finally:
                self._loading = False
            if combo is self.model_combo and not current and items:
                self.controller.set_settings(self.form_settings(), notify=False)

        def _show_history(self, history: History) -> None:
            self.history_list.clear()
            for entry in reversed(list(history)):
                for index, seed in enumerate(entry.seeds or (None,)):
                    label = entry.request.layer_name(seed) if seed is not None else title(entry)
                    text = f"{entry.request.action.label}: {label}"
                    if entry.status_text():
                        text += f" ({entry.status_text()})"
                    elif not entry.has_images:
                        text += " (image dropped)"
                    item = QListWidgetItem(text)
                    item.setData(Qt.UserRole, (entry.id, index))
                    item.setData(Qt.UserRole + 1, entry.status.value)
                    item.setToolTip(_tooltip(entry.request.to_dict()))
                    self.history_list.addItem(item)
            self._history_selected()

        def _history_selected(self, *_: Any) -> None:
            """A result that was never placed is applied "to the current image"; others "again"."""
            item = self.history_list.currentItem()
            unplaced = item is not None and item.data(Qt.UserRole + 1) == NOT_APPLIED
            self.apply_again_button.setText("Apply to current image" if unplaced else "Apply again")

        # -- control layers, LoRAs, Upscale (issue 6) ------------------------------------------

        def _build_guidance(self, layout: QVBoxLayout) -> None:
            controls = QGroupBox("Control layers")
            grid = QGridLayout(controls)
            self.control_rows = QVBoxLayout()  # one row per control layer of the active image
            self.control_rows_state: list[tuple[str, str, ControlSpec, bool]] = []
            self.control_row_widgets: dict[str, tuple[QLabel, QDoubleSpinBox]] = {}
            self.control_empty = QLabel("No control layers. Mark a layer, or make one from the image.")
            self.control_empty.setWordWrap(True)
            self.control_type_combo = QComboBox()
            self.control_type_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            self.control_type_combo.setMinimumContentsLength(8)
            self.control_strength_spin = _dspin(0.0, MAX_STRENGTH, 1.0, 0.05)
            self.control_start_spin = _dspin(0.0, 1.0, 0.0, 0.05)
            self.control_end_spin = _dspin(0.0, 1.0, 1.0, 0.05)
            self.control_start_spin.setPrefix("from ")
            self.control_end_spin.setPrefix("to ")
            self.mark_layer_button = QPushButton("Use selected layer")
            self.mark_layer_button.setToolTip("Mark the selected layer as a control layer of this type: "
                                              "its pixels guide Generate, Refine, Fill and Expand")
            self.preprocessor_combo = QComboBox()
            self.preprocessor_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            self.preprocessor_combo.setMinimumContentsLength(8)
            self.preprocess_from_layer = QCheckBox("from the selected layer")
            self.make_control_button = QPushButton("Make control layer")
            self.make_control_button.setToolTip("Run the server's preprocessor on the visible image (or the selected "
                                                "layer) inside the selection, and add the result as a new control layer")
            grid.addLayout(self.control_rows, 0, 0, 1, 2)
            grid.addWidget(self.control_empty, 1, 0, 1, 2)
            grid.addWidget(QLabel("Type"), 2, 0)
            grid.addWidget(self.control_type_combo, 2, 1)
            grid.addWidget(QLabel("Strength"), 3, 0)
            grid.addWidget(self.control_strength_spin, 3, 1)
            grid.addWidget(self.control_start_spin, 4, 0)
            grid.addWidget(self.control_end_spin, 4, 1)
            grid.addWidget(self.mark_layer_button, 5, 0, 1, 2)
            grid.addWidget(QLabel("Preprocessor"), 6, 0)
            grid.addWidget(self.preprocessor_combo, 6, 1)
            grid.addWidget(self.preprocess_from_layer, 7, 0, 1, 2)
            grid.addWidget(self.make_control_button, 8, 0, 1, 2)
            layout.addWidget(controls)

            loras = QGroupBox("LoRA")
            lora_grid = QGridLayout(loras)
            self.lora_rows = QVBoxLayout()
            self.lora_combo = QComboBox()
            self.lora_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            self.lora_combo.setMinimumContentsLength(8)
            self.lora_add_button = QPushButton("Add")
            self.lora_chosen: list[tuple[str, QDoubleSpinBox]] = []
            lora_grid.addLayout(self.lora_rows, 0, 0, 1, 2)
            lora_grid.addWidget(self.lora_combo, 1, 0)
            lora_grid.addWidget(self.lora_add_button, 1, 1)
            layout.addWidget(loras)

            upscale = QGroupBox("Upscale")
            up_grid = QGridLayout(upscale)
            self.upscale_factor_spin = _dspin(UPSCALE_MIN, UPSCALE_MAX, 2.0, 0.5)
            self.upscale_factor_spin.setPrefix("×")
            self.upscale_strength_spin = _dspin(0.0, 1.0, 0.35, 0.05)
            self.upscale_button = QPushButton("Upscale")
            self.upscale_button.setToolTip("Scale the whole image by the factor and add a new layer with the detail "
                                           "the model adds (the selection's area, or the whole image)")
            up_grid.addWidget(QLabel("Factor"), 0, 0)
            up_grid.addWidget(self.upscale_factor_spin, 0, 1)
            up_grid.addWidget(QLabel("Detail strength"), 1, 0)
            up_grid.addWidget(self.upscale_strength_spin, 1, 1)
            up_grid.addWidget(self.upscale_button, 2, 0, 1, 2)
            layout.addWidget(upscale)

            self.control_type_combo.currentIndexChanged.connect(self._guard(self._fill_preprocessors))
            self.mark_layer_button.clicked.connect(self._guard(self._mark_layer))
            self.make_control_button.clicked.connect(self._guard(self._make_control_layer))
            self.lora_add_button.clicked.connect(self._guard(self._add_lora))
            self.upscale_button.clicked.connect(self._guard(lambda *_: extension.run(Action.UPSCALE)))
            for signal in (self.upscale_factor_spin.valueChanged, self.upscale_strength_spin.valueChanged):
                signal.connect(self._guard(self._store_form))

        def _control_spec(self) -> ControlSpec:
            return ControlSpec(self.control_type_combo.currentData() or "", self.control_strength_spin.value(),
                               self.control_start_spin.value(), self.control_end_spin.value())

        def _mark_layer(self, *_: Any) -> None:
            try:
                spec = self._control_spec()
            except ControlError as exc:
                self.controller.say(str(exc), error=True)
                return
            self.controller.mark_active_layer(spec)

        def _make_control_layer(self, *_: Any) -> None:
            self.controller.make_control_layer(self.control_type_combo.currentData() or "",
                                               self.preprocessor_combo.currentData() or "",
                                               from_layer=self.preprocess_from_layer.isChecked())

        def _poll_control_layers(self, *_: Any) -> None:
            if self.isVisible():
                self.controller.refresh_control_layers()
                self.controller.follow_active_document()  # each image shows its own history

        def _fill_preprocessors(self, *_: Any) -> None:
            type_id = self.control_type_combo.currentData() or ""
            names = preprocessors_for(type_id, self.controller.view.preprocessors)
            items = [(name, name) for name in names] or [("none on this server", "")]
            current = self.preprocessor_combo.currentData() or ""
            have = [(self.preprocessor_combo.itemText(i), self.preprocessor_combo.itemData(i))
                    for i in range(self.preprocessor_combo.count())]
            if have != items:
                self.preprocessor_combo.clear()
                for text, data in items:
                    self.preprocessor_combo.addItem(text, data)
                self._select(self.preprocessor_combo, current)
            self.make_control_button.setEnabled(bool(names))

        def _show_guidance(self, view: ViewState) -> None:
            types = [(control_type(t).label, t) for t in offered_types(view.server_models)]
            have = [(self.control_type_combo.itemText(i), self.control_type_combo.itemData(i))
                    for i in range(self.control_type_combo.count())]
            if have != types:
                current = self.control_type_combo.currentData() or "canny"
                self.control_type_combo.clear()
                for text, data in types:
                    self.control_type_combo.addItem(text, data)
                self._select(self.control_type_combo, current)
            self._fill_preprocessors()
            self._show_control_rows(view)
            model = self.controller.current_model()
            offered = loras_for(view.loras, model.family if model is not None else "")
            items = [(a.name + (f" ({a.trigger})" if a.trigger else ""), a.id) for a in offered]
            have = [(self.lora_combo.itemText(i), self.lora_combo.itemData(i)) for i in range(self.lora_combo.count())]
            if have != items:
                self.lora_combo.clear()
                for text, data in items:
                    self.lora_combo.addItem(text, data)
            self.lora_add_button.setEnabled(bool(items) and len(self.lora_chosen) < MAX_LORAS)

        def _show_control_rows(self, view: ViewState) -> None:
            state = [(c.name, c.layer_id, c.spec, c.visible) for c in view.control_layers]
            if state == self.control_rows_state:
                return
            same_layers = [row[1] for row in state] == [row[1] for row in self.control_rows_state]
            self.control_rows_state = state
            if same_layers:  # only names, markings or visibility changed: update in place (keeps focus)
                for layer in view.control_layers:
                    label, strength = self.control_row_widgets[layer.layer_id]
                    label.setText(_control_text(layer))
                    if abs(strength.value() - layer.spec.strength) > 1e-9:
                        strength.blockSignals(True)
                        strength.setValue(layer.spec.strength)
                        strength.blockSignals(False)
                return
            _clear(self.control_rows)
            self.control_row_widgets = {}
            for layer in view.control_layers:
                row = QHBoxLayout()
                label = QLabel(_control_text(layer))
                label.setWordWrap(True)
                strength = _dspin(0.0, MAX_STRENGTH, layer.spec.strength, 0.05)
                strength.setToolTip("Strength (0: marked but not used)")
                remove = QPushButton("Remove")
                remove.setToolTip("Stop using this layer as a control layer (the layer itself stays)")
                strength.valueChanged.connect(self._guard(lambda value, i=layer.layer_id: self._set_strength(i, value)))
                remove.clicked.connect(self._guard(lambda *_, i=layer.layer_id: self.controller.set_control(i, None)))
                row.addWidget(label, 1)
                row.addWidget(strength)
                row.addWidget(remove)
                self.control_rows.addLayout(row)
                self.control_row_widgets[layer.layer_id] = (label, strength)
            self.control_empty.setVisible(not view.control_layers)

        def _set_strength(self, layer_id: str, value: float) -> None:
            current = next((c for c in self.controller.view.control_layers if c.layer_id == layer_id), None)
            if current is not None:
                self.controller.set_control(layer_id, replace(current.spec, strength=value))

        def _lora_choices(self) -> tuple[LoraChoice, ...]:
            return tuple(LoraChoice(lora_id, spin.value()) for lora_id, spin in self.lora_chosen)

        def _add_lora(self, *_: Any) -> None:
            lora_id = self.lora_combo.currentData()
            if not lora_id:
                return
            if any(chosen == lora_id for chosen, _ in self.lora_chosen):
                self.controller.say(f"The LoRA {lora_id} is already in the list; change its weight there.", error=True)
                return
            self._show_lora_rows(self._lora_choices() + (LoraChoice(lora_id, 1.0),))
            self._store_form()

        def _remove_lora(self, lora_id: str) -> None:
            self._show_lora_rows(tuple(c for c in self._lora_choices() if c.id != lora_id))
            self._store_form()

        def _show_lora_rows(self, choices: tuple[LoraChoice, ...]) -> None:
            _clear(self.lora_rows)
            self.lora_chosen = []
            for choice in choices:
                row = QHBoxLayout()
                weight = _dspin(MIN_WEIGHT, MAX_WEIGHT, choice.weight, 0.05)
                remove = QPushButton("Remove")
                weight.valueChanged.connect(self._guard(self._store_form))
                remove.clicked.connect(self._guard(lambda *_, i=choice.id: self._remove_lora(i)))
                row.addWidget(QLabel(choice.id), 1)
                row.addWidget(weight)
                row.addWidget(remove)
                self.lora_rows.addLayout(row)
                self.lora_chosen.append((choice.id, weight))
            self.lora_add_button.setEnabled(self.lora_combo.count() > 0 and len(self.lora_chosen) < MAX_LORAS)

        def _load_guidance(self, settings: GenerationSettings) -> None:
            if self._lora_choices() != settings.loras:
                self._show_lora_rows(settings.loras)
            self.upscale_factor_spin.setValue(settings.upscale_factor)
            self.upscale_strength_spin.setValue(settings.upscale_strength)

    return EaselDocker


def _control_text(layer: Any) -> str:
    return f"{layer.name}: {layer.spec.describe()}" + ("" if layer.visible else " (hidden)")


def _clear(layout: Any) -> None:
    """Remove and delete every widget and sub-layout of ``layout``."""
    while layout.count():
        item = layout.takeAt(0)
        if item.widget() is not None:
            item.widget().deleteLater()
        elif item.layout() is not None:
            _clear(item.layout())
            item.layout().deleteLater()


def _tooltip(request: dict[str, Any]) -> str:
    settings = request["settings"]
    lines = [f"{key}: {value}" for key, value in settings.items() if value not in ("", None)]
    lines.append(f"region: {request['region']}  seed: {request['seed']}")
    return "\n".join(lines)
