"""backend.construction: loads patch torch process-wide (accelerate's init_empty_weights swaps
nn.Module.register_parameter; diffusers' and transformers' no_init_weights swap torch.nn.init). Two
threads inside them at once left the patch installed for good, and every tiny model built after that
had meta weights ("Cannot copy out of meta tensor", seen in the full suite). With the lock installed,
they take turns."""
from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

from backend.construction import exclusive, install  # noqa: E402


def test_overlapping_empty_weight_contexts_on_two_threads_restore_torch():
    install()
    original = torch.nn.Module.register_parameter
    first_inside, second_started, first_done = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with accelerate.init_empty_weights():
            first_inside.set()
            second_started.wait(5)
            first_done.wait(0.3)  # the second thread tries to enter meanwhile
        first_done.set()

    def second() -> None:
        first_inside.wait(5)
        second_started.set()
        with accelerate.init_empty_weights():
            first_done.wait(5)  # leave after the first: without the lock it restores the first's patch

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert torch.nn.Module.register_parameter is original
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def test_a_module_built_while_another_thread_loads_has_real_weights():
    install()
    inside, release = threading.Event(), threading.Event()

    def loader() -> None:
        with accelerate.init_empty_weights():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=loader)
    thread.start()
    inside.wait(5)
    built: dict = {}
    builder = threading.Thread(target=exclusive(lambda: built.setdefault("device", torch.nn.Linear(2, 2).weight.device.type)))
    builder.start()
    builder.join(0.3)
    assert builder.is_alive()  # it waits for the load instead of building on the meta device
    release.set()
    thread.join(5)
    builder.join(5)
    assert built["device"] == "cpu"
