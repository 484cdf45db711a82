"""Each security rule of the hardening issue, and a test that tries to break it.

Real server, real engine on tiny random models, real websocket clients on loopback. Where a test
injects a fault to provoke an internal error, it says so.
"""
from __future__ import annotations

import ast
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from backend.cli import with_token
from backend.config import ConfigError, ModelEntry, ServerConfig
from backend.models import ModelConfigError
from backend.server import EaselServer
from protocol import (
    ControlUnit, ErrorCode, ErrorEvent, Hello, ImageFormat, ImagePayload, JobFailed, JobParams, JobResult, LoraWeight,
    ModelList, Pong, Refused, SubmitJob, Welcome, decode, encode,
)
from test_server_harness import WAIT_S, Client, rgba, tiny_config, txt2img

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- who may connect


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "example.org"])
def test_binding_off_loopback_without_a_token_is_refused(engine, host):
    assert ServerConfig().host == "127.0.0.1" and ServerConfig().loopback  # the default is loopback
    with pytest.raises(ConfigError, match="token"):
        EaselServer(ServerConfig(host=host, port=0), engine)


def test_a_token_is_generated_with_secrets_off_loopback_and_only_there():
    config, generated = with_token(ServerConfig(host="0.0.0.0"))
    again, _ = with_token(ServerConfig(host="0.0.0.0"))
    assert generated and len(config.token) >= 24 and config.token != again.token
    assert re.fullmatch(r"[A-Za-z0-9_-]+", config.token)  # token_urlsafe: 144 random bits
    assert with_token(ServerConfig(host="0.0.0.0", token="mine")) == (ServerConfig(host="0.0.0.0", token="mine"), False)
    assert with_token(ServerConfig()) == (ServerConfig(), False)


def test_easel_serve_off_loopback_prints_a_token_and_requires_it(tmp_path):
    """The real command: bound to every interface, it prints a fresh token; without it a client is refused."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--host", "0.0.0.0", "--port", "0", "--no-preload",
                             "--device", "cpu", "--cache-dir", str(tmp_path / "cache")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        token = port = None
        deadline = time.monotonic() + WAIT_S
        while (token is None or port is None) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"clients must send this token: (\S+)", line):
                token = match.group(1)
            if match := re.search(r"listening on 0\.0\.0\.0:(\d+)", line):
                port = int(match.group(1))
        assert token and port, "".join(lines)
        url = f"ws://127.0.0.1:{port}"
        with Client(url) as stranger:
            assert isinstance(stranger.welcome, Refused) and stranger.welcome.code is ErrorCode.UNAUTHORIZED
        with Client(url, token=token) as friend:
            assert isinstance(friend.welcome, Welcome)
    finally:
        proc.terminate()
        proc.wait(WAIT_S)


def test_wrong_tokens_get_one_typed_refusal_a_log_line_and_no_hint(serve, monkeypatch, caplog):
    import protocol.session

    token = "correct-horse-battery-staple-42"
    compared: list[tuple[bytes, bytes]] = []
    real = protocol.session.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(protocol.session.hmac, "compare_digest", spy)
    monkeypatch.setattr("backend.server.AUTH_DELAY_MAX_S", 0.1)  # each failure slows the next hellos: keep it short
    caplog.set_level(logging.INFO, logger="easel")
    attempts = ["", "letmein", token[:-1], token + "x", token.upper(), " " + token, token[:8], "é" * 30]
    with serve(token=token) as server:
        sentences = set()
        for attempt in attempts:
            with Client(server.url, token=attempt) as stranger:
                refused = stranger.welcome
                assert isinstance(refused, Refused) and refused.code is ErrorCode.UNAUTHORIZED
                assert token not in refused.message and (not attempt or attempt not in refused.message)
                sentences.add(refused.message)
                with pytest.raises(ConnectionClosed):  # and the server closes the connection
                    stranger.ws.recv(WAIT_S)
        with Client(server.url, token=token) as friend:
            assert isinstance(friend.welcome, Welcome)
            assert isinstance(friend.run(txt2img("ok", steps=1))[-1], JobResult)
    assert len(sentences) == 1, sentences  # the same sentence whatever was wrong: nothing to learn from it
    assert len(compared) == len(attempts) + 1  # every check went through the constant-time comparison
    refusals = [r.getMessage() for r in caplog.records if "token is missing or wrong" in r.getMessage()]
    assert len(refusals) == 1  # summed up: a line at an address's 1st, 10th, 100th, ... failure
    assert not any(token in r.getMessage() or (r.args and token in str(r.args)) for r in caplog.records)


EVIL_ORIGINS = ["https://evil.example", "null", "http://127.0.0.1:9797", "http://localhost", "https://ok.example.evil.example",
                "https://OK.example", "https://ok.example/", "https://ok.example:443", "file://", "chrome-extension://abcdefgh"]


def test_browser_origins_are_refused_at_the_upgrade_unless_allowed(serve, caplog):
    caplog.set_level(logging.INFO, logger="easel")
    with serve(allowed_origins=("https://ok.example",)) as server:
        for origin in EVIL_ORIGINS:
            with pytest.raises(InvalidStatus) as refused:
                connect(server.url, compression=None, origin=origin, open_timeout=WAIT_S)
            assert refused.value.response.status_code == 403, origin
        # The refused handshakes hold no connection slot.
        assert server.call(lambda: server.server.connection_count) == 0
        with connect(server.url, compression=None, origin="https://ok.example", open_timeout=WAIT_S) as page:
            page.send(encode(Hello(1, "page", "1")))
            assert isinstance(decode(page.recv(WAIT_S)), Welcome)
        with Client(server.url) as plugin:  # no Origin header, like the plugins
            assert isinstance(plugin.run(txt2img("ok", steps=1))[-1], JobResult)
    assert sum("is not allowed" in r.getMessage() for r in caplog.records) == len(EVIL_ORIGINS)


# --------------------------------------------------------------------------- checkpoints


class _Touch:
    """A pickle that creates ``marker`` when it is loaded: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _copy_with_pickled(tiny: Path, dest: Path, component: str, marker: Path, benign: bool = False) -> Path:
    """A copy of the tiny model whose ``component`` weights exist only as a pickle-based ``.bin``."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny, dest)
    folder = dest / component
    (weights,) = folder.glob("*.safetensors")
    name = "pytorch_model.bin" if component == "text_encoder" else "diffusion_pytorch_model.bin"
    if benign:
        torch.save(load_file(weights), folder / name)
    else:
        (folder / name).write_bytes(pickle.dumps(_Touch(marker)))
    weights.unlink()
    return dest


def _engine_for(path: Path, tmp_path: Path, **settings):
    from backend.engine import Engine

    return Engine(ServerConfig(models=(ModelEntry("m", str(path)),), device="cpu", cache_dir=tmp_path / "cache", **settings))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth"])
def test_pickle_based_checkpoint_files_are_refused_with_an_explanation(tmp_path, suffix):
    marker = tmp_path / "unpickled"
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(ModelConfigError) as refused:
        _engine_for(checkpoint, tmp_path)
    assert "pickle" in str(refused.value) and "--allow-unsafe-checkpoints" in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize("component", ["unet", "text_encoder", "vae"])
def test_a_diffusers_folder_with_pickle_only_weights_is_refused(tiny_models, tmp_path, component):
    marker = tmp_path / "unpickled"
    folder = _copy_with_pickled(tiny_models["base"], tmp_path / "model", component, marker)
    with pytest.raises(ModelConfigError) as refused:
        _engine_for(folder, tmp_path)
    assert component in str(refused.value) and "pickle" in str(refused.value)
    assert "--allow-unsafe-checkpoints" in str(refused.value)
    assert not marker.exists()


def test_a_folder_swapped_to_pickle_weights_after_start_is_not_unpickled(tiny_models, tmp_path, opened_files, serve):
    """The start-time check passed; then the unet's weights became a pickle. Loading must still
    read .safetensors only (diffusers' from_pretrained would fall back to the .bin and unpickle it)."""
    marker = tmp_path / "unpickled"
    folder = tmp_path / "model"
    shutil.copytree(tiny_models["base"], folder)
    engine = _engine_for(folder, tmp_path, preload=False)
    _copy_with_pickled(tiny_models["base"], tmp_path / "staging", "unet", marker)
    shutil.rmtree(folder / "unet")
    shutil.copytree(tmp_path / "staging" / "unet", folder / "unet")
    with serve(engine_=engine, allow_errors=True, models=(ModelEntry("m", str(folder)),), preload=False) as server, \
            Client(server.url) as client, opened_files() as opened:
        failed = client.run(SubmitJob("j", "txt2img", JobParams(model="m", steps=1, width=64, height=64)))[-1]
    assert isinstance(failed, JobFailed) and failed.code is ErrorCode.MODEL_UNAVAILABLE
    assert "safetensors" in failed.message
    assert not marker.exists()
    assert not [p for p in opened.under(folder / "unet") if p.endswith(".bin")]


def test_the_unsafe_flag_is_the_only_way_to_load_pickle_weights(tiny_models, tmp_path, serve):
    folder = _copy_with_pickled(tiny_models["base"], tmp_path / "model", "unet", tmp_path / "unused", benign=True)
    with pytest.raises(ModelConfigError):
        _engine_for(folder, tmp_path)
    engine = _engine_for(folder, tmp_path, allow_unsafe_checkpoints=True)
    with serve(engine_=engine, models=(ModelEntry("m", str(folder)),), allow_unsafe_checkpoints=True) as server, \
            Client(server.url) as client:
        assert isinstance(client.run(SubmitJob("j", "txt2img", JobParams(model="m", steps=1, width=64, height=64)))[-1],
                          JobResult)


# --------------------------------------------------------------------------- ids, never paths


@pytest.fixture(scope="module")
def addon_dirs(tiny_models, tmp_path_factory):
    """A LoRA folder with ``style``, an embedding folder with ``sparkle``, and files outside both."""
    from backend import demo

    root = tmp_path_factory.mktemp("addons")
    demo.build_tiny_lora(tiny_models["base"], root / "loras" / "style.safetensors", seed=3)
    demo.build_tiny_embedding(root / "embeddings" / "sparkle.safetensors", (32,), seed=7)
    demo.build_tiny_lora(tiny_models["base"], root / "outside" / "stray.safetensors", seed=4)
    demo.build_tiny_embedding(root / "outside" / "glitter.safetensors", (32,), seed=8)
    return root


def test_models_loras_and_embeddings_are_named_by_listed_ids_never_paths(serve, tiny_models, addon_dirs, tmp_path, opened_files):
    from backend.engine import Engine

    outside = addon_dirs / "outside"
    config = tiny_config(tiny_models, tmp_path, lora_dirs=(addon_dirs / "loras",), embedding_dirs=(addon_dirs / "embeddings",))
    engine = Engine(config)
    attacks = ["../../etc/passwd", "/etc/passwd", str(tiny_models["base"]), str(tiny_models["base"] / "unet"),
               "tiny/../tiny", "./tiny", "tiny/", "~/.ssh/id_rsa", "C:\\Windows\\win.ini", "\\\\server\\share\\m",
               "file:///etc/passwd", "tiny\x00", "%2e%2e%2fetc%2fpasswd", "runwayml/stable-diffusion-v1-5",
               str(outside / "stray.safetensors"), str(outside / "stray"), "../outside/stray", "style.safetensors",
               str(addon_dirs / "loras" / "style"), "loras/style"]
    image = rgba(64, 64)
    with serve(engine_=engine, lora_dirs=(addon_dirs / "loras",), embedding_dirs=(addon_dirs / "embeddings",)) as server, \
            Client(server.url) as client:
        assert isinstance(client.run(txt2img("warm", steps=1))[-1], JobResult)  # the model loads before we watch
        client.session.list_models()
        client.flush()
        listing = client.until(lambda e: isinstance(e, ModelList))[-1]
        assert [a.id for a in listing.loras] == ["style"] and [a.id for a in listing.embeddings] == ["sparkle"]
        with opened_files() as opened:
            for n, attack in enumerate(attacks):
                base = dict(prompt=f"a {outside / 'glitter.safetensors'} glitter", steps=1, width=64, height=64)
                for field, params in (("model", JobParams(model=attack, **base)),
                                      ("controls", JobParams(model="tiny", controls=(ControlUnit(attack, image.id),), **base)),
                                      ("loras", JobParams(model="tiny", loras=(LoraWeight(attack),), **base))):
                    failed = client.run(SubmitJob(f"a{n}-{field}", "txt2img", params), [image] if field == "controls" else [])[-1]
                    assert isinstance(failed, JobFailed) and failed.code is ErrorCode.UNKNOWN_MODEL, (attack, field, failed)
                    assert failed.details == {"field": field}
            # Paths in a prompt are words: the files they name are not read.
            words = f"{outside / 'glitter.safetensors'} glitter {outside / 'stray.safetensors'} ../outside/stray"
            assert isinstance(client.run(txt2img("words", prompt=words, steps=1))[-1], JobResult)
        # Nothing outside what the operator configured was opened: not the targets, not the model
        # folder by a client's say-so, not the stray add-ons (their names are in the prompt too).
        assert not [p for p in opened.paths if "passwd" in p or ".ssh" in p or "win.ini" in p]
        assert not opened.under(outside) and not opened.under(tiny_models["base"])
        # The listed ids do work.
        done = client.run(SubmitJob("ok", "txt2img", JobParams(model="tiny", loras=(LoraWeight("style"),), prompt="sparkle",
                                                              steps=1, width=64, height=64)))[-1]
        assert isinstance(done, JobResult)


# --------------------------------------------------------------------------- the wire


def test_no_pickle_on_the_wire(serve, tmp_path):
    marker = tmp_path / "unpickled"
    payloads = [pickle.dumps(_Touch(marker), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    with serve() as server, Client(server.url) as client:
        for payload in payloads:
            client.send_raw(payload)  # a pickle as the whole frame
            error = client.until(lambda e: isinstance(e, ErrorEvent))[-1]
            assert error.code in (ErrorCode.MALFORMED_FRAME, ErrorCode.LIMIT_EXCEEDED, ErrorCode.INVALID_MESSAGE), error
            # a pickle as a msgpack extension value
            client.send_raw(msgpack.packb({"type": "ping", "nonce": 1, "x": msgpack.ExtType(1, payload)}))
            assert client.until(lambda e: isinstance(e, ErrorEvent))[-1].code is ErrorCode.MALFORMED_FRAME
            # a pickle in a bin field stays bytes: an ignored field, then pixels of an image
            client.send_raw(msgpack.packb({"type": "ping", "nonce": 7, "x": payload}, use_bin_type=True))
            assert client.until(lambda e: isinstance(e, Pong))[-1].nonce == 7
        data = (payloads[-1] * 8)[:8 * 8 * 4]  # the pickle's bytes as the pixels of an 8x8 image
        image = ImagePayload(ImageFormat.RGBA8, 8, 8, data)
        job = SubmitJob("pixels", "img2img", JobParams(model="tiny", steps=2, strength=0.5, width=64, height=64),
                        {"image": image.id})
        assert isinstance(client.run(job, [image])[-1], JobResult)
    assert not marker.exists()
    # And no module on the wire path can unpickle: none imports a pickle-like loader or evals.
    forbidden = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle", "joblib"}
    for path in [*(ROOT / "protocol").glob("*.py"), ROOT / "backend" / "server.py", ROOT / "backend" / "jobs.py",
                 ROOT / "backend" / "config.py", ROOT / "backend" / "client.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & forbidden, path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in forbidden, path
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), path


def _no_trace(message: str, secret: str) -> None:
    assert secret not in message and "Traceback" not in message and 'File "' not in message and ".py" not in message


def test_no_stack_trace_reaches_a_client_only_a_log_id(serve, engine, monkeypatch, caplog):
    """FAULTS INJECTED: the engine's prepare, the UNet inside the pipeline, and the model listing
    raise exceptions whose text holds a secret; the client must see ``internal`` + a log id only."""
    caplog.set_level(logging.INFO)
    secret = "SECRET /home/artist/private.txt Traceback"
    model, _ = engine.models.get("tiny")
    real_prepare = engine.prepare

    def prepare(submit, images):
        if submit.params.prompt == "boom-prepare":
            raise RuntimeError(secret)
        return real_prepare(submit, images)

    real_forward = model.root.unet.forward

    def forward(*args, **kwargs):
        if forward.armed:
            raise ValueError(secret)
        return real_forward(*args, **kwargs)
    forward.armed = False

    with serve(allow_errors=True) as server, Client(server.url) as client:
        monkeypatch.setattr(engine, "prepare", prepare)
        monkeypatch.setattr(model.root.unet, "forward", forward)
        failures = [client.run(txt2img("p", prompt="boom-prepare"))[-1]]
        forward.armed = True
        failures.append(client.run(txt2img("r", steps=1))[-1])
        forward.armed = False
        monkeypatch.setattr(engine, "model_infos", lambda: (_ for _ in ()).throw(KeyError(secret)))
        client.session.list_models()
        client.flush()
        failures.append(client.until(lambda e: isinstance(e, ErrorEvent))[-1])
        monkeypatch.undo()
        assert isinstance(client.run(txt2img("after", steps=1))[-1], JobResult)  # still serving
    for failure in failures:
        assert failure.code is ErrorCode.INTERNAL and re.fullmatch(r"[0-9a-f]{8}", failure.log_id), failure
        _no_trace(failure.message, "SECRET")
        assert failure.log_id in failure.message
        logged = [r for r in caplog.records if failure.log_id in r.getMessage()]
        assert logged and any(r.exc_info and secret in str(r.exc_info[1]) for r in logged), failure
