"""``easel serve --cluster`` against the embedded worker, side by side in one run.

1. **Fixed cost per job** — txt2img 64² on a tiny model (2 steps, previews on), through the real
   websocket server: embedded (in-process worker) and cluster (Ray Serve, one CPU replica), runs
   alternating (the cluster has 2 replicas; one job at a time here). Per job: end to end at the client minus the engine's own ``engine.run`` time (the
   result's ``timings["worker"]``, measured where the engine ran). Goal: cluster ≤ embedded + 10 ms.
2. **Throughput** — a queue of tiny jobs (txt2img 128², 8 steps, one torch thread per replica)
   submitted at once by one client; jobs per second with 1 replica and with 2 (the same 2-replica
   deployment; for "1" the server sends one job out at a time). Goal: 2 replicas ≥ 1.6× one.

    .venv/bin/python benchmarks/cluster_bench.py --runs 20 --jobs 24

Needs the cluster extra (``pip install -e '.[cluster]'``). Starts a local Ray instance (2 CPUs,
token authentication off, its own temp folder) and stops it at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from overhead_bench import Remote, ServerInThread  # noqa: E402  (sets the HF/OMP environment too)

from backend.cluster.settings import ClusterSettings  # noqa: E402
from backend.config import ModelEntry, ServerConfig  # noqa: E402
from protocol import JobParams, JobResult, SubmitJob  # noqa: E402


class ClusterServerInThread(ServerInThread):
    """The same server, its jobs handed to the cluster."""

    def __init__(self, config: ServerConfig, engine: Any, cluster: Any) -> None:
        from backend.cluster.executor import ClusterScheduler
        from backend.server import EaselServer

        super().__init__(config, engine)
        self.server = EaselServer(config, engine, make_scheduler=partial(ClusterScheduler, cluster=cluster))


def config_for(model: Path, cache: Path, replicas: int) -> ServerConfig:
    return ServerConfig(port=0, models=(ModelEntry("tiny", str(model)),), device="cpu", threads=1, cache_dir=cache,
                        queue_size=128, max_client_jobs=128, preload=True,
                        cluster=ClusterSettings(min_replicas=replicas, max_replicas=replicas, gpus_per_replica=0,
                                                cpus_per_replica=0.5, app_name="easel-bench"))


def fixed_cost(remote: Remote, runs: int) -> list[float]:
    params = JobParams(model="tiny", prompt="a lighthouse", width=64, height=64, steps=2, seed=7)
    out = []
    for _ in range(runs):
        seconds, result = remote.run("txt2img", params, [])
        out.append(seconds - result.finished.timings["worker"])
    return out


def throughput(remote: Remote, jobs: int) -> float:
    """Jobs per second for ``jobs`` tiny jobs submitted at once."""
    params = JobParams(model="tiny", prompt="a lighthouse", width=128, height=128, steps=8, seed=7, previews=False)

    async def go() -> float:
        start = time.perf_counter()
        ids = set()
        for i in range(jobs):
            remote.count += 1
            job = SubmitJob(f"t{remote.count}", "txt2img", replace(params, seed=i))
            ids.add(job.job_id)
            remote.client.submit(job, [])
        while ids:
            event = await remote.client.next_event(timeout=600)
            if getattr(event, "job_id", None) in ids:
                if not isinstance(event, JobResult) and type(event).__name__ in ("JobFailed", "JobCancelled"):
                    raise RuntimeError(f"job failed: {event}")
                if isinstance(event, JobResult):
                    ids.discard(event.job_id)
        return jobs / (time.perf_counter() - start)
    return remote.loop.run_until_complete(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="jobs per side for the fixed cost")
    parser.add_argument("--jobs", type=int, default=24, help="jobs in the throughput queue")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "easel" / "bench")
    args = parser.parse_args()

    import ray
    import torch

    from backend.cluster.executor import Cluster
    from backend.demo import build_tiny_model
    from backend.engine import Engine

    torch.set_num_threads(1)
    model = args.cache / "tiny-cluster"
    if not (model / "model_index.json").exists():
        build_tiny_model(model, "base")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    print(f"# cluster_bench: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, ray {ray.__version__}, torch {torch.__version__}")
    config = config_for(model, args.cache, 2)
    cluster = Cluster.start(config, ray_init={"num_cpus": 2, "_temp_dir": temp})
    try:
        with ServerInThread(config, Engine(config)) as embedded, \
                ClusterServerInThread(config, Engine(config), cluster) as clustered:
            remotes = {"embedded": Remote(embedded.url), "cluster": Remote(clustered.url)}
            for remote in remotes.values():  # warm: model loaded, first frames, Serve's router
                fixed_cost(remote, 3)
            costs: dict[str, list[float]] = {name: [] for name in remotes}
            for _ in range(args.runs):
                for name, remote in remotes.items():
                    costs[name] += fixed_cost(remote, 1)
            print("\n## 1. fixed cost per job (e2e − engine.run), txt2img 64², 2 steps, previews on, medians")
            for name, values in costs.items():
                print(f"{name:9s} {statistics.median(values) * 1000:7.1f} ms  (n={len(values)}, "
                      f"p10 {sorted(values)[len(values) // 10] * 1000:.1f}, p90 {sorted(values)[len(values) * 9 // 10] * 1000:.1f})")
            extra = statistics.median(costs["cluster"]) - statistics.median(costs["embedded"])
            print(f"cluster − embedded: {extra * 1000:+.1f} ms (goal ≤ +10 ms)")
            remote = remotes["cluster"]
            throughput(remote, 4)  # both replicas load the model
            rates = {}
            # 1 replica: the server sends one job out at a time (the other replica idles); 2: two.
            for count in (1, 2):
                clustered.loop.call_soon_threadsafe(setattr, clustered.server.scheduler, "slots", count)
                rates[count] = throughput(remote, args.jobs)
            for remote in remotes.values():
                remote.close()
        print(f"\n## 2. throughput, {args.jobs} jobs of txt2img 128², 8 steps, 1 torch thread per replica")
        for count, rate in rates.items():
            print(f"{count} replica{'s' if count > 1 else ''}: {rate:.2f} jobs/s")
        print(f"2 ÷ 1: {rates[2] / rates[1]:.2f}× (goal ≥ 1.6×); load average now {os.getloadavg()[0]:.1f}")
    finally:
        cluster.started_ray = True
        cluster.shutdown()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
