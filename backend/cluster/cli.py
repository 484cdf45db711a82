"""``easel serve --cluster``: start (or join) Ray, deploy the replicas, serve, tear down."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from functools import partial
from typing import Any, Awaitable, Callable

from ..cli import EXIT_INTERRUPTED, EXIT_USAGE
from ..config import ConfigError
from .settings import ClusterSettings

log = logging.getLogger("easel.cluster")


def serve_cluster(config: Any, engine: Any, address: str, serve: Callable[[Any], Awaitable[int]]) -> int:
    """Serve ``config`` with its jobs on the cluster. ``address``: the ``--cluster`` value (empty:
    the config's ``[cluster]`` address). ``serve(server)`` runs the server until a signal (the CLI's)."""
    try:
        settings = config.cluster or ClusterSettings()
        if address:
            settings = replace(settings, address=address)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    try:
        from .executor import Cluster, ClusterScheduler
    except ImportError as exc:
        log.error("--cluster needs Ray Serve (%s): pip install -e '.[cluster]'", exc)
        return EXIT_USAGE
    from ..server import EaselServer

    config = config.merged({"cluster": settings})
    log.info("cluster: connecting to Ray at %s", settings.address)
    try:
        cluster = Cluster.start(config)
    except Exception as exc:  # ConnectionError, a Ray RuntimeError, a deployment that cannot be placed, ...
        log.error("cluster: could not start the deployment on %s: %s", settings.address, exc)
        return EXIT_USAGE
    try:
        server = EaselServer(config, engine, make_scheduler=partial(ClusterScheduler, cluster=cluster))
        return asyncio.run(serve(server))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        cluster.shutdown()
