"""The longest main-thread stall while Krita's link receives one 4096² result, before vs after
issue 12, side by side in one process run.

A result that size is 64 MiB of RGBA in chunks of at most 4 MiB. A small protocol server on a thread
(``protocol.ServerSession`` behind websockets, compression off) answers one ``submit_job`` with
``job_started`` and ``job_finished`` carrying that image. The client side is ticked the way
Krita's ``QTimer`` ticks it (a tick runs the asyncio loop's ready work for about 8 ms), and every
tick is timed, from the submit until the verified result has been handed to the host:

* **before** — an ``AsyncClient`` on the ticked loop, as ``plugin_krita`` ran it until issue 12:
  every frame's decode, the chunks' reassembly and the result's SHA-256 check run inside a tick.
* **after** — ``clientkit.links.AsyncLink``: the socket lives on a network thread, which does that
  work; a tick only takes the finished event.

The two alternate, ``--runs`` times each, so machine noise hits both. Reported: the longest tick
(the stall the painter feels) and the time to the result.

    .venv/bin/python benchmarks/ui_stall_bench.py              # 5 runs each, 4096²
    .venv/bin/python benchmarks/ui_stall_bench.py --runs 3 --side 2048
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import websockets  # noqa: E402

from clientkit.links import AsyncLink  # noqa: E402
from protocol import (  # noqa: E402
    Capabilities, Hello, ImageFormat, ImagePayload, JobParams, JobResult, Limits, ModelInfo, ServerSession, SubmitJob,
)
from protocol.transport import DEFAULT_MAX_SIZE, AsyncClient  # noqa: E402

TICK_BUDGET_S = 0.008


class ResultServer:
    """Answers every job with one ``side``² RGBA8 result, made once."""

    def __init__(self, side: int) -> None:
        pixels = bytes(range(256)) * (side * side * 4 // 256)
        self.image = ImagePayload.build(ImageFormat.RGBA8, side, side, pixels)
        self.image.id  # hashed once here, not per job
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=self._main, args=(ready,), daemon=True).start()
        ready.wait(30)

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            async with websockets.serve(self._serve, "127.0.0.1", 0, compression=None,
                                        max_size=DEFAULT_MAX_SIZE) as server:
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await asyncio.Future()
        self.loop.run_until_complete(main())

    async def _serve(self, ws) -> None:
        session = ServerSession(limits=Limits(max_frame_bytes=DEFAULT_MAX_SIZE))
        models = (ModelInfo("bench", "Bench", "base", "sd15", ("txt2img",)),)
        async for frame in ws:
            for event in session.receive_frame(frame):
                if isinstance(event, Hello):
                    session.welcome(server_name="bench", server_version="0", client_id=os.urandom(8).hex(),
                                    capabilities=Capabilities(("txt2img",), ("euler",), models))
                elif isinstance(event, SubmitJob):
                    session.job_accepted(event.job_id, 0)
                    session.job_started(event.job_id, model="bench", seed=1, steps=1,
                                        width=self.image.width, height=self.image.height)
                    session.job_finished(event.job_id, [self.image], 1)
            for out in session.data_to_send():
                await ws.send(out)


def tick_loop(loop: asyncio.AbstractEventLoop, budget_s: float = TICK_BUDGET_S) -> None:
    """One tick as the old link ran it: the loop's ready work for about ``budget_s``."""
    deadline = time.perf_counter() + budget_s
    for _ in range(64):
        loop.call_soon(loop.stop)
        loop.run_forever()
        if time.perf_counter() >= deadline or not getattr(loop, "_ready", ()):
            break


def run_before(url: str, job: SubmitJob) -> tuple[float, float]:
    """(longest tick, seconds to the result) with the transport on the ticked loop."""
    loop = asyncio.new_event_loop()
    got: list[JobResult] = []

    async def session() -> None:
        client = AsyncClient(url, client_name="bench", client_version="0", reconnect=False)
        await client.start()
        client.submit(job)
        while True:
            event = await client.next_event()
            if isinstance(event, JobResult):
                got.append(event)
                await client.close()
                return

    task = loop.create_task(session())
    longest, started = 0.0, time.perf_counter()
    while not got:
        t0 = time.perf_counter()
        tick_loop(loop)
        longest = max(longest, time.perf_counter() - t0)
        time.sleep(0.001)  # the rest of the Qt event loop's turn
    elapsed = time.perf_counter() - started
    while not task.done():
        tick_loop(loop)
    loop.close()
    return longest, elapsed


def run_after(url: str, job: SubmitJob) -> tuple[float, float]:
    """(longest tick, seconds to the result) with clientkit's AsyncLink."""
    got: list[JobResult] = []
    link = AsyncLink(lambda event: got.append(event) if isinstance(event, JobResult) else None,
                     client_name="bench", client_version="0")
    link.connect(url)
    while not link.connected:
        link.tick(TICK_BUDGET_S)
        time.sleep(0.001)
    link.submit(job, [])
    longest, started = 0.0, time.perf_counter()
    while not got:
        t0 = time.perf_counter()
        link.tick(TICK_BUDGET_S)
        longest = max(longest, time.perf_counter() - t0)
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    link.close()
    return longest, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--side", type=int, default=4096)
    args = parser.parse_args(argv)
    server = ResultServer(args.side)
    url = f"ws://127.0.0.1:{server.port}"
    results: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    for run in range(args.runs):
        job = SubmitJob(f"bench-{run}", "txt2img", JobParams(prompt="p", width=64, height=64))
        results["before"].append(run_before(url, job))
        results["after"].append(run_after(url, SubmitJob(f"bench-after-{run}", "txt2img", job.params)))
    mib = args.side * args.side * 4 / 2 ** 20
    print(f"# receiving one {args.side}² rgba8 result ({mib:.0f} MiB), {args.runs} runs each, "
          f"ticks of {TICK_BUDGET_S * 1000:.0f} ms; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| client | longest main-thread tick, median (max) | time to the result, median |")
    print("|---|---|---|")
    for name, rows in results.items():
        stalls = [r[0] * 1000 for r in rows]
        times = [r[1] for r in rows]
        print(f"| {name} | {statistics.median(stalls):.1f} ms ({max(stalls):.1f} ms) | {statistics.median(times):.2f} s |")
    before = statistics.median(r[0] for r in results["before"])
    after = statistics.median(r[0] for r in results["after"])
    print(f"longest stall after / before: {after / before:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
