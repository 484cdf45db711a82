"""Easel for Krita: Stable Diffusion from the canvas and the selection, via a local Easel server.

Krita imports this package at start-up (``easel_krita.desktop``); it only registers the extension
(actions, connection) and the docker. Everything else is in the modules beside it; those that do
not import ``krita`` or Qt are tested on their own (``tests/krita``).
"""
import sys

if sys.version_info < (3, 10):  # the protocol package uses 3.10 features; say so instead of a SyntaxError
    raise ImportError(f"Easel needs Krita with Python 3.10 or newer (Krita 5.2, or a Linux Krita that uses the "
                      f"system Python); this Krita has Python {sys.version.split()[0]}")

from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita  # noqa: E402

from .compact_docker import COMPACT_DOCKER_ID, make_compact_docker_class  # noqa: E402
from .extension import EaselExtension  # noqa: E402

#: The one extension instance (Krita keeps a reference too); tests reach the controller through it.
extension = EaselExtension(Krita.instance())
Krita.instance().addExtension(extension)
Krita.instance().addDockWidgetFactory(
    DockWidgetFactory(COMPACT_DOCKER_ID, DockWidgetFactoryBase.DockRight, make_compact_docker_class(extension)))
