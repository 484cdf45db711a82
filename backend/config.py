"""Server settings: one frozen :class:`ServerConfig`, built from flags and an optional TOML file.

Nothing here reads the environment or the disk on import; :func:`load_toml` and
:func:`ServerConfig.merged` are called by the CLI with explicit paths and values, and the result
is passed down to the server and the engine. Precedence: defaults < config file < flags.

The TOML file (every key optional)::

    host = "127.0.0.1"
    port = 9797
    device = "auto"            # auto | cuda | mps | cpu
    dtype = "auto"             # auto | fp16 | bf16 | fp32
    queue_size = 16            # jobs waiting for the device, all clients together
    max_client_jobs = 8        # jobs one client may have open (queued or running) at once
    max_connections = 32       # open connections; more are answered HTTP 503
    reconnect_grace_s = 30     # seconds a dropped client's jobs and results wait for it; 0: cancel at once
    hello_timeout_s = 10       # seconds a new connection has to send hello
    token = ""                 # required from clients when set; generated when binding off loopback
    allowed_origins = []       # browser Origins allowed to connect (requests without Origin always are)
    cache_dir = ""             # where the demo model is built; default: the user's cache folder
    log_level = "info"
    threads = 0                # CPU threads for torch; 0: torch's default
    preload = true             # load the first model at start instead of at the first job
    model_cache_size = 1       # loaded models kept in memory
    offload = false            # CUDA: offload idle model parts to the CPU
    allow_unsafe_checkpoints = false  # pickle-based .ckpt/.bin/.pt can run code when loaded
    lora_dirs = ["/models/loras"]           # LoRA .safetensors files, named by path inside the folder
    embedding_dirs = ["/models/embeddings"] # textual-inversion embeddings; trigger = file name
    models_dirs = ["~/ComfyUI"]             # A1111/Forge, ComfyUI or InvokeAI folders: their models are served
    allow_downloads = false    # run the model downloads clients ask for, into the first of models_dirs

    [cluster]                  # used by `easel serve --cluster` only: see backend/cluster/settings.py
    min_replicas = 2

    [models]
    sd15 = "/models/v1-5"                                   # a diffusers folder, a hub id ...
    dreamshaper = { path = "/models/dreamshaper.safetensors", config = "/models/v1-5" }
    canny = { path = "lllyasviel/control_v11p_sd15_canny", kind = "controlnet", control_type = "canny" }
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

#: Default port: not used by A1111/Gradio (7860), ComfyUI (8188), Krita AI Diffusion's managed
#: ComfyUI (8188) or Dream Textures, and outside the ephemeral range.
DEFAULT_PORT = 9797
DEFAULT_HOST = "127.0.0.1"
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "fp16", "bf16", "fp32")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Model ids are what clients send; keep them short and safe to print.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(ValueError):
    """A setting is wrong. The message names the setting and says what to use instead."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A model the operator configured.

    ``path`` is a diffusers folder, a single-file ``.safetensors`` checkpoint, or a Hugging Face hub
    id; ``config`` is a local diffusers folder whose configs a single-file checkpoint is loaded with
    (needed offline). ``kind`` may force ``base``, ``inpaint``, ``depth``, ``edit`` (Flux.1 Kontext),
    ``control`` (Flux.1 Canny) or ``controlnet`` where detection from the weights is not wanted; empty
    means detect. ``control_type`` (ControlNets and Flux.1 control models: ``canny``, ``depth``,
    ``openpose``, …) is guessed from the id and path when empty.
    """

    id: str
    path: str
    config: str = ""
    kind: str = ""
    control_type: str = ""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server and the engine are configured with. Immutable; build a changed copy
    with :meth:`merged`.

    ``models`` empty means: serve the demo model (built offline in ``cache_dir``).
    ``threads`` is the CPU thread count for torch (``0``: leave torch's default).
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    models: tuple[ModelEntry, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    queue_size: int = 16
    token: str = ""
    allowed_origins: tuple[str, ...] = ()
    cache_dir: Path | None = None
    log_level: str = "info"
    threads: int = 0
    #: Bytes of images (uploads and results) kept per client for reuse; least recently used go first.
    store_bytes: int = 512 * 1024 * 1024
    #: The server's one memory budget (0: a quarter of this machine's memory, at least 256 MiB):
    #: all clients' stores, unread frames, uploads in flight and results being built together; a
    #: client's store is at most the smaller of this and ``store_bytes``.
    memory_budget: int = 0
    #: Bytes a job may use on the device, for the memory plan (backend.memory). 0: on CUDA the free
    #: device memory; elsewhere the memory this machine has available when the server starts.
    device_memory: int = 0
    #: Seconds a disconnected client (its open jobs, the ends of jobs it did not get, its images)
    #: is kept for it to reconnect with its client id. 0: forget it and cancel its jobs at once.
    reconnect_grace_s: float = 30.0
    #: Jobs one client may have open (queued or running) at once; one more is answered ``busy``,
    #: so that one client cannot fill the whole queue.
    max_client_jobs: int = 8
    #: Open websocket connections at once; a handshake beyond is answered HTTP 503.
    max_connections: int = 32
    #: Seconds a new connection has to finish the handshake (send hello) before it is closed.
    hello_timeout_s: float = 10.0
    #: On SIGINT/SIGTERM, finish queued and running jobs before exiting instead of cancelling them.
    drain_on_shutdown: bool = False
    #: Load the first model when the server starts, so the first job does not wait for it.
    preload: bool = True
    #: Loaded models kept in memory at once (least recently used is unloaded first).
    model_cache_size: int = 1
    #: Offload model parts to the CPU between uses (less GPU memory, slower); CUDA only.
    offload: bool = False
    #: Load pickle-based checkpoints (.ckpt/.bin/.pt), which can run arbitrary code. Off by default.
    allow_unsafe_checkpoints: bool = False
    #: Folders of LoRA files and of textual-inversion embeddings clients may name by id.
    lora_dirs: tuple[Path, ...] = ()
    embedding_dirs: tuple[Path, ...] = ()
    #: A1111/Forge, ComfyUI or InvokeAI folders (or plain folders of models): scanned, served too.
    models_dirs: tuple[Path, ...] = ()
    #: Run the downloads clients ask for (``download_model``) into the first of ``models_dirs``.
    allow_downloads: bool = False
    #: The ``[cluster]`` table (:class:`backend.cluster.settings.ClusterSettings`); read only by
    #: ``easel serve --cluster``. ``None``: the defaults.
    cluster: Any = None

    def __post_init__(self) -> None:
        check(self)

    @property
    def demo(self) -> bool:
        """True when no model is configured: the server serves the demo model."""
        return not self.models

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def merged(self, values: Mapping[str, Any]) -> "ServerConfig":
        """A copy with ``values`` (already typed, e.g. from flags) applied; ``None`` values are skipped."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def default_memory_budget() -> int:
    """A quarter of this machine's physical memory, at least 256 MiB (512 MiB when it cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 512 * 1024 * 1024
    return max(256 * 1024 * 1024, total // 4)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(config: ServerConfig) -> None:
    """Raise :class:`ConfigError` for the first bad setting."""
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port must be 0 to 65535 (0 picks a free port), got {config.port}")
    if config.device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {config.device!r}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    if not 1 <= config.queue_size <= 1024:
        raise ConfigError(f"queue_size must be 1 to 1024, got {config.queue_size}")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}")
    if not 0 <= config.threads <= 1024:
        raise ConfigError(f"threads must be 0 (torch's default) to 1024, got {config.threads}")
    if config.store_bytes < 16 * 1024 * 1024:
        raise ConfigError(f"store_bytes must be at least 16 MiB, got {config.store_bytes}")
    if config.memory_budget and config.memory_budget < 16 * 1024 * 1024:
        raise ConfigError(f"memory_budget must be 0 (a quarter of this machine's memory) or at least 16 MiB, "
                          f"got {config.memory_budget}")
    if config.device_memory < 0:
        raise ConfigError(f"device_memory must be 0 (the device's free memory) or a number of bytes, got {config.device_memory}")
    if not 1 <= config.model_cache_size <= 64:
        raise ConfigError(f"model_cache_size must be 1 to 64, got {config.model_cache_size}")
    if not 0 <= config.reconnect_grace_s <= 24 * 3600:
        raise ConfigError(f"reconnect_grace_s must be 0 (off) to 86400 seconds, got {config.reconnect_grace_s}")
    if not 1 <= config.max_client_jobs <= 1024:
        raise ConfigError(f"max_client_jobs must be 1 to 1024, got {config.max_client_jobs}")
    if not 1 <= config.max_connections <= 4096:
        raise ConfigError(f"max_connections must be 1 to 4096, got {config.max_connections}")
    if not 0 < config.hello_timeout_s <= 3600:
        raise ConfigError(f"hello_timeout_s must be more than 0 and at most 3600 seconds, got {config.hello_timeout_s}")
    seen: set[str] = set()
    for model in config.models:
        if not _MODEL_ID.match(model.id):
            raise ConfigError(f"model id {model.id!r} must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if model.id in seen:
            raise ConfigError(f"model id {model.id!r} is configured twice; give each model its own id")
        if not model.path:
            raise ConfigError(f"model {model.id!r} has no path; give a diffusers folder, a .safetensors file or a hub id")
        if model.kind and model.kind not in ("base", "inpaint", "depth", "edit", "control", "controlnet"):
            raise ConfigError(f"model {model.id!r}: kind must be base, inpaint, depth, edit, control or controlnet, "
                              f"got {model.kind!r}")
        seen.add(model.id)
    for name in ("lora_dirs", "embedding_dirs", "models_dirs"):
        for folder in getattr(config, name):
            if not Path(folder).is_dir():
                raise ConfigError(f"{name}: {folder} is not a folder; create it or fix the path")
    lora_dirs, embedding_dirs = list(config.lora_dirs), list(config.embedding_dirs)
    if config.models_dirs:  # their own LoRA and embedding folders count too
        from .catalog import layout_folders

        for root in config.models_dirs:
            kinds = layout_folders(Path(root).expanduser())[1]
            lora_dirs += [folder for folder, kind, _ in kinds if kind == "lora"]
            embedding_dirs += [folder for folder, kind, _ in kinds if kind == "embedding"]
    for lora_folder in lora_dirs:
        for embedding_folder in embedding_dirs:
            if _overlap(Path(lora_folder), Path(embedding_folder)):
                # Every LoRA would also be listed as an embedding whose trigger matches every prompt.
                raise ConfigError(f"the LoRA folder {lora_folder} and the embedding folder {embedding_folder} overlap "
                                  f"(the same folder, or one inside the other); give LoRAs and embeddings folders of "
                                  f"their own")


def _overlap(a: Path, b: Path) -> bool:
    real_a, real_b = Path(os.path.realpath(a.expanduser())), Path(os.path.realpath(b.expanduser()))
    return real_a.is_relative_to(real_b) or real_b.is_relative_to(real_a)


def parse_model(text: str) -> ModelEntry:
    """A ``--model`` flag: ``ID=PATH`` or ``PATH`` (the id is then the file or folder name)."""
    ident, sep, path = text.partition("=")
    if not sep or "/" in ident or "\\" in ident:
        # No "=", or the "=" is inside a path: derive the id from the path.
        path = text
        name = Path(text.rstrip("/\\")).name or text
        ident = re.sub(r"[^A-Za-z0-9._-]", "-", Path(name).stem if name.endswith(".safetensors") else name)[:64]
        ident = ident.lstrip("._-") or "model"
    if not path:
        raise ConfigError(f"--model {text!r} has no path; write --model ID=PATH or --model PATH")
    return ModelEntry(ident, path)


def load_toml(path: Path) -> dict[str, Any]:
    """Settings from a TOML file, typed and checked (not yet merged). Raises :class:`ConfigError`
    naming the file and the setting when something is wrong."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    simple = {"host": str, "port": int, "device": str, "dtype": str, "queue_size": int, "token": str,
              "log_level": str, "threads": int, "store_bytes": int, "memory_budget": int, "device_memory": int, "reconnect_grace_s": (int, float),
              "hello_timeout_s": (int, float), "max_client_jobs": int, "max_connections": int,
              "drain_on_shutdown": bool, "model_cache_size": int, "offload": bool,
              "allow_unsafe_checkpoints": bool, "preload": bool, "allow_downloads": bool}
    for key, value in data.items():
        if key in simple:
            kind = simple[key]
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ConfigError(f"{path}: {key} has the wrong type ({type(value).__name__})")
            out[key] = float(value) if key in ("reconnect_grace_s", "hello_timeout_s") else value
        elif key == "allowed_origins":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: allowed_origins must be a list of strings like \"https://example.org\"")
            out[key] = tuple(value)
        elif key == "cache_dir":
            if not isinstance(value, str):
                raise ConfigError(f"{path}: cache_dir must be a string (a folder)")
            out[key] = Path(value).expanduser() if value else None
        elif key == "models":
            out[key] = _toml_models(path, value)
        elif key in ("lora_dirs", "embedding_dirs", "models_dirs"):
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{path}: {key} must be a list of folders like [\"/models/loras\"]")
            out[key] = tuple(Path(v).expanduser() for v in value)
        elif key == "cluster":
            from .cluster.settings import cluster_settings

            out[key] = cluster_settings(path, value)
        else:
            raise ConfigError(f"{path}: unknown setting {key!r}")
    return out


def _toml_models(path: Path, value: Any) -> tuple[ModelEntry, ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [models] must be a table of id = \"path\" or id = {{ path = ..., config = ... }}")
    models = []
    for ident, spec in value.items():
        if isinstance(spec, str):
            models.append(ModelEntry(ident, spec))
        elif isinstance(spec, dict) and isinstance(spec.get("path"), str):
            extra = set(spec) - {"path", "config", "kind", "control_type"}
            if extra:
                raise ConfigError(f"{path}: model {ident!r} has an unknown key {sorted(extra)[0]!r} "
                                  f"(path, config, kind, control_type are known)")
            models.append(ModelEntry(ident, spec["path"], str(spec.get("config", "")), str(spec.get("kind", "")),
                                     str(spec.get("control_type", ""))))
        else:
            raise ConfigError(f"{path}: model {ident!r} needs a path: {ident} = \"/path\" or {ident} = {{ path = \"/path\" }}")
    return tuple(models)
