"""Easel for Krita: Stable Diffusion from the canvas and the selection, via a local Easel server.

Krita imports this package at start-up (``easel_krita.desktop``); it only registers the extension
(actions, connection) and the docker. Everything else is in the modules beside it; those that do
not import ``krita`` or Qt are tested on their own (``tests/krita``).
"""
from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita

from .docker import DOCKER_ID, make_docker_class
from .extension import EaselExtension

#: The one extension instance (Krita keeps a reference too); tests reach the controller through it.
extension = EaselExtension(Krita.instance())
Krita.instance().addExtension(extension)
Krita.instance().addDockWidgetFactory(
    DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, make_docker_class(extension)))
