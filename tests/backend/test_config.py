"""ServerConfig from defaults, a TOML file and flags (no model stack needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.cli import build_parser, server_config
from backend.config import DEFAULT_PORT, ConfigError, ModelEntry, ServerConfig, load_toml, parse_model


def test_defaults_bind_loopback_on_the_documented_port_and_serve_the_demo():
    config = ServerConfig()
    assert (config.host, config.port) == ("127.0.0.1", DEFAULT_PORT) == ("127.0.0.1", 9797)
    assert config.loopback and config.demo


def test_every_example_address_uses_the_default_port():
    """A copied example must reach a server started with no flags: every ws://127.0.0.1:PORT in
    the docs and the code's docstrings (the transport's AsyncClient example included) names it."""
    import re

    root = Path(__file__).resolve().parents[2]
    files = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "protocol").rglob("*.py"),
             *(root / "backend").rglob("*.py")]
    found = {(path.relative_to(root).as_posix(), port) for path in files
             for port in re.findall(r"ws://(?:127\.0\.0\.1|localhost):(\d+)", path.read_text(encoding="utf-8"))}
    assert ("protocol/transport.py", str(DEFAULT_PORT)) in found
    assert {entry for entry in found if entry[1] != str(DEFAULT_PORT)} == set()


@pytest.mark.parametrize("text, expected", [
    ("sd15=/models/v1-5", ModelEntry("sd15", "/models/v1-5")),
    ("/models/dreamshaper_8.safetensors", ModelEntry("dreamshaper_8", "/models/dreamshaper_8.safetensors")),
    ("/models/v1-5/", ModelEntry("v1-5", "/models/v1-5/")),
    ("runwayml/stable-diffusion-v1-5", ModelEntry("stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")),
    ("/odd/a=b/model", ModelEntry("model", "/odd/a=b/model")),
])
def test_model_flag_with_or_without_an_id(text, expected):
    assert parse_model(text) == expected


def test_toml_file_then_flags_win(tmp_path: Path):
    toml = tmp_path / "easel.toml"
    toml.write_text('''
port = 9800
device = "cpu"
queue_size = 4
allowed_origins = ["https://example.org"]

[models]
sd15 = "/models/v1-5"
dream = { path = "/models/dream.safetensors", config = "/models/v1-5" }
''')
    args = build_parser().parse_args(["serve", "--config", str(toml), "--queue-size", "8", "--dtype", "fp32"])
    config = server_config(args)
    assert config.port == 9800 and config.device == "cpu" and config.queue_size == 8 and config.dtype == "fp32"
    assert config.allowed_origins == ("https://example.org",)
    assert config.models == (ModelEntry("sd15", "/models/v1-5"), ModelEntry("dream", "/models/dream.safetensors", "/models/v1-5"))
    # --model replaces the file's models; --model-config attaches a local config folder to one of them.
    args = build_parser().parse_args(["serve", "--config", str(toml), "--model", "x=/m/x.safetensors",
                                      "--model-config", "x=/m/cfg"])
    assert server_config(args).models == (ModelEntry("x", "/m/x.safetensors", "/m/cfg"),)


@pytest.mark.parametrize("body, words", [
    ("port = 'high'", "port has the wrong type"),
    ("colour = 'blue'", "unknown setting 'colour'"),
    ("device = 'tpu'", "device must be one of auto, cuda, mps, cpu"),
    ("queue_size = 0", "queue_size must be 1 to 1024"),
    ("[models]\nsd = 3", "model 'sd' needs a path"),
    ("[models]\nsd = { path = '/x', weights = 2 }", "unknown key 'weights'"),
    ("port = [", "not valid TOML"),
])
def test_bad_settings_name_the_setting_and_the_fix(tmp_path: Path, body, words):
    toml = tmp_path / "bad.toml"
    toml.write_text(body)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        ServerConfig().merged(load_toml(toml))


def test_config_checks():
    with pytest.raises(ConfigError, match="configured twice"):
        ServerConfig(models=(ModelEntry("a", "/x"), ModelEntry("a", "/y")))
    with pytest.raises(ConfigError, match="model id"):
        ServerConfig(models=(ModelEntry("../etc", "/x"),))
    with pytest.raises(ConfigError, match="port must be"):
        ServerConfig(port=70000)
    with pytest.raises(ConfigError, match="not a configured model id"):
        server_config(build_parser().parse_args(["serve", "--model-config", "nope=/x"]))
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_toml(Path("/nonexistent/easel.toml"))
    assert not ServerConfig(host="0.0.0.0").loopback and ServerConfig(host="::1").loopback
