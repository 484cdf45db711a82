"""Nothing a client sends stalls the server's event loop: the emphasis parser is linear on every
input the probing found (and on the shapes that would make a naive parser quadratic), it runs off
the loop, and nested emphasis weights are bounded. Real server and engine (tiny models).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

from backend.errors import JobError
from backend.prompts import MAX_WEIGHT, parse
from protocol import ErrorCode, JobFailed, JobResult, Pong
from test_server_harness import Client, txt2img

#: Prompt shapes that make a backtracking or re-scaling parser quadratic, by length ``n``.
WORST_PROMPTS: dict[str, Callable[[int], str]] = {
    "colon-digits": lambda n: "(:" + "1" * (n - 2),  # the probe's: ~2 s per frame at 10,000 before the fix
    "colon-digits-dot": lambda n: "(:" + "1" * ((n - 4) // 2) + "." + "1" * ((n - 4) // 2),
    "colon-spaces": lambda n: "(:" + " " * (n - 3) + "1",
    "many-colons": lambda n: "(" + ":1 " * (n // 3),
    "deep-round": lambda n: "(" * (n // 2 - 1) + "a" + ")" * (n // 2 - 1),
    "open-then-words": lambda n: "(" * (n // 4) + "a " * (n // 4),
    "interleaved": lambda n: "(a[" * (n // 6) + ")]" * (n // 6),
    "square-unclosed": lambda n: "[a " * (n // 3),
}


def _parse_seconds(prompt: str) -> float:
    """Fastest of three parses (an out-of-range weight may end one: it is timed all the same)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        try:
            parse(prompt)
        except JobError:
            pass
        best = min(best, time.perf_counter() - started)
    return best


def _ordinary(n: int) -> str:
    """An ordinary prompt of ``n`` characters: words, emphasis, weights."""
    return ("a (red cat:1.2), [blurry] ((sharp)) " * (n // 20 + 1))[:n]


@pytest.mark.parametrize("shape", sorted(WORST_PROMPTS))
def test_the_worst_prompts_parse_about_as_fast_as_an_ordinary_one(shape):
    """At the protocol's 10,000-character limit, the worst shape costs a few times an ordinary prompt
    of the same length (measured side by side; linear parsing: 0.1-4x here). Before the fix the
    probe's prompt cost ~840x, 2 s of the event loop per frame. No wall-clock threshold."""
    prompt = WORST_PROMPTS[shape](9_600)
    assert len(prompt) <= 10_000  # a legal prompt
    ratio = _parse_seconds(prompt) / _parse_seconds(_ordinary(len(prompt)))
    assert ratio < 12, f"{shape}: {ratio:.1f}x the time of an ordinary prompt of its length"


@pytest.mark.parametrize("prompt, weight", [
    ("(" * 12 + "cat" + ")" * 12, 1.1 ** 12),
    ("((cat:3))", 3.3),
    ("(" * 4999 + "cat" + ")" * 4999, 1.1 ** 4999),  # was inf: an all-black image
])
def test_nested_emphasis_past_the_maximum_is_refused_with_the_reached_weight(prompt, weight):
    with pytest.raises(JobError) as caught:
        parse(prompt)
    assert caught.value.code is ErrorCode.INVALID_PARAMETER
    message = caught.value.message
    assert f"reaches {weight:.3g}" in message and "nested brackets multiply" in message and f"at most {MAX_WEIGHT:g}" in message and "'cat'" in message
    assert caught.value.details == {"field": "prompt"}


def test_nested_emphasis_within_the_maximum_keeps_a1111_weights():
    assert parse("(" * 11 + "cat" + ")" * 11) == [("cat", round(1.1 ** 11, 6))]
    assert parse("[" * 200 + "cat") == [("cat", round(1.1 ** -200, 6))]  # tiny, and finite
    assert parse("(a [b) c]") == [("a ", 1.1), ("b", 1.0), (" c", round(1 / 1.1, 6))]


class ThreadRecordingEngine:
    """The real engine; ``prepare`` (which parses the prompts) records the thread it ran on."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.prepared_on: list[threading.Thread] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def prepare(self, submit: Any, images: Any) -> Any:
        self.prepared_on.append(threading.current_thread())
        return self.engine.prepare(submit, images)


def test_prompts_are_checked_off_the_event_loop_and_pings_are_answered_meanwhile(serve, engine):
    recording = ThreadRecordingEngine(engine)
    with serve(engine_=recording) as server, Client(server.url) as flooder, Client(server.url) as bystander:
        loop_thread = server.call(threading.current_thread)
        for i in range(4):  # the probe's frame: legal (no closing bracket: weight 1.1)
            flooder.submit(txt2img(f"w{i}", prompt="(:" + "1" * 9_998, steps=1))
        bystander.session.ping(7)
        bystander.flush()
        assert isinstance(bystander.until(lambda e: isinstance(e, Pong))[-1], Pong)
        for i in range(4):
            end = flooder.until_done(f"w{i}")[-1]
            assert isinstance(end, (JobResult, JobFailed)), end
        assert recording.prepared_on and all(t is not loop_thread for t in recording.prepared_on)
