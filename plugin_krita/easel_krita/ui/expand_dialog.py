"""Expand's question before anything grows: how many pixels on each side.

Prefilled with the margins used last (the form keeps them, so they are remembered between
sessions); the canvas size after Expand is shown as the painter types. OK gives the margins,
Cancel leaves the canvas as it is.
"""
from __future__ import annotations

from ..geometry import Margins
from ..qt import QtWidgets

#: The most pixels one side may grow by in one Expand.
MAX_MARGIN = 4096


class ExpandDialog(QtWidgets.QDialog):
    """Modal; :meth:`margins` after it was accepted."""

    def __init__(self, margins: Margins, canvas_size: tuple[int, int],
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Expand the canvas")
        self._canvas = canvas_size
        grid = QtWidgets.QGridLayout()
        self.spins: dict[str, QtWidgets.QSpinBox] = {}
        where = {"top": (0, 1), "left": (1, 0), "right": (1, 2), "bottom": (2, 1)}
        for side, (row, column) in where.items():
            spin = QtWidgets.QSpinBox()
            spin.setRange(0, MAX_MARGIN)
            spin.setSingleStep(32)
            spin.setSuffix(" px")
            spin.setValue(getattr(margins, side))
            spin.setToolTip(f"Pixels added on the {side}")
            spin.valueChanged.connect(lambda *_: self._update())
            grid.addWidget(spin, row, column)
            self.spins[side] = spin
        self.size_label = QtWidgets.QLabel()
        self.size_label.setWordWrap(True)
        grid.addWidget(self.size_label, 1, 1)
        self.buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Ok
                                                  | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).setText("Expand")
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(QtWidgets.QLabel("Grow the canvas by (the model paints the new border):"))
        layout.addLayout(grid)
        layout.addWidget(self.buttons)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self._update()

    def margins(self) -> Margins:
        return Margins(*(self.spins[side].value() for side in ("left", "top", "right", "bottom")))

    def _update(self) -> None:
        margins = self.margins()
        width = self._canvas[0] + margins.left + margins.right
        height = self._canvas[1] + margins.top + margins.bottom
        self.size_label.setText(f"{self._canvas[0]}×{self._canvas[1]}\n→ {width}×{height}")
        self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).setEnabled(not margins.empty)
