"""The Easel docker: Qt widgets bound to the controller, nothing more.

The form writes :class:`~.request.GenerationSettings` into the controller as the painter edits it;
the controller's :class:`~.controller.ViewState` drives the status, progress, message and lists.
Slots catch their own exceptions (an exception escaping a Qt slot opens a blocking dialog).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from krita import DockWidget
from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
    QLineEdit, QListWidget, QListWidgetItem, QPlainTextEdit, QProgressBar, QPushButton, QScrollArea,
    QSpinBox, QVBoxLayout, QWidget,
)

from . import wording
from .controller import ViewState
from .geometry import Margins
from .history import History
from .request import Action, GenerationSettings
from .settings import check_url

log = logging.getLogger("easel.krita")

DOCKER_ID = "easel_docker"


def _spin(low: int, high: int, value: int, special: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def _dspin(low: float, high: float, value: float, step: float, special: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(2)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def make_docker_class(extension: Any) -> type:
    """A ``DockWidget`` class bound to ``extension`` (Krita creates one docker per window and calls
    the class with no arguments)."""

    class EaselDocker(DockWidget):
        def __init__(self) -> None:
            super().__init__()
            self.setWindowTitle("Easel")
            self.extension = extension
            self.controller = extension.controller
            self._loading = False
            self._build()
            self._load_form(self.controller.settings)
            self.controller.subscribe(self._guard(self._show_view))
            self.controller.subscribe_history(self._guard(self._show_history))
            self.controller.subscribe_settings(self._guard(self._load_form))

        # Krita calls this when the window's canvas changes; the controller reads the active document.
        def canvasChanged(self, canvas: Any) -> None:
            pass

        # -- building

        def _build(self) -> None:
            root = QWidget()
            layout = QVBoxLayout(root)

            connection = QGroupBox("Server")
            grid = QGridLayout(connection)
            self.url_edit = QLineEdit(extension.prefs.url)
            self.url_edit.setMinimumWidth(80)
            self.connect_button = QPushButton("Connect")
            self.status_label = QLabel()
            self.status_label.setWordWrap(True)
            grid.addWidget(self.url_edit, 0, 0)
            grid.addWidget(self.connect_button, 1, 0)
            grid.addWidget(self.status_label, 2, 0)
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
            self.steps_spin = _spin(0, 200, 0, "model default")
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
            for i, action in enumerate(Action):
                button = QPushButton(action.label)
                button.clicked.connect(self._guard(lambda *_, a=action: extension.run(a)))
                buttons.addWidget(button, i // 2, i % 2)
                self.action_buttons[action] = button
            self.cancel_button = QPushButton("Cancel")
            buttons.addWidget(self.cancel_button, 2, 0, 1, 2)
            layout.addLayout(buttons)

            self.progress_bar = QProgressBar()
            self.progress_bar.setRange(0, 1000)
            self.progress_label = QLabel()
            self.message_label = QLabel()
            self.message_label.setWordWrap(True)
            self.message_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
            layout.addWidget(self.progress_bar)
            layout.addWidget(self.progress_label)
            layout.addWidget(self.message_label)

            history = QGroupBox("History")
            history_layout = QVBoxLayout(history)
            self.history_list = QListWidget()
            self.history_list.setMinimumHeight(80)
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
            def guarded(*args: Any) -> None:
                try:
                    slot(*args)
                except Exception as exc:
                    log.exception("easel: docker slot failed")
                    try:
                        self.controller.say(wording.unexpected("update the docker", exc), error=True)
                    except Exception:
                        pass
            return guarded

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
            finally:
                self._loading = False

        @staticmethod
        def _select(combo: QComboBox, value: str) -> None:
            index = combo.findData(value)
            if index >= 0:
                combo.setCurrentIndex(index)

        def _show_view(self, view: ViewState) -> None:
            self.status_label.setText(view.status)
            self.message_label.setText(view.message)
            self.message_label.setStyleSheet("color: #d04040;" if view.message_is_error else "")
            if view.progress is None:
                self.progress_bar.setValue(0)
            else:
                self.progress_bar.setValue(int(view.progress * 1000))
            self.progress_label.setText(view.progress_text)
            self.cancel_button.setEnabled(view.jobs_open > 0)
            self._fill_combo(self.model_combo, [(m.name or m.id, m.id) for m in view.models],
                             self.controller.settings.model, None)
            self._fill_combo(self.sampler_combo, [(s, s) for s in view.samplers],
                             self.controller.settings.sampler, "default")

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
                for index, seed in enumerate(entry.seeds):
                    label = entry.request.layer_name(seed)
                    text = f"{entry.request.action.label}: {label}" + ("" if entry.has_images else " (image dropped)")
                    item = QListWidgetItem(text)
                    item.setData(Qt.UserRole, (entry.id, index))
                    item.setToolTip(_tooltip(entry.request.to_dict()))
                    self.history_list.addItem(item)

    return EaselDocker


def _tooltip(request: dict[str, Any]) -> str:
    settings = request["settings"]
    lines = [f"{key}: {value}" for key, value in settings.items() if value not in ("", None)]
    lines.append(f"region: {request['region']}  seed: {request['seed']}")
    return "\n".join(lines)
