"""The docker's Live section: the Live toggle, Keep, the live settings and the live status.

Widgets only, bound to a :class:`~.live.LiveMode`; the docker adds the box this returns
(``build_live_section``). Slots go through the docker's guard (an exception escaping a Qt slot
opens a blocking dialog in Krita).
"""
from __future__ import annotations

from typing import Any, Callable

from PyQt5.QtWidgets import (
    QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox, QLabel, QPushButton, QSpinBox, QVBoxLayout,
)

from .live import LiveMode, LiveSettings, LiveView
from .request import RequestError

#: The seed box's value that means "pick one when live mode turns on, then keep it".
PICK_SEED = -1


def build_live_section(live: LiveMode, guard: Callable[[Callable[..., Any]], Callable[..., None]]) -> QGroupBox:
    """A group box driving ``live``; ``guard`` wraps every slot."""
    box = QGroupBox("Live")
    layout = QVBoxLayout(box)
    buttons = QGridLayout()
    toggle = QPushButton("Live")
    toggle.setCheckable(True)
    toggle.setToolTip("While on, every stroke (and every change of the prompt, model or live settings) refines the "
                      "picture into the Easel live layer (Ctrl+Alt+Shift+L). The live layer is never saved: Save, "
                      "Save As, Export and closing the image take it out first. Save Incremental Version/Backup, "
                      "Krita's autosave copies and scripts that save directly can still hold it.")
    keep = QPushButton("Keep")
    keep.setToolTip("Copy the live result into a new layer (Ctrl+Alt+Shift+K); Ctrl+Z removes it")
    refresh = QPushButton("Refresh")
    refresh.setToolTip("Make a live image now")
    buttons.addWidget(toggle, 0, 0, 1, 2)
    buttons.addWidget(keep, 1, 0)
    buttons.addWidget(refresh, 1, 1)
    layout.addLayout(buttons)

    form = QFormLayout()
    form.setRowWrapPolicy(QFormLayout.WrapLongRows)
    strength = QDoubleSpinBox()
    strength.setRange(0.05, 1.0)
    strength.setSingleStep(0.05)
    strength.setValue(live.settings.strength)
    steps = QSpinBox()
    steps.setRange(1, 50)
    steps.setValue(live.settings.steps)
    steps.setToolTip("Denoising steps each live image runs (few-step models: 1-4)")
    seed = QSpinBox()
    seed.setRange(PICK_SEED, 2 ** 31 - 1)
    seed.setSpecialValueText("pick one, keep it")
    seed.setValue(PICK_SEED if live.settings.seed is None else min(live.settings.seed, seed.maximum()))
    form.addRow("Live strength", strength)
    form.addRow("Live steps", steps)
    form.addRow("Live seed", seed)
    layout.addLayout(form)
    status = QLabel()
    status.setWordWrap(True)
    layout.addWidget(status)

    def show(view: LiveView) -> None:
        toggle.blockSignals(True)
        toggle.setChecked(view.enabled)
        toggle.blockSignals(False)
        toggle.setText("Live: on" if view.enabled else "Live")
        keep.setEnabled(view.enabled and view.can_keep)
        refresh.setEnabled(view.enabled)
        status.setText(view.status)
        status.setStyleSheet("color: #d04040;" if view.error else "")

    def switched(on: bool) -> None:
        if on:
            live.enable()
        else:
            live.disable()
        show(live.view)  # a refused start unchecks the button

    def settings_changed(*_: Any) -> None:
        try:
            live.set_settings(LiveSettings(strength=strength.value(), steps=steps.value(),
                                           seed=None if seed.value() == PICK_SEED else seed.value()))
        except RequestError as exc:
            status.setText(str(exc))

    toggle.toggled.connect(guard(switched))
    keep.clicked.connect(guard(lambda *_: live.keep()))
    refresh.clicked.connect(guard(lambda *_: live.refresh()))
    for signal in (strength.valueChanged, steps.valueChanged, seed.valueChanged):
        signal.connect(guard(settings_changed))
    live.subscribe(guard(show))
    box.live_widgets = {"toggle": toggle, "keep": keep, "refresh": refresh, "strength": strength, "steps": steps,
                        "seed": seed, "status": status}
    return box
