"""Fixtures of the cluster suite: ONE local Ray instance per test module (2 CPUs), a Serve
deployment of 2 CPU replicas serving two tiny random models ("a" and "b"), and the real websocket
server in front of it (:class:`backend.cluster.executor.ClusterScheduler`).

Nothing is stubbed: the replicas are Ray actors running the real engine on the diffusers pipelines.
Ray runs with token authentication off (``RAY_AUTH_MODE=disabled``: a throw-away local instance)
and its own temp folder, and is always shut down at the end of the module.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest

HERE = Path(__file__).resolve().parent
for path in (str(HERE.parents[1] / "tests" / "backend"), str(HERE.parents[1])):
    if path not in sys.path:
        sys.path.insert(0, path)

pytest.importorskip("ray.serve", reason="the cluster extra is not installed (pip install -e '.[cluster]')")

from test_server_harness import ServerThread, tiny_models  # noqa: E402,F401 - tiny_models is a fixture

from backend.cluster.settings import ClusterSettings  # noqa: E402
from backend.config import ModelEntry, ServerConfig  # noqa: E402


def cluster_config(tiny_models: dict[str, Path], cache: Path, **cluster: Any) -> ServerConfig:
    settings = dict(address="auto", min_replicas=2, max_replicas=2, gpus_per_replica=0, cpus_per_replica=0.5,
                    models_per_replica=1, app_name="easel-test")
    settings.update(cluster)
    models = (ModelEntry("a", str(tiny_models["base"])), ModelEntry("b", str(tiny_models["base"])))
    return ServerConfig(port=0, models=models, device="cpu", threads=1, cache_dir=cache, queue_size=16,
                        max_client_jobs=16, preload=False, cluster=ClusterSettings(**settings))


@pytest.fixture(scope="module")
def ray_cluster(tiny_models, tmp_path_factory) -> Iterator[Any]:
    """A local Ray instance with the Easel app deployed (2 replicas); shut down after the module."""
    from backend.cluster.executor import Cluster

    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    config = cluster_config(tiny_models, tmp_path_factory.mktemp("cache"))
    cluster = None
    try:
        cluster = Cluster.start(config, ray_init={"num_cpus": 2, "_temp_dir": temp})
        yield cluster
    finally:
        try:
            if cluster is not None:
                cluster.shutdown()
            else:
                import ray

                ray.shutdown()
        finally:
            shutil.rmtree(temp, ignore_errors=True)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def cluster_server(ray_cluster, tmp_path_factory) -> Iterator[ServerThread]:
    """The real websocket server handing its jobs to the module's deployment (one per module, as
    one `easel serve --cluster` process runs one)."""
    from functools import partial

    from backend.cluster.executor import ClusterScheduler
    from backend.engine import Engine

    config = replace(ray_cluster.config, cache_dir=tmp_path_factory.mktemp("server-cache"))
    running = ServerThread(config, Engine(config))
    running.server = type(running.server)(config, running.server.engine,
                                          make_scheduler=partial(ClusterScheduler, cluster=ray_cluster))
    with running:
        yield running
