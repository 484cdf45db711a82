"""The one place the plugin imports Qt: PyQt5 (Krita 5) or PyQt6 (Krita 6).

Krita 5 ships PyQt5 and Krita 6 ships PyQt6; every other module imports ``QtCore``, ``QtGui``,
``QtWidgets`` and the few helpers below from here, and writes enums fully scoped
(``Qt.AlignmentFlag.AlignLeft``, ``QFormLayout.RowWrapPolicy.WrapLongRows``), which both bindings
accept (PyQt5 5.15 takes the scoped names; PyQt6 takes only those). PyQt5 is tried first: inside
Krita 5 it is the binding of the running application even where a PyQt6 is installed beside it.
"""
from __future__ import annotations

from typing import Any

try:
    from PyQt5 import QtCore, QtGui, QtWidgets
    from PyQt5.QtWidgets import QAction, QActionGroup, QShortcut
    QT_API = "PyQt5"
except ImportError:  # Krita 6
    from PyQt6 import QtCore, QtGui, QtWidgets  # type: ignore[no-redef]
    from PyQt6.QtGui import QAction, QActionGroup, QShortcut  # type: ignore[no-redef,assignment]
    QT_API = "PyQt6"

Qt = QtCore.Qt
Signal = QtCore.pyqtSignal

#: Item-data roles as plain ints (PyQt6's roles are enum members that do not add to ints).
USER_ROLE = int(getattr(Qt.ItemDataRole.UserRole, "value", Qt.ItemDataRole.UserRole))
TOOLTIP_ROLE = int(getattr(Qt.ItemDataRole.ToolTipRole, "value", Qt.ItemDataRole.ToolTipRole))


def exec_dialog(dialog: Any) -> int:
    """Run a modal dialog (``exec_`` in PyQt5, ``exec`` in PyQt6); its result code as an int."""
    run = getattr(dialog, "exec", None) or dialog.exec_
    result = run()
    return int(getattr(result, "value", result))


__all__ = ["QAction", "QActionGroup", "QShortcut", "QT_API", "Qt", "QtCore", "QtGui", "QtWidgets", "Signal", "TOOLTIP_ROLE", "USER_ROLE",
           "exec_dialog"]
