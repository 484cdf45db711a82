"""A real ``easel serve --allow-downloads --models-dir DIR`` whose downloads come from the hub-shaped
loopback server of the backend's download tests (``tests/backend/hub_presets.py``, reached through
``HF_ENDPOINT``) for the plugin's missing-model tests: stand-ins for the ``sd15`` and ``sd15-canny``
presets that the server lists as an SD 1.5 checkpoint and a canny ControlNet once downloaded."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "backend"))

from hub_presets import CANNY_ID, SD15_ID, preset_hub  # noqa: E402,F401 - the ids, as the tests use them
from hub_server import Hub  # noqa: E402


@contextmanager
def download_server(models_dir: Path, pace: float = 0.02) -> Iterator[tuple[object, Hub]]:
    """(the running server, its hub); the server downloads into ``models_dir`` (a ComfyUI layout)."""
    from krita_backend import BackendServer

    (models_dir / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    hub = preset_hub(pace)
    saved = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_TOKEN")}
    os.environ["HF_ENDPOINT"] = hub.url
    os.environ.pop("HF_TOKEN", None)
    try:
        server = BackendServer("--models-dir", str(models_dir), "--allow-downloads")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield server, hub
    finally:
        server.stop()
        hub.close()
