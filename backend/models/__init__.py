"""Model specs, cheap inspection, loading, and the bounded cache of loaded pipelines.

Base models (``base``/``inpaint``/``depth``) and ControlNets (``controlnet``) are configured the
same way. Three kinds of source, one code path after the first call:

* a **diffusers folder** (``model_index.json`` inside; a ControlNet's holds ``config.json``) —
  loaded with ``from_pretrained``, offline;
* a **single-file checkpoint** (``.safetensors``) — ``from_single_file(path, config=<local
  diffusers folder>)``, offline when a config folder is given (without one diffusers asks the hub);
* a **hub id** (``owner/name``) — the normal Hugging Face cache; offline, a missing model is a typed
  ``model_unavailable`` error that names what to download, never a hang.

Inspection (family and kind, for ``ModelInfo``) reads JSON configs and safetensors headers only: no
torch, no weights. Loading imports torch/diffusers, builds the task pipelines from one set of modules
(sharing modules, nothing copied), and keeps at most ``cache_size`` models, least recently used first out.
Loaded ControlNets live in a cache of their own (:data:`CONTROLNET_CACHE`), so switching base model or
task never reloads them; a model's ControlNet pipelines are made from the loaded modules once per set of
units (a few kept, dropped with a ControlNet that is unloaded).

Pickle-based checkpoints (``.ckpt``, ``.bin``, ``.pt``, ``.pth``) can run arbitrary code when loaded:
they are refused unless the server was started with ``allow_unsafe_checkpoints``.
"""
from __future__ import annotations

from .inspection import (  # noqa: F401 - names the rest of the backend and the tests import
    CONFIG_REPOS, CONTROL_TYPES, CONTROLNET_CACHE, FAMILIES, FAMILY_DEFAULTS, KINDS, STANDARD_TEXT_DIMS, TASKS_BY_KIND,
    UNSAFE_SUFFIXES, Defaults, ModelConfigError, ModelFacts, ModelSpec, check_spec, family_from_context,
    family_from_unet, guess_control_type, inspect, is_hub_id, kind_from_in_channels, model_info, pickle_only_weights,
    safetensors_header,
)
from .family import Family  # noqa: F401
from .loading import (  # noqa: F401
    ROLES_BY_KIND, LoadedModel, ModelStore, free_memory, is_out_of_memory, load_controlnet, load_model,
    pickled_weights, resolve_device, resolve_dtype, roles_of, safetensors_only,
)
from .registry import FAMILY_LIST, family  # noqa: F401
