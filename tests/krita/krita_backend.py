"""`python -m backend serve` on the demo model, as a subprocess on a free port, for the plugin's tests.

The demo model is built once into ``.cache/easel-demo`` (gitignored; ``EASEL_TEST_CACHE`` moves
it) and then loaded like any diffusers folder, so repeated runs start in a few seconds.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 240.0


#: The token the ``token_server`` fixture's server is started with.
SERVER_TOKEN = "right-token-4711"


def demo_cache() -> Path:
    path = Path(os.environ.get("EASEL_TEST_CACHE", ROOT / ".cache" / "easel-demo"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class BackendServer:
    """A running server; ``url`` is its address. Log lines are collected as they come."""

    def __init__(self, *args: str, cache: Path | None = None, python: str = sys.executable) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error",
                   PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [python, "-m", "backend", "serve", "--port", "0", "--device", "cpu", "--threads", "1",
             "--cache-dir", str(cache or demo_cache()), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
            self.wait_for(r"is ready")
        except BaseException:
            self.stop()
            raise
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
                if self.proc.poll() is not None:
                    raise AssertionError(f"the server exited ({self.proc.returncode}) before logging {pattern!r}:\n{self.log}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"the server did not log {pattern!r} within {timeout:.0f} s:\n{self.log}")
                self._changed.wait(0.5)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
