"""The Easel settings dialog: server address, token, a connection test, default model, largest
working size. Opened from the docker's gear and from Tools ▸ Easel ▸ Settings.

The dialog knows no network: the connection test calls the ``probe`` it is given with the address
and token typed, and shows the :class:`ProbeResult` the probe reports later (on the main thread).
A report for an address or token that has since been edited is dropped (the test is stale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..qt import Qt, QtWidgets
from ..settings import (
    LARGEST_SIDE_MAX, LARGEST_SIDE_MIN, Preferences, ProbeResult, check_largest_side, check_url,
)


#: ``probe(url, token, report)`` starts a test and later calls ``report`` once on the main thread.
Probe = Callable[[str, str, Callable[[ProbeResult], None]], None]


@dataclass(frozen=True)
class ConnectionSettings:
    """The dialog's values after OK."""

    url: str
    token: str
    default_model: str
    largest_side: int


class SettingsDialog(QtWidgets.QDialog):
    """Modal; :meth:`values` after it was accepted. ``models`` fills the default-model list until a
    connection test brings the server's."""

    def __init__(self, prefs: Preferences, probe: Probe, models: Sequence[tuple[str, str]] = (),
                 max_image_side: int = LARGEST_SIDE_MAX, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Easel settings")
        self.setMinimumWidth(420)
        self._probe = probe
        self._probe_serial = 0
        form = QtWidgets.QFormLayout()
        form.setRowWrapPolicy(QtWidgets.QFormLayout.RowWrapPolicy.WrapLongRows)
        self.url_edit = QtWidgets.QLineEdit(prefs.url)
        self.url_edit.setToolTip("The address `easel serve` prints, e.g. ws://127.0.0.1:9797")
        self.token_edit = QtWidgets.QLineEdit(prefs.token)
        self.token_edit.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("only for a server started with --token")
        self.show_token = QtWidgets.QCheckBox("show")
        token_row = QtWidgets.QHBoxLayout()
        token_row.addWidget(self.token_edit, 1)
        token_row.addWidget(self.show_token)
        self.test_button = QtWidgets.QPushButton("Test connection")
        self.test_label = QtWidgets.QLabel()
        self.test_label.setWordWrap(True)
        self.test_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.model_combo = QtWidgets.QComboBox()
        self.model_combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(12)
        self.largest_spin = QtWidgets.QSpinBox()
        self.largest_spin.setSingleStep(256)
        self.largest_spin.setSuffix(" px")
        self.largest_spin.setToolTip("On a bigger canvas Generate makes a picture at the model's size and refines it "
                                     "up to the canvas in tiled passes, up to this many pixels a side")
        form.addRow("Server address", self.url_edit)
        form.addRow("Token", token_row)
        form.addRow("", self.test_button)
        form.addRow(self.test_label)  # the server's sentence gets the dialog's whole width
        form.addRow("Default model", self.model_combo)
        form.addRow("Largest working size", self.largest_spin)
        self.error_label = QtWidgets.QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #d04040;")
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Ok
                                             | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)

        self.set_models(models, prefs.default_model)
        self.set_max_side(max_image_side)
        self.largest_spin.setValue(min(prefs.largest_side, self.largest_spin.maximum()))
        self.show_token.toggled.connect(self._show_token)
        self.test_button.clicked.connect(self.test_connection)
        self.url_edit.textEdited.connect(self._edited)
        self.token_edit.textEdited.connect(self._edited)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)

    # -- filled by the host

    def set_models(self, models: Sequence[tuple[str, str]], current: str | None = None) -> None:
        """``models`` as (label, id); the first entry is always "the first the server lists"."""
        keep = self.model_combo.currentData() if current is None else current
        self.model_combo.clear()
        self.model_combo.addItem("the first the server lists", "")
        for label, model_id in models:
            self.model_combo.addItem(label, model_id)
        if keep and self.model_combo.findData(keep) < 0:
            self.model_combo.addItem(f"{keep} (not on this server)", keep)
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(keep or "")))

    def set_max_side(self, max_image_side: int) -> None:
        self.largest_spin.setRange(LARGEST_SIDE_MIN, max(LARGEST_SIDE_MIN, min(LARGEST_SIDE_MAX, max_image_side)))

    # -- the connection test

    def test_connection(self, *_: object) -> None:
        try:
            url = check_url(self.url_edit.text())
        except ValueError as exc:
            self._show_result(ProbeResult(False, _capital(str(exc))))
            return
        self._probe_serial += 1
        serial = self._probe_serial
        self.test_button.setEnabled(False)
        self.test_label.setStyleSheet("")
        self.test_label.setText(f"Connecting to {url}…")
        self._probe(url, self.token_edit.text().strip(), lambda result: self._reported(serial, result))

    def _reported(self, serial: int, result: ProbeResult) -> None:
        if serial != self._probe_serial:
            return  # the address or token changed since this test started
        self._show_result(result)
        if result.ok:
            if result.models:
                self.set_models(result.models)
            if result.max_image_side:
                self.set_max_side(result.max_image_side)

    def _show_result(self, result: ProbeResult) -> None:
        self.test_button.setEnabled(True)
        self.test_label.setText(result.sentence)
        self.test_label.setStyleSheet("" if result.ok else "color: #d04040;")
        self._grow()

    def _grow(self) -> None:
        """Grow to show a wrapped sentence whole (a top-level window does not follow its labels'
        height-for-width by itself)."""
        self.layout().activate()
        needed = self.layout().totalHeightForWidth(self.width()) if self.layout().hasHeightForWidth() else 0
        if needed > self.height():
            self.resize(self.width(), needed)

    def _edited(self, *_: object) -> None:
        if not self.test_button.isEnabled():
            self._probe_serial += 1  # an answer for the old values would mislead
            self.test_button.setEnabled(True)
            self.test_label.setText("")

    def _show_token(self, shown: bool) -> None:
        self.token_edit.setEchoMode(QtWidgets.QLineEdit.EchoMode.Normal if shown
                                    else QtWidgets.QLineEdit.EchoMode.Password)

    # -- OK

    def values(self) -> ConnectionSettings:
        """The dialog's values; ``ValueError`` with a sentence when the address is not usable."""
        return ConnectionSettings(check_url(self.url_edit.text()), self.token_edit.text().strip(),
                                  self.model_combo.currentData() or "",
                                  check_largest_side(self.largest_spin.value()))

    def _accept(self) -> None:
        try:
            self.values()
        except ValueError as exc:
            self.error_label.setText(_capital(str(exc)) + ".")
            self._grow()
            return
        self.accept()


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
