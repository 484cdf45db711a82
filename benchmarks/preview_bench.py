"""Step-preview cost, measured side by side in one process run.

1. **Share of step time, in the job** — txt2img on the random "mid" model (HOSTS.md: UNet
   block_out_channels (128, 256, 512)) at 256², through ``Engine.run`` with previews on. The engine
   times the preview work that holds the worker back (latent → RGB, handing over to the preview
   thread, waiting for it at the end) and, apart, the scaling + JPEG work on the preview thread;
   the shares are those times over the step time without them. Goal: ≤ 2 %.
2. **Previews on vs off** — the same jobs with ``previews=False``, alternating with the runs of part 1
   so drift hits both; the ratio of median denoise times (noisier than part 1: it includes run-to-run
   variance of the UNet itself).
3. **Preview work alone** at larger results (512², SDXL's 1024²) and for an inpaint region, with
   random latents: the fixed cost a GPU job pays per step once steps take milliseconds.

    .venv/bin/python benchmarks/preview_bench.py                  # all parts, 7 runs of 4 steps
    .venv/bin/python benchmarks/preview_bench.py --runs 11 --steps 8 --threads 1

Models are built offline with backend.demo into ``--cache`` (default ~/.cache/easel/bench).
Results go to stdout as a small report (copy it into benchmarks/RESULTS.md with the machine).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import JobParams, SubmitJob  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SEED = 1234


class Sink:
    """A Progress that takes every preview and never cancels (what a fast client looks like)."""

    def __init__(self) -> None:
        self.previews = 0

    def cancelled(self) -> bool:
        return False

    def step(self, step: int, total: int) -> None:
        pass

    def wants_preview(self) -> bool:
        return True

    def preview(self, step: int, total: int, width: int, height: int, jpeg: bytes) -> None:
        self.previews += 1


def in_job(cache: Path, runs: int, steps: int, size: int) -> dict[str, float]:
    from backend.demo import build_mid_model
    from backend.engine import Engine, EngineConfig, ModelSpec

    folder = cache / "mid"
    if not (folder / "model_index.json").is_file():
        print(f"building the mid model in {folder} ...", file=sys.stderr)
        build_mid_model(folder)
    engine = Engine(EngineConfig(models=(ModelSpec("mid", str(folder)),), device="cpu", cache_folder=cache))

    def job(previews: bool) -> dict[str, float]:
        params = JobParams(prompt=PROMPT, model="mid", seed=SEED, steps=steps, width=size, height=size,
                           sampler="euler", previews=previews)
        sink = Sink()
        output = engine.run(engine.prepare(SubmitJob("bench", "txt2img", params), {}), sink)
        assert sink.previews == (steps if previews else 0)
        return output.timings

    job(True)  # warm-up: load, first-call allocations
    share, render_share, preview_ms, render_ms, step_ms, on, off = [], [], [], [], [], [], []
    for _ in range(runs):
        timed = job(True)
        plain = job(False)
        pure = timed["denoise"] - timed["previews"]
        share.append(timed["previews"] / pure)
        render_share.append(timed["preview_render"] / pure)
        preview_ms.append(timed["previews"] / steps * 1000)
        render_ms.append(timed["preview_render"] / steps * 1000)
        step_ms.append(pure / steps * 1000)
        on.append(timed["denoise"])
        off.append(plain["denoise"])
    return {
        "preview_ms_per_step": statistics.median(preview_ms),
        "render_ms_per_step": statistics.median(render_ms),
        "render_share": statistics.median(render_share),
        "step_ms": statistics.median(step_ms),
        "share": statistics.median(share),
        "share_max": max(share),
        "denoise_on_s": statistics.median(on),
        "denoise_off_s": statistics.median(off),
        "ratio": statistics.median(on) / statistics.median(off),
    }


def preview_alone(size: tuple[int, int], reps: int, region: bool = False) -> float:
    """Median ms for one preview (linear latent→RGB, resize, JPEG) of a ``size`` result."""
    import numpy as np
    import torch

    from backend.previews import LatentDecoder, PreviewFrame

    width, height = size
    latents = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(0))
    decoder = LatentDecoder("sdxl" if max(size) >= 1024 else "sd15")
    if region:  # an inpaint of the middle quarter of a larger canvas
        canvas = np.zeros((height * 2, width * 2, 4), np.uint8)
        alpha = np.zeros(canvas.shape[:2], np.float32)
        box = (width // 2, height // 2, width // 2 + width, height // 2 + height)
        alpha[box[1]:box[3], box[0]:box[2]] = 1.0
        frame = PreviewFrame((width * 2, height * 2), box=box, background=canvas, alpha=alpha)
    else:
        frame = PreviewFrame(size)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        frame.render(decoder.rgb(latents))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "easel" / "bench")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# preview_bench — {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device cpu")
    r = in_job(args.cache, args.runs, args.steps, args.size)
    print(f"\n## in the job: mid model, txt2img {args.size}², {args.steps} steps (euler), {args.runs} runs, medians")
    print(f"step (UNet + scheduler) {r['step_ms']:.1f} ms; preview work on the worker {r['preview_ms_per_step']:.3f} ms "
          f"per step, scaling + JPEG on the preview thread {r['render_ms_per_step']:.2f} ms per step")
    print(f"preview share of step time: {r['share'] * 100:.3f} % (worst run {r['share_max'] * 100:.3f} %) — goal ≤ 2 %; "
          f"{r['render_share'] * 100:.2f} % more if scaling + JPEG ran on the worker")
    print(f"denoise with previews {r['denoise_on_s']:.3f} s, without {r['denoise_off_s']:.3f} s: ratio {r['ratio']:.3f}")
    print("\n## preview work alone (linear map + resize + JPEG, all on one thread), median of 50")
    for label, size, region in (("256² result", (256, 256), False), ("512² result", (512, 512), False),
                                ("1024² result (SDXL)", (1024, 1024), False),
                                ("512² inpaint region in a 1024² canvas", (512, 512), True)):
        print(f"{label}: {preview_alone(size, 50, region):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
