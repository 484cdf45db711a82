"""What the docker shows and what the tests count: :class:`ViewState` (replaced on every change,
never mutated), :class:`Stats`, and which of the server's models the plugin lists. No ``krita``
and no Qt here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .clientkit.controls import job_models
from .host import ControlLayer
from .control import ControlSpec
from .protocol import AddonInfo, ModelInfo
from .request import Action


def usable_models(models: Sequence[ModelInfo]) -> tuple[ModelInfo, ...]:
    """The models that can run at least one of the plugin's actions (not ControlNets, not
    reference adapters, whose ``tasks`` are empty; not depth-only models), in the server's order."""
    ours = {action.task for action in Action}
    return tuple(m for m in job_models(models) if not m.tasks or ours & set(m.tasks))


@dataclass(frozen=True)
class ViewState:
    """Everything the docker shows. Replaced (never mutated) on every change."""

    connection: str = "offline"          # offline | connecting | online | reconnecting
    status: str = "Not connected."
    message: str = ""                    # the last error or notice, a plain sentence
    message_is_error: bool = False
    progress: float | None = None        # 0..1 while a job runs, else None
    progress_text: str = ""
    jobs_open: int = 0
    models: tuple[ModelInfo, ...] = ()
    samplers: tuple[str, ...] = ()
    history_size: int = 0
    #: Everything the server lists (ControlNets included), its LoRAs and preprocessors; the
    #: active document's control layers.
    server_models: tuple[ModelInfo, ...] = ()
    loras: tuple[AddonInfo, ...] = ()
    loras_listed: bool = False
    preprocessors: tuple[str, ...] = ()
    control_layers: tuple[ControlLayer, ...] = ()


@dataclass
class Stats:
    """Counters the tests and the benchmark notes read."""

    jobs_submitted: int = 0
    results_applied: int = 0
    previews_drawn: int = 0
    longest_main_thread_step_s: float = 0.0
    longest_main_thread_step: str = ""
    layers_created: list[str] = field(default_factory=list)
    #: The most recent main-thread steps that took over 30 ms, as (what, seconds); at most 200.
    slow_steps: list[tuple[str, float]] = field(default_factory=list)

    def note(self, what: str, seconds: float) -> None:
        if seconds > self.longest_main_thread_step_s:
            self.longest_main_thread_step_s, self.longest_main_thread_step = seconds, what
        if seconds > 0.03:
            self.slow_steps.append((what, round(seconds, 4)))
            del self.slow_steps[:-200]


def control_rows(layers: Sequence[ControlLayer]) -> list[tuple[str, str, ControlSpec, bool]]:
    """What the docker shows of a list of control layers (handles compare by identity)."""
    return [(c.name, c.layer_id, c.spec, c.visible) for c in layers]
