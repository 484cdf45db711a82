"""``[cluster]`` settings of the TOML config: how ``easel serve --cluster`` sizes its Ray Serve
deployment. Pure data and checks: nothing here imports Ray.

    [cluster]
    address = "auto"               # a Ray address (ray://head:10001, head:6379) or auto: start a local Ray
    min_replicas = 1               # replicas kept up; each owns one device and one engine
    max_replicas = 1               # > min_replicas: Serve adds replicas while jobs wait
    gpus_per_replica = 1.0         # 0: CPU replicas (tests, demo)
    cpus_per_replica = 1.0         # CPU cores Ray reserves for each replica
    models_per_replica = 1         # models one replica keeps loaded (jobs route to a replica holding theirs)
    target_jobs_per_replica = 1.0  # autoscaling: running + waiting jobs per replica Serve aims for
    app_name = "easel"             # the Serve application's name on the Ray cluster
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..config import ConfigError


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The deployment's shape. ``address`` ``auto`` starts a local Ray instance (all of this
    machine's devices); any other value joins that Ray cluster."""

    address: str = "auto"
    min_replicas: int = 1
    max_replicas: int = 1
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0
    models_per_replica: int = 1
    target_jobs_per_replica: float = 1.0
    app_name: str = "easel"

    def __post_init__(self) -> None:
        if not self.address:
            raise ConfigError("cluster address must be a Ray address (head:6379, ray://head:10001) or auto")
        if not 1 <= self.min_replicas <= 1024:
            raise ConfigError(f"cluster min_replicas must be 1 to 1024, got {self.min_replicas}")
        if not self.min_replicas <= self.max_replicas <= 1024:
            raise ConfigError(f"cluster max_replicas must be min_replicas ({self.min_replicas}) to 1024, "
                              f"got {self.max_replicas}")
        if not 0 <= self.gpus_per_replica <= 64:
            raise ConfigError(f"cluster gpus_per_replica must be 0 (CPU replicas) to 64, got {self.gpus_per_replica}")
        if not 0 < self.cpus_per_replica <= 1024:
            raise ConfigError(f"cluster cpus_per_replica must be more than 0, got {self.cpus_per_replica}")
        if not 1 <= self.models_per_replica <= 64:
            raise ConfigError(f"cluster models_per_replica must be 1 to 64, got {self.models_per_replica}")
        if not 0 < self.target_jobs_per_replica <= 64:
            raise ConfigError(f"cluster target_jobs_per_replica must be more than 0 and at most 64, "
                              f"got {self.target_jobs_per_replica}")
        if not self.app_name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"cluster app_name must be letters, digits, '-' or '_', got {self.app_name!r}")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > self.min_replicas


def cluster_settings(path: Path | str, table: Any) -> ClusterSettings:
    """The ``[cluster]`` table of the config file ``path``, typed and checked. Raises
    :class:`~backend.config.ConfigError` naming the file and the key."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: [cluster] must be a table (min_replicas = 2, gpus_per_replica = 1, ...)")
    kinds = {f.name: f.type for f in fields(ClusterSettings)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in kinds:
            raise ConfigError(f"{path}: [cluster] has an unknown key {key!r} (known: {', '.join(kinds)})")
        kind = kinds[key]
        if kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{path}: [cluster] {key} must be a string")
        if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{path}: [cluster] {key} must be a whole number")
        if kind == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{path}: [cluster] {key} must be a number")
            value = float(value)
        values[key] = value
    try:
        return ClusterSettings(**values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
