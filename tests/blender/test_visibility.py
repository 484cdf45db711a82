"""Facing and occlusion tests (plugin_blender.visibility) on scenes whose depth pass is computed
analytically: a wall facing the camera with a box in front of it."""
from __future__ import annotations

import numpy as np
import pytest

from plugin_blender.projection import CameraProjection
from plugin_blender.visibility import (
    DEPTH_TOLERANCE, background_mask, face_visibility, facing, sample_nearest, transform_normals,
    transform_points, unoccluded,
)

W, H = 64, 48


def camera() -> CameraProjection:
    """At the origin looking down -Z (identity view), 90° horizontal field of view."""
    projection = np.array([[1.0, 0, 0, 0], [0, W / H, 0, 0], [0, 0, -1.002, -0.2002], [0, 0, -1, 0]])
    return CameraProjection(np.eye(4), projection, W, H)


def depth_pass(cam: CameraProjection) -> np.ndarray:
    """A wall at depth 10 with a square occluder at depth 5 covering NDC x, y in [-0.25, 0.25]."""
    uv = cam.pixel_centres()
    ndc = uv * 2 - 1
    depth = np.full((H, W), 10.0)
    inside = (np.abs(ndc[..., 0]) <= 0.25) & (np.abs(ndc[..., 1]) <= 0.25)
    depth[inside] = 5.0
    depth[:, :4] = 1e10  # a strip of background at the left edge
    return depth


def test_points_on_the_wall_are_seen_except_behind_the_occluder():
    cam = camera()
    depth = depth_pass(cam)
    on_wall = cam.unproject([[0.8, 0.8], [0.5, 0.5], [0.45, 0.55], [0.2, 0.7]], [10, 10, 10, 10])
    assert unoccluded(on_wall, cam, depth).tolist() == [True, False, False, True]
    on_occluder = cam.unproject([[0.5, 0.5]], [5.0])
    assert unoccluded(on_occluder, cam, depth).tolist() == [True]


def test_the_tolerance_lets_a_surface_see_itself_but_not_what_is_just_behind():
    cam = camera()
    depth = np.full((H, W), 10.0)
    points = cam.unproject([[0.5, 0.5]] * 3, [10 * (1 + DEPTH_TOLERANCE / 2), 10 * (1 + 2 * DEPTH_TOLERANCE), 9.0])
    assert unoccluded(points, cam, depth).tolist() == [True, False, True]


def test_outside_the_frame_or_behind_the_camera_is_never_seen():
    cam = camera()
    depth = np.full((H, W), 1e10)
    points = np.array([[0, 0, 5.0], [100.0, 0, -5], [0, 0, -5.0]])
    assert unoccluded(points, cam, depth).tolist() == [False, False, True]


def test_the_depth_pass_must_match_the_camera():
    with pytest.raises(ValueError, match="32x32"):
        unoccluded([[0, 0, -1.0]], camera(), np.ones((32, 32)))


def test_sample_nearest_reads_rows_bottom_up():
    image = np.arange(12, dtype=float).reshape(3, 4)  # row 0 = bottom
    got = sample_nearest(image, [[0.5, 0.5], [3.9, 2.9], [1.0, 1.0], [4.0, 3.0], [-0.1, 1], [np.nan, 1]])
    assert got[:4].tolist() == [0, 11, 5, 11]
    assert np.isnan(got[4:]).all()


def cube(centre, half: float):
    """Corner points, corner→face, face normals and centres of an axis-aligned cube."""
    faces, normals = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            n = np.zeros(3)
            n[axis] = sign
            u, v = np.eye(3)[(axis + 1) % 3], np.eye(3)[(axis + 2) % 3]
            c = np.array(centre) + n * half
            faces.append([c + half * (su * u + sv * v) for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
            normals.append(n)
    corners = np.array(faces).reshape(-1, 3)
    return corners, np.repeat(np.arange(6), 4), np.array(normals), np.array(faces).mean(axis=1)


def test_a_cube_in_front_of_the_camera_shows_one_face():
    cam = camera()
    corners, corner_faces, normals, centres = cube([0, 0, -5], 0.5)
    # Only the +Z face (index 5) turns towards a camera at the origin looking down -Z.
    assert facing(normals, centres, cam).tolist() == [False, False, False, False, False, True]
    depth = np.full((H, W), 1e10)
    uv = cam.pixel_centres().reshape(-1, 2)
    on_front = np.all(np.abs(uv * 2 - 1) <= 0.5 / 4.5 * np.array([1, W / H]), axis=1)  # the +Z face in NDC
    depth.reshape(-1)[on_front] = 4.5
    seen = face_visibility(corners, corner_faces, normals, centres, cam, depth)
    assert seen.seen.tolist() == [False, False, False, False, False, True]
    assert seen.seen_count == 1


def test_a_cube_hidden_behind_a_wall_is_not_seen():
    cam = camera()
    corners, corner_faces, normals, centres = cube([0, 0, -20], 1.0)
    depth = np.full((H, W), 10.0)
    seen = face_visibility(corners, corner_faces, normals, centres, cam, depth)
    assert seen.facing.any() and not seen.seen.any()


def test_orthographic_facing_uses_the_view_axis():
    projection = np.array([[0.25, 0, 0, 0], [0, 0.25, 0, 0], [0, 0, -0.02, -1.0], [0, 0, 0, 1]])
    cam = CameraProjection(np.eye(4), projection, 8, 8)
    normals = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 0, -1.0]])
    centres = np.array([[50, 0, -5.0], [0, 0, -5.0], [0, 0, -5.0]])
    assert facing(normals, centres, cam).tolist() == [True, False, False]


def test_transforms_keep_normals_perpendicular_under_non_uniform_scale():
    matrix = np.diag([4.0, 1.0, 1.0, 1.0])
    matrix[:3, 3] = [1, 2, 3]
    assert np.allclose(transform_points(matrix, [[1, 1, 1]]), [[5, 3, 4]])
    normal = transform_normals(matrix, [[1.0, 1.0, 0.0]])[0]
    edge = transform_points(matrix, [[1, -1, 0]])[0] - transform_points(matrix, [[0, 0, 0]])[0]
    assert abs(normal @ edge) < 1e-12 and np.isclose(np.linalg.norm(normal), 1)
    assert np.allclose(transform_normals(matrix, [[0, 0, 0]]), 0)


def test_background_mask():
    assert background_mask(np.array([[1.0, 1e10, np.inf]])).tolist() == [[False, True, True]]
