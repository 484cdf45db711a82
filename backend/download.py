"""``easel download``: curated models fetched from the Hugging Face hub (or the mirror in
``HF_ENDPOINT``), with progress, resume after a cut, size and SHA-256 checked, free disk checked first.

A :class:`Preset` names what one feature needs for one family (the base model, a canny/depth/line
ControlNet, the preprocessors' annotator weights, TAESD for sharp previews); each of its files
comes from a hub repository. Checkpoints and ControlNets go into a models folder
(``--models-dir`` layout: the matching kind folder of an A1111/ComfyUI/InvokeAI folder, else
ComfyUI's names under ``DIR/models``), where ``easel serve --models-dir DIR`` finds them. Annotator
weights and TAESD go into the Hugging Face cache, where the preprocessors and previews look.

One file's transfer (:func:`fetch`):

1. ``HEAD {endpoint}/{repo}/resolve/{revision}/{path}`` (redirects not followed) gives the size
   (``X-Linked-Size``/``Content-Length``), the SHA-256 of large (LFS) files (``X-Linked-Etag``) and
   the commit (``X-Repo-Commit``).
2. The free space where the file goes must hold what is left to fetch (plus
   :data:`SPARE_BYTES`), checked before the first byte is asked for: :class:`DiskSpaceError`.
3. ``GET`` into ``NAME.part`` — with ``Range: bytes=N-`` when a part is there (from a cut
   connection now, or an earlier run); a transfer cut midway is resumed up to ``attempts`` times.
4. The part's size and SHA-256 must be the ones announced: otherwise the part is removed
   (:class:`ChecksumError`); when they are, it is renamed into place.

``HF_TOKEN`` (for gated repositories) is sent to the endpoint's own host only, never to the host a
redirect leads to.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import threading
import time
import uuid
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from protocol.errors import ErrorCode
from protocol.messages import DownloadInfo

from .catalog import layout_folders
from .preprocessors import ANNOTATORS_REPO, PREPROCESSORS

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
#: Bytes that must stay free beyond the file itself.
SPARE_BYTES = 64 * 1024 * 1024
CHUNK = 1024 * 1024
#: Where a checkpoint or ControlNet goes in a models folder of no known layout (ComfyUI's names).
DEFAULT_FOLDERS = {"checkpoint": "models/checkpoints", "controlnet": "models/controlnet",
                   "upscaler": "models/upscale_models"}
#: Called with (bytes done, bytes in all) as a file arrives.
Progress = Callable[[int, int], None]


class DownloadError(Exception):
    """A file could not be fetched; the message says why and what to do."""


class DiskSpaceError(DownloadError):
    """Not enough free space where the file goes (checked before any byte is fetched)."""


class ChecksumError(DownloadError):
    """The bytes that arrived are not the announced ones; the partial file was removed."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a preset: ``path`` in hub repository ``repo``. ``kind`` is a models-folder kind
    (``checkpoint``, ``controlnet``) and ``name`` its path inside that kind folder; kind ``hf-cache``
    puts it into the Hugging Face cache (where ``try_to_load_from_cache`` finds it)."""

    repo: str
    path: str
    kind: str
    name: str = ""


@dataclass(frozen=True)
class Preset:
    """What one feature needs for one family. ``size`` is about how many bytes it is (for the listing)."""

    name: str
    family: str
    feature: str
    description: str
    files: tuple[RemoteFile, ...]
    size: int


def _controlnet_15(kind: str, file: str) -> Preset:
    return Preset(f"sd15-{kind}", "sd15", f"controlnet-{kind}", f"ControlNet {kind} for SD 1.x (fp16)",
                  (RemoteFile("comfyanonymous/ControlNet-v1-1_fp16_safetensors", file, "controlnet", file),), 723_000_000)


def _controlnet_xl(kind: str, repo: str) -> Preset:
    folder = repo.split("/")[1]
    return Preset(f"sdxl-{kind}", "sdxl", f"controlnet-{kind}", f"ControlNet {kind} for SDXL (diffusers, fp16)",
                  (RemoteFile(repo, "config.json", "controlnet", f"{folder}/config.json"),
                   RemoteFile(repo, "diffusion_pytorch_model.fp16.safetensors", "controlnet",
                              f"{folder}/diffusion_pytorch_model.safetensors")), 2_500_000_000)


_ANNOTATOR_FILES = tuple(dict.fromkeys(name for pre in PREPROCESSORS.values() for name in pre.files))
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("sd15", "sd15", "base", "Stable Diffusion 1.5 (pruned, EMA)",
           (RemoteFile("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors", "checkpoint",
                       "v1-5-pruned-emaonly.safetensors"),), 4_265_000_000),
    Preset("sd2", "sd2", "base", "Stable Diffusion 2.1 (768, v-prediction)",
           (RemoteFile("stabilityai/stable-diffusion-2-1", "v2-1_768-ema-pruned.safetensors", "checkpoint",
                       "v2-1_768-ema-pruned.safetensors"),), 5_214_000_000),
    Preset("sdxl", "sdxl", "base", "Stable Diffusion XL base 1.0",
           (RemoteFile("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors", "checkpoint",
                       "sd_xl_base_1.0.safetensors"),), 6_939_000_000),
    _controlnet_15("canny", "control_v11p_sd15_canny_fp16.safetensors"),
    _controlnet_15("depth", "control_v11f1p_sd15_depth_fp16.safetensors"),
    _controlnet_15("lineart", "control_v11p_sd15_lineart_fp16.safetensors"),
    _controlnet_xl("canny", "diffusers/controlnet-canny-sdxl-1.0"),
    _controlnet_xl("depth", "diffusers/controlnet-depth-sdxl-1.0"),
    Preset("annotators", "", "preprocessors", "weights of the depth, pose, line-art, soft-edge, normal and MLSD "
           "preprocessors (into the Hugging Face cache)",
           tuple(RemoteFile(ANNOTATORS_REPO, name, "hf-cache") for name in _ANNOTATOR_FILES), 2_700_000_000),
    Preset("taesd", "sd15", "previews", "TAESD: sharp step previews for SD 1.x/2.x (into the Hugging Face cache)",
           tuple(RemoteFile("madebyollin/taesd", name, "hf-cache")
                 for name in ("config.json", "diffusion_pytorch_model.safetensors")), 10_000_000),
    Preset("taesdxl", "sdxl", "previews", "TAESD for SDXL previews (into the Hugging Face cache)",
           tuple(RemoteFile("madebyollin/taesdxl", name, "hf-cache")
                 for name in ("config.json", "diffusion_pytorch_model.safetensors")), 10_000_000),
)}


# --------------------------------------------------------------------------- one file


@dataclass(frozen=True)
class Remote:
    """What ``HEAD`` said of a file: its URL, size, SHA-256 ("" when the server gave none: small
    git-stored files) and the commit it belongs to."""

    url: str
    size: int
    sha256: str
    commit: str
    etag: str


def endpoint(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def file_url(repo: str, path: str, revision: str = "main", base: str | None = None) -> str:
    quoted = urllib.parse.quote(path)
    return f"{base or endpoint()}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002 - urllib's signature
        return None


class _SameHostAuth(urllib.request.HTTPRedirectHandler):
    """Follows redirects, dropping ``Authorization`` when one leads to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _headers(token: str) -> dict[str, str]:
    headers = {"User-Agent": "easel-download"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def head(url: str, token: str = "", timeout: float = 30.0) -> Remote:
    """The :class:`Remote` facts of ``url``. Raises :class:`DownloadError` (not found, gated, unreachable)."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, method="HEAD", headers=_headers(token))
    try:
        response = opener.open(request, timeout=timeout)
        headers, status = response.headers, response.status
        response.close()
    except urllib.error.HTTPError as exc:
        headers, status = exc.headers, exc.code
        if status not in (301, 302, 303, 307, 308):
            raise DownloadError(_http_sentence(url, status)) from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot reach {urllib.parse.urlsplit(url).netloc} ({_reason(exc)}); check the network, "
                            f"or point HF_ENDPOINT at a mirror") from None
    size = headers.get("X-Linked-Size") or headers.get("Content-Length") or ""
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").removeprefix("W/").strip('"')
    if status in (301, 302, 303, 307, 308) and not headers.get("X-Linked-Size"):
        # a plain redirect (a renamed repository): ask where it leads
        return head(urllib.parse.urljoin(url, headers.get("Location", "")), token, timeout)
    if not size.isdigit():
        raise DownloadError(f"{url} did not say how large the file is; the server is not a Hugging Face hub or mirror")
    sha = etag.lower() if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag.lower()) else ""
    return Remote(url, int(size), sha, headers.get("X-Repo-Commit", ""), etag)


def _http_sentence(url: str, status: int) -> str:
    if status in (401, 403):
        return (f"{url} needs permission ({status}): accept the model's licence on its hub page and set HF_TOKEN "
                f"to a token of yours")
    if status == 404:
        return f"{url} does not exist (404); the repository or file may have moved"
    return f"{url} answered {status}; try again later"


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", "") or exc or type(exc).__name__)[:200]


def fetch(remote: Remote, dest: Path, *, token: str = "", progress: Progress | None = None, attempts: int = 5,
          retry_wait: float = 1.0, free_bytes: Callable[[Path], int] | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``remote`` into ``dest`` (see the module docstring); returns ``dest``. A ``dest`` that
    is already there with the announced size is kept. Raises :class:`DiskSpaceError`,
    :class:`ChecksumError` or :class:`DownloadError`."""
    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size == remote.size:
        if progress:
            progress(remote.size, remote.size)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have > remote.size:
        part.unlink()
        have = 0
    free = (free_bytes or _free_bytes)(dest.parent)
    if free < remote.size - have + SPARE_BYTES:
        raise DiskSpaceError(f"{dest.name} needs {_gb(remote.size - have)} more but {dest.parent} has {_gb(free)} free "
                             f"(and {_gb(SPARE_BYTES)} must stay free); make room or download to another folder")
    opener = urllib.request.build_opener(_SameHostAuth)
    failures = 0
    while have < remote.size:
        try:
            have = _transfer(opener, remote, part, have, token, progress, timeout)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                raise DownloadError(_http_sentence(remote.url, exc.code)) from None
            failures += 1
            have = part.stat().st_size if part.is_file() else 0
            if failures >= attempts:
                raise DownloadError(f"{dest.name}: the transfer broke off {failures} times ({_reason(exc)}); run the "
                                    f"same command again to resume from {_gb(have)}") from None
            time.sleep(retry_wait * failures)
    if have != remote.size:
        part.unlink()
        raise ChecksumError(f"{dest.name}: got {have} bytes, expected {remote.size}; the partial file was removed")
    if remote.sha256:
        digest = _sha256(part)
        if digest != remote.sha256:
            part.unlink()
            raise ChecksumError(f"{dest.name}: its SHA-256 is {digest[:16]}…, expected {remote.sha256[:16]}…; the "
                                f"damaged file was removed: download it again")
    os.replace(part, dest)
    return dest


def _transfer(opener, remote: Remote, part: Path, have: int, token: str, progress: Progress | None,
              timeout: float) -> int:
    """One GET from byte ``have`` on, appended to ``part``; returns the bytes now in ``part``."""
    headers = _headers(token)
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(remote.url, headers=headers)
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left from there: the part is as long as the server's file
            return have
        raise
    with response:
        if have and response.status != 206:  # the server ignored the range: start again
            have = 0
        with open(part, "ab" if have else "wb") as out:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                have += len(chunk)
                if progress:
                    progress(have, remote.size)
    if have < remote.size:
        raise ConnectionError(f"the connection closed after {have} of {remote.size} bytes")
    return have


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------- presets


def destination(file: RemoteFile, models_dir: Path, hub_cache: Path, remote: Remote) -> Path:
    """Where ``file`` goes: its kind folder in ``models_dir`` (that folder's layout), or the blob of
    the Hugging Face cache ``hub_cache`` (linked from the snapshot by :func:`link_into_cache`)."""
    if file.kind == "hf-cache":
        return _repo_cache(hub_cache, file.repo) / "blobs" / (remote.sha256 or remote.etag or _safe(file.path))
    layout, folders = layout_folders(models_dir)
    for folder, kind, family in folders:
        if kind == file.kind and not family and layout != "folder":
            return folder / file.name
    return models_dir / DEFAULT_FOLDERS[file.kind] / file.name


def _repo_cache(hub_cache: Path, repo: str) -> Path:
    return hub_cache / ("models--" + repo.replace("/", "--"))


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def link_into_cache(file: RemoteFile, blob: Path, hub_cache: Path, commit: str) -> Path:
    """Make ``blob`` the file ``file.path`` of ``file.repo`` at ``commit`` in the Hugging Face cache
    (``snapshots/<commit>/<path>`` → the blob, ``refs/main`` → ``commit``), as ``hf_hub_download`` does."""
    repo = _repo_cache(hub_cache, file.repo)
    commit = commit or "main"
    snapshot = repo / "snapshots" / commit / file.path
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if snapshot.is_symlink() or snapshot.exists():
        snapshot.unlink()
    try:
        snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    except OSError:  # Windows without symlink rights: a copy works as well
        shutil.copyfile(blob, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def hub_cache_folder() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def install(preset: Preset, models_dir: Path, *, hub_cache: Path | None = None, token: str | None = None,
            on_file: Callable[[RemoteFile, Remote], None] | None = None, progress: Progress | None = None,
            **fetch_options) -> list[Path]:
    """Fetch every file of ``preset`` (see :func:`fetch`; ``fetch_options`` go there) and return
    where each is now. ``on_file`` is told of each file before it starts."""
    hub_cache = hub_cache_folder() if hub_cache is None else Path(hub_cache)
    token = os.environ.get("HF_TOKEN", "") if token is None else token
    done = []
    for file in preset.files:
        remote = head(file_url(file.repo, file.path), token)
        if on_file:
            on_file(file, remote)
        dest = fetch(remote, destination(file, Path(models_dir), hub_cache, remote), token=token, progress=progress,
                     **fetch_options)
        done.append(link_into_cache(file, dest, hub_cache, remote.commit) if file.kind == "hf-cache" else dest)
    return done


def resolve_names(names: Sequence[str]) -> list[Preset]:
    """The presets ``names`` in order. Raises ``KeyError`` naming the first unknown one."""
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise KeyError(f"no preset named {unknown[0]!r}; `easel download` lists them")
    return [PRESETS[n] for n in names]


# --------------------------------------------------------------------------- what is missing


@dataclass(frozen=True)
class Need:
    """One thing a feature needs: ``have`` says whether it is here; ``fix`` is the command that gets it."""

    feature: str
    family: str
    have: bool
    what: str
    fix: str


def needs(found_families: Iterable[str], control_types: Mapping[str, set[str]], hub_cache: Path | None = None) -> list[Need]:
    """What each feature needs and whether it is here: a base model per family (any when none is
    here), ControlNets canny/depth/lineart for each family that has a base model, the annotator
    weights of each preprocessor, and TAESD for sharper previews (for the families here; any when none is).

    ``found_families``: families of the checkpoints served; ``control_types``: family → the control
    types of its ControlNets. The hub cache is looked at for annotators and TAESD (a disk lookup)."""
    from huggingface_hub import try_to_load_from_cache

    cache = str(hub_cache) if hub_cache is not None else None
    found = set(found_families)  # any family's checkpoint (Flux.1, SD 3.5 too) is a base model here
    families = sorted(found & {"sd15", "sd2", "sdxl"})
    out: list[Need] = []
    for family in ("sd15", "sd2", "sdxl"):
        have = family in families
        if have or not found:
            out.append(Need("generate", family, have, f"a {family} checkpoint", f"easel download {family}"))
    for family in families:
        for control in ("canny", "depth", "lineart"):
            preset = PRESETS.get(f"{family}-{control}")
            fix = f"easel download {preset.name}" if preset else "put one into the models folder's ControlNet folder"
            out.append(Need(f"controlnet-{control}", family, control in control_types.get(family, set()),
                            f"a {control} ControlNet for {family}", fix))
    for pre in PREPROCESSORS.values():
        if pre.files:
            lacking = [n for n in pre.files if not isinstance(try_to_load_from_cache(ANNOTATORS_REPO, n, cache_dir=cache), str)]
            out.append(Need(f"preprocessor {pre.name}", "", not lacking, ", ".join(pre.files), "easel download annotators"))
    cached = cached_taesd(hub_cache)
    wanted = {"sdxl" if family == "sdxl" else "sd15" for family in families}  # TAESD serves SD 1.x and 2.x
    for family, repo in TAESD_REPOS.items():
        if found and family not in wanted:
            continue
        preset = "taesd" if family == "sd15" else "taesdxl"
        out.append(Need("sharp previews", family, family in cached, repo, f"easel download {preset}"))
    return out


def installed(preset: Preset, models_dir: Path | None, hub_cache: Path | None = None) -> bool:
    """True when every file of ``preset`` is in place (a disk lookup: names and sizes, no hashing)."""
    from huggingface_hub import try_to_load_from_cache

    cache = str(hub_cache) if hub_cache is not None else None
    for file in preset.files:
        if file.kind == "hf-cache":
            if not isinstance(try_to_load_from_cache(file.repo, file.path, cache_dir=cache), str):
                return False
        elif models_dir is None or not destination(file, models_dir, Path(), Remote("", 0, "", "", "")).is_file():
            return False
    return True


# --------------------------------------------------------------------------- downloads a client asks for


class ServerDownloads:
    """The server side of ``download_model`` (docs/protocol.md 5.6): opt-in (``allow_downloads``),
    one download at a time, on a thread of its own; checkpoints and ControlNets go into
    ``models_dir`` (the server's first ``--models-dir``, rescanned on the next listing), annotator
    weights and TAESD into the Hugging Face cache. Each request ends in exactly one
    ``download_finished`` or ``download_failed``; progress is sent at most :data:`PROGRESS_EVERY_S`
    apart (and once at each file's end).

    ``deliver(send)`` is called on the server's thread for every event, with ``send(session)``
    to run on the asking connection's session (it may have gone: the download goes on)."""

    PROGRESS_EVERY_S = 0.25

    def __init__(self, enabled: bool, models_dir: Path | None, hub_cache: Path | None = None, **fetch_options) -> None:
        self.enabled = enabled and models_dir is not None
        self.models_dir = models_dir
        self._hub_cache = hub_cache
        self._fetch_options = fetch_options
        self._lock = threading.Lock()
        self._running = ""

    def offers(self) -> list[DownloadInfo]:
        """The presets as ``model_list.downloads`` (empty when downloads are off); disk lookups only."""
        if not self.enabled:
            return []
        return [DownloadInfo(p.name, p.feature, p.family, p.description, p.size,
                             installed(p, self.models_dir, self._hub_cache)) for p in PRESETS.values()]

    def start(self, download_id: str, name: str, deliver: Callable[[Callable[[Any], None]], None],
              call_soon: Callable[..., Any]) -> None:
        """Begin the download ``name`` for ``download_id``, or refuse it at once (``deliver`` a
        ``download_failed``). ``call_soon`` is the event loop's ``call_soon_threadsafe``."""
        def fail(code: ErrorCode, message: str, log_id: str = "") -> None:
            deliver(lambda session: session.download_failed(download_id, code, message, log_id))

        if not self.enabled:
            fail(ErrorCode.UNSUPPORTED, "this server does not download models for its clients; start it with "
                                        "--allow-downloads (and a --models-dir), or run `easel download` on it")
            return
        if name not in PRESETS:
            fail(ErrorCode.UNKNOWN_MODEL, f"no download named {name!r}; model_list.downloads lists them")
            return
        with self._lock:
            if self._running:
                fail(ErrorCode.BUSY, f"the server is downloading {self._running} already; ask again when it is done")
                return
            self._running = name
        worker = threading.Thread(target=self._run, args=(download_id, PRESETS[name], deliver, call_soon),
                                  name="easel-download", daemon=True)
        worker.start()

    def _run(self, download_id: str, preset: Preset, deliver, call_soon) -> None:
        state = {"index": 0, "file": "", "sent": 0.0}

        def on_file(file: RemoteFile, remote: Remote) -> None:
            state["index"] = preset.files.index(file)
            state["file"] = file.path
            state["sent"] = 0.0

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - state["sent"] < self.PROGRESS_EVERY_S:
                return
            state["sent"] = now
            index, file = state["index"], state["file"]
            call_soon(deliver, lambda session: session.download_progress(download_id, file, done, total, index,
                                                                         len(preset.files)))

        try:
            install(preset, self.models_dir, hub_cache=self._hub_cache, on_file=on_file, progress=progress,
                    **self._fetch_options)
        except DiskSpaceError as exc:
            outcome = (ErrorCode.LIMIT_EXCEEDED, str(exc), "")
        except DownloadError as exc:
            outcome = (ErrorCode.MODEL_UNAVAILABLE, str(exc), "")
        except Exception:  # noqa: BLE001 - a bug here must not end the server; the client hears of it
            log_id = uuid.uuid4().hex[:12]
            log.error("download %s (%s) failed [log %s]", download_id, preset.name, log_id, exc_info=True)
            outcome = (ErrorCode.INTERNAL, f"the download of {preset.name} failed on the server; its log has the "
                                           f"details under {log_id}", log_id)
        else:
            outcome = None
        finally:
            with self._lock:
                self._running = ""
        if outcome is None:
            log.info("download %s: %s is in place", download_id, preset.name)
            call_soon(deliver, lambda session: session.download_finished(download_id, preset.name))
        else:
            code, message, log_id = outcome
            log.warning("download %s (%s) failed: %s", download_id, preset.name, message)
            call_soon(deliver, lambda session: session.download_failed(download_id, code, message, log_id))


#: TAESD repositories by family, as the engine's ``taesd`` setting names them.
TAESD_REPOS = {"sd15": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}


def cached_taesd(hub_cache: Path | None = None) -> dict[str, str]:
    """Family → TAESD hub id, for the TAESD models in the Hugging Face cache (``easel download taesd``)."""
    from huggingface_hub import try_to_load_from_cache

    cache = str(hub_cache) if hub_cache is not None else None
    return {family: repo for family, repo in TAESD_REPOS.items()
            if isinstance(try_to_load_from_cache(repo, "diffusion_pytorch_model.safetensors", cache_dir=cache), str)}


__all__ = ["PRESETS", "Preset", "RemoteFile", "Remote", "DownloadError", "DiskSpaceError", "ChecksumError", "head",
           "fetch", "install", "needs", "Need", "endpoint", "file_url", "resolve_names"]
