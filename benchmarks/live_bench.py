"""Live mode, measured: a scripted stroke stream against the server, through the plugins' protocol path.

A painter's stroke stream is ``--changes`` canvas changes (default 30) at ``--rate`` Hz (default 10),
then a pause. Each change paints one more dab on a 256² picture and sends it as a live img2img job
(``JobParams.live``) with ``protocol.transport.AsyncClient.submit_hashed`` — what the Krita plugin
does after its debounce. The server supersedes older live jobs (pending ones are replaced, the
running one is cancelled at its next step). Measured, per stream, with the random "mid" model:

1. **Latency ratio** — time from the last change's submit to its final image in hand, divided by
   a bare diffusers img2img call on that same image with the same settings (the mean of calls run
   right before and right after that stream, in this process). Goal ≤ 1.10. On a shared machine
   the load changes between the two, so also: the latency ÷ the last job's own ``engine.run``
   time in the server (what superseding, queueing and the protocol add, measured in the same run).
2. **Steps spent on superseded requests** — denoising steps the engine finished for jobs that
   then ended ``superseded``, per superseded request (pending ones that never started count with 0
   steps). Goal ≤ 1. Also: the compute those jobs took, in step-equivalents (their time in
   ``engine.run`` divided by the median step time), per job that was running when superseded.
3. **Upload per change** — bytes sent per change (content-addressed: an image the server holds is
   never sent again), and the time a changed 1024² region takes to upload (submit → accepted for a
   new image vs. the same image again) — the ceiling on what sending changed tiles only could save.

    .venv/bin/python benchmarks/live_bench.py                      # 3 streams
    .venv/bin/python benchmarks/live_bench.py --streams 5 --threads 2

The mid model is built offline with backend.demo into ``--cache``/mid (default
~/.cache/easel/bench/mid). Results go to stdout (copy them into benchmarks/RESULTS.md).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see overhead_bench.py: two OpenMP teams in one process
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend.config import ModelEntry, ServerConfig  # noqa: E402
from overhead_bench import ServerInThread, direct_pipeline, test_image  # noqa: E402
from protocol import ImageFormat, ImagePayload, JobCancelled, JobFailed, JobParams, JobResult, SubmitJob  # noqa: E402
from protocol.transport import AsyncClient  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SEED = 1234
SIZE = 256
STEPS, STRENGTH = 8, 0.5  # 4 denoising steps (diffusers runs int(steps * strength)): a live step count


# --------------------------------------------------------------------------- the engine, watched


@dataclass
class JobSteps:
    started: float = 0.0
    ended: float = 0.0
    steps: list[float] = field(default_factory=list)  # perf_counter() at the end of each step


class WatchedEngine:
    """The real engine; records, per job, when ``engine.run`` started and ended and when each step ended."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.jobs: dict[str, JobSteps] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def run(self, prepared: Any, progress: Any) -> Any:
        record = JobSteps(started=time.perf_counter())
        with self._lock:
            self.jobs[prepared.job_id] = record
        try:
            return self.engine.run(prepared, _Steps(progress, record))
        finally:
            record.ended = time.perf_counter()


class _Steps:
    def __init__(self, progress: Any, record: JobSteps) -> None:
        self._progress, self._record = progress, record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._progress, name)

    def step(self, step: int, total: int, *args: Any) -> None:
        self._record.steps.append(time.perf_counter())
        self._progress.step(step, total, *args)


# --------------------------------------------------------------------------- the stroke stream


def stroke_frames(count: int, variant: int = 0, size: int = SIZE) -> list[ImagePayload]:
    """``count`` pictures: the test image with 1, 2, ... dabs of a moving brush painted on it
    (``variant`` changes the dabs' colour, so every stream sends pictures the server has not seen)."""
    import numpy as np

    base, _ = test_image(size)
    pixels = np.frombuffer(base.data, np.uint8).reshape(size, size, 4).copy()
    y, x = np.mgrid[0:size, 0:size]
    frames = []
    for i in range(count):
        cx, cy = size * (0.2 + 0.6 * i / max(1, count - 1)), size * (0.5 + 0.25 * np.sin(i / 3))
        dab = (x - cx) ** 2 + (y - cy) ** 2 < (size / 24) ** 2
        pixels[dab, :3] = (200, 40 + 5 * i, (60 + 37 * variant) % 256)
        frames.append(ImagePayload(ImageFormat.RGBA8, size, size, pixels.tobytes()))
    return frames


@dataclass
class Stream:
    submitted: dict[str, float] = field(default_factory=dict)
    ends: dict[str, tuple[str, float]] = field(default_factory=dict)  # job id -> (outcome, time)
    result: JobResult | None = None
    bytes_uploaded: int = 0


async def run_stream(client: AsyncClient, frames: list[ImagePayload], rate: float, tag: str,
                     params: JobParams) -> Stream:
    out = Stream()
    ids = [f"{tag}-{i}" for i in range(len(frames))]
    last = ids[-1]
    done = asyncio.Event()

    async def read() -> None:
        while True:
            event = await client.next_event()
            job_id = getattr(event, "job_id", None)
            now = time.perf_counter()
            if isinstance(event, JobResult):
                out.ends[job_id] = ("finished", now)
                if job_id == last:
                    out.result = event
            elif isinstance(event, JobCancelled):
                out.ends[job_id] = (event.reason, now)
            elif isinstance(event, JobFailed):
                out.ends[job_id] = (f"failed: {event.message}", now)
            if last in out.ends:
                done.set()

    reader = asyncio.create_task(read())
    uploaded = client.session.bytes_uploaded
    start = time.perf_counter()
    try:
        for i, (job_id, frame) in enumerate(zip(ids, frames)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            await client.submit_hashed(SubmitJob(job_id, "img2img", params, {"image": frame.id}), [frame])
            out.submitted[job_id] = time.perf_counter()
        await asyncio.wait_for(done.wait(), 600)
        # The ends of earlier jobs come before the last job's result (each ended before it started).
        await asyncio.sleep(0.2)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    out.bytes_uploaded = client.session.bytes_uploaded - uploaded
    return out


async def upload_cost(client: AsyncClient, size: int, runs: int = 5) -> tuple[float, float]:
    """Median seconds from submit to ``job_accepted`` for a live job whose ``size``² image is new
    (uploaded) and for one whose image the server already holds; the job works at 64² and is
    superseded by the next, so the model's time stays out of it."""
    import numpy as np

    from protocol import JobAccepted

    params = JobParams(prompt=PROMPT, model="mid", seed=SEED, steps=2, strength=0.5, width=64, height=64, live=True,
                       previews=False)
    rng = np.random.default_rng(0)
    new, same = [], []
    held = None
    for i in range(runs * 2):
        if i % 2 == 0 or held is None:
            image = ImagePayload(ImageFormat.RGBA8, size, size, rng.integers(0, 256, size * size * 4, np.uint8).tobytes())
            image.id  # hash outside the timed part (the plugin hashes on a worker thread before sending)
            held, bucket = image, new
        else:
            image, bucket = held, same
        job_id = f"upload-{size}-{i}"
        start = time.perf_counter()
        client.submit(SubmitJob(job_id, "img2img", params, {"image": image.id}), [image])
        while True:
            event = await client.next_event(timeout=120)
            if isinstance(event, JobAccepted) and event.job_id == job_id:
                bucket.append(time.perf_counter() - start)
                break
    client.cancel(job_id)
    await asyncio.sleep(1.0)
    client.pending_events()
    return statistics.median(new), statistics.median(same)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=3, help="stroke streams (each followed by bare calls)")
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second")
    parser.add_argument("--direct-runs", type=int, default=1, help="bare pipeline calls before and after each stream")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--cache", type=Path, default=Path(os.path.expanduser("~/.cache/easel/bench")))
    args = parser.parse_args()
    import warnings

    import torch

    from backend.cli import _quiet_libraries
    from backend.demo import build_mid_model
    from backend.engine import Engine
    from backend.samplers import DEFAULT_SAMPLER

    _quiet_libraries()
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.cache / "mid"
    if not (folder / "model_index.json").exists():
        print(f"building the mid model in {folder} ...", flush=True)
        build_mid_model(folder)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, Python "
          f"{platform.python_version()}, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    # width × height: the area the model works at, here the image's own (the default is the model's native area).
    params = JobParams(prompt=PROMPT, model="mid", seed=SEED, steps=STEPS, strength=STRENGTH, cfg_scale=7.0,
                       sampler=DEFAULT_SAMPLER, width=SIZE, height=SIZE, live=True)
    frames = stroke_frames(args.changes)
    pipe = direct_pipeline(folder, "StableDiffusionImg2ImgPipeline", DEFAULT_SAMPLER)

    def bare(image: ImagePayload) -> float:
        from PIL import Image

        pil = Image.frombytes("RGBA", (image.width, image.height), image.data).convert("RGB")
        start = time.perf_counter()
        pipe(prompt=PROMPT, negative_prompt="", image=pil, strength=STRENGTH, num_inference_steps=STEPS,
             guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil")
        return time.perf_counter() - start

    config = ServerConfig(port=0, models=(ModelEntry("mid", str(folder)),), device="cpu", cache_dir=args.cache)
    engine = WatchedEngine(Engine(config))
    loop = asyncio.new_event_loop()
    ratios, latencies, bares, step_times, own = [], [], [], [], []
    superseded_requests = superseded_steps = 0
    running_superseded, running_equivalents = 0, []
    with ServerInThread(config, engine) as server:
        client = AsyncClient(server.url, client_name="live-bench", client_version="1", reconnect=False)
        loop.run_until_complete(client.start())
        try:
            # Warm-up: the model loads, the text embedding is cached (as in a live session).
            loop.run_until_complete(run_stream(client, frames[:1], args.rate, "warm", params))
            bare(frames[0])
            for n in range(args.streams):
                frames = stroke_frames(args.changes, variant=n + 1)
                direct = [bare(frames[-1]) for _ in range(args.direct_runs)]
                stream = loop.run_until_complete(run_stream(client, frames, args.rate, f"s{n}", params))
                last = f"s{n}-{len(frames) - 1}"
                outcome, ended = stream.ends[last]
                if outcome != "finished" or stream.result is None:
                    raise RuntimeError(f"the last live job did not finish: {outcome}")
                latency = ended - stream.submitted[last]
                direct += [bare(frames[-1]) for _ in range(args.direct_runs)]
                d = statistics.mean(direct)
                own.append(latency / stream.result.finished.timings["worker"])
                # Steps of every job in this stream; the step time from the jobs that ran to their end.
                for job_id, (how, _) in stream.ends.items():
                    record = engine.jobs.get(job_id)
                    if how == "finished" and record is not None and len(record.steps) > 1:
                        step_times.extend(b - a for a, b in zip(record.steps, record.steps[1:]))
                step = statistics.median(step_times) if step_times else float("nan")
                counts = {"superseded": 0, "finished": 0, "other": 0}
                stream_steps = stream_running = 0
                for job_id, (how, _) in stream.ends.items():
                    record = engine.jobs.get(job_id)
                    if how == "superseded":
                        counts["superseded"] += 1
                        superseded_requests += 1
                        if record is not None:
                            stream_steps += len(record.steps)
                            stream_running += 1
                            running_equivalents.append((record.ended - record.started) / step)
                    elif how == "finished":
                        counts["finished"] += 1
                    else:
                        counts["other"] += 1
                superseded_steps += stream_steps
                running_superseded += stream_running
                ratios.append(latency / d)
                latencies.append(latency)
                bares.append(d)
                print(f"stream {n + 1}/{args.streams}: last change → final image {latency:.3f} s, bare call "
                      f"{d:.3f} s (before/after: {', '.join(f'{t:.3f}' for t in direct)}), ratio {latency / d:.3f}, "
                      f"÷ its own engine.run {own[-1]:.3f}; jobs {counts}; {stream_running} superseded while "
                      f"running, {stream_steps} steps finished by superseded jobs; "
                      f"{stream.bytes_uploaded / 1024:.0f} KiB uploaded ({stream.bytes_uploaded / len(frames) / 1024:.0f} KiB "
                      f"per change); engine stages of the last job: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in sorted(stream.result.finished.timings.items())),
                      flush=True)
            new_1k, same_1k = loop.run_until_complete(upload_cost(client, 1024))
        finally:
            loop.run_until_complete(client.close())
            loop.close()
    step = statistics.median(step_times)
    print(f"\nlatency ratio (last change → final image ÷ bare img2img call, {SIZE}², {int(STEPS * STRENGTH)} steps): "
          f"median {statistics.median(ratios):.3f} (runs {', '.join(f'{r:.3f}' for r in ratios)}; goal ≤ 1.10); "
          f"latency median {statistics.median(latencies):.3f} s, bare call median {statistics.median(bares):.3f} s; "
          f"ratio of the fastest latency to the fastest bare call {min(latencies) / min(bares):.3f}; latency ÷ the "
          f"last job's own engine.run: median {statistics.median(own):.3f}")
    print(f"superseded requests: {superseded_requests}, of them {running_superseded} superseded while running; "
          f"denoising steps finished by superseded jobs: {superseded_steps} = "
          f"{superseded_steps / max(1, superseded_requests):.3f} per superseded request (goal ≤ 1), "
          f"{superseded_steps / max(1, running_superseded):.3f} per job superseded while running")
    if running_equivalents:
        print(f"compute of jobs superseded while running (engine.run time ÷ median step {step:.3f} s): median "
              f"{statistics.median(running_equivalents):.2f} step-equivalents, max {max(running_equivalents):.2f}")
    print(f"upload of a changed 1024² region (submit → accepted): {new_1k * 1000:.1f} ms new, "
          f"{same_1k * 1000:.1f} ms when the server holds it")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
