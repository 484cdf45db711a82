"""``slots.guard``: a docker slot's failure is said once in a sentence; a docker whose widgets Qt has
deleted (its Krita window closed while it still listens) goes quiet instead of feeding the failure
back to itself.

No Krita: a real PyQt6 ``QObject`` deleted with ``sip.delete`` raises what a deleted Krita docker
widget raises; the controller is a small stand-in whose ``say`` calls its listeners, as
``Controller.say`` does.
"""
from __future__ import annotations

import pytest

from easel_krita.slots import guard

QtCore = pytest.importorskip("PyQt6.QtCore")
sip = pytest.importorskip("PyQt6.sip")


class Speaker:
    """What ``guard`` uses of the controller: ``say`` updates the view, which calls the listeners."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.listeners: list = []

    def say(self, text: str, error: bool = False) -> None:
        self.said.append(text)
        for listener in list(self.listeners):
            listener(text)


def test_a_slot_whose_widget_was_deleted_goes_quiet_instead_of_looping():
    widget = QtCore.QObject()
    sip.delete(widget)  # the docker's widget, gone with its window
    calls = []
    speaker = Speaker()

    def show(text: str) -> None:
        calls.append(text)
        widget.setObjectName(text)  # RuntimeError: wrapped C/C++ object ... has been deleted

    speaker.listeners.append(guard(speaker, show))
    speaker.say("Live is off: its image was closed.")
    speaker.say("Live is off.")
    assert speaker.said == ["Live is off: its image was closed.", "Live is off."]  # nothing said about it
    assert calls == ["Live is off: its image was closed."]  # tried once, quiet after


def test_other_failures_are_still_said_every_time():
    speaker = Speaker()

    def broken(value: int) -> None:
        raise ValueError(f"bad value {value}")

    slot = guard(speaker, broken)
    slot(1)
    slot(2)
    assert len(speaker.said) == 2 and "bad value 2" in speaker.said[1].lower()
    runtime = guard(speaker, lambda: (_ for _ in ()).throw(RuntimeError("a different runtime error")))
    runtime()
    assert len(speaker.said) == 3 and "a different runtime error" in speaker.said[2].lower()
