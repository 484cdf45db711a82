"""One lock for building and loading torch modules in this process.

diffusers' ``no_init_weights`` and accelerate's ``init_empty_weights`` (used by every
``from_pretrained``), and transformers' ``no_init_weights``, patch torch for the whole process while a
model loads: ``torch.nn.init`` functions and ``nn.Module.register_parameter`` are swapped and swapped
back. Two threads inside them at once can restore each other's patch and leave it installed for good,
and a module built on another thread meanwhile gets weights on the meta device or never initialised.
A server loads on its worker thread while its previews, preprocessors, another engine (the test suite
runs many servers in one process) or a model builder may construct modules elsewhere.

:func:`install` makes those contexts hold :data:`MODULE_LOCK` (re-entrant: loads nest them), and
:func:`exclusive` makes a function that builds modules hold it too. Installing twice is harmless.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Iterator, TypeVar

MODULE_LOCK = threading.RLock()

F = TypeVar("F", bound=Callable[..., Any])


def exclusive(fn: F) -> F:
    """Run ``fn`` holding :data:`MODULE_LOCK`: no load patches torch while it builds modules."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with MODULE_LOCK:
            install()
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _locked(context: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(context, "_easel_locked", False):
        return context

    @functools.wraps(context)
    @contextlib.contextmanager
    def locked(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with MODULE_LOCK, context(*args, **kwargs) as value:
            yield value

    locked._easel_locked = True  # type: ignore[attr-defined]
    return locked


def install() -> None:
    """Make the process-wide patching contexts of accelerate, diffusers and transformers hold the lock."""
    with MODULE_LOCK:
        try:
            import accelerate
            import accelerate.big_modeling
        except ImportError:
            accelerate = None  # type: ignore[assignment]
        if accelerate is not None:
            for owner in (accelerate, accelerate.big_modeling):
                for name in ("init_empty_weights", "init_on_device"):
                    if hasattr(owner, name):
                        setattr(owner, name, _locked(getattr(owner, name)))
        try:
            import diffusers.models.modeling_utils as diffusers_modeling
        except ImportError:
            diffusers_modeling = None  # type: ignore[assignment]
        if diffusers_modeling is not None and hasattr(diffusers_modeling, "no_init_weights"):
            diffusers_modeling.no_init_weights = _locked(diffusers_modeling.no_init_weights)
        try:
            import transformers.initialization as transformers_init
        except ImportError:
            transformers_init = None  # type: ignore[assignment]
        if transformers_init is not None and hasattr(transformers_init, "no_init_weights"):
            transformers_init.no_init_weights = _locked(transformers_init.no_init_weights)
