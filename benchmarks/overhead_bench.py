"""Backend overhead, measured side by side in one process run.

1. **Overhead ratio** — the same img2img job (random "mid" model, 256², 4 denoising steps) through
   the websocket server (protocol client → loopback → server → queue → worker → engine → back)
   versus a direct diffusers pipeline call with the same scheduler, seed and settings. Runs
   alternate (direct, server, direct, ...) so drift hits both; medians. Goal: ratio ≤ 1.03.
2. **Fixed cost per job** — on a tiny model, where compute is small: end-to-end time minus the
   time ``engine.run`` took on the worker (the server's own plumbing: frames, queue, thread
   hand-offs, result chunks), and end-to-end minus a direct pipeline call (all of the backend's
   cost, the engine's pre/post-processing and previews included). Goal: ≤ 5 ms median on loopback.
3. **No stalls before the result**: counts explicit ``gc.collect()`` calls and automatic
   generation-2 collections (with their time) during the server's jobs.

4.–5. **Before/after** (``--part before-after --before TREE``): a one-step 64² job on the mid model
   through the server ÷ the same direct call on the main thread, with page faults per job (4), and
   the fixed cost per job with the CPU the plumbing uses and the CPU of everything outside the job's
   pipeline on every thread of the process, which waiting for a busy CPU hardly inflates (5), for this tree and for an older one
   (``git archive main backend protocol | tar -x -C /tmp/before``), each in fresh processes, alternating.
   Part 5 runs twice (``--measure fixed,fixed-split``): ``fixed`` with the client on the server process's
   main thread (sharing its GIL, as before), ``fixed-split`` with the client in a process of its own, as
   Krita's and Blender's are (the pipeline's own time still the server's; the client's CPU added).
6. **Layer preparation** (``--part prepare``): a 2048² sketch layer to RGB over white, the old
   float32 path (kept here) against the uint8 one.
7. **Page faults** (``--part faults``): one SD-1.5-shaped UNet call on the main thread and on a
   worker thread, with glibc's malloc defaults and with the server's policy (backend/allocator.py).
9. **Codec, before/after** (``--part codec --before TREE``): the frames of one 64² job with previews
   (``submit_job``, ``job_accepted``, ``job_started``, two ``step_preview``s, the result's
   ``image_chunk``, ``job_finished``) encoded and decoded by this tree's ``protocol/`` and by the older
   tree's, imported side by side in this one process (the older one under another package name),
   alternating; the frames of both are checked equal byte for byte first.
8. **Flux** (``--part flux``): the overhead ratio on a Flux-shaped model (a 2 + 4 block, 256-wide
   transformer; txt2img 256², 4 steps, previews on) against a direct ``FluxPipeline`` call, and the
   preview work that held the worker back as a share of a step. Goals: ratio ≤ 1.03, previews ≤ 2 %.

10. **Hops** (``--part hops``): where one tiny job's fixed cost goes — a timestamp at every hop from the
   client's submit to its ``JobResult`` (frame read, decoded, prepared, accepted, handed to the worker,
   ``engine.run`` and the pipeline inside it, back on the loop, result framed and written, read by the
   client), medians of ``--runs`` jobs with previews on and off, in one process.

    .venv/bin/python benchmarks/overhead_bench.py                   # parts 1-3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead_bench.py --part hops --threads 1 --runs 50
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead_bench.py --part hops --threads 1 --runs 50 --server-log info
    .venv/bin/python benchmarks/overhead_bench.py --part fixed --threads 1 --runs 30
    .venv/bin/python benchmarks/overhead_bench.py --part flux --runs 5
    .venv/bin/python benchmarks/overhead_bench.py --part codec --before /tmp/before --runs 21

Models are built offline with backend.demo into ``--cache`` (default ~/.cache/easel/bench).
Results go to stdout as a small report (copy it into benchmarks/RESULTS.md with the machine).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# The direct calls run on this thread, the server's on its worker thread: two OpenMP teams in one
# process. With the default (spinning) wait policy each team's idle threads spin after a call and
# slow the other's next call (a 64² tiny job measured 51 ms direct vs 141 ms in the server with 2
# threads). Passive waiting removes that cross-talk, which a real server (one team) never has.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# EASEL_BENCH_ROOT: import backend/ and protocol/ from another tree (the code before a change, for --before).
sys.path.insert(0, os.environ.get("EASEL_BENCH_ROOT") or str(Path(__file__).resolve().parents[1]))

from backend.config import ModelEntry, ServerConfig  # noqa: E402
from protocol import ImageFormat, ImagePayload, JobParams, JobResult, SubmitJob  # noqa: E402
from protocol.transport import AsyncClient  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SEED = 1234


# --------------------------------------------------------------------------- the server, in-process


class ServerInThread:
    """The real EaselServer on its own event loop thread (as `easel serve` runs it)."""

    def __init__(self, config: ServerConfig, engine: Any) -> None:
        from backend.server import EaselServer

        self.server = EaselServer(config, engine)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="bench-server")
        self._stop: asyncio.Event | None = None

    def _main(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            await self.server.start()
            self._ready.set()
            await self.server.serve_until(self._stop)
        self.loop.run_until_complete(main())

    def __enter__(self) -> "ServerInThread":
        self._thread.start()
        if not self._ready.wait(120):
            raise RuntimeError("the server did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
        self._thread.join(60)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"


class Remote:
    """A protocol client (the plugins' AsyncClient) on a loop in this thread."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = AsyncClient(url, client_name="bench", client_version="1", reconnect=False)
        self.loop.run_until_complete(self.client.start())
        self.count = 0

    def run(self, task: str, params: JobParams, images: list[ImagePayload]) -> tuple[float, JobResult]:
        """Seconds from submit to the result in hand, and the result."""
        self.count += 1
        job = SubmitJob(f"b{self.count}", task, params, {"image": images[0].id} if images else None)

        async def go() -> tuple[float, JobResult]:
            start = time.perf_counter()
            self.client.submit(job, images)
            while True:
                event = await self.client.next_event(timeout=600)
                if isinstance(event, JobResult) and event.job_id == job.job_id:
                    return time.perf_counter() - start, event
                if getattr(event, "job_id", None) == job.job_id and type(event).__name__ in ("JobFailed", "JobCancelled"):
                    raise RuntimeError(f"job failed: {event}")
        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


# --------------------------------------------------------------------------- helpers


def test_image(size: int) -> tuple[ImagePayload, Any]:
    """A deterministic picture as an rgba8 payload and as the PIL image a direct call gets."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([(x * 255 // size), (y * 255 // size), ((x + y) * 127 // size)], axis=-1).astype("uint8")
    pil = Image.fromarray(rgb, "RGB")
    rgba = pil.convert("RGBA")
    return ImagePayload(ImageFormat.RGBA8, size, size, rgba.tobytes()), pil


def direct_pipeline(folder: Path, cls_name: str, sampler: str) -> Any:
    import diffusers

    from backend.samplers import make_scheduler

    pipe = getattr(diffusers, cls_name).from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class GcWatch:
    """Counts explicit gc.collect() calls and automatic generation-2 collections (and their time)."""

    def __init__(self) -> None:
        self.explicit = 0
        self.gen2 = 0
        self.gen2_seconds = 0.0
        self._start = 0.0
        self._collect = gc.collect

    def _callback(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.gen2 += 1
            self.gen2_seconds += time.perf_counter() - self._start

    def __enter__(self) -> "GcWatch":
        def counting(*args: Any, **kwargs: Any) -> int:
            self.explicit += 1
            return self._collect(*args, **kwargs)
        gc.collect = counting  # type: ignore[assignment]
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.collect = self._collect  # type: ignore[assignment]
        gc.callbacks.remove(self._callback)


# --------------------------------------------------------------------------- part 1


def overhead(cache: Path, runs: int, size: int = 256) -> dict[str, float]:
    import torch

    from backend.demo import build_mid_model
    from backend.engine import Engine
    from backend.samplers import DEFAULT_SAMPLER

    folder = cache / "mid"
    if not (folder / "model_index.json").exists():
        print(f"building the mid model in {folder} ...", flush=True)
        build_mid_model(folder)
    steps, strength = 8, 0.5  # 4 denoising steps: diffusers runs int(steps * strength)
    payload, pil = test_image(size)
    params = JobParams(prompt=PROMPT, model="mid", seed=SEED, steps=steps, strength=strength, cfg_scale=7.0,
                       width=size, height=size, sampler=DEFAULT_SAMPLER)
    pipe = direct_pipeline(folder, "StableDiffusionImg2ImgPipeline", DEFAULT_SAMPLER)

    def direct() -> None:
        pipe(prompt=PROMPT, negative_prompt="", image=pil, strength=strength, num_inference_steps=steps,
             guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil")

    config = ServerConfig(port=0, models=(ModelEntry("mid", str(folder)),), device="cpu", cache_dir=cache)
    direct_times, server_times, stages = [], [], []
    with ServerInThread(config, Engine(config)) as server:
        remote = Remote(server.url)
        try:
            remote.run("img2img", params, [payload])  # warm-up: loads the model
            direct()
            for i in range(runs):
                # Alternate which goes first, so neither always runs right after the other.
                if i % 2:
                    seconds, result = remote.run("img2img", params, [payload])
                    direct_times.append(timed(direct))
                else:
                    direct_times.append(timed(direct))
                    seconds, result = remote.run("img2img", params, [payload])
                server_times.append(seconds)
                stages.append(result.finished.timings)
                print(f"  run {i + 1}/{runs}: direct {direct_times[-1]:.3f} s, server {server_times[-1]:.3f} s "
                      f"(engine: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.finished.timings.items())) + ")",
                      flush=True)
        finally:
            remote.close()
    d, s = statistics.median(direct_times), statistics.median(server_times)
    paired = statistics.median(b / a for a, b in zip(direct_times, server_times))
    return {"direct": d, "server": s, "ratio": s / d, "paired": paired, "direct_min": min(direct_times), "server_min": min(server_times),
            "min_ratio": min(server_times) / min(direct_times),
            "stages": {k: statistics.median(t.get(k, 0.0) for t in stages) for k in stages[0]}}


def flux_overhead(cache: Path, runs: int, size: int = 256, steps: int = 4) -> dict[str, float]:
    """Part 8: the overhead ratio on a Flux-shaped model (txt2img with previews, through the server,
    versus a direct FluxPipeline call), and what a preview costs as a share of a step."""
    import torch
    from diffusers import FluxPipeline

    from backend.demo import build_tiny_flux
    from backend.engine import Engine

    folder = cache / "flux-mid"
    if not (folder / "model_index.json").exists():
        print(f"building the Flux-shaped mid model in {folder} ...", flush=True)
        build_tiny_flux(folder, blocks=(2, 4), heads=4, head_dim=64)
    params = JobParams(prompt=PROMPT, model="flux-mid", seed=SEED, steps=steps, cfg_scale=3.5, width=size, height=size,
                       previews=True)
    pipe = FluxPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)

    def direct() -> None:
        pipe(prompt=PROMPT, width=size, height=size, num_inference_steps=steps, guidance_scale=3.5,
             generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil")

    config = ServerConfig(port=0, models=(ModelEntry("flux-mid", str(folder)),), device="cpu", cache_dir=cache)
    direct_times, server_times, stages = [], [], []
    with ServerInThread(config, Engine(config)) as server:
        remote = Remote(server.url)
        try:
            remote.run("txt2img", params, [])  # warm-up: loads the model
            direct()
            for i in range(runs):
                if i % 2:
                    seconds, result = remote.run("txt2img", params, [])
                    direct_times.append(timed(direct))
                else:
                    direct_times.append(timed(direct))
                    seconds, result = remote.run("txt2img", params, [])
                server_times.append(seconds)
                stages.append(result.finished.timings)
                print(f"  run {i + 1}/{runs}: direct {direct_times[-1]:.3f} s, server {server_times[-1]:.3f} s", flush=True)
        finally:
            remote.close()
    d, s = statistics.median(direct_times), statistics.median(server_times)
    step = [t["denoise"] / steps for t in stages]
    preview_share = statistics.median(t["previews"] / steps / (t["denoise"] / steps) for t in stages)
    return {"direct": d, "server": s, "ratio": s / d,
            "paired": statistics.median(b / a for a, b in zip(direct_times, server_times)),
            "step": statistics.median(step), "preview_share": preview_share,
            "preview_render": statistics.median(t["preview_render"] / steps for t in stages)}


# --------------------------------------------------------------------------- part 2 and 3


def fixed_params(previews: bool, size: int = 64, steps: int = 2) -> JobParams:
    """The tiny job parts 2, 5 and 10 time (the sampler's name is the backend's default, spelled
    here so that a client process needs no backend import)."""
    return JobParams(prompt=PROMPT, model="tiny", seed=SEED, steps=steps, cfg_scale=7.0, width=size, height=size,
                     sampler="dpmpp_2m_karras", previews=previews)


class ClientProcess:
    """A protocol client in a process of its own, as Krita's and Blender's are: :meth:`run` asks it
    (a line on its stdin) to submit one job and wait for its result; it answers with a JSON line:
    seconds from submit to ``JobResult``, the job's server-side timings, and its own CPU seconds."""

    def __init__(self, url: str, previews: bool) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, __file__, "--client-of", url] + (["--previews"] if previews else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._answer()  # connected

    def _answer(self) -> dict[str, Any]:
        import json

        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("CLIENT "):
            self.proc.kill()
            raise RuntimeError(f"the client process failed (exit {self.proc.wait()}): {line!r}")
        return json.loads(line[7:])

    def run(self) -> dict[str, Any]:
        self.proc.stdin.write("go\n")  # type: ignore[union-attr]
        return self._answer()

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(60)


def client_process(url: str, previews: bool) -> int:
    """The other end of :class:`ClientProcess` (``--client-of URL``): this tree's (or
    EASEL_BENCH_ROOT's) AsyncClient on this process's main thread, one job per line read."""
    import json

    remote, params = Remote(url), fixed_params(previews)
    print("CLIENT {}", flush=True)
    try:
        for _ in sys.stdin:
            cpu = time.process_time()
            seconds, result = remote.run("txt2img", params, [])
            print("CLIENT " + json.dumps({"e2e": seconds, "timings": result.finished.timings,
                                          "cpu": time.process_time() - cpu}), flush=True)
    finally:
        remote.close()
    return 0


def fixed_cost(cache: Path, runs: int, previews: bool, size: int = 64, steps: int = 2,
               split: bool = False) -> dict[str, float]:
    """Part 2. ``split``: the client runs in a process of its own (:class:`ClientProcess`) instead
    of on this process's main thread beside the server's threads; the CPU columns then add the
    client process's CPU to the server process's."""
    import torch

    from backend.demo import build_tiny_model
    from backend.engine import Engine
    from backend.samplers import DEFAULT_SAMPLER

    folder = cache / "tiny"
    if not (folder / "model_index.json").exists():
        build_tiny_model(folder)
    params = fixed_params(previews, size, steps)
    assert params.sampler == DEFAULT_SAMPLER
    pipe = direct_pipeline(folder, "StableDiffusionPipeline", DEFAULT_SAMPLER)

    def direct() -> None:
        pipe(prompt=PROMPT, negative_prompt="", width=size, height=size, num_inference_steps=steps, guidance_scale=7.0,
             generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil")

    # CPU the job's pipeline took on the worker thread (its denoise and decode stages), so that the
    # process's CPU per job minus it is the CPU of everything else the job cost, on every thread.
    pipeline_cpu = [0.0]
    timed_stage = _count_pipeline_cpu(pipeline_cpu)
    config = ServerConfig(port=0, models=(ModelEntry("tiny", str(folder)),), device="cpu", cache_dir=cache)
    e2e, worker, pipeline, direct_times, plumbing_cpu, fixed_cpu = [], [], [], [], [], []
    with ServerInThread(config, Engine(config)) as server, timed_stage:
        if split:
            client = ClientProcess(server.url, previews)

            def job() -> tuple[float, dict[str, Any], float]:
                answer = client.run()
                return answer["e2e"], answer["timings"], answer["cpu"]
        else:
            remote = Remote(server.url)

            def job() -> tuple[float, dict[str, Any], float]:
                seconds, result = remote.run("txt2img", params, [])
                return seconds, result.finished.timings, 0.0
        # CPU seconds the server's event loop thread has used: with the client's (this thread's, or
        # the client process's), the plumbing's own work per job, which waiting for a busy CPU does
        # not inflate as it does e2e.
        clock = time.pthread_getcpuclockid(server._thread.ident)  # type: ignore[arg-type]
        loop_cpu = lambda: time.clock_gettime(clock)  # noqa: E731
        try:
            for _ in range(3):  # warm-up: model load, first-call allocations
                job()
                direct()
            with GcWatch() as watch:
                for _ in range(runs):
                    direct_times.append(timed(direct))
                    cpu_before = loop_cpu() + time.thread_time()
                    pipeline_cpu[0], process_before = 0.0, time.process_time()
                    seconds, timings, client_cpu = job()
                    plumbing_cpu.append(loop_cpu() + time.thread_time() - cpu_before + client_cpu)
                    fixed_cpu.append(time.process_time() - process_before - pipeline_cpu[0] + client_cpu)
                    e2e.append(seconds)
                    worker.append(timings["worker"])
                    # The pipeline's own time inside this very job: the diffusers call and the VAE decode
                    # (the engine times them apart; previews, when on, are inside "denoise").
                    pipeline.append(timings["denoise"] + timings["decode"])
        finally:
            (client if split else remote).close()
    plumbing = [a - b for a, b in zip(e2e, worker)]
    fixed = [a - b for a, b in zip(e2e, pipeline)]
    return {"e2e": statistics.median(e2e), "worker": statistics.median(worker), "direct": statistics.median(direct_times),
            "pipeline": statistics.median(pipeline), "fixed": statistics.median(fixed),
            "plumbing": statistics.median(plumbing), "plumbing_cpu": statistics.median(plumbing_cpu),
            "fixed_cpu": statistics.median(fixed_cpu), "backend": statistics.median(e2e) - statistics.median(direct_times),
            "gc_explicit": watch.explicit, "gc_gen2": watch.gen2, "gc_gen2_s": watch.gen2_seconds}


class _count_pipeline_cpu:
    """While inside: ``TaskRun.timed`` (of the tree being measured) adds the CPU seconds of the
    calling thread in the ``denoise`` and ``decode`` stages to ``total[0]``."""

    def __init__(self, total: list[float]) -> None:
        from backend.tasks import common

        self.common, self.total, self.original = common, total, common.TaskRun.timed

    def __enter__(self) -> "_count_pipeline_cpu":
        from contextlib import contextmanager

        original, total = self.original, self.total

        @contextmanager
        def timed(run: Any, stage: str) -> Any:
            start = time.thread_time()
            try:
                with original(run, stage):
                    yield
            finally:
                if stage in ("denoise", "decode"):
                    total[0] += time.thread_time() - start

        self.common.TaskRun.timed = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        self.common.TaskRun.timed = self.original


# --------------------------------------------------------------------------- part 7: page faults


def unet_faults(policy: bool, calls: int) -> dict[str, Any]:
    """Page faults and seconds of one SD-1.5-shaped UNet call (random weights, built here, 860 M
    parameters; an 8×8 latent = a 64² image, CFG batch of 2) on the main thread and on a worker
    thread, with glibc's defaults or with the server's malloc policy (``backend.allocator``)."""
    import queue

    import torch
    from diffusers import UNet2DConditionModel

    from backend.allocator import apply_policy

    report = str(apply_policy()) if policy else "none (glibc defaults)"
    torch.manual_seed(0)
    with torch.no_grad():
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                    cross_attention_dim=768, attention_head_dim=8).eval()
    latents, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 768)

    def call() -> tuple[int, float]:
        before, start = minor_faults(), time.perf_counter()
        with torch.no_grad():
            unet(latents, 10, encoder_hidden_states=text)
        return minor_faults() - before, time.perf_counter() - start

    jobs: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    def serve() -> None:  # a long-lived worker thread, like the server's device worker
        while True:
            done.put(jobs.get()())

    threading.Thread(target=serve, daemon=True, name="worker").start()

    def on_worker() -> tuple[int, float]:
        jobs.put(call)
        return done.get()

    call(), on_worker()  # warm-up on both threads
    main, worker = [], []
    for i in range(calls):
        for where in (("worker", "main") if i % 2 else ("main", "worker")):
            (main if where == "main" else worker).append(call() if where == "main" else on_worker())
    med = statistics.median
    return {"allocator": report, "main_faults": med(f for f, _ in main), "main_s": med(t for _, t in main),
            "worker_faults": med(f for f, _ in worker), "worker_s": med(t for _, t in worker)}


def faults_before_after(calls: int, rounds: int, threads: int) -> None:
    """Part 7 in fresh processes (the policy is process-wide): glibc's defaults, then the policy, alternating."""
    import json
    import subprocess

    rows: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for i in range(rounds):
        for name in (("after", "before") if i % 2 else ("before", "after")):
            done = subprocess.run([sys.executable, __file__, "--child", f"faults-{name}", "--runs", str(calls),
                                   "--threads", str(threads)], capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                raise RuntimeError(f"the {name} faults child failed:\n{done.stderr[-4000:]}")
            rows[name].append(json.loads(line[-1][7:]))
            print(f"  round {i + 1}/{rounds}: {name} done (load average {os.getloadavg()[0]:.2f})", flush=True)
    med = statistics.median
    print(f"\n7. one SD-1.5-shaped UNet call (8×8 latent, batch 2), main thread vs a worker thread; medians of "
          f"{calls} alternating calls per process, median over {rounds} processes each\n")
    print("| malloc | page faults, main / worker | seconds, main / worker |")
    print("|---|---|---|")
    for name in ("before", "after"):
        r = rows[name]
        print(f"| {r[0]['allocator']} | {med(x['main_faults'] for x in r):.0f} / {med(x['worker_faults'] for x in r):.0f} | "
              f"{med(x['main_s'] for x in r):.2f} / {med(x['worker_s'] for x in r):.2f} |")


# --------------------------------------------------------------------------- part 6: layer preparation


def _float_over_white(rgba: Any) -> Any:
    """The float32 preparation before issue 20, kept callable here to time it side by side."""
    import numpy as np

    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    return np.clip(np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)


def prepare_layer(runs: int, side: int = 2048) -> dict[str, float]:
    """A ``side``² RGBA sketch layer (colour strokes of soft alpha on transparency) prepared for a
    preprocess job as the task does it: payload → RGB over white. The float32 path (decode copy,
    float math) and the uint8 one alternate; medians."""
    import numpy as np

    from backend.imaging import decode_image, decode_over_white

    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    alpha = np.clip(255 * np.abs(np.sin(9 * x + 4 * y) * np.cos(7 * y)) ** 3, 0, 255)
    rgba = np.stack([200 * x, 160 * y, 90 + 0 * x, alpha], axis=-1).astype(np.uint8)
    payload = ImagePayload(ImageFormat.RGBA8, side, side, rgba.tobytes())
    old = lambda: _float_over_white(decode_image(payload))  # noqa: E731
    new = lambda: decode_over_white(payload)  # noqa: E731
    assert (old() == new()).all()
    times: dict[str, list[float]] = {"float32": [], "uint8": []}
    for i in range(runs):
        for name in (("uint8", "float32") if i % 2 else ("float32", "uint8")):
            times[name].append(timed(old if name == "float32" else new))
    return {name: statistics.median(v) for name, v in times.items()}


# --------------------------------------------------------------------------- part 4: before/after


def minor_faults() -> int:
    """Minor page faults of this process so far (a fault = a fresh page mapped in by the kernel)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def one_step(cache: Path, runs: int, size: int = 64) -> dict[str, Any]:
    """A one-step txt2img 64² job on the "mid" model through the server, against the same direct
    pipeline call on this (the main) thread; alternating, with the page faults of each call."""
    import torch

    from backend.demo import build_mid_model
    from backend.engine import Engine
    from backend.samplers import DEFAULT_SAMPLER

    folder = cache / "mid"
    if not (folder / "model_index.json").exists():
        build_mid_model(folder)
    params = JobParams(prompt=PROMPT, model="mid", seed=SEED, steps=1, cfg_scale=7.0, width=size, height=size,
                       sampler=DEFAULT_SAMPLER, previews=False)
    pipe = direct_pipeline(folder, "StableDiffusionPipeline", DEFAULT_SAMPLER)

    def direct() -> None:
        pipe(prompt=PROMPT, negative_prompt="", width=size, height=size, num_inference_steps=1, guidance_scale=7.0,
             generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil")

    config = ServerConfig(port=0, models=(ModelEntry("mid", str(folder)),), device="cpu", cache_dir=cache)
    times: dict[str, list[float]] = {"direct": [], "server": []}
    faults: dict[str, list[int]] = {"direct": [], "server": []}
    with ServerInThread(config, Engine(config)) as server:
        remote = Remote(server.url)
        try:
            for _ in range(2):  # warm-up: model load, first-call allocations
                remote.run("txt2img", params, [])
                direct()
            for i in range(runs):
                for name in (("server", "direct") if i % 2 else ("direct", "server")):
                    before = minor_faults()
                    times[name].append(timed(direct) if name == "direct" else remote.run("txt2img", params, [])[0])
                    faults[name].append(minor_faults() - before)
        finally:
            remote.close()
    return {"direct": statistics.median(times["direct"]), "server": statistics.median(times["server"]),
            "paired": statistics.median(b / a for a, b in zip(times["direct"], times["server"])),
            "faults_direct": statistics.median(faults["direct"]), "faults_server": statistics.median(faults["server"]),
            "allocator": str(getattr(server.server, "allocator", "none (glibc defaults)"))}


# --------------------------------------------------------------------------- part 9: codec before/after


def _job_frames(protocol: Any) -> list[Any]:
    """The messages of one 64² txt2img job with previews, built with ``protocol``'s classes."""
    result = protocol.ImagePayload.build("rgba8", 64, 64, bytes(range(256)) * 64)
    jpeg = bytes(range(256)) * 12  # a preview JPEG's size; the codec does not look inside
    return [
        protocol.SubmitJob("job-1", "txt2img", protocol.JobParams(prompt=PROMPT, model="tiny", seed=SEED, steps=2, cfg_scale=7.0,
                                                                  width=64, height=64, sampler="euler")),
        protocol.JobAccepted("job-1", 0),
        protocol.JobStarted("job-1", "tiny", SEED, 2, 64, 64),
        protocol.StepPreview("job-1", 1, 2, 64, 64, jpeg),
        protocol.StepPreview("job-1", 2, 2, 64, 64, jpeg),
        *protocol.chunk_image(result),
        protocol.JobFinished("job-1", (protocol.image_info(result),), SEED, (SEED,),
                             {"queued": 0.0001, "load": 0.0, "encode": 0.002, "denoise": 0.03, "decode": 0.004, "worker": 0.04}),
    ]


def codec_before_after(before: Path, runs: int) -> dict[str, dict[str, float]]:
    """Part 9: seconds per job to encode and to decode its frames, this tree vs ``before``; medians
    of ``runs`` alternating rounds (each the best of 3 × 200 jobs) and the median per-round ratio."""
    import importlib
    import shutil
    import tempfile
    import timeit

    home = Path(tempfile.mkdtemp(prefix="easel-codec-before-"))
    shutil.copytree(before / "protocol", home / "protocol_before")  # relative imports: any package name works
    sys.path.insert(0, str(home))
    old = importlib.import_module("protocol_before")
    import protocol as new
    trees = {"before": old, "after": new}
    messages = {name: _job_frames(module) for name, module in trees.items()}
    frames = {name: [module.encode(m) for m in messages[name]] for name, module in trees.items()}
    if frames["before"] != frames["after"]:
        raise SystemExit("the two trees encode the job's messages to different bytes; the comparison would be meaningless")
    times: dict[str, dict[str, list[float]]] = {name: {"encode": [], "decode": []} for name in trees}
    for run in range(runs):
        for name in (("after", "before") if run % 2 else ("before", "after")):
            module, msgs, fr = trees[name], messages[name], frames[name]
            times[name]["encode"].append(min(timeit.repeat(lambda: [module.encode(m) for m in msgs], number=200, repeat=3)) / 200)
            times[name]["decode"].append(min(timeit.repeat(lambda: [module.decode(f) for f in fr], number=200, repeat=3)) / 200)
    out: dict[str, dict[str, float]] = {name: {k: statistics.median(v) for k, v in parts.items()} for name, parts in times.items()}
    for key in ("encode", "decode"):
        out["ratio"] = out.get("ratio", {})
        out["ratio"][key] = statistics.median(a / b for a, b in zip(times["after"][key], times["before"][key]))
    out["ratio"]["both"] = statistics.median((a1 + a2) / (b1 + b2) for a1, a2, b1, b2 in zip(
        times["after"]["encode"], times["after"]["decode"], times["before"]["encode"], times["before"]["decode"]))
    out["messages"] = {"count": len(frames["after"]), "bytes": sum(map(len, frames["after"]))}
    return out


# --------------------------------------------------------------------------- part 10: where a job's fixed cost goes


#: The hops of one job, in the order they happen (names of the timestamps :func:`hops` takes).
HOPS = ("submit", "client_sending", "server_frame", "server_decoded", "prepare_start", "prepare_end", "accepted",
        "worker_given", "run_start", "pipeline_start", "pipeline_end", "run_end", "done_posted", "done_on_loop",
        "result_queued", "writer_woke", "result_sending", "client_frame", "client_result")


def hops(cache: Path, runs: int, previews: bool, size: int = 64, steps: int = 2) -> dict[str, Any]:
    """A timestamp at every hop of a tiny txt2img job through the in-process server (one clock, one
    process), taken by wrapping the functions each hop runs through; the median time between
    consecutive hops over ``runs`` jobs. "pipeline" is the engine's ``denoise`` + ``decode`` stages,
    as the fixed-cost part counts them. Wrapping adds a few µs per hop."""
    import functools
    from contextlib import contextmanager

    # Only to time the sends: AsyncClient and the server open their websockets (compression=None) as usual.
    import websockets.asyncio.connection as ws_connection

    from backend import jobs as jobs_module
    from backend import server as server_module
    from backend.demo import build_tiny_model
    from backend.engine import Engine
    from backend.samplers import DEFAULT_SAMPLER
    from backend.tasks import common as common_module
    from protocol import session as session_module

    folder = cache / "tiny"
    if not (folder / "model_index.json").exists():
        build_tiny_model(folder)
    params = JobParams(prompt=PROMPT, model="tiny", seed=SEED, steps=steps, cfg_scale=7.0, width=size, height=size,
                       sampler=DEFAULT_SAMPLER, previews=previews)
    marks: dict[str, float] = {}
    now = time.perf_counter

    def mark(name: str, first: bool = False) -> None:
        if not first or name not in marks:
            marks[name] = now()

    def wrap(owner: Any, name: str, before: Callable[..., None] | None = None,
             after: Callable[..., None] | None = None) -> None:
        original = getattr(owner, name)
        if asyncio.iscoroutinefunction(original):
            @functools.wraps(original)
            async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
                if before:
                    before(*args, **kwargs)
                result = await original(*args, **kwargs)
                if after:
                    after(result, *args, **kwargs)
                return result
            setattr(owner, name, wrapped_async)
        else:
            @functools.wraps(original)
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                if before:
                    before(*args, **kwargs)
                result = original(*args, **kwargs)
                if after:
                    after(result, *args, **kwargs)
                return result
            setattr(owner, name, wrapped)

    server_thread_name = "bench-server"
    finished_frames: set[int] = set()

    def sending(conn: Any, message: Any, *args: Any, **kwargs: Any) -> None:
        # Marked as the send starts: the other side may have the frame before send() returns.
        if threading.current_thread().name != server_thread_name:
            if b"submit_job" in bytes(message[:40]):
                mark("client_sending")
        elif id(message) in finished_frames:
            mark("result_sending")

    wrap(ws_connection.Connection, "send", before=sending)
    if hasattr(server_module, "_send_together"):  # frames that wait together, in one socket write
        wrap(server_module, "_send_together", before=lambda ws, frames: mark("result_sending")
             if any(id(frame) in finished_frames for frame in frames) else None)
    wrap(server_module.EaselServer, "_on_frame", before=lambda *a: mark("server_frame", True))
    wrap(session_module.ServerSession, "receive_frame", after=lambda *a: mark("server_decoded", True))
    wrap(Engine, "prepare", before=lambda *a: mark("prepare_start"), after=lambda *a: mark("prepare_end"))
    wrap(session_module.ServerSession, "job_accepted", before=lambda *a: mark("accepted"))
    wrap(jobs_module.Worker, "give", before=lambda *a: mark("worker_given"))
    wrap(Engine, "run", before=lambda *a: mark("run_start"), after=lambda *a: mark("run_end"))
    wrap(jobs_module.Worker, "post", before=lambda self, callback, *a: mark("done_posted")
         if getattr(callback, "__name__", "") == "_done" else None)
    wrap(jobs_module.Scheduler, "_done", before=lambda *a: mark("done_on_loop"))

    def finished(frame: Any, *args: Any, **kwargs: Any) -> None:
        finished_frames.add(id(frame))
        mark("result_queued")

    wrap(session_module.ServerSession, "job_finished", after=finished)
    wrap(session_module.ServerSession, "data_to_send", before=lambda *a, **k: mark("writer_woke", True)
         if "result_queued" in marks else None)
    wrap(session_module.ClientSession, "receive_frame", after=lambda events, *a: mark("client_frame")
         if any(type(e).__name__ == "JobResult" for e in events) else None)
    original_timed = common_module.TaskRun.timed

    @contextmanager
    def timed(self: Any, stage: str) -> Any:
        if stage == "denoise":
            mark("pipeline_start")
        with original_timed(self, stage):
            yield
        if stage == "decode":
            mark("pipeline_end")

    common_module.TaskRun.timed = timed  # type: ignore[method-assign]
    config = ServerConfig(port=0, models=(ModelEntry("tiny", str(folder)),), device="cpu", cache_dir=cache)
    rows: list[dict[str, float]] = []
    with ServerInThread(config, Engine(config)) as server:
        remote = Remote(server.url)
        try:
            for i in range(runs + 3):  # 3 warm-up jobs
                marks.clear()
                finished_frames.clear()
                remote.count += 1
                job = SubmitJob(f"h{remote.count}", "txt2img", params, None)

                async def go() -> None:
                    mark("submit")
                    remote.client.submit(job, [])
                    while True:
                        event = await remote.client.next_event(timeout=600)
                        if isinstance(event, JobResult) and event.job_id == job.job_id:
                            mark("client_result")
                            return
                remote.loop.run_until_complete(go())
                if i >= 3:
                    missing = [h for h in HOPS if h not in marks]
                    if missing:
                        raise RuntimeError(f"hops not seen: {missing}")
                    rows.append(dict(marks))
        finally:
            remote.close()
    out = {}
    for a, b in zip(HOPS, HOPS[1:]):
        out[f"{a} → {b}"] = statistics.median(r[b] - r[a] for r in rows)
    out["total"] = statistics.median(r["client_result"] - r["submit"] for r in rows)
    out["fixed"] = statistics.median(r["client_result"] - r["submit"] - (r["pipeline_end"] - r["pipeline_start"]) for r in rows)
    return out


def child(part: str, cache: Path, runs: int) -> None:
    """One measurement in this process (started by :func:`before_after`); prints one JSON line."""
    import json

    if part.startswith("faults-"):
        result = unet_faults(part == "faults-after", runs)
    elif part == "onestep":
        result = one_step(cache, runs)
    else:
        split = part == "fixed-split"
        result = {"previews": fixed_cost(cache, runs, True, split=split),
                  "no_previews": fixed_cost(cache, runs, False, split=split)}
    print("RESULT " + json.dumps(result), flush=True)


def before_after(before: Path, cache: Path, runs: int, rounds: int, threads: int,
                 parts: tuple[str, ...] = ("onestep", "fixed", "fixed-split"),
                 server_log: str = "") -> dict[str, dict[str, list[Any]]]:
    """Parts 4 and 5 with this tree's code and with ``before``'s, each in fresh processes (the malloc
    policy is process-wide), alternating before/after ``rounds`` times. Returns every child's result."""
    import json
    import subprocess

    out: dict[str, dict[str, list[Any]]] = {name: {"onestep": [], "fixed": [], "fixed-split": []} for name in ("before", "after")}
    for i in range(rounds):
        for name in (("after", "before") if i % 2 else ("before", "after")):
            for part in parts:
                env = dict(os.environ, EASEL_BENCH_ROOT=str(before) if name == "before" else "")
                done = subprocess.run([sys.executable, __file__, "--child", part, "--runs", str(runs), "--threads",
                                       str(threads), "--cache", str(cache)] + (["--server-log", server_log] if server_log else []),
                                      env=env, capture_output=True, text=True)
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode or not line:
                    raise RuntimeError(f"the {name} {part} child failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
                out[name][part].append(json.loads(line[-1][7:]))
                print(f"  round {i + 1}/{rounds}: {name} {part} done (load average {os.getloadavg()[0]:.2f})", flush=True)
    return out


def report_one_step(results: dict[str, dict[str, list[Any]]], runs: int) -> None:
    med = statistics.median
    print(f"\n4. one-step txt2img 64² on the mid model, server ÷ direct call on the main thread (each process: medians "
          f"of {runs} alternating pairs; below: the median over processes)\n")
    print("| code | malloc policy | direct | server | server ÷ direct (paired) | minor page faults per job: direct / server |")
    print("|---|---|---|---|---|---|")
    for name in ("before", "after"):
        rows = results[name]["onestep"]
        print(f"| {name} | {rows[0]['allocator']} | {ms(med(r['direct'] for r in rows))} | {ms(med(r['server'] for r in rows))} | "
              f"**{med(r['paired'] for r in rows):.3f}** | {med(r['faults_direct'] for r in rows):.0f} / "
              f"{med(r['faults_server'] for r in rows):.0f} |")


def report_before_after(results: dict[str, dict[str, list[Any]]], runs: int) -> None:
    med = statistics.median
    if results["before"]["onestep"]:
        report_one_step(results, runs)
    for part, where in (("fixed", "the client on the server process's main thread (one process, one GIL)"),
                        ("fixed-split", "the client in a process of its own, as a plugin's is")):
        if results["before"][part]:
            report_fixed(results, runs, part, where)


def report_fixed(results: dict[str, dict[str, list[Any]]], runs: int, part: str, where: str) -> None:
    med = statistics.median
    print(f"\n5. fixed cost per job (tiny model, txt2img 64², 2 steps; e2e − the job's own pipeline time), {where}; "
          f"medians of {runs} per process, median over processes\n")
    print("| code | previews | end to end | pipeline's own time | **fixed cost** | server plumbing (e2e − engine.run) | "
          "CPU of the server's loop thread + the client's thread (or process) per job | "
          "CPU per job outside the pipeline, all threads (and the client process) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("before", "after"):
        for key, label in (("previews", "on"), ("no_previews", "off")):
            rows = [r[key] for r in results[name][part]]
            print(f"| {name} | {label} | {ms(med(r['e2e'] for r in rows))} | {ms(med(r['pipeline'] for r in rows))} | "
                  f"**{ms(med(r['fixed'] for r in rows))}** | {ms(med(r['plumbing'] for r in rows))} | "
                  f"{ms(med(r['plumbing_cpu'] for r in rows))} | {ms(med(r['fixed_cpu'] for r in rows))} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "overhead", "fixed", "before-after", "prepare", "faults", "flux", "codec", "hops"),
                        default="all")
    parser.add_argument("--before", type=Path, help="before-after: a tree with backend/ and protocol/ as they were "
                        "(e.g. `git archive main backend protocol | tar -x -C /tmp/before`)")
    parser.add_argument("--rounds", type=int, default=2, help="before-after: fresh processes per tree")
    parser.add_argument("--measure", default="onestep,fixed,fixed-split",
                        help="before-after: which of onestep,fixed,fixed-split (fixed: the client in the server's "
                        "process; fixed-split: in a process of its own)")
    parser.add_argument("--child", choices=("onestep", "fixed", "fixed-split", "faults-before", "faults-after"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--client-of", help=argparse.SUPPRESS)  # a ClientProcess: the server's URL
    parser.add_argument("--previews", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=0, help="runs per measurement (default: 7 overhead, 40 fixed)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--cache", type=Path, default=Path(os.path.expanduser("~/.cache/easel/bench")))
    parser.add_argument("--server-log", choices=("debug", "info", "warning", "error"),
                        help="log as `easel serve --log-level LEVEL` does (its format, every job's lines), into "
                        "/dev/null instead of stderr; default: no logging set up, as the figures in RESULTS.md so far")
    args = parser.parse_args()
    if args.client_of:
        return client_process(args.client_of, args.previews)
    import warnings

    import torch

    from backend.cli import _quiet_libraries

    _quiet_libraries()
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.server_log:
        from backend.server import setup_logging

        setup_logging(args.server_log)
        logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the process's life
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}; "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.child:
        child(args.child, args.cache, args.runs or 9)
        return 0
    if args.part == "faults":
        faults_before_after(args.runs or 4, args.rounds, args.threads)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return 0
    if args.part == "codec":
        if not args.before:
            parser.error("--part codec needs --before TREE")
        runs = args.runs or 21
        r = codec_before_after(args.before, runs)
        print(f"\n9. codec: the {r['messages']['count']} frames of one 64² job with previews ({r['messages']['bytes']} bytes, "
              f"identical from both trees), this tree vs {args.before}, medians of {runs} alternating rounds\n")
        print("| per job | before | after | after ÷ before (median of per-round ratios) |")
        print("|---|---|---|---|")
        for key in ("encode", "decode"):
            print(f"| {key} | {r['before'][key] * 1e6:.1f} µs | {r['after'][key] * 1e6:.1f} µs | **{r['ratio'][key]:.2f}** |")
        print(f"| encode + decode | {(r['before']['encode'] + r['before']['decode']) * 1e6:.1f} µs | "
              f"{(r['after']['encode'] + r['after']['decode']) * 1e6:.1f} µs | **{r['ratio']['both']:.2f}** |")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return 0
    if args.part == "hops":
        runs = args.runs or 50
        for previews in (True, False):
            r = hops(args.cache, runs, previews)
            print(f"\n10. one tiny job's hops (txt2img 64², 2 steps, previews {'on' if previews else 'off'}), medians of {runs}\n")
            print("| hop | median |")
            print("|---|---|")
            for key, value in r.items():
                print(f"| {key} | {value * 1e3:.3f} ms |")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return 0
    if args.part == "prepare":
        r = prepare_layer(args.runs or 21)
        print(f"6. preparing a 2048² RGBA sketch layer for a preprocess job (payload → RGB over white), medians of "
              f"{args.runs or 21} alternating runs: float32 path {ms(r['float32'])}, uint8 path {ms(r['uint8'])}, "
              f"ratio {r['uint8'] / r['float32']:.3f} (same pixels, checked)")
        return 0
    if args.part == "before-after":
        if not args.before:
            parser.error("--part before-after needs --before TREE")
        runs = args.runs or 9
        parts = tuple(part for part in args.measure.split(",") if part)
        report_before_after(before_after(args.before, args.cache, runs, args.rounds, args.threads, parts, args.server_log),
                            runs)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return 0
    if args.part in ("all", "overhead"):
        r = overhead(args.cache, args.runs or 7)
        print(f"overhead (mid model, img2img 256², 4 denoising steps, median of {args.runs or 7}): "
              f"direct {r['direct']:.3f} s, server {r['server']:.3f} s, ratio {r['ratio']:.3f} (goal ≤ 1.03); "
              f"median of the paired (back-to-back) ratios {r['paired']:.3f}; "
              f"fastest runs: direct {r['direct_min']:.3f} s, server {r['server_min']:.3f} s, ratio {r['min_ratio']:.3f}")
        print("  server-side stages (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["stages"].items())))
    if args.part in ("all", "fixed"):
        for previews, split in ((True, False), (False, False), (True, True), (False, True)):
            r = fixed_cost(args.cache, args.runs or 40, previews, split=split)
            print(f"fixed cost (tiny model, txt2img 64², 2 steps, previews {'on' if previews else 'off'}, client in "
                  f"{'a process of its own' if split else 'this process'}, medians of "
                  f"{args.runs or 40}):\n"
                  f"  end to end {ms(r['e2e'])}; in it: engine.run {ms(r['worker'])}, the pipeline's own time "
                  f"(denoise + decode) {ms(r['pipeline'])}; a direct pipeline call {ms(r['direct'])}\n"
                  f"  fixed cost per job (e2e − the job's own pipeline time) {ms(r['fixed'])} (goal ≤ 5 ms)\n"
                  f"  of which server plumbing (e2e − engine.run) {ms(r['plumbing'])}\n"
                  f"  e2e − direct call (medians, includes run-to-run noise) {ms(r['backend'])}\n"
                  f"  gc during the jobs: {r['gc_explicit']} gc.collect() calls, {r['gc_gen2']} automatic gen-2 "
                  f"collections ({ms(r['gc_gen2_s'])} total)")
    if args.part == "flux":
        r = flux_overhead(args.cache, args.runs or 7)
        print(f"flux overhead (Flux-shaped mid model, txt2img 256², 4 steps, previews on, median of {args.runs or 7}): "
              f"direct {r['direct']:.3f} s, server {r['server']:.3f} s, ratio {r['ratio']:.3f} (goal ≤ 1.03); "
              f"median of the paired ratios {r['paired']:.3f}\n"
              f"  a step {ms(r['step'])}; the preview work that held the worker back {r['preview_share'] * 100:.2f} % "
              f"of a step (goal ≤ 2 %); scaling + JPEG on the preview thread {ms(r['preview_render'])} per step")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
