"""Control-image preprocessors: controlnet-aux's annotators behind one name each.

``canny``, ``lineart_standard`` and ``shuffle`` are pure image operations and always work. The
others run a network whose weights live in the Hugging Face cache under ``lllyasviel/Annotators``
(what ``controlnet_aux``'s ``from_pretrained`` downloads). They are looked up there with
``huggingface_hub.try_to_load_from_cache`` — a disk lookup, never a network call — and a missing
file is a typed ``model_unavailable`` error that names the command to run, so an offline server
answers at once instead of hanging on a download.

Those annotator files are pickle-based (``.pth``/``.pt``), and controlnet-aux reads them with a
plain ``torch.load(path)``. From torch 2.6 that call uses the weights-only unpickler, which builds
tensors and plain containers and refuses anything else, so no code in a file runs. The server checks
that this holds in its process before it loads one (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` in the
environment, or an older torch, turns it off): when it does not, annotators are refused unless the
server runs with ``allow_unsafe_checkpoints``. A file the weights-only unpickler refuses is a
``model_unavailable`` error, never retried with full pickle. Each file is also checked the way
every other weights file is (:mod:`backend.filesafety`): its real path must lie inside the cache's
folder for ``lllyasviel/Annotators``, and its content must be weights (pickle or safetensors), not
what its name says; controlnet-aux then reads links to those checked real paths.

:class:`Preprocessors` runs them on the worker thread, keeps at most :data:`LOADED_LIMIT` loaded
networks, and remembers the last :data:`RESULT_CACHE` results (live mode sends the same control
layer again and again). Every result is an RGB image of the input's size.
"""
from __future__ import annotations

import io
import logging
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

import numpy as np

from protocol.errors import ErrorCode

from .errors import JobError

log = logging.getLogger(__name__)

ANNOTATORS_REPO = "lllyasviel/Annotators"
#: Networks kept loaded, and preprocessed images kept for reuse.
LOADED_LIMIT = 3
RESULT_CACHE = 8
#: The longest side a neural annotator looks at (they are trained around 512; beyond ~1024 they
#: only get slower). Pure image operations work at the input's own size.
DETECT_SIDE = 768


@dataclass(frozen=True)
class Preprocessor:
    """One preprocessor: the controlnet-aux class, the files it needs from the annotator repo
    (none: it works offline), the options it is called with, and the ControlNet it feeds."""

    name: str
    detector: str
    files: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    load_options: dict[str, Any] = field(default_factory=dict)
    control_type: str = ""
    description: str = ""

    @property
    def offline(self) -> bool:
        return not self.files


#: Every preprocessor a job may name, in the order clients should offer them.
PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("canny", "CannyDetector", options={"low_threshold": 100, "high_threshold": 200},
                 control_type="canny", description="edges (Canny, thresholds 100/200)"),
    Preprocessor("lineart_standard", "LineartStandardDetector", control_type="lineart",
                 description="line art from intensity differences (no network)"),
    Preprocessor("shuffle", "ContentShuffleDetector", control_type="shuffle",
                 description="the image's content shuffled (for style/colour transfer)"),
    Preprocessor("depth_midas", "MidasDetector", files=("dpt_hybrid-midas-501f0c75.pt",), control_type="depth",
                 description="depth (MiDaS DPT-hybrid)"),
    Preprocessor("depth_zoe", "ZoeDetector", files=("ZoeD_M12_N.pt",), control_type="depth",
                 description="depth (ZoeDepth)"),
    Preprocessor("openpose", "OpenposeDetector", files=("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                 options={"include_body": True, "include_hand": False, "include_face": False},
                 control_type="openpose", description="body pose skeleton"),
    Preprocessor("openpose_full", "OpenposeDetector", files=("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                 options={"include_body": True, "include_hand": True, "include_face": True},
                 control_type="openpose", description="body, hands and face"),
    Preprocessor("lineart", "LineartDetector", files=("sk_model.pth", "sk_model2.pth"), control_type="lineart",
                 description="line art (realistic)"),
    Preprocessor("lineart_coarse", "LineartDetector", files=("sk_model.pth", "sk_model2.pth"),
                 options={"coarse": True}, control_type="lineart", description="line art (coarse)"),
    Preprocessor("lineart_anime", "LineartAnimeDetector", files=("netG.pth",), control_type="lineart",
                 description="line art (anime)"),
    Preprocessor("softedge_hed", "HEDdetector", files=("ControlNetHED.pth",), control_type="softedge",
                 description="soft edges (HED)"),
    Preprocessor("softedge_pidi", "PidiNetDetector", files=("table5_pidinet.pth",), control_type="softedge",
                 description="soft edges (PiDiNet)"),
    Preprocessor("scribble_hed", "HEDdetector", files=("ControlNetHED.pth",), options={"scribble": True},
                 control_type="scribble", description="scribble from HED edges"),
    Preprocessor("normal_bae", "NormalBaeDetector", files=("scannet.pt",), control_type="normal",
                 description="surface normals (BAE)"),
    Preprocessor("mlsd", "MLSDdetector", files=("mlsd_large_512_fp32.pth",), control_type="mlsd",
                 description="straight lines (M-LSD)"),
)}


def check_name(name: str, field_name: str = "preprocessor") -> Preprocessor:
    """The preprocessor ``name``; raises invalid_parameter listing the known ones."""
    from .errors import invalid

    if name not in PREPROCESSORS:
        raise invalid(f"unknown preprocessor {name!r}; use one of: {', '.join(PREPROCESSORS)}", field=field_name, value=name)
    return PREPROCESSORS[name]


def missing_files(pre: Preprocessor) -> list[str]:
    """The files of ``pre`` that are not in the local Hugging Face cache (a disk lookup only)."""
    from huggingface_hub import try_to_load_from_cache

    return [name for name in pre.files if not isinstance(try_to_load_from_cache(ANNOTATORS_REPO, name), str)]


def unavailable(pre: Preprocessor, missing: list[str]) -> JobError:
    files = " ".join(missing)
    return JobError(
        ErrorCode.MODEL_UNAVAILABLE,
        f"the {pre.name} preprocessor needs {', '.join(missing)} from {ANNOTATORS_REPO}, which is not on this machine. "
        f"Download it once with `hf download {ANNOTATORS_REPO} {files}` (a machine with internet), or send a "
        f"ready-made control image and no preprocessor. canny, lineart_standard and shuffle work offline.",
        {"field": "preprocessor", "preprocessor": pre.name})


class _Probe:
    """What :func:`weights_only_by_default` saves: a class the weights-only unpickler refuses."""


def weights_only_by_default() -> bool:
    """Whether a plain ``torch.load(file)`` — how controlnet-aux reads every annotator — uses the
    weights-only unpickler in this process. Found by trying it on a file holding an object of a
    class of our own (harmless to build if it does get unpickled), not by reading versions or
    environment variables."""
    import torch

    buffer = io.BytesIO()
    torch.save(_Probe(), buffer)
    buffer.seek(0)
    with warnings.catch_warnings():  # torch warns when the environment forces full pickle
        warnings.simplefilter("ignore")
        try:
            torch.load(buffer)
        except Exception as exc:  # noqa: BLE001 - anything but the refusal counts as "not in force" (fail closed)
            return _refused_by_weights_only(exc)
    return False


def _refused_by_weights_only(exc: BaseException) -> bool:
    """Whether ``exc`` is the weights-only unpickler refusing a file (``pickle.UnpicklingError``,
    matched by name: the backend does not import the pickle module)."""
    return type(exc).__name__ == "UnpicklingError"


def _unloadable(pre: Preprocessor, exc: BaseException) -> JobError:
    files, download = ", ".join(pre.files), f"`hf download {ANNOTATORS_REPO} {' '.join(pre.files)}`"
    if _refused_by_weights_only(exc):
        message = (f"the {pre.name} preprocessor's weights ({files}) hold more than tensors, and this server loads "
                   f"annotator files only with torch's weights-only unpickler (anything else could run code). Replace "
                   f"them with the files from {ANNOTATORS_REPO} ({download}), or send a ready-made control image. "
                   f"(A server started with --allow-unsafe-checkpoints and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in its "
                   f"environment unpickles them in full: only for files you trust.)")
    else:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        message = (f"the {pre.name} preprocessor could not be loaded from {files} ({reason}); download the files "
                   f"again ({download}), or send a ready-made control image.")
    return JobError(ErrorCode.MODEL_UNAVAILABLE, message, {"field": "preprocessor", "preprocessor": pre.name})


class Preprocessors:
    """Runs preprocessors; worker thread only (the caches are locked for the odd reader elsewhere).

    ``allow_unsafe`` (the server's ``allow_unsafe_checkpoints``) lets annotators load even when
    ``torch.load`` would unpickle them in full; without it they load only through the weights-only
    unpickler (see the module docstring)."""

    def __init__(self, device: str = "cpu", allow_unsafe: bool = False) -> None:
        self._device = device
        self._allow_unsafe = allow_unsafe
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._results: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, name: str, rgb: np.ndarray, seed: int = 0, key: Hashable | None = None) -> np.ndarray:
        """``rgb`` (H, W, 3) uint8 → the control image (H, W, 3) uint8 of the same size.

        ``key`` (e.g. the image's content id) makes the result reusable for the same image and seed.
        Raises JobError(model_unavailable) when the weights are not on this machine.
        """
        pre = check_name(name)
        cache_key = (name, key, seed) if key is not None else None
        if cache_key is not None:
            with self._lock:
                if cache_key in self._results:
                    self._results.move_to_end(cache_key)
                    return self._results[cache_key]
        detector = self._detector(pre)
        height, width = rgb.shape[:2]
        out = _call(pre, detector, np.ascontiguousarray(rgb[..., :3]), seed)
        out = _as_rgb(out)
        if out.shape[:2] != (height, width):
            from .imaging import resize

            out = resize(out, (width, height))
        if cache_key is not None:
            with self._lock:
                self._results[cache_key] = out
                while len(self._results) > RESULT_CACHE:
                    self._results.popitem(last=False)
        return out

    def _detector(self, pre: Preprocessor) -> Any:
        with self._lock:
            if pre.detector + repr(pre.files) in self._loaded:
                self._loaded.move_to_end(pre.detector + repr(pre.files))
                return self._loaded[pre.detector + repr(pre.files)]
        missing = missing_files(pre)
        if missing:  # before importing controlnet-aux (seconds): the answer is known now
            raise unavailable(pre, missing)
        cls = _detector_class(pre.detector)
        if pre.offline:
            detector = cls()
        else:
            if not self._allow_unsafe and not weights_only_by_default():
                raise JobError(
                    ErrorCode.MODEL_UNAVAILABLE,
                    f"the {pre.name} preprocessor's weights ({', '.join(pre.files)}) are pickle-based files, and "
                    f"torch.load in this server would unpickle them in full, which can run any code they contain "
                    f"(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, or torch is older than 2.6). Unset it or upgrade "
                    f"torch, or start the server with --allow-unsafe-checkpoints if you trust the files.",
                    {"field": "preprocessor", "preprocessor": pre.name})
            folder = _snapshot_folder(pre.files[0])
            log.info("loading the %s preprocessor from %s", pre.name, folder)
            with tempfile.TemporaryDirectory(prefix="easel-annotators-") as checked:
                _link_checked(pre, Path(checked))
                try:
                    detector = cls.from_pretrained(checked, **pre.load_options)
                except Exception as exc:  # noqa: BLE001 - every loader failure becomes one typed, explained error
                    from .models import is_out_of_memory

                    if is_out_of_memory(exc):
                        raise
                    log.warning("the %s preprocessor could not be loaded from %s", pre.name, folder, exc_info=True)
                    raise _unloadable(pre, exc) from None
            if hasattr(detector, "to"):
                detector = detector.to(self._device)
        with self._lock:
            self._loaded[pre.detector + repr(pre.files)] = detector
            while len(self._loaded) > LOADED_LIMIT:
                self._loaded.popitem(last=False)
        return detector


def _detector_class(name: str) -> Any:
    import warnings

    # controlnet-aux's package import registers timm models again and warns about deprecations
    # of the libraries under it: noise in the server log, not something a user can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import controlnet_aux

    return getattr(controlnet_aux, name)


def _snapshot_folder(filename: str) -> Path:
    """The cached snapshot folder holding ``filename``: controlnet-aux then reads from it as a local
    folder and never calls the hub."""
    from huggingface_hub import try_to_load_from_cache

    return Path(try_to_load_from_cache(ANNOTATORS_REPO, filename)).parent


def _link_checked(pre: Preprocessor, checked: Path) -> None:
    """Links in the private folder ``checked``, one per file of ``pre``, to the file's real path,
    resolved now and checked (:mod:`backend.filesafety`): inside the cache's folder of
    ``lllyasviel/Annotators`` (its snapshots link into its ``blobs``), and a weights file by its
    content. controlnet-aux then opens these links, not the cache's names, which could be swapped
    for links to elsewhere after the check. Raises JobError(model_unavailable) naming the file."""
    from .filesafety import OTHER, UnsafeFileError, inside, weights_kind

    for name in pre.files:
        cached = Path(_snapshot_folder(name)) / name
        repo = cached.parent.parent.parent  # models--lllyasviel--Annotators/snapshots/<revision>/name
        try:
            real = inside(cached, repo)
            kind = weights_kind(real)
        except (UnsafeFileError, OSError) as exc:
            raise JobError(ErrorCode.MODEL_UNAVAILABLE, f"the {pre.name} preprocessor's weights file {name} is not read: "
                           f"{exc}. Download it again with `hf download {ANNOTATORS_REPO} {name}`, or send a "
                           f"ready-made control image.", {"field": "preprocessor", "preprocessor": pre.name}) from None
        if kind == OTHER:
            raise JobError(ErrorCode.MODEL_UNAVAILABLE, f"the {pre.name} preprocessor's weights file {name} ({real}) "
                           f"holds no weights (neither a pickle nor a safetensors file, whatever its name says). "
                           f"Download it again with `hf download {ANNOTATORS_REPO} {name}`, or send a ready-made "
                           f"control image.", {"field": "preprocessor", "preprocessor": pre.name})
        (checked / name).symlink_to(real)


def _call(pre: Preprocessor, detector: Any, rgb: np.ndarray, seed: int) -> Any:
    height, width = rgb.shape[:2]
    options = dict(pre.options)
    if pre.offline:
        # controlnet-aux scales so the shorter side is the resolution and rounds both sides to
        # multiples of 64. Edge-padded to multiples of 64 and asked for its own shorter side, the
        # image is used pixel for pixel (no resampling blur on the edges); the padding is cut off after.
        pad_h, pad_w = -height % 64, -width % 64
        padded = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else rgb
        side = min(padded.shape[:2])
        options.update(detect_resolution=side, image_resolution=side)
        return np.asarray(_invoke(pre, detector, padded, options, seed))[:height, :width]
    # A network looks at the image with its long side at most DETECT_SIDE (never enlarged); the
    # result is scaled back to the input's size by the caller.
    short, long = min(height, width), max(height, width)
    options.update(detect_resolution=max(64, min(short, DETECT_SIDE * short // long)), image_resolution=max(64, short))
    return _invoke(pre, detector, rgb, options, seed)


def _invoke(pre: Preprocessor, detector: Any, rgb: np.ndarray, options: dict[str, Any], seed: int) -> Any:
    import inspect

    options = dict(options, output_type="np")
    # The detectors' keyword arguments differ (lineart_standard has no image_resolution): pass only
    # what this one takes.
    accepted = inspect.signature(type(detector).__call__).parameters
    options = {k: v for k, v in options.items() if k in accepted}
    if pre.name == "shuffle":
        # The shuffle draws from numpy's global generator: seed it for a repeatable result and put
        # the caller's state back.
        state = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            return detector(rgb, **options)
        finally:
            np.random.set_state(state)
    return detector(rgb, **options)


def _as_rgb(image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:
        array = array[..., :3]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)
