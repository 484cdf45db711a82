"""The docker's *Regions* list: the active image's region layers with their prompts, compact.

One row per region: the layer's name, its prompt (edit it in place; Enter or leaving the field
stores it) and × (the layer stops being a region; it stays in the image). Under the rows, the add
row: a prompt and *+ layer*, which makes the selected layer (or group) a region with that prompt;
under it *Keep regions apart (slower)*: checked (the default), SD models run once per region's prompt
and blend the results by the regions (``region_mode`` "separate": a region's prompt stays inside
it); unchecked, one pass with masked attention ("attention": faster, softer borders). Flux models
keep regions apart either way. The choice is a form setting (``GenerationSettings.region_mode``):
kept while Krita runs, recorded with each job in the history, restored by *Copy settings*.

:class:`RegionsPanel` is host-free (values in through :meth:`RegionsPanel.show_regions`, actions
out through callables); :func:`attach_regions` binds one to the controller's region room
(``guides.py``) and folds it into the docker body under the control layers.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

from ..host import HostError
from ..qt import QtCore, QtWidgets
from ..regions import RegionMarkError
from .docker_layout import GENERATE
from .widgets import Fold, KeyedRows

#: Region layers are re-read this often while the docker shows (Krita 5.1 has no "layers changed").
REFRESH_MS = 1000


class RegionsPanel(KeyedRows):
    """Rows of (name, prompt, ×) and the add row (module docstring)."""

    def __init__(self, mark: Callable[[str], None], set_prompt: Callable[[str, str], None],
                 remove: Callable[[str], None], set_apart: Callable[[bool], None] = lambda apart: None) -> None:
        super().__init__("No regions. A region is a layer whose painted part gets its own prompt.")
        self._set_prompt, self._remove = set_prompt, remove
        self.prompt_edit = QtWidgets.QLineEdit()
        self.prompt_edit.setPlaceholderText("prompt for the selected layer")
        self.mark_button = QtWidgets.QToolButton()
        self.mark_button.setText("+ layer")
        self.mark_button.setToolTip("Make the selected layer (or group) a region with this prompt: where it is "
                                    "painted, this prompt applies")
        self.mark_button.clicked.connect(lambda *_: mark(self.prompt_edit.text()))
        self.prompt_edit.returnPressed.connect(lambda: mark(self.prompt_edit.text()))
        add_row = QtWidgets.QHBoxLayout()
        add_row.addWidget(self.prompt_edit, 1)
        add_row.addWidget(self.mark_button)
        tip = ("SD models run once per region's prompt and blend the results, so each prompt stays inside its "
               "region. Off: one pass, faster, the prompts mix more at the borders. Flux models keep regions "
               "apart either way.")
        self.apart = QtWidgets.QCheckBox()
        self.apart.setChecked(True)
        self.apart.setToolTip(tip)
        self.apart.toggled.connect(lambda on: set_apart(bool(on)))
        self.apart_label = _ClickLabel("Keep regions apart (slower)", self.apart.toggle)  # wraps in a narrow dock
        self.apart_label.setToolTip(tip)
        apart_row = QtWidgets.QHBoxLayout()
        apart_row.addWidget(self.apart)
        apart_row.addWidget(self.apart_label, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(self._rows_layout)
        layout.addWidget(self.empty)
        layout.addLayout(add_row)
        layout.addLayout(apart_row)

    def show_apart(self, apart: bool) -> None:
        """Show the *Keep regions apart* choice without reporting it back."""
        blocked = self.apart.blockSignals(True)
        self.apart.setChecked(apart)
        self.apart.blockSignals(blocked)

    def show_regions(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """``rows`` as (layer id, layer name, prompt). Rebuilt only when the layers change, and a
        prompt being edited is left alone (the painter's typing wins over a refresh)."""
        self._show(rows)

    def _update_row(self, key: str, name: str, prompt: str) -> None:  # type: ignore[override]
        label, edit = self.rows[key]
        label.setText(name)
        if not edit.hasFocus() and edit.text() != prompt:
            edit.setText(prompt)

    def _make_row(self, layout: QtWidgets.QHBoxLayout, key: str, name: str, prompt: str) -> Any:  # type: ignore[override]
        label = QtWidgets.QLabel(name)
        label.setToolTip(name)
        label.setMaximumWidth(90)
        label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        edit = QtWidgets.QLineEdit(prompt)
        edit.setToolTip(f"What {name} becomes where it is painted")
        edit.editingFinished.connect(lambda k=key, e=edit: self._edited(k, e))
        remove = QtWidgets.QToolButton()
        remove.setText("×")
        remove.setToolTip("No longer a region (the layer stays)")
        remove.clicked.connect(lambda *_, k=key: self._remove(k))
        layout.addWidget(label, 1)
        layout.addWidget(edit, 3)
        layout.addWidget(remove)
        return label, edit

    def _edited(self, key: str, edit: QtWidgets.QLineEdit) -> None:
        known = next((prompt for k, _, prompt in self._state if k == key), None)
        if known is not None and edit.text() != known:
            self._set_prompt(key, edit.text())


class _ClickLabel(QtWidgets.QLabel):
    """A word-wrapped label that runs ``click`` when pressed (a check box's text that can wrap)."""

    def __init__(self, text: str, click: Callable[[], None]) -> None:
        super().__init__(text)
        self.setWordWrap(True)
        self._click = click

    def mousePressEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self._click()


def attach_regions(body: Any, controller: Any, guard: Callable[[Callable[..., Any]], Callable[..., None]]) -> RegionsPanel:
    """A :class:`RegionsPanel` for ``controller``'s active image, folded into ``body`` (the
    docker body) under its control layers and shown with the Generate workspace. Its actions go
    through ``guard`` (the docker's slot guard) and say their outcome in the docker's message line;
    *Keep regions apart* follows and sets ``controller.settings.region_mode``."""
    host, guides = controller.host, controller.guides

    def refresh() -> None:
        try:
            regions = guides.region_layers(host.active_document())
        except Exception:  # no image, or one Easel cannot work on: no regions to show
            regions = []
        panel.show_regions([(r.layer_id, r.name, r.prompt) for r in regions])

    def act(change: Callable[[Any], str], done: Callable[[str], str]) -> bool:
        try:
            name = change(host.active_document())
        except (HostError, RegionMarkError) as exc:
            controller.say(str(exc), error=True)
            return False
        refresh()
        controller.say(done(name))
        return True

    def mark(prompt: str) -> None:
        if act(lambda doc: guides.mark_region(doc, host.active_layer(doc), prompt),
               lambda name: f"{name} is a region: where it is painted, “{' '.join(prompt.split())}” applies; "
                            f"the main prompt covers the rest."):
            panel.prompt_edit.clear()

    panel = RegionsPanel(
        guard(mark),
        guard(lambda key, prompt: act(lambda doc: guides.set_region(doc, key, prompt),
                                      lambda name: f"The region {name} now asks for “{' '.join(prompt.split())}”.")),
        guard(lambda key: act(lambda doc: guides.set_region(doc, key, None),
                              lambda name: f"{name} is no longer a region.")),
        guard(lambda apart: controller.set_settings(
            replace(controller.settings, region_mode="separate" if apart else "attention"))))
    panel.show_apart(controller.settings.region_mode != "attention")
    controller.watch_settings(guard(lambda settings: panel.show_apart(settings.region_mode != "attention")))
    fold = Fold("Regions", panel)
    layout = body.controls_fold.parentWidget().layout()
    layout.insertWidget(layout.indexOf(body.controls_fold) + 1, body._member(fold, GENERATE))
    body.regions_fold = fold
    timer = QtCore.QTimer(panel)
    timer.timeout.connect(guard(lambda *_: refresh() if panel.isVisible() else None))
    timer.start(REFRESH_MS)
    refresh()
    return panel
