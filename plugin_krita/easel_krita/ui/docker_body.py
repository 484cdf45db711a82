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
``welcome`` through :meth:`DockerBody.set_limits`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from ..loras import LoraChoice, MAX_WEIGHT, MIN_WEIGHT
from ..qt import QAction, QActionGroup, Qt, QtWidgets
from ..request import UPSCALE_MAX, UPSCALE_MIN, Action, GenerationSettings
from .history_grid import HistoryGrid

GENERATE, UPSCALE, LIVE = "generate", "upscale", "live"
WORKSPACES = (GENERATE, UPSCALE, LIVE)
_WORKSPACE_LABELS = {GENERATE: "Generate", UPSCALE: "Upscale", LIVE: "Live"}
#: Until a welcome says otherwise: the reference server's bounds (docs/protocol.md, Limits).
DEFAULT_MAX_STEPS, DEFAULT_MAX_BATCH = 150, 8
SEED_MAX = 2 ** 31 - 1


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
    mark_control_layer: Callable[[str, float], None] = _nothing     # control type, strength
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


def spin(low: int, high: int, value: int, special: str = "") -> QtWidgets.QSpinBox:
    box = QtWidgets.QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def dspin(low: float, high: float, value: float, step: float, special: str = "") -> QtWidgets.QDoubleSpinBox:
    box = QtWidgets.QDoubleSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(2)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def _narrow(combo: QtWidgets.QComboBox, chars: int = 6) -> QtWidgets.QComboBox:
    """A combo box that never asks for more width than ``chars`` characters (long model names elide)."""
    combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    combo.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
    return combo


class Fold(QtWidgets.QWidget):
    """A titled section that folds: an arrow button and the body under it (folded at first)."""

    def __init__(self, title: str, body: QtWidgets.QWidget, folded: bool = True) -> None:
        super().__init__()
        self.button = QtWidgets.QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setChecked(not folded)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setAutoRaise(True)
        self.body = body
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.button)
        layout.addWidget(body)
        self.button.toggled.connect(self._toggled)
        self._toggled(not folded)

    def _toggled(self, open_: bool) -> None:
        self.button.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.body.setVisible(open_)

    @property
    def folded(self) -> bool:
        return not self.button.isChecked()


class CompactList(QtWidgets.QWidget):
    """Rows of (text, a number, remove ×) and an add row under them; the text elides in a narrow dock."""

    def __init__(self, low: float, high: float, empty_text: str,
                 changed: Callable[[str, float], None], removed: Callable[[str], None]) -> None:
        super().__init__()
        self._low, self._high = low, high
        self._changed, self._removed = changed, removed
        self.rows: dict[str, tuple[QtWidgets.QLabel, QtWidgets.QDoubleSpinBox]] = {}
        self._state: list[tuple[str, str, float]] = []
        self._rows_layout = QtWidgets.QVBoxLayout()
        self._rows_layout.setSpacing(1)
        self.empty = QtWidgets.QLabel(empty_text)
        self.empty.setWordWrap(True)
        self.add_row = QtWidgets.QHBoxLayout()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(self._rows_layout)
        layout.addWidget(self.empty)
        layout.addLayout(self.add_row)

    def show_rows(self, rows: Sequence[tuple[str, str, float]]) -> None:
        """``rows`` as (key, text, value); rebuilt only when the keys change (keeps focus while typing)."""
        rows = list(rows)
        if rows == self._state:
            return
        if [r[0] for r in rows] == [r[0] for r in self._state]:
            for key, text, value in rows:
                label, spin = self.rows[key]
                label.setText(text)
                label.setToolTip(text)
                if abs(spin.value() - value) > 1e-9:
                    spin.blockSignals(True)
                    spin.setValue(value)
                    spin.blockSignals(False)
            self._state = rows
            return
        self._state = rows
        while self._rows_layout.count():
            item = self._rows_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.rows = {}
        for key, text, value in rows:
            row = QtWidgets.QWidget()
            row_layout = QtWidgets.QHBoxLayout(row)
            row_layout.setContentsMargins(0, 0, 0, 0)
            row_layout.setSpacing(2)
            label = QtWidgets.QLabel(text)
            label.setToolTip(text)
            label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
            spin = dspin(self._low, self._high, value, 0.05)
            remove = QtWidgets.QToolButton()
            remove.setText("×")
            remove.setToolTip("Remove from the list")
            spin.valueChanged.connect(lambda v, k=key: self._changed(k, v))
            remove.clicked.connect(lambda *_, k=key: self._removed(k))
            row_layout.addWidget(label, 1)
            row_layout.addWidget(spin)
            row_layout.addWidget(remove)
            self._rows_layout.addWidget(row)
            self.rows[key] = (label, spin)
        self.empty.setVisible(not rows)

    def values(self) -> list[tuple[str, float]]:
        return [(key, self.rows[key][1].value()) for key, _, _ in self._state]


class DockerBody(QtWidgets.QWidget):
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
                                   lambda e, i: self.actions.discard(e, i))
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

    # -- building

    def _member(self, widget: QtWidgets.QWidget, *workspaces: str) -> QtWidgets.QWidget:
        for name in workspaces:
            self._members[name].append(widget)
        return widget

    def _build_switch(self) -> QtWidgets.QHBoxLayout:
        """The top row: the workspace (a menu button, as the peers have it), the model, the gear."""
        row = QtWidgets.QHBoxLayout()
        row.setSpacing(2)
        self.workspace_button = QtWidgets.QToolButton()
        self.workspace_button.setPopupMode(QtWidgets.QToolButton.ToolButtonPopupMode.InstantPopup)
        self.workspace_button.setToolTip("Workspace: Generate (and Refine, Fill, Expand) · Upscale · Live")
        menu = QtWidgets.QMenu(self.workspace_button)
        group = QActionGroup(self)
        group.setExclusive(True)
        self.workspace_actions: dict[str, QAction] = {}
        for name in WORKSPACES:
            action = menu.addAction(_WORKSPACE_LABELS[name])
            action.setCheckable(True)
            group.addAction(action)
            action.triggered.connect(lambda *_, n=name: self._switch(n))
            self.workspace_actions[name] = action
        self.workspace_button.setMenu(menu)
        self.model_combo = _narrow(QtWidgets.QComboBox(), 6)
        self.model_combo.setToolTip("The model (the server's list; the gear sets the server)")
        self.gear_button = QtWidgets.QToolButton()
        self.gear_button.setText("⚙")
        self.gear_button.setToolTip("Easel settings: server address, token, default model, largest working size")
        self.gear_button.setAutoRaise(True)
        self.gear_button.clicked.connect(lambda *_: self.actions.open_settings())
        row.addWidget(self.workspace_button)
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.gear_button)
        return row

    def _build_prompt(self) -> QtWidgets.QVBoxLayout:
        column = QtWidgets.QVBoxLayout()
        column.setSpacing(1)
        row = QtWidgets.QHBoxLayout()
        row.setSpacing(2)
        self.prompt_edit = QtWidgets.QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("What to paint")
        self.prompt_edit.setTabChangesFocus(True)
        line = self.prompt_edit.fontMetrics().lineSpacing()
        self.prompt_edit.setFixedHeight(line * 2 + 8)
        self.prompt_edit.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.negative_button = QtWidgets.QToolButton()
        self.negative_button.setText("−")
        self.negative_button.setCheckable(True)
        self.negative_button.setToolTip("Negative prompt: what to avoid")
        row.addWidget(self.prompt_edit, 1)
        row.addWidget(self.negative_button, 0, Qt.AlignmentFlag.AlignTop)
        self.negative_edit = QtWidgets.QPlainTextEdit()
        self.negative_edit.setPlaceholderText("What to avoid")
        self.negative_edit.setTabChangesFocus(True)
        self.negative_edit.setFixedHeight(line * 2 + 8)
        self.negative_edit.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.negative_edit.setVisible(False)
        self.negative_button.toggled.connect(self.negative_edit.setVisible)
        column.addLayout(row)
        column.addWidget(self.negative_edit)
        return column

    def _build_sliders(self) -> QtWidgets.QWidget:
        box = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        # Generate: strength (100 % generates, below refines)
        strength_row = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(strength_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.strength_slider = QtWidgets.QSlider(Qt.Orientation.Horizontal)
        self.strength_slider.setRange(5, 100)
        self.strength_slider.setSingleStep(5)
        self.strength_slider.setPageStep(10)
        self.strength_slider.setValue(100)
        self.strength_slider.setToolTip("100 %: generate new content. Below: refine what is there — how much of "
                                        "it the model may repaint")
        self.strength_slider.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.strength_label = QtWidgets.QLabel("100 %")
        self.strength_label.setMinimumWidth(self.strength_label.fontMetrics().horizontalAdvance("100 %") + 2)
        row.addWidget(QtWidgets.QLabel("Strength"))
        row.addWidget(self.strength_slider, 1)
        row.addWidget(self.strength_label)
        layout.addWidget(self._member(strength_row, GENERATE))
        # Upscale: factor and detail
        upscale_row = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(upscale_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.upscale_factor_spin = dspin(UPSCALE_MIN, UPSCALE_MAX, 2.0, 0.5)
        self.upscale_factor_spin.setPrefix("×")
        self.upscale_strength_spin = dspin(0.0, 1.0, 0.35, 0.05)
        self.upscale_strength_spin.setToolTip("Detail: how much the model may repaint while upscaling (0.35 keeps "
                                              "the picture)")
        row.addWidget(self.upscale_factor_spin, 1)
        row.addWidget(QtWidgets.QLabel("detail"))
        row.addWidget(self.upscale_strength_spin, 1)
        layout.addWidget(self._member(upscale_row, UPSCALE))
        # Live: strength
        live_row = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(live_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.live_strength_slider = QtWidgets.QSlider(Qt.Orientation.Horizontal)
        self.live_strength_slider.setRange(5, 100)
        self.live_strength_slider.setValue(50)
        self.live_strength_slider.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                                                QtWidgets.QSizePolicy.Policy.Fixed)
        self.live_strength_label = QtWidgets.QLabel("50 %")
        self.live_strength_label.setMinimumWidth(self.strength_label.minimumWidth())
        row.addWidget(QtWidgets.QLabel("Strength"))
        row.addWidget(self.live_strength_slider, 1)
        row.addWidget(self.live_strength_label)
        layout.addWidget(self._member(live_row, LIVE))
        return box

    def _build_primary(self) -> QtWidgets.QHBoxLayout:
        row = QtWidgets.QHBoxLayout()
        row.setSpacing(2)
        self.primary_button = QtWidgets.QPushButton("Generate")
        self.primary_button.setDefault(True)
        self.primary_button.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.fill_button = QtWidgets.QToolButton()
        self.fill_button.setText("Fill")
        self.fill_button.setToolTip("Repaint the selection to match its surroundings (inpaint)")
        self.expand_button = QtWidgets.QToolButton()
        self.expand_button.setText("Expand")
        self.expand_button.setToolTip("Grow the canvas by the margins and paint the new border (outpaint)")
        self.keep_button = QtWidgets.QToolButton()
        self.keep_button.setText("Keep")
        self.keep_button.setToolTip("Copy the live result into a new layer under your layer; Ctrl+Z removes it")
        row.addWidget(self.primary_button, 1)
        for button, workspace in ((self.fill_button, GENERATE), (self.expand_button, GENERATE),
                                  (self.keep_button, LIVE)):
            row.addWidget(self._member(button, workspace))
        self.primary_button.clicked.connect(lambda *_: self._primary())
        self.fill_button.clicked.connect(lambda *_: self.actions.run(Action.FILL))
        self.expand_button.clicked.connect(lambda *_: self.actions.run(Action.EXPAND))
        self.keep_button.clicked.connect(lambda *_: self.actions.live_keep())
        return row

    def _build_progress(self) -> QtWidgets.QHBoxLayout:
        row = QtWidgets.QHBoxLayout()
        row.setSpacing(2)
        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setFixedHeight(max(8, self.fontMetrics().height() // 2 + 2))
        self.progress_bar.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.cancel_button = QtWidgets.QToolButton()
        self.cancel_button.setText("✕")
        self.cancel_button.setToolTip("Cancel the running jobs")
        self.cancel_button.setAutoRaise(True)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda *_: self.actions.cancel())
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.cancel_button)
        return row

    def _build_extras(self, layout: QtWidgets.QVBoxLayout) -> None:
        advanced = QtWidgets.QWidget()
        form = QtWidgets.QFormLayout(advanced)
        form.setRowWrapPolicy(QtWidgets.QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setContentsMargins(8, 0, 0, 0)
        self.sampler_combo = _narrow(QtWidgets.QComboBox())
        self.steps_spin = spin(0, DEFAULT_MAX_STEPS, 0, "model default")
        self.cfg_spin = dspin(0.0, 30.0, 0.0, 0.5, "model default")
        seed_row = QtWidgets.QHBoxLayout()
        self.seed_random = QtWidgets.QCheckBox("random")
        self.seed_spin = spin(0, SEED_MAX, 0)
        seed_row.addWidget(self.seed_random)
        seed_row.addWidget(self.seed_spin, 1)
        self.batch_spin = spin(1, DEFAULT_MAX_BATCH, 1)
        self.context_spin = spin(0, 1024, 64)
        self.context_spin.setSuffix(" px")
        self.context_spin.setToolTip("Fill: pixels around the selection the model sees, so the new content matches")
        for box in (self.steps_spin, self.cfg_spin, self.seed_spin, self.batch_spin, self.context_spin):
            box.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
            box.setMinimumWidth(60)
        form.addRow("Sampler", self.sampler_combo)
        form.addRow("Steps", self.steps_spin)
        form.addRow("CFG", self.cfg_spin)
        form.addRow("Seed", seed_row)
        form.addRow("Batch", self.batch_spin)
        form.addRow("Context", self.context_spin)
        self.advanced = Fold("Advanced", advanced)
        layout.addWidget(self._member(self.advanced, GENERATE, UPSCALE))

        self.controls = CompactList(0.0, 2.0, "No control layers.",
                                    lambda key, value: self.actions.set_control_strength(key, value),
                                    lambda key: self.actions.remove_control_layer(key))
        self.control_type_combo = _narrow(QtWidgets.QComboBox())
        self.mark_layer_button = QtWidgets.QToolButton()
        self.mark_layer_button.setText("+ layer")
        self.mark_layer_button.setToolTip("Use the selected layer as a control layer of this type")
        self.mark_layer_button.clicked.connect(
            lambda *_: self.actions.mark_control_layer(self.control_type_combo.currentData() or "", 1.0))
        self.controls.add_row.addWidget(self.control_type_combo, 1)
        self.controls.add_row.addWidget(self.mark_layer_button)
        self.controls_fold = Fold("Control layers", self.controls)
        layout.addWidget(self._member(self.controls_fold, GENERATE))

        self.loras = CompactList(MIN_WEIGHT, MAX_WEIGHT, "No LoRAs.", lambda *_: self._store(),
                                 self._remove_lora)
        self.lora_combo = _narrow(QtWidgets.QComboBox())
        self.lora_add_button = QtWidgets.QToolButton()
        self.lora_add_button.setText("+")
        self.lora_add_button.setToolTip("Add the LoRA at weight 1")
        self.lora_add_button.clicked.connect(lambda *_: self._add_lora())
        self.loras.add_row.addWidget(self.lora_combo, 1)
        self.loras.add_row.addWidget(self.lora_add_button)
        self.loras_fold = Fold("LoRAs", self.loras)
        layout.addWidget(self._member(self.loras_fold, GENERATE, UPSCALE, LIVE))

        live = QtWidgets.QWidget()
        live_form = QtWidgets.QFormLayout(live)
        live_form.setRowWrapPolicy(QtWidgets.QFormLayout.RowWrapPolicy.WrapLongRows)
        self.live_steps_spin = spin(1, 50, 4)
        self.live_steps_spin.setToolTip("Denoising steps each live image runs (few-step models: 1-4)")
        self.live_seed_spin = spin(-1, SEED_MAX, -1, "pick one, keep it")
        live_form.addRow("Live steps", self.live_steps_spin)
        live_form.addRow("Live seed", self.live_seed_spin)
        layout.addWidget(self._member(live, LIVE))

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
        self.workspace_button.setText(_WORKSPACE_LABELS[workspace] + " ▾")
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
            _select(self.model_combo, settings.model)
            _select(self.sampler_combo, settings.sampler)
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
            _fill(self.model_combo, list(models), self._settings.model, None)
            _fill(self.sampler_combo, [(s, s) for s in samplers], self._settings.sampler, "default")
        finally:
            self._loading = False
        if not self._settings.model and self.model_combo.count():
            self._store()  # the first model the server lists becomes the form's

    def set_control_types(self, types: Sequence[tuple[str, str]]) -> None:
        _fill(self.control_type_combo, list(types), self.control_type_combo.currentData() or "canny", None)
        self.mark_layer_button.setEnabled(self.control_type_combo.count() > 0)

    def show_control_layers(self, rows: Sequence[ControlRow]) -> None:
        self.controls.show_rows([(row.layer_id, row.text, row.strength) for row in rows])

    def set_loras(self, loras: Sequence[tuple[str, str]]) -> None:
        _fill(self.lora_combo, list(loras), self.lora_combo.currentData() or "", None)
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


def _select(combo: QtWidgets.QComboBox, value: str) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def _fill(combo: QtWidgets.QComboBox, items: list[tuple[str, str]], current: str, default: str | None) -> None:
    """Replace ``combo``'s items when they changed; ``default`` adds a first entry with empty data."""
    if default is not None:
        items = [(default, "")] + items
    have = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]
    if have == items:
        return
    combo.blockSignals(True)
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    _select(combo, current)
    combo.blockSignals(False)
