"""Regional prompts on a UNet: how local a region's prompt stays, and what "separate" passes cost.

1. **Locality** — txt2img with the left and right halves as regions; the left region's prompt
   changes ("a red dog" → "a green house"); the figure is the share of the summed absolute pixel
   change that falls inside the left region's feathered mask (tests/backend/test_references_server.py
   measures it the same way). Per size and seed: ``region_mode`` "separate", "attention", and the same
   words changed in the base prompt without regions ("no masking", about the region's share of the
   picture).
2. **Cost** — a job with two regions, "separate" and "attention" alternating in one process (so
   drift hits both), wall and CPU time (``time.process_time``) per job; the ratio of the medians.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/regions_bench.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/regions_bench.py --part cost --model mid --size 256 --steps 8

Models are built offline with backend.demo into ``--cache`` (default ~/.cache/easel/bench): "tiny"
(the tests' UNet, block_out_channels (32, 64)), "mid" (random, (128, 256, 512); HOSTS.md) and
"flux" (the tests' tiny Flux.1, whose regions mask the joint attention whatever ``region_mode`` says).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from protocol import ImageFormat, ImagePayload, JobParams, SubmitJob  # noqa: E402
from protocol.messages import Region  # noqa: E402


class Quiet:
    """A Progress that takes nothing and never cancels."""

    def cancelled(self) -> bool:
        return False

    def step(self, step: int, total: int) -> None:
        pass

    def wants_preview(self) -> bool:
        return False

    def preview(self, *args) -> None:
        pass


def _mask(size: int, left: bool) -> ImagePayload:
    half = np.zeros((size, size), np.uint8)
    half[:, : size // 2] = 255
    return ImagePayload(ImageFormat.GREY8, size, size, (half if left else 255 - half).tobytes())


def _model(cache: Path, name: str) -> Path:
    from backend import demo

    folder = cache / f"regions-{name}"
    if not (folder / "model_index.json").exists():
        builders = {"tiny": lambda: demo.build_tiny_model(folder, "base"), "mid": lambda: demo.build_mid_model(folder),
                    "flux": lambda: demo.build_tiny_flux(folder)}
        builders[name]()
    return folder


def _engine(cache: Path, name: str):
    from backend.engine import Engine, EngineConfig, ModelSpec

    return Engine(EngineConfig(models=(ModelSpec(name, str(_model(cache, name))),), device="cpu",
                               cache_folder=Path(tempfile.mkdtemp(prefix="regions-bench-"))))


def _run(engine, model: str, size: int, steps: int, seed: int, prompt: str, regions: tuple[str, ...], mode: str):
    masks = [_mask(size, True), _mask(size, False)]
    params = JobParams(model=model, prompt=prompt, width=size, height=size, steps=steps, seed=seed, previews=False,
                       regions=tuple(Region(m.id, text) for m, text in zip(masks, regions)), region_mode=mode)
    out = engine.run(engine.prepare(SubmitJob("b", "txt2img", params), {m.id: m for m in masks}), Quiet())
    image = out.images[0]
    return np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, -1)


def inside(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> float:
    change = np.abs(a[..., :3].astype(np.int64) - b[..., :3].astype(np.int64)).sum(axis=2)
    return float((change * weight).sum() / change.sum())


def locality(cache: Path, model: str, sizes: list[int], seeds: list[int], steps: int) -> None:
    from backend.guides import region_weights

    engine = _engine(cache, model)
    print(f"## locality: {model}, {steps} steps, left region's prompt 'a red dog' -> 'a green house'")
    print("| size | seed | separate | attention | no masking |")
    print("|---|---|---|---|---|")
    for size in sizes:
        left = np.zeros((size, size), np.uint8)
        left[:, : size // 2] = 255
        weight = region_weights([left, 255 - left], (size, size))[1]
        for seed in seeds:
            row = []
            for mode in ("separate", "attention"):
                one = _run(engine, model, size, steps, seed, "a field", ("a red dog", "a blue sky"), mode)
                two = _run(engine, model, size, steps, seed, "a field", ("a green house", "a blue sky"), mode)
                row.append(inside(one, two, weight))
            one = _run(engine, model, size, steps, seed, "a red dog", (), "separate")
            two = _run(engine, model, size, steps, seed, "a green house", (), "separate")
            row.append(inside(one, two, weight))
            print(f"| {size}² | {seed} | " + " | ".join(f"{v:.1%}" for v in row) + " |", flush=True)


def cost(cache: Path, model: str, size: int, steps: int, runs: int) -> None:
    """Median wall and CPU time per job: "separate" (its default schedule), "attention", and
    "separate" with the per-prompt passes over every step (what the default schedule saves)."""
    from backend import guides

    engine = _engine(cache, model)
    regions = ("a red dog", "a blue sky")
    default_end = guides.SEPARATE_END
    modes = {"separate": ("separate", default_end), "attention": ("attention", default_end),
             "separate, every step": ("separate", 1.0)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}

    def one(name: str) -> tuple[float, float]:
        mode, guides.SEPARATE_END = modes[name]
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            _run(engine, model, size, steps, 1, "a field", regions, mode)
            return time.perf_counter() - wall, time.process_time() - cpu
        finally:
            guides.SEPARATE_END = default_end

    for name in modes:  # warm: load, encode the prompts
        one(name)
    loads = []
    for _ in range(runs):
        for name in modes:
            times[name].append(one(name))
        loads.append(os.getloadavg()[0])
    print(f"## cost: {model} UNet, {size}², {steps} steps, 2 regions, {runs} runs each, alternating; "
          f"load average {min(loads):.2f}–{max(loads):.2f}")
    print("| mode | wall (median) | CPU (median) | wall ÷ attention | CPU ÷ attention |")
    print("|---|---|---|---|---|")
    med = {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for name, ts in times.items()}
    base = med["attention"]
    for name, (wall, cpu) in med.items():
        print(f"| {name} | {wall * 1000:.0f} ms | {cpu * 1000:.0f} ms | {wall / base[0]:.2f} | {cpu / base[1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("locality", "cost", "all"), default="all")
    parser.add_argument("--model", choices=("tiny", "mid", "flux"), default="tiny",
                        help="locality: tiny (SD 1.x-shaped UNet) or flux (tiny Flux.1); cost: tiny or mid")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 1, 9])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="the cost part's size")
    parser.add_argument("--cost-steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "easel" / "bench")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    if args.part in ("locality", "all"):
        locality(args.cache, args.model, args.sizes, args.seeds, args.steps)
    if args.part in ("cost", "all"):
        cost(args.cache, args.model, args.size, args.cost_steps, args.runs)


if __name__ == "__main__":
    main()
