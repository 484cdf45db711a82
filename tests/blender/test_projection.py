"""Camera projection math (plugin_blender.projection), anchored to matrices Blender computed."""
from __future__ import annotations

import numpy as np
import pytest

from plugin_blender.projection import CameraProjection

# Blender 5.0.1's default scene camera for a 64x48 image: camera.matrix_world.inverted() and
# camera.calc_matrix_camera(depsgraph, x=64, y=48).
DEFAULT_VIEW = np.array([
    [0.68592066, 0.7276764, 0.0000000149, -0.007881631],
    [-0.3240135, 0.30542088, 0.8953957, 0.060012367],
    [0.6515583, -0.61417043, 0.44527143, -11.256156],
    [0.0, 0.0, 0.0, 1.0]])
DEFAULT_PROJECTION = np.array([
    [2.7777777, 0.0, 0.0, 0.0],
    [0.0, 3.7037034, 0.0, 0.0],
    [0.0, 0.0, -1.002002, -0.2002002],
    [0.0, 0.0, -1.0, 0.0]])


def perspective(focal: float = 2.0, aspect: float = 4 / 3, near: float = 0.1, far: float = 100.0) -> np.ndarray:
    return np.array([[focal, 0, 0, 0], [0, focal * aspect, 0, 0],
                     [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)], [0, 0, -1, 0]])


def orthographic(half_width: float = 4.0, aspect: float = 4 / 3, near: float = 0.1, far: float = 100.0) -> np.ndarray:
    return np.array([[1 / half_width, 0, 0, 0], [0, aspect / half_width, 0, 0],
                     [0, 0, -2 / (far - near), -(far + near) / (far - near)], [0, 0, 0, 1]])


def look_from(position, yaw: float = 0.3) -> np.ndarray:
    """A view matrix for a camera at ``position`` turned ``yaw`` radians about world Z, looking down -Z."""
    c, s = np.cos(yaw), np.sin(yaw)
    world = np.eye(4)
    world[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    world[:3, 3] = position
    return np.linalg.inv(world)


@pytest.fixture
def camera() -> CameraProjection:
    return CameraProjection(DEFAULT_VIEW, DEFAULT_PROJECTION, 64, 48)


def test_default_camera_looks_at_the_origin_from_its_position(camera):
    assert np.allclose(camera.position, [7.3589, -6.9258, 4.9583], atol=1e-3)
    # The default camera's axis passes near the origin: the origin lands near the image centre.
    uv = camera.uv([[0.0, 0.0, 0.0]])[0]
    assert np.allclose(uv, [0.5, 0.5], atol=0.01)
    assert camera.planar_depth([[0, 0, 0]])[0] == pytest.approx(11.256, abs=1e-3)
    assert not camera.orthographic


def test_a_point_on_the_axis_projects_to_the_centre_at_its_depth(camera):
    points = camera.position + np.outer([1.0, 5.0, 40.0], camera.forward)
    assert np.allclose(camera.uv(points), 0.5)
    assert np.allclose(camera.planar_depth(points), [1.0, 5.0, 40.0])


def test_unproject_inverts_the_projection(camera):
    rng = np.random.default_rng(1)
    uv = rng.uniform(0, 1, (50, 2))
    depth = rng.uniform(0.5, 50, 50)
    points = camera.unproject(uv, depth)
    assert np.allclose(camera.uv(points), uv, atol=1e-9)
    assert np.allclose(camera.planar_depth(points), depth)
    assert camera.in_frame(points).all()


def test_pixel_centres_map_to_pixel_coordinates_bottom_up(camera):
    centres = camera.pixel_centres()
    assert centres.shape == (48, 64, 2)
    assert np.allclose(centres[0, 0], [0.5 / 64, 0.5 / 48])      # row 0 is the bottom row
    assert np.allclose(centres[-1, -1], [63.5 / 64, 47.5 / 48])
    points = camera.unproject(centres.reshape(-1, 2), np.full(64 * 48, 7.0))
    assert np.allclose(camera.pixel(points).reshape(48, 64, 2)[5, 9], [9.5, 5.5])


def test_homogeneous_uv_interpolates_exactly_where_uv_does_not(camera):
    """The reason the material uses (u·w, v·w, w): a big quad seen at an angle."""
    a, b = np.array([[-3.0, -3.0, 0.0]]), np.array([[3.0, 3.0, 0.0]])
    mid = (a + b) / 2
    h = (camera.homogeneous_uv(a) + camera.homogeneous_uv(b)) / 2
    exact = camera.uv(mid)[0]
    assert np.allclose(h[0, :2] / h[0, 2], exact, atol=1e-12)
    affine = (camera.uv(a) + camera.uv(b))[0] / 2
    assert np.abs(affine - exact).max() > 0.005  # linear UV interpolation would be visibly off


def test_points_behind_the_camera_have_no_uv(camera):
    behind = camera.position - 3 * camera.forward
    assert np.isnan(camera.uv([behind])).all()
    assert not camera.in_front([behind])[0]
    assert not camera.in_frame([behind])[0]


def test_orthographic_camera():
    cam = CameraProjection(look_from([0, 0, 10], yaw=0.0), orthographic(4.0), 80, 60)
    assert cam.orthographic
    points = np.array([[0, 0, 0], [4, 0, 0], [-4, -3, 2], [0, 3, -5]])
    assert np.allclose(cam.uv(points), [[0.5, 0.5], [1, 0.5], [0, 0], [0.5, 1]])
    assert np.allclose(cam.planar_depth(points), [10, 10, 8, 15])
    assert np.allclose(cam.homogeneous_uv(points)[:, 2], 1.0)
    uv = np.array([[0.25, 0.75]])
    assert np.allclose(cam.uv(cam.unproject(uv, [3.0])), uv)


def test_round_trip_through_a_dict(camera):
    again = CameraProjection.from_dict(camera.to_dict())
    assert np.array_equal(again.view, camera.view) and np.array_equal(again.projection, camera.projection)
    assert (again.width, again.height) == (64, 48)


@pytest.mark.parametrize("view, projection, size, message", [
    (np.eye(3), perspective(), (8, 8), "view must be a 4x4"),
    (np.eye(4), np.full((4, 4), np.nan), (8, 8), "non-finite"),
    (np.zeros((4, 4)), perspective(), (8, 8), "cannot be inverted"),
    (np.eye(4), perspective(), (0, 8), "must be positive"),
])
def test_bad_cameras_are_refused(view, projection, size, message):
    with pytest.raises(ValueError, match=message):
        CameraProjection(view, projection, *size)


def test_bad_points_are_refused(camera):
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        camera.uv([1.0, 2.0])
