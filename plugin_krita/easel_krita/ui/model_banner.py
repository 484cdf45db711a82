"""The missing-model banner at the top of the docker's scrolling part, right under its message
line: what the next job lacks on the server in a sentence, a *Download (size)* button, and the download's progress bar while it runs.

Host-free: it shows a :class:`~..model_setup.BannerState` (any object with ``text``, ``button``,
``progress`` and ``error``) and calls ``download`` / ``dismiss``. :func:`attach_banner` puts it
into a docker body and follows a setup room's states.
"""
from __future__ import annotations

from typing import Any, Callable

from ..qt import Qt, QtCore, QtWidgets


class ModelBanner(QtWidgets.QFrame):
    """Hidden while there is nothing to say."""

    def __init__(self, download: Callable[[], None], dismiss: Callable[[], None],
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.label = QtWidgets.QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.button = QtWidgets.QPushButton()
        self.button.setToolTip("Ask the server to download it; it is listed when the download is done")
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(max(8, self.fontMetrics().height() // 2 + 2))
        self.progress.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.close_button = QtWidgets.QToolButton()
        self.close_button.setText("×")
        self.close_button.setToolTip("Hide this until something else is missing")
        self.close_button.setAutoRaise(True)
        row = QtWidgets.QHBoxLayout()
        row.setSpacing(2)
        row.addWidget(self.button)
        row.addWidget(self.progress, 1)
        row.addStretch(0)
        row.addWidget(self.close_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(3, 2, 3, 2)
        layout.setSpacing(2)
        layout.addWidget(self.label)
        layout.addLayout(row)
        self.button.clicked.connect(lambda *_: download())
        self.close_button.clicked.connect(lambda *_: dismiss())
        self.setVisible(False)

    def show_state(self, state: Any) -> None:
        """Show ``state`` (``text`` "" hides the banner)."""
        self.label.setText(state.text)
        self.label.setToolTip(state.text)
        self.label.setStyleSheet("color: #d04040;" if state.error else "")
        self.button.setText(state.button)
        self.button.setVisible(bool(state.button))
        self.progress.setVisible(state.progress is not None)
        self.progress.setValue(int(max(0.0, min(1.0, state.progress or 0.0)) * 1000))
        self.close_button.setVisible(state.progress is None)
        self.setVisible(bool(state.text))


def attach_banner(body: QtWidgets.QWidget, setup: Any, guard: Callable[[Callable[..., Any]], Callable[..., None]]) -> ModelBanner:
    """A banner at the top of ``body``'s scrolling part (right under the message line; in a dock
    too short for it, it scrolls instead of squeezing the rows above), showing ``setup``'s states
    (``setup.subscribe``) and calling ``setup.download`` / ``setup.dismiss`` through ``guard``."""
    banner = ModelBanner(guard(setup.download), guard(setup.dismiss))
    body.scroll.widget().layout().insertWidget(0, banner)
    shown = [(False, True, False)]

    def show(state: Any) -> None:
        banner.show_state(state)
        kind = (bool(state.text), state.progress is None, state.error)
        if state.text and kind != shown[0]:  # newly shown, or now running or ended: scroll to its first line
            QtCore.QTimer.singleShot(0, guard(lambda: body.scroll.verticalScrollBar().setValue(0)))
        shown[0] = kind
    setup.subscribe(guard(show))
    return banner
