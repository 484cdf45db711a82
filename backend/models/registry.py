"""The model families Easel knows, in detection order (transformers first: their folders have no
``unet/``; the UNet families tell each other apart by their text features)."""
from __future__ import annotations

from . import flux, sd2, sd3, sd15, sdxl
from .family import Family

FAMILY_LIST: tuple[Family, ...] = (flux.FAMILY, sd3.FAMILY, sdxl.FAMILY, sd2.FAMILY, sd15.FAMILY, sd15.DEMO)
FAMILIES: dict[str, Family] = {f.name: f for f in FAMILY_LIST}


def family(name: str) -> Family:
    """The family called ``name`` (a ``ModelFacts.family``); SD 1.x for a name no family has."""
    return FAMILIES.get(name, sd15.FAMILY)
