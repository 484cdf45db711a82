"""`easel serve` and `easel generate` as a user runs them: real processes, the demo model, loopback.

The server is started as a subprocess (``python -m backend serve --port 0``) with its own cache
folder, so the demo model is built offline exactly as on a newcomer's machine.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from backend.cli import parse_control, parse_lora
from protocol import LoraWeight

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 180.0
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error",
           PYTHONUNBUFFERED="1")


def easel(*args: str, timeout: float = WAIT_S, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=kwargs.pop("cwd", ROOT), env=ENV,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


class ServerProcess:
    """`python -m backend serve` in a subprocess; its log lines are collected as they come."""

    def __init__(self, *args: str, cache: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--port", "0", "--cache-dir", str(cache), "--device", "cpu", *args],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        match = self.wait_for(r"listening on 127\.0\.0\.1:(\d+)")
        self.port = int(match.group(1))
        self.url = f"ws://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = WAIT_S) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = re.search(pattern, line)
                    if match:
                        return match
                if self.proc.poll() is not None and not self._changed.wait(0.5):
                    raise AssertionError(f"server exited ({self.proc.returncode}) without logging {pattern!r}:\n" + "\n".join(self.lines))
                if time.monotonic() > deadline:
                    raise AssertionError(f"server did not log {pattern!r}:\n" + "\n".join(self.lines))
                self._changed.wait(0.5)

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the server did not exit within 60 s of the signal:\n" + self.log)


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("easel-cache")


@pytest.fixture(scope="module")
def server(demo_cache):
    running = ServerProcess(cache=demo_cache)
    try:
        yield running
    finally:
        running.stop()


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("args, words", [
    ([], ["serve", "generate", "models"]),
    (["serve"], ["--host", "--port", "9797", "--model", "ID=PATH", "--config", "--device", "--dtype", "--queue-size", "demo model"]),
    (["generate"], ["--image", "--mask", "--margins", "--strength", "--seed", "--steps", "--sampler", "--save-previews",
                    "--output", "inpaint", "outpaint", "--control MODEL:IMAGE[:WEIGHT[:START:END]]", ":preprocessor=NAME",
                    "--lora ID[:WEIGHT]", "--upscale FACTOR", "--preprocessor NAME", "upscale", "preprocess"]),
    (["models"], ["--url"]),
])
def test_help_texts(args, words):
    done = easel(*args, "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for word in words:
        assert word in text, f"{word!r} missing from `easel {' '.join(args)} --help`"


def test_console_script_is_installed():
    script = shutil.which("easel", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the package is not installed with its console script in this environment")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0 and "generate" in done.stdout


def test_bad_settings_exit_2_with_a_sentence(tmp_path):
    toml = tmp_path / "easel.toml"
    toml.write_text("queue_size = 0\n")
    done = easel("serve", "--config", str(toml), timeout=60)
    assert done.returncode == 2 and "queue_size must be 1 to 1024" in done.stderr
    done = easel("serve", "--model", f"sd={tmp_path / 'missing'}", "--port", "0", timeout=120)
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- generate against a served demo model


def test_generate_txt2img_with_progress_and_previews(server, tmp_path):
    out, previews = tmp_path / "out.png", tmp_path / "previews"
    done = easel("generate", "a lighthouse", "--url", server.url, "-o", str(out), "--steps", "3", "--seed", "5",
                 "--save-previews", str(previews))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out)]
    assert "demo model" in done.stderr and "images are noise" in done.stderr
    assert "step 3/3" in done.stderr and "seed 5" in done.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGBA"
    shots = sorted(p.name for p in previews.iterdir())
    assert shots and shots[-1] == "step-003.jpg"
    assert f"/cli-" in server.log and "finished" in server.log  # the job is in the server's log by id


def test_generate_img2img_inpaint_outpaint_from_files(server, tmp_path):
    source = tmp_path / "canvas.png"
    Image.new("RGB", (64, 48), (40, 90, 200)).save(source)
    mask = tmp_path / "mask.png"
    m = Image.new("L", (64, 48), 0)
    m.paste(255, (8, 8, 32, 32))
    m.save(mask)
    cases = [
        (["--image", str(source), "--strength", "0.6"], (64, 48)),
        (["--image", str(source), "--mask", str(mask)], (64, 48)),
        (["--image", str(source), "--margins", "8,0,8,16"], (80, 64)),
    ]
    for n, (flags, size) in enumerate(cases):
        out = tmp_path / f"r{n}.png"
        done = easel("generate", "paint", "--url", server.url, "-o", str(out), "--steps", "2", *flags)
        assert done.returncode == 0, (flags, done.stderr)
        with Image.open(out) as img:
            assert img.size == size, flags
    # Inpaint kept everything outside the mask.
    with Image.open(tmp_path / "r1.png") as inpainted:
        pixels = inpainted.convert("RGB").load()
        assert pixels[50, 40] == (40, 90, 200) and pixels[0, 0] == (40, 90, 200)


def test_generate_failure_prints_the_servers_sentence_and_exits_1(server, tmp_path):
    source = tmp_path / "canvas.png"
    Image.new("RGB", (64, 64), "white").save(source)
    done = easel("generate", "x", "--url", server.url, "--image", str(source), "--strength", "1.4", "-o", str(tmp_path / "o.png"))
    assert done.returncode == 1
    assert "strength" in done.stderr and "1.4" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o.png").exists()


def test_generate_usage_errors_exit_2(server, tmp_path):
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"precious")
    done = easel("generate", "x", "--url", server.url, "-o", str(taken))
    assert done.returncode == 2 and "exists" in done.stderr and taken.read_bytes() == b"precious"
    done = easel("generate", "x", "--url", server.url, "--mask", str(taken), "-o", str(tmp_path / "n.png"))
    assert done.returncode == 2 and "needs an input image" in done.stderr
    done = easel("generate", "x", "--url", server.url, "--image", str(taken), "-o", str(tmp_path / "n.png"))
    assert done.returncode == 2 and "not an image" in done.stderr


def test_models_lists_the_demo_model(server):
    done = easel("models", "--url", server.url, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "[demo]" in done.stdout and "txt2img" in done.stdout and "images are noise" in done.stdout
    # What --control, --lora and --preprocessor take.
    assert re.search(r"demo-canny +controlnet \(demo, control canny\)", done.stdout)
    assert re.search(r"demo-ip-adapter +reference \(demo, ip_adapter\) \[demo\]\n", done.stdout)
    assert re.search(r"loras \(--lora ID\[:WEIGHT\]\):\n +demo-style +demo", done.stdout)
    assert re.search(r"preprocessors: canny, lineart_standard, shuffle, ", done.stdout)


# --------------------------------------------------------------------------- issue-6 features from the command line


def rgb_of(path: Path) -> list:
    with Image.open(path) as img:
        return list(img.convert("RGB").getdata())


def test_generate_with_controlnet_and_lora(server, tmp_path):
    """Each of --control (both forms) and --lora changes the result of the same seed: the server got
    and used them. The last form is the README's example, on a photo whose aspect is the result's."""
    sketch = tmp_path / "sketch.png"
    picture = Image.new("RGB", (128, 128), "white")
    picture.paste((0, 0, 0), (30, 30, 90, 100))
    picture.save(sketch)
    base = ["generate", "a castle", "--url", server.url, "--steps", "2", "--seed", "11"]
    runs = {
        "plain": [],
        "control": ["--control", f"demo-canny:{sketch}:0.8:0:0.6"],
        "preprocessed": ["--control", f"demo-canny:{sketch}:preprocessor=canny:end=0.6"],
        "lora": ["--lora", "demo-style:0.7"],
        "both": ["--control", f"demo-canny:{sketch}:preprocessor=canny", "--lora", "demo-style"],
    }
    results = {}
    for name, flags in runs.items():
        out = tmp_path / f"{name}.png"
        done = easel(*base, *flags, "-o", str(out))
        assert done.returncode == 0, (flags, done.stderr)
        assert "txt2img on demo: 128x128, 2 steps, seed 11" in done.stderr
        results[name] = rgb_of(out)
    assert len({tuple(pixels) for pixels in results.values()}) == len(runs)
    readme = easel("generate", "a castle", "--url", server.url, "--steps", "2", "--image", str(sketch), "--control",
                   f"demo-canny:{sketch}:preprocessor=canny", "--lora", "demo-style:0.8", "-o", str(tmp_path / "guided.png"))
    assert readme.returncode == 0 and "img2img on demo" in readme.stderr, readme.stderr


def test_generate_upscale_and_preprocess(server, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 48), (40, 90, 200)).save(small)
    done = easel("generate", "detailed", "--url", server.url, "--image", str(small), "--upscale", "2", "--steps", "4",
                 "-o", str(tmp_path / "bigger.png"))
    assert done.returncode == 0, done.stderr
    assert "upscale on demo" in done.stderr
    with Image.open(tmp_path / "bigger.png") as img:
        assert img.size == (128, 96)

    photo = tmp_path / "photo.png"
    picture = Image.new("RGB", (96, 64), "white")
    picture.paste((0, 0, 0), (24, 16, 72, 48))
    picture.save(photo)
    done = easel("generate", "--url", server.url, "--image", str(photo), "--preprocessor", "canny",
                 "-o", str(tmp_path / "edges.png"))
    assert done.returncode == 0, done.stderr
    assert "preprocess: 96x64, 1 step," in done.stderr
    with Image.open(tmp_path / "edges.png") as img:
        grey = img.convert("L")
        assert img.size == (96, 64) and set(grey.getdata()) == {0, 255}  # canny: edges on black
        row = [x for x in range(96) if grey.getpixel((x, 32)) == 255]
        assert len(row) == 2 and abs(row[0] - 24) <= 1 and abs(row[1] - 71) <= 1  # the square's sides, not a resampled blur


def test_issue6_flags_misused_exit_2_with_a_sentence(server, tmp_path):
    image = tmp_path / "image.png"
    Image.new("RGB", (64, 64), "white").save(image)
    out = str(tmp_path / "never.png")
    cases = [
        (["--control", "demo-canny"], "--control 'demo-canny': write MODEL:IMAGE[:WEIGHT[:START:END]][:preprocessor=NAME]"),
        (["--control", f"demo-canny:{image}:0.5:0.2"], "write one number (the weight) or three (weight, start, end), got 2"),
        (["--control", f"demo-canny:{image}:0.5:weight=0.7"], "the weight is given twice"),
        (["--control", f"demo-canny:{tmp_path / 'absent.png'}"], "absent.png: no such file"),
        (["--lora", "demo-style:heavy"], "--lora 'demo-style:heavy': write ID or ID:WEIGHT"),
        (["--image", str(image), "--mask", str(image), "--upscale", "2"], "--mask asks for inpaint and --upscale for upscale"),
        (["--image", str(image), "--task", "img2img", "--preprocessor", "canny"], "--preprocessor is for preprocess; img2img does not use it"),
        (["--image", str(image), "--task", "preprocess"], "preprocess needs --preprocessor NAME"),
        (["--image", str(image), "--upscale", "2", "--control", f"demo-canny:{image}"], "--control works with txt2img, img2img"),
        (["--image", str(image), "--preprocessor", "canny", "--lora", "demo-style"], "preprocess runs no model, so it takes no --lora"),
        (["--upscale", "2"], "upscale needs an input image: add --image FILE"),
    ]
    for flags, sentence in cases:
        done = easel("generate", "x", "--url", server.url, *flags, "-o", out, timeout=60)
        assert done.returncode == 2 and sentence in done.stderr, (flags, done.stderr)
        assert "Traceback" not in done.stderr
    assert not Path(out).exists()


def test_issue6_values_the_server_refuses_exit_1_with_its_sentence(server, tmp_path):
    image = tmp_path / "image.png"
    Image.new("RGB", (128, 128), "white").save(image)
    cases = [
        (["--control", f"demo:{image}"], "control unit 1: 'demo' is a base model, not a ControlNet"),
        (["--control", f"demo-canny:{image}:3"], "control unit 1: weight must be between 0 and 2, got 3"),
        (["--control", f"demo-canny:{image}:preprocessor=sobel"], "unknown preprocessor 'sobel'"),
        (["--lora", "no-such-lora"], "unknown LoRA 'no-such-lora'; this server has: demo-style"),
        (["--image", str(image), "--upscale", "9"], "upscale_factor must be between 1 and 4, got 9"),
    ]
    for flags, sentence in cases:
        done = easel("generate", "x", "--url", server.url, "--steps", "4", *flags, "-o", str(tmp_path / "o.png"))
        assert done.returncode == 1 and sentence in done.stderr, (flags, done.stderr)
        assert "Traceback" not in done.stderr and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("text, expected", [
    ("canny:edges.png", ("canny", "edges.png", {})),
    ("canny:edges.png:0.8", ("canny", "edges.png", {"weight": 0.8})),
    ("canny:edges.png:0.8:0:0.6", ("canny", "edges.png", {"weight": 0.8, "start": 0.0, "end": 0.6})),
    ("canny:photo.png:preprocessor=canny", ("canny", "photo.png", {"preprocessor": "canny"})),
    ("canny:photo.png:0.5:preprocessor=canny:end=0.4", ("canny", "photo.png", {"weight": 0.5, "preprocessor": "canny", "end": 0.4})),
    ("depth:C:\\art\\depth.png:1.2", ("depth", "C:\\art\\depth.png", {"weight": 1.2})),  # a Windows path keeps its colon
    ("canny:dir/v2:final.png", ("canny", "dir/v2:final.png", {})),
])
def test_control_flag_forms(text, expected):
    assert parse_control(text) == expected


def test_lora_flag_forms():
    assert parse_lora("styles/ink") == LoraWeight("styles/ink", 1.0)
    assert parse_lora("styles/ink:-0.5") == LoraWeight("styles/ink", -0.5)
    for bad in ("styles/ink:", ":0.5", "ink:nan"):
        with pytest.raises(ValueError, match="write ID or ID:WEIGHT"):
            parse_lora(bad)


def test_generate_without_a_server_says_so(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = easel("generate", "x", "--url", f"ws://127.0.0.1:{port}", "-o", str(tmp_path / "o.png"), timeout=60)
    assert done.returncode == 1 and "cannot reach the Easel server" in done.stderr and "easel serve" in done.stderr


# --------------------------------------------------------------------------- closing


def test_sigterm_cancels_the_running_job_and_exits_cleanly(demo_cache, tmp_path):
    server = ServerProcess(cache=demo_cache)
    try:
        job = subprocess.Popen([sys.executable, "-m", "backend", "generate", "slow", "--url", server.url, "--steps", "150",
                                "-o", str(tmp_path / "never.png")], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        # Accepted: the job is queued or running (or its model is loading); SIGTERM must cancel it either way.
        server.wait_for(r"job c\w+/cli-\w+ accepted")
        code = server.stop(signal.SIGTERM)
        out, err = job.communicate(timeout=60)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert code == 0, server.log
    assert "shutting down" in server.log and "stopped" in server.log
    assert job.returncode == 1 and "cancelled (shutdown)" in err, err
    assert not (tmp_path / "never.png").exists()


def test_sigint_with_no_jobs_exits_0_and_a_taken_port_exits_2(demo_cache):
    server = ServerProcess(cache=demo_cache)
    try:
        taken = easel("serve", "--port", str(server.port), "--cache-dir", str(demo_cache), timeout=120)
        assert taken.returncode == 2 and "cannot listen" in taken.stderr and "--port" in taken.stderr
    finally:
        code = server.stop(signal.SIGINT)
    assert code == 0


def test_generate_depth2img_from_a_depth_file(server, tmp_path):
    """--depth picks depth2img (the server's depth model, no --model needed); the depth map alone
    makes an image of its size, the same depth gives the same pixels, another depth other pixels; a
    16-bit PNG travels as depth32f at full precision."""
    def depth_png(name: str, near_left: bool) -> Path:
        path = tmp_path / name
        Image.frombytes("L", (80, 64), bytes((255 - x * 3 if near_left else x * 3) for _ in range(64) for x in range(80))).save(path)
        return path

    left, right = depth_png("left.png", True), depth_png("right.png", False)
    runs = {}
    for name, depth in (("a", left), ("b", left), ("c", right)):
        done = easel("generate", "a stone temple", "--url", server.url, "--depth", str(depth), "--steps", "2",
                     "--seed", "5", "-o", str(tmp_path / f"{name}.png"))
        assert done.returncode == 0, done.stderr
        assert "depth2img on demo-depth" in done.stderr
        with Image.open(tmp_path / f"{name}.png") as img:
            assert img.size == (80, 64)
            runs[name] = img.convert("RGB").tobytes()
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]

    photo = tmp_path / "photo.png"
    Image.new("RGB", (80, 64), (120, 60, 30)).save(photo)
    done = easel("generate", "x", "--url", server.url, "--image", str(photo), "--depth", str(left), "--steps", "2",
                 "--strength", "0.5", "-o", str(tmp_path / "shaped.png"))
    assert done.returncode == 0 and "depth2img on demo-depth" in done.stderr, done.stderr


def test_depth_files_keep_their_precision(tmp_path):
    from backend.client import load_depth
    from protocol import ImageFormat

    deep = tmp_path / "deep.png"
    values = [(y * 40 + x) * 37 % 65536 for y in range(30) for x in range(40)]
    Image.frombytes("I;16", (40, 30), b"".join(v.to_bytes(2, "little") for v in values)).save(deep)
    payload = load_depth(deep)
    assert payload.format is ImageFormat.DEPTH32F and (payload.width, payload.height) == (40, 30)
    assert list(memoryview(payload.data).cast("f")) == [float(v) for v in values]

    flat = tmp_path / "flat.png"
    Image.new("RGB", (16, 8), (200, 200, 200)).save(flat)
    payload = load_depth(flat)
    assert payload.format is ImageFormat.GREY8 and payload.data == bytes([200]) * 128


def test_depth2img_flags_misused_exit_2_with_a_sentence(server, tmp_path):
    depth = tmp_path / "depth.png"
    Image.new("L", (64, 64), 128).save(depth)
    cases = [
        (["--task", "depth2img"], "depth2img needs --depth FILE (a depth map), --image FILE (its depth is estimated), or both"),
        (["--depth", str(depth), "--margins", "8"], "--margins asks for outpaint and --depth for depth2img"),
        (["--task", "img2img", "--image", str(depth), "--depth", str(depth)], "--depth is for depth2img; img2img does not use it"),
        (["--depth", str(tmp_path / "absent.png")], "absent.png: no such file"),
    ]
    for flags, sentence in cases:
        done = easel("generate", "x", "--url", server.url, *flags, "-o", str(tmp_path / "never.png"), timeout=60)
        assert done.returncode == 2 and sentence in done.stderr, (flags, done.stderr)
    assert not (tmp_path / "never.png").exists()
