"""Krita's side of :mod:`.batch`: a group of new paint layers added as one undo step.

Tried on Krita 5.1.5: ``Node.setChildNodes`` on a group that is not in the image yet records no
undo step (``addChildNode`` there would record one per layer, steps that later act on a group
already in the image); adding the filled group to the root is one "add layer" step, and one undo
takes the whole batch away.
"""
from __future__ import annotations

from typing import Any, Sequence

from .geometry import Rect
from .host import HostError


def add_group(doc: Any, name: str, layers: Sequence[tuple[str, bytes, Rect]]) -> Any:
    """A new group at the top of ``doc``'s stack holding one paint layer per (name, BGRA, rect),
    first at the bottom, every one visible. One undo step. Raises :class:`HostError`."""
    group = doc.createGroupLayer(name)
    if group is None:
        raise HostError("Krita could not create a group layer")
    nodes = []
    for layer_name, bgra, rect in layers:
        node = doc.createNode(layer_name, "paintlayer")
        if node is None:
            raise HostError("Krita could not create a paint layer")
        if node.setPixelData(bgra, rect.x, rect.y, rect.width, rect.height) is False:
            raise HostError("Krita refused to write the layer's pixels")
        nodes.append(node)
    group.setChildNodes(nodes)  # off the image: no undo steps
    if doc.rootNode().addChildNode(group, None) is False:
        raise HostError("Krita refused to add a layer to this image")
    doc.refreshProjection()
    return group
