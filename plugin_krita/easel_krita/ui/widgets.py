"""Small widgets the compact docker is built from: number fields, a folding section, rows of keyed
entries (the compact list of (name, number, remove) rows is one), and combo-box helpers. Host-free (Qt only)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..qt import Qt, QtWidgets


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


def narrow(combo: QtWidgets.QComboBox, chars: int = 6) -> QtWidgets.QComboBox:
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


def hrow(spacing: int | None = None) -> tuple[QtWidgets.QWidget, QtWidgets.QHBoxLayout]:
    """A row widget and its horizontal layout, without margins (``spacing``: None keeps Qt's)."""
    widget = QtWidgets.QWidget()
    layout = QtWidgets.QHBoxLayout(widget)
    layout.setContentsMargins(0, 0, 0, 0)
    if spacing is not None:
        layout.setSpacing(spacing)
    return widget, layout


class KeyedRows(QtWidgets.QWidget):
    """A list of rows keyed by the first field of each entry, in ``_rows_layout``, with ``empty``
    shown when there are none; the subclass lays both out. :meth:`_show` updates the rows in place
    (:meth:`_update_row`) while the keys stay the same, which keeps focus while typing, and rebuilds
    them (:meth:`_make_row`) when the keys change; a removed row is hidden at once and deleted on the
    next turn of the event loop."""

    def __init__(self, empty_text: str) -> None:
        super().__init__()
        self.rows: dict[str, Any] = {}
        self._state: list[tuple[Any, ...]] = []
        self._rows_layout = QtWidgets.QVBoxLayout()
        self._rows_layout.setSpacing(1)
        self.empty = QtWidgets.QLabel(empty_text)
        self.empty.setWordWrap(True)

    def _show(self, rows: Sequence[tuple[Any, ...]]) -> None:
        rows = list(rows)
        if rows == self._state:
            return
        same_keys = [r[0] for r in rows] == [r[0] for r in self._state]
        self._state = rows
        if same_keys:
            for entry in rows:
                self._update_row(*entry)
            return
        while self._rows_layout.count():
            item = self._rows_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().hide()
                item.widget().deleteLater()
        self.rows = {}
        for entry in rows:
            widget, layout = hrow(spacing=2)
            self.rows[entry[0]] = self._make_row(layout, *entry)
            self._rows_layout.addWidget(widget)
        self.empty.setVisible(not rows)

    def _make_row(self, layout: QtWidgets.QHBoxLayout, key: str, *fields: Any) -> Any:
        """Fill ``layout`` with the row of ``key``; returns what :attr:`rows` keeps for it."""
        raise NotImplementedError

    def _update_row(self, key: str, *fields: Any) -> None:
        """Show ``fields`` in the existing row of ``key``."""
        raise NotImplementedError


class CompactList(KeyedRows):
    """Rows of (text, a number, remove ×) and an add row under them; the text elides in a narrow dock."""

    def __init__(self, low: float, high: float, empty_text: str,
                 changed: Callable[[str, float], None], removed: Callable[[str], None]) -> None:
        super().__init__(empty_text)
        self._low, self._high = low, high
        self._changed, self._removed = changed, removed
        self.add_row = QtWidgets.QHBoxLayout()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(self._rows_layout)
        layout.addWidget(self.empty)
        layout.addLayout(self.add_row)

    def show_rows(self, rows: Sequence[tuple[str, str, float]]) -> None:
        """``rows`` as (key, text, value); rebuilt only when the keys change (keeps focus while typing)."""
        self._show(rows)

    def _update_row(self, key: str, text: str, value: float) -> None:  # type: ignore[override]
        label, spin = self.rows[key]
        label.setText(text)
        label.setToolTip(text)
        if abs(spin.value() - value) > 1e-9:
            spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(False)

    def _make_row(self, layout: QtWidgets.QHBoxLayout, key: str, text: str, value: float) -> Any:  # type: ignore[override]
        label = QtWidgets.QLabel(text)
        label.setToolTip(text)
        label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        spin = dspin(self._low, self._high, value, 0.05)
        remove = QtWidgets.QToolButton()
        remove.setText("×")
        remove.setToolTip("Remove from the list")
        spin.valueChanged.connect(lambda v, k=key: self._changed(k, v))
        remove.clicked.connect(lambda *_, k=key: self._removed(k))
        layout.addWidget(label, 1)
        layout.addWidget(spin)
        layout.addWidget(remove)
        return label, spin

    def values(self) -> list[tuple[str, float]]:
        return [(key, self.rows[key][1].value()) for key, _, _ in self._state]


def select(combo: QtWidgets.QComboBox, value: str) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def fill(combo: QtWidgets.QComboBox, items: list[tuple[str, str]], current: str, default: str | None) -> None:
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
    select(combo, current)
    combo.blockSignals(False)
