"""The ``[cluster]`` table and ``--cluster`` flag (no Ray started here)."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.cli import build_parser
from backend.cluster.settings import ClusterSettings
from backend.config import ConfigError, ServerConfig, load_toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "studio.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_cluster_table_is_read_typed_and_merged(tmp_path):
    values = load_toml(write(tmp_path, 'port = 9800\n[cluster]\naddress = "head:6379"\nmin_replicas = 2\n'
                                       'max_replicas = 4\ngpus_per_replica = 1\nmodels_per_replica = 2\n'))
    config = ServerConfig().merged(values)
    assert config.cluster == ClusterSettings(address="head:6379", min_replicas=2, max_replicas=4,
                                             gpus_per_replica=1.0, models_per_replica=2)
    assert config.cluster.autoscaling and isinstance(config.cluster.gpus_per_replica, float)
    assert ServerConfig().cluster is None  # embedded: no cluster settings unless the table is there


@pytest.mark.parametrize("table, words", [
    ("min_replicas = 3\nmax_replicas = 2", "max_replicas must be min_replicas (3)"),
    ("min_replicas = 0", "min_replicas must be 1 to 1024"),
    ("gpus = 1", "unknown key 'gpus'"),
    ('min_replicas = "2"', "min_replicas must be a whole number"),
    ("gpus_per_replica = true", "gpus_per_replica must be a number"),
    ("models_per_replica = 0", "models_per_replica must be 1 to 64"),
    ('app_name = "a b"', "app_name must be letters"),
])
def test_a_bad_cluster_setting_names_the_file_and_the_key(tmp_path, table, words):
    path = write(tmp_path, f"[cluster]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_the_cluster_flag_takes_an_optional_address():
    parser = build_parser()
    assert parser.parse_args(["serve"]).cluster is None  # embedded, as before
    assert parser.parse_args(["serve", "--cluster"]).cluster == ""  # the config's address, else auto
    assert parser.parse_args(["serve", "--cluster", "head:6379"]).cluster == "head:6379"
    assert "--cluster" in parser._subparsers._group_actions[0].choices["serve"].format_help()
