"""The compact docker's widgets, built top to bottom (:class:`DockerLayout`); what they do is
:class:`~.docker_body.DockerBody`'s. Each widget is a member of the workspaces that show it."""
from __future__ import annotations

from ..loras import MAX_WEIGHT, MIN_WEIGHT
from ..qt import QAction, QActionGroup, Qt, QtWidgets
from ..request import UPSCALE_MAX, UPSCALE_MIN, Action
from .widgets import CompactList, Fold, dspin, hrow, narrow, spin

GENERATE, UPSCALE, LIVE = "generate", "upscale", "live"
WORKSPACES = (GENERATE, UPSCALE, LIVE)
WORKSPACE_LABELS = {GENERATE: "Generate", UPSCALE: "Upscale", LIVE: "Live"}
#: Until a welcome says otherwise: the reference server's bounds (docs/protocol.md, Limits).
DEFAULT_MAX_STEPS, DEFAULT_MAX_BATCH = 150, 8
SEED_MAX = 2 ** 31 - 1


class DockerLayout(QtWidgets.QWidget):
    """The widgets, laid out; :class:`~.docker_body.DockerBody` adds the behaviour (the builders
    connect their buttons to its methods and to its ``actions``)."""


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
            action = menu.addAction(WORKSPACE_LABELS[name])
            action.setCheckable(True)
            group.addAction(action)
            action.triggered.connect(lambda *_, n=name: self._switch(n))
            self.workspace_actions[name] = action
        self.workspace_button.setMenu(menu)
        self.model_combo = narrow(QtWidgets.QComboBox(), 6)
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
        strength_row, row = hrow()
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
        upscale_row, row = hrow()
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
        live_row, row = hrow()
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
        self.sampler_combo = narrow(QtWidgets.QComboBox())
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
        self.control_type_combo = narrow(QtWidgets.QComboBox())
        self.control_type_combo.setToolTip("The control type a new control layer gets")
        self.control_strength_spin = dspin(0.05, 2.0, 1.0, 0.05)
        self.control_strength_spin.setToolTip("The strength a new control layer gets (each row has its own)")
        self.mark_layer_button = QtWidgets.QToolButton()
        self.mark_layer_button.setText("Use layer")
        self.mark_layer_button.setToolTip("Use the selected layer as a control layer of this type: its pixels "
                                          "guide Generate, Refine, Fill and Expand")
        self.control_start_spin = dspin(0.0, 0.95, 0.0, 0.05)
        self.control_end_spin = dspin(0.05, 1.0, 1.0, 0.05)
        for box in (self.control_start_spin, self.control_end_spin):
            box.setToolTip("The part of the steps a new control layer guides (0 to 1: all of them)")
        self.mark_layer_button.clicked.connect(lambda *_: self.actions.mark_control_layer(
            self.control_type_combo.currentData() or "", self.control_strength_spin.value(),
            self.control_start_spin.value(), self.control_end_spin.value()))
        self.make_control_button = QtWidgets.QToolButton()
        self.make_control_button.setText("Make")
        self.make_control_button.setToolTip("Make a control layer of this type from the visible image (inside the "
                                            "selection) with the server's preprocessor: a new layer you can touch up")
        self.make_control_button.clicked.connect(
            lambda *_: self.actions.make_control_layer(self.control_type_combo.currentData() or "", False))
        make_menu = QtWidgets.QMenu(self.make_control_button)
        make_menu.addAction("Make from the visible image").triggered.connect(
            lambda *_: self.actions.make_control_layer(self.control_type_combo.currentData() or "", False))
        make_menu.addAction("Make from the selected layer").triggered.connect(
            lambda *_: self.actions.make_control_layer(self.control_type_combo.currentData() or "", True))
        self.make_control_button.setMenu(make_menu)
        self.make_control_button.setPopupMode(QtWidgets.QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        self.controls.add_row.addWidget(self.control_type_combo, 1)
        self.controls.add_row.addWidget(self.control_strength_spin)
        steps = QtWidgets.QHBoxLayout()
        steps.setSpacing(2)
        steps.addWidget(QtWidgets.QLabel("steps"))
        steps.addWidget(self.control_start_spin, 1)
        steps.addWidget(QtWidgets.QLabel("to"))
        steps.addWidget(self.control_end_spin, 1)
        self.controls.layout().addLayout(steps)
        buttons = QtWidgets.QHBoxLayout()
        buttons.setSpacing(2)
        buttons.addWidget(self.mark_layer_button, 1)
        buttons.addWidget(self.make_control_button, 1)
        self.controls.layout().addLayout(buttons)
        self.controls_fold = Fold("Control layers", self.controls)
        layout.addWidget(self._member(self.controls_fold, GENERATE))

        self.loras = CompactList(MIN_WEIGHT, MAX_WEIGHT, "No LoRAs.", lambda *_: self._store(),
                                 self._remove_lora)
        self.lora_combo = narrow(QtWidgets.QComboBox())
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

