"""The model families Easel knows, in detection order (transformers first: their folders have no
``unet/``; Flux.2 before Flux.1, whose tensor names its files share; the UNet families tell each
other apart by their text features)."""
from __future__ import annotations

from . import flux, flux2, sd2, sd3, sd15, sdxl, zimage
from .family import Family

FAMILY_LIST: tuple[Family, ...] = (flux2.FAMILY, zimage.FAMILY, flux.FAMILY, sd3.FAMILY, sdxl.FAMILY, sd2.FAMILY, sd15.FAMILY, sd15.DEMO)
FAMILIES: dict[str, Family] = {f.name: f for f in FAMILY_LIST}


def family(name: str) -> Family:
    """The family called ``name`` (a ``ModelFacts.family``); SD 1.x for a name no family has."""
    return FAMILIES.get(name, sd15.FAMILY)
