"""The live server under a fuzzer, and under many connect → upload → submit → drop cycles.

Smaller counts than ``tests/hardening/soak.py`` (which runs 100,000 frames and 1,000 cycles and
writes the numbers to benchmarks/RESULTS.md), same machinery: a real server and engine on the tiny
model, real websocket clients on their own event loop, a well-behaved client (the plugins'
transport) completing jobs throughout. Any mismatched or untyped answer, ``internal`` error, error
logged by the server or unhandled exception on its loop fails the test.
"""
from __future__ import annotations

from soak import ClientLoop, rgba_image, run_cycles, run_fuzz


def test_fuzzing_the_live_server_from_several_connections(serve):
    with serve(queue_size=32) as server, ClientLoop() as loop:
        max_frame = server.server.limits.max_frame_bytes
        stats, good, _ = run_fuzz(server.url, 3000, 3, seed=11, max_frame=max_frame, client_loop=loop,
                                  good_image=rgba_image(96, 80, 9))
        assert isinstance(server.call(lambda: server.server.scheduler.length), int)  # the loop still answers
    assert stats.failures == [], stats.failures[:10]
    assert good.failures == [] and good.finished >= 1
    assert stats.frames == 3000 and stats.bad_frames > 2000  # most frames are junk, each answered with its own code
    assert stats.jobs_accepted > 0  # some mutated submissions were valid jobs: accepted, then cancelled
    assert "internal" not in stats.errors_by_code


def test_connect_upload_submit_drop_cycles_leave_no_tasks_threads_files_or_memory(serve):
    with serve(reconnect_grace_s=0.3, queue_size=16) as server, ClientLoop() as loop:
        stats, before, after, peak, _ = run_cycles(server, 80, seed=5, client_loop=loop)
    assert stats.failures == [], stats.failures[:10]
    assert set(stats.by_point) == {"before_hello", "after_hello", "mid_upload", "before_submit", "after_submit",
                                   "after_accepted", "mid_job", "after_end"}
    assert after["tasks"] == before["tasks"]
    assert after["threads"] <= before["threads"] and after["os_threads"] <= before["os_threads"], \
        (before["thread_names"], after["thread_names"])
    assert after["io_threads"] <= 4  # the server's pool for big frames: bounded, started on demand
    assert after["fds"] <= before["fds"]
    assert after["rss_kib"] - before["rss_kib"] < 64 * 1024, (before, after)
    assert peak["clients"] <= 32 + 1  # kept for a reconnect: at most max_connections of them, plus the one connected
