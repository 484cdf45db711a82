"""The active image's history as a grid of thumbnails.

Hover shows the prompt and the seed; a click previews it on the canvas (reported as ``preview``
once the double-click interval has passed without a second click, so a double click never
previews); a double click applies it as a new layer; Discard (or the Delete key) drops it. A right
click offers the same and more: Apply, Reuse seed, Copy settings, Discard. The grid is built from
:class:`Thumb` values (:func:`thumbs_of` makes them from a :class:`..history.History`) and reports
through the callables it is given; thumbnails are cached by (entry, image), so a history update
scales only the new results.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ..history import APPLIED, History
from ..protocol import ImageFormat, ImagePayload
from ..qt import USER_ROLE, QShortcut, Qt, QtCore, QtGui, QtWidgets

#: Thumbnail edge in pixels (logical); four fit side by side in a 260 px dock.
THUMB_SIZE = 56

Key = tuple[int, int]  # (history entry id, image index)
Report = Callable[[int, int], None]


@dataclass(frozen=True)
class Thumb:
    """One result in the grid. ``image`` is ``None`` once the history dropped its pixels."""

    entry_id: int
    index: int
    image: ImagePayload | None
    prompt: str
    seed: int | None
    action: str
    status: str = APPLIED
    detail: str = ""

    @property
    def key(self) -> Key:
        return (self.entry_id, self.index)

    def tooltip(self) -> str:
        prompt = " ".join(self.prompt.split()) or "(no prompt)"
        lines = [f"{self.action}: {prompt}", f"seed {self.seed}" if self.seed is not None else "seed: not known"]
        if self.status != APPLIED:
            status = str(getattr(self.status, "value", self.status))  # "not applied", never "Status.NOT_APPLIED"
            lines.append(f"{status}: {self.detail}" if self.detail else status)
        if self.image is None:
            lines.append("image dropped (the history keeps its settings)")
        lines.append("Click: preview on the canvas (click again to hide) · Double-click: apply as a new layer · "
                     "Right-click: reuse seed, copy settings")
        return "\n".join(lines)


def thumbs_of(history: History) -> list[Thumb]:
    """The history's results, newest first, one per image of each batch."""
    out: list[Thumb] = []
    for entry in reversed(list(history)):
        count = max(len(entry.seeds), len(entry.images), 1)
        for index in range(count):
            seed = entry.seeds[index] if index < len(entry.seeds) else entry.request.effective_seed
            image = entry.images[index] if index < len(entry.images) else None
            out.append(Thumb(entry.id, index, image, entry.request.settings.prompt, seed,
                             entry.request.action.label, entry.status, entry.detail))
    return out


def double_click_ms() -> int:
    """The desktop's double-click interval (Qt's default when there is no application yet)."""
    app = QtWidgets.QApplication.instance()
    return int(app.doubleClickInterval()) if app is not None else 400


def thumbnail(image: ImagePayload | None, size: int = THUMB_SIZE) -> QtGui.QPixmap:
    """``image`` scaled to fit ``size``² (a grey tile when it was dropped or cannot be read)."""
    qimage = QtGui.QImage()
    if image is not None:
        if image.format == ImageFormat.RGBA8:
            qimage = QtGui.QImage(image.data, image.width, image.height, image.width * 4,
                                  QtGui.QImage.Format.Format_RGBA8888)
        elif image.format in (ImageFormat.PNG, ImageFormat.JPEG):
            qimage.loadFromData(image.data)
    pixmap = QtGui.QPixmap(size, size)
    pixmap.fill(QtGui.QColor(96, 96, 96))
    if not qimage.isNull():
        scaled = qimage.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                               Qt.TransformationMode.SmoothTransformation)
        painter = QtGui.QPainter(pixmap)
        painter.drawImage((size - scaled.width()) // 2, (size - scaled.height()) // 2, scaled)
        painter.end()
    return pixmap


class HistoryGrid(QtWidgets.QWidget):
    """Thumbnails that wrap to the dock's width, and a Discard button under them."""

    def __init__(self, preview: Report, apply: Report, discard: Report,
                 parent: QtWidgets.QWidget | None = None, *, reuse_seed: Report | None = None,
                 copy_settings: Report | None = None) -> None:
        super().__init__(parent)
        self._preview, self._apply, self._discard = preview, apply, discard
        self._reuse_seed, self._copy_settings = reuse_seed, copy_settings
        self._icons: dict[Key, QtGui.QIcon] = {}
        self._thumbs: dict[Key, Thumb] = {}
        self.list = QtWidgets.QListWidget()
        self.list.setViewMode(QtWidgets.QListView.ViewMode.IconMode)
        self.list.setIconSize(QtCore.QSize(THUMB_SIZE, THUMB_SIZE))
        self.list.setGridSize(QtCore.QSize(THUMB_SIZE + 6, THUMB_SIZE + 6))
        self.list.setResizeMode(QtWidgets.QListView.ResizeMode.Adjust)
        self.list.setMovement(QtWidgets.QListView.Movement.Static)
        self.list.setUniformItemSizes(True)
        self.list.setWrapping(True)
        self.list.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setMinimumHeight(THUMB_SIZE + 12)
        self.list.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Expanding)
        self.empty_label = QtWidgets.QLabel("Results appear here: hover for the prompt and seed, click to preview "
                                            "one on the canvas, double-click to apply it as a new layer.")
        self.empty_label.setWordWrap(True)
        self.discard_button = QtWidgets.QPushButton("Discard")
        self.discard_button.setToolTip("Drop the selected result from the history (Delete)")
        self.discard_button.setEnabled(False)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.discard_button)
        # A click previews only when no second click follows within the double-click interval;
        # the release after a double click (which Qt reports as a click too) is not a preview.
        self._pending: QtWidgets.QListWidgetItem | None = None
        self._click_timer = QtCore.QTimer(self)
        self._click_timer.setSingleShot(True)
        self._click_timer.timeout.connect(self._clicked_once)
        self._quiet = QtCore.QElapsedTimer()
        self.list.itemClicked.connect(self._clicked)
        self.list.itemDoubleClicked.connect(self._double_clicked)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.list.currentItemChanged.connect(lambda item, _old: self.discard_button.setEnabled(item is not None))
        self.discard_button.clicked.connect(lambda *_: self._report(self._discard, self.list.currentItem()))
        delete = QShortcut(QtGui.QKeySequence(QtGui.QKeySequence.StandardKey.Delete), self.list)
        delete.setContext(Qt.ShortcutContext.WidgetShortcut)
        delete.activated.connect(lambda: self._report(self._discard, self.list.currentItem()))
        self.show_thumbs([])

    def show_thumbs(self, thumbs: Iterable[Thumb]) -> None:
        """Show ``thumbs`` in order, keeping the selection when its result is still there."""
        thumbs = list(thumbs)
        current = self.current_key()
        keys = {thumb.key for thumb in thumbs}
        self._icons = {key: icon for key, icon in self._icons.items() if key in keys}
        self._thumbs = {thumb.key: thumb for thumb in thumbs}
        self._click_timer.stop()
        self._pending = None
        self.list.clear()
        for thumb in thumbs:
            icon = self._icons.get(thumb.key)
            if icon is None:
                icon = self._icons[thumb.key] = QtGui.QIcon(thumbnail(thumb.image))
            item = QtWidgets.QListWidgetItem(icon, "")
            item.setData(USER_ROLE, thumb.key)
            item.setToolTip(thumb.tooltip())
            self.list.addItem(item)
            if thumb.key == current:
                self.list.setCurrentItem(item)
        self.empty_label.setVisible(not thumbs)
        self.discard_button.setEnabled(self.list.currentItem() is not None)

    def current_key(self) -> Key | None:
        item = self.list.currentItem()
        return None if item is None else tuple(item.data(USER_ROLE))  # type: ignore[return-value]

    def keys(self) -> list[Key]:
        return [tuple(self.list.item(i).data(USER_ROLE)) for i in range(self.list.count())]  # type: ignore[misc]

    def menu_for(self, item: QtWidgets.QListWidgetItem) -> QtWidgets.QMenu:
        """The thumbnail's right-click menu: Apply (to the current image, when it was never placed),
        Reuse seed, Copy settings, Discard."""
        menu = QtWidgets.QMenu(self)
        thumb = self._thumbs.get(tuple(item.data(USER_ROLE)))  # type: ignore[arg-type]
        placed = thumb is None or thumb.status == APPLIED
        entries = [("Apply again" if placed else "Apply to current image", self._apply),
                   ("Reuse seed", self._reuse_seed), ("Copy settings", self._copy_settings),
                   ("Discard", self._discard)]
        for text, report in entries:
            if report is not None:
                action = menu.addAction(text)
                action.setEnabled(text != "Apply again" or thumb is None or thumb.image is not None)
                action.triggered.connect(lambda *_, r=report: self._report(r, item))
        return menu

    def _context_menu(self, position: QtCore.QPoint) -> None:
        item = self.list.itemAt(position)
        if item is not None:
            menu = self.menu_for(item)
            run = getattr(menu, "exec", None) or menu.exec_
            run(self.list.viewport().mapToGlobal(position))

    def _clicked(self, item: QtWidgets.QListWidgetItem) -> None:
        if self._quiet.isValid() and self._quiet.elapsed() < double_click_ms():
            return
        self._pending = item
        self._click_timer.start(double_click_ms())

    def _clicked_once(self) -> None:
        item, self._pending = self._pending, None
        if item is not None and self.list.row(item) >= 0:
            self._report(self._preview, item)

    def _double_clicked(self, item: QtWidgets.QListWidgetItem) -> None:
        self._click_timer.stop()
        self._pending = None
        self._quiet.start()
        self._report(self._apply, item)

    def _report(self, report: Report, item: QtWidgets.QListWidgetItem | None) -> None:
        if item is not None:
            entry_id, index = item.data(USER_ROLE)
            report(int(entry_id), int(index))
