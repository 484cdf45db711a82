"""An orbit rig: N camera placements around a centre. No ``bpy`` here.

Cameras follow Blender's convention: they look down their local −Z axis with +Y up. The world's
up is +Z. View 0 looks from ``start_deg`` (0 = from −Y, the front view), the next ones follow
counter-clockwise seen from above, evenly spaced, all at ``elevation_deg`` above the horizon.
"""
from __future__ import annotations

import math

import numpy as np

#: Elevations beyond this (degrees) would look straight down, where "up" is undefined.
MAX_ELEVATION = 85.0
#: Room around the subject when the distance is fitted to the lens: the subject's bounding sphere
#: fills this fraction of the narrower half field of view.
FIT_MARGIN = 1.15


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 4×4 world matrix of a camera at ``eye`` looking at ``target`` with world +Z up."""
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    forward = target - eye
    length = np.linalg.norm(forward)
    if length < 1e-9:
        raise ValueError("the camera must not stand on the point it looks at")
    forward /= length
    right = np.cross(forward, (0.0, 0.0, 1.0))
    if np.linalg.norm(right) < 1e-6:  # looking straight up or down
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = right, up, -forward, eye
    return matrix


def fit_distance(radius: float, fov_rad: float) -> float:
    """Camera distance at which a sphere of ``radius`` fits the narrower field of view ``fov_rad``."""
    if radius <= 0 or not 0 < fov_rad < math.pi:
        raise ValueError(f"need a positive radius and a field of view in (0, π), got {radius}, {fov_rad}")
    return FIT_MARGIN * radius / math.sin(fov_rad / 2.0)


def orbit(centre: np.ndarray, distance: float, count: int, elevation_deg: float = 20.0,
          start_deg: float = 0.0) -> list[np.ndarray]:
    """World matrices of ``count`` cameras at ``distance`` from ``centre`` (module docstring).
    Raises ``ValueError`` for fewer than 1 view, a distance that is not positive or an elevation
    beyond ±:data:`MAX_ELEVATION`°."""
    if count < 1:
        raise ValueError(f"an orbit needs at least 1 view, got {count}")
    if distance <= 0:
        raise ValueError(f"the distance must be positive, got {distance}")
    if abs(elevation_deg) > MAX_ELEVATION:
        raise ValueError(f"the elevation must be within ±{MAX_ELEVATION:g}°, got {elevation_deg:g}°")
    centre = np.asarray(centre, np.float64)
    elevation = math.radians(elevation_deg)
    out = []
    for index in range(count):
        azimuth = math.radians(start_deg) + 2.0 * math.pi * index / count
        direction = np.array([math.sin(azimuth) * math.cos(elevation), -math.cos(azimuth) * math.cos(elevation),
                              math.sin(elevation)])
        out.append(look_at(centre + distance * direction, centre))
    return out
