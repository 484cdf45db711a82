"""Multi-view texturing math without Blender: the orbit rig (plugin_blender.orbit), view weights,
blending and reprojection (plugin_blender.blend), UV rasterization and hole filling
(plugin_blender.texels). Scenes are analytic: planes whose depth passes are computed exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest

from plugin_blender.blend import (
    GRAZING, KNOWN_WEIGHT, View, blend, depth_normals, edge_distance, feather_px, reproject, sample_bilinear,
    view_weights,
)
from plugin_blender.orbit import MAX_ELEVATION, fit_distance, look_at, orbit
from plugin_blender.projection import CameraProjection
from plugin_blender.texels import fill, rasterize

W, H = 64, 48


def perspective(focal: float = 1.0, aspect: float = W / H, near: float = 0.1, far: float = 100.0) -> np.ndarray:
    return np.array([[focal, 0, 0, 0], [0, focal * aspect, 0, 0],
                     [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)], [0, 0, -1, 0]])


def camera_at(eye, target=(0.0, 0.0, 0.0), width: int = W, height: int = H) -> CameraProjection:
    return CameraProjection(np.linalg.inv(look_at(np.array(eye, float), np.array(target, float))),
                            perspective(aspect=width / height), width, height)


def ground_depth(camera: CameraProjection, height: float = 0.0) -> np.ndarray:
    """The exact planar depth pass of the infinite plane z = ``height`` (1e10 where the ray misses)."""
    centres = camera.pixel_centres().reshape(-1, 2)
    near = camera.unproject(centres, np.ones(len(centres)))  # points at planar depth 1
    eye = camera.position
    t = (height - eye[2]) / (near[:, 2] - eye[2])
    depth = np.where(t > 0, t, 1e10)  # planar depth scales linearly along the ray
    return depth.reshape(camera.height, camera.width)


def ground_colour(points: np.ndarray) -> np.ndarray:
    """A smooth colour field on the ground (RGBA), so samples can be checked against the truth."""
    x, y = points[..., 0], points[..., 1]
    return np.stack([0.5 + 0.4 * np.sin(x / 3), 0.5 + 0.4 * np.cos(y / 3), 0.5 + 0.1 * x / 10, np.ones_like(x)], -1)


def ground_view(camera: CameraProjection) -> View:
    depth = ground_depth(camera)
    points, _ = depth_normals(camera, depth)
    image = np.where(np.isfinite(points).all(-1)[..., None], ground_colour(np.nan_to_num(points)), 0.0)
    return View(camera, depth, image.astype(np.float32))


# --------------------------------------------------------------------------- orbit

def test_orbit_cameras_look_at_the_centre_from_evenly_spaced_azimuths():
    centre = np.array([1.0, -2.0, 0.5])
    matrices = orbit(centre, 6.0, 4, elevation_deg=30.0)
    assert len(matrices) == 4
    azimuths = []
    for matrix in matrices:
        rotation = matrix[:3, :3]
        assert np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)  # a pure rotation
        eye = matrix[:3, 3]
        assert np.linalg.norm(eye - centre) == pytest.approx(6.0)
        looks = -matrix[:3, 2]
        assert np.allclose(looks, (centre - eye) / 6.0, atol=1e-9)   # −Z points at the centre
        assert matrix[2, 1] > 0                                       # the camera's up is up
        assert math.degrees(math.asin((eye - centre)[2] / 6.0)) == pytest.approx(30.0)
        azimuths.append(math.atan2(eye[0] - centre[0], -(eye[1] - centre[1])))
    assert np.allclose(np.diff(np.unwrap(azimuths)), math.pi / 2)
    assert np.allclose(matrices[0][:3, 3], centre + 6.0 * np.array([0, -math.cos(math.radians(30)),
                                                                     math.sin(math.radians(30))]))


def test_orbit_refuses_impossible_rigs():
    with pytest.raises(ValueError, match="at least 1"):
        orbit(np.zeros(3), 5.0, 0)
    with pytest.raises(ValueError, match="positive"):
        orbit(np.zeros(3), 0.0, 4)
    with pytest.raises(ValueError, match="elevation"):
        orbit(np.zeros(3), 5.0, 4, elevation_deg=MAX_ELEVATION + 1)
    assert fit_distance(1.0, math.radians(60)) == pytest.approx(1.15 / math.sin(math.radians(30)))


# --------------------------------------------------------------------------- weights

def test_weight_is_one_head_on_and_falls_with_the_angle_to_zero_at_grazing():
    camera = camera_at((0.0, 0.0, 10.0), (0.0, 0.001, 0.0))
    view = View(camera, ground_depth(camera), np.zeros((H, W, 4), np.float32))
    up = np.array([[0.0, 0.0, 1.0]])
    assert view_weights(view, np.zeros((1, 3)), up)[0] == pytest.approx(1.0, abs=1e-6)
    angles = np.radians([0, 30, 60, 80, 86])
    tilted = np.stack([np.sin(angles), np.zeros_like(angles), np.cos(angles)], 1)
    weights = view_weights(view, np.zeros((len(angles), 3)), tilted)
    assert np.all(np.diff(weights) < 0)
    expected = np.clip((np.cos(angles) - GRAZING) / (1 - GRAZING), 0, 1)
    assert np.allclose(weights, expected, atol=1e-6)
    assert weights[-1] == 0.0  # cos 86° < GRAZING
    # A face turned away is never painted, whatever the depth pass says.
    assert view_weights(view, np.zeros((1, 3)), -up)[0] == 0.0


def test_weight_fades_towards_the_frame_edge_and_is_zero_outside_and_when_hidden():
    camera = camera_at((0.0, 0.0, 10.0), (0.0, 0.001, 0.0))
    depth = ground_depth(camera)
    view = View(camera, depth, np.zeros((H, W, 4), np.float32))
    # Points on the ground along the image's middle row, from the centre to past the right edge.
    row = H // 2
    centres = camera.pixel_centres()[row, W // 2:]
    points = camera.unproject(centres, depth[row, W // 2:])
    weights = view_weights(view, points, np.tile([0.0, 0.0, 1.0], (len(points), 1)))
    cosine = 10.0 / np.linalg.norm(points - camera.position, axis=1)  # perspective: off-centre is oblique
    weights = weights / np.clip((cosine - GRAZING) / (1 - GRAZING), 0, 1)  # the edge factor alone
    distance_to_edge = W - (np.arange(W // 2, W) + 0.5)
    feather = feather_px(W, H)
    assert feather == 2  # 2 % of 48 px, at least 2
    assert np.all(weights[distance_to_edge >= feather] == pytest.approx(1.0, abs=1e-3))
    assert np.all(np.diff(weights[distance_to_edge < feather + 1]) < 0)
    assert 0 < weights[-1] < 0.2
    assert feather_px(1024, 768) == 15
    outside = camera.unproject(np.array([[1.2, 0.5]]), np.array([10.0]))
    assert view_weights(view, outside, np.array([[0.0, 0.0, 1.0]]))[0] == 0.0
    # The same ground point hidden by something nearer in the depth pass.
    hidden = depth.copy()
    hidden[row - 5:row + 5, W // 2 - 5:W // 2 + 5] = 5.0
    occluded = View(camera, hidden, np.zeros((H, W, 4), np.float32))
    centre = camera.unproject(camera.pixel_centres()[row, W // 2][None], depth[row, W // 2][None])
    assert view_weights(occluded, centre, np.array([[0.0, 0.0, 1.0]]))[0] == 0.0
    assert view_weights(view, centre, np.array([[0.0, 0.0, 1.0]]))[0] == pytest.approx(1.0, abs=1e-3)


def test_edge_distance_counts_pixels_to_depth_discontinuities():
    depth = np.full((20, 20), 10.0)
    depth[:, 10:] = 20.0  # a step between columns 9 and 10
    distance = edge_distance(depth, reach=4)
    assert distance[5, 9] == 0 and distance[5, 10] == 0
    assert distance[5, 7] == 2 and distance[5, 12] == 2
    assert distance[5, 0] == 4 and distance[5, 19] == 4  # capped at the reach
    assert edge_distance(np.full((5, 5), 1e10), reach=3).max() == 0  # all background


def test_bilinear_sampling_matches_texel_centres_and_interpolates_between():
    image = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    at_centres = sample_bilinear(image, np.array([[0.5, 0.5], [3.5, 2.5], [1.5, 1.5]]))
    assert at_centres[:, 0].tolist() == [0.0, 11.0, 5.0]
    assert sample_bilinear(image, np.array([[1.0, 0.5]]))[0, 0] == pytest.approx(0.5)


# --------------------------------------------------------------------------- blending

def test_blend_is_the_weighted_mean_and_stays_between_the_views():
    cameras = [camera_at((6.0, -6.0, 6.0)), camera_at((-6.0, -6.0, 6.0)), camera_at((0.0, 8.0, 5.0))]
    views = [ground_view(camera) for camera in cameras]
    # Tint each view differently so the mean is measurable.
    views = [View(v.camera, v.depth, v.image * np.array([1.0, 1.0, 1.0, 1.0]) + np.float32(0.05 * i))
             for i, v in enumerate(views)]
    xs, ys = np.meshgrid(np.linspace(-2, 2, 9), np.linspace(-2, 2, 9))
    points = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], 1)
    normals = np.tile([0.0, 0.0, 1.0], (len(points), 1))
    result = blend(views, points, normals)
    assert result.seen.all()
    expected = np.einsum("vn,vnc->nc", result.weights, result.samples) / result.weight[:, None]
    assert np.allclose(result.colour, expected, atol=1e-6)
    contributing = result.weights > 0
    low = np.where(contributing[..., None], result.samples, np.inf).min(axis=0)
    high = np.where(contributing[..., None], result.samples, -np.inf).max(axis=0)
    assert np.all(result.colour >= low - 1e-6) and np.all(result.colour <= high + 1e-6)
    # Every view's sample is the true colour (+ its tint) to within bilinear error on this smooth field.
    truth = ground_colour(points)
    for index in range(3):
        hit = result.weights[index] > 0
        assert np.abs(result.samples[index, hit] - truth[hit] - 0.05 * index).max() < 0.02
    assert np.array_equal(blend(views, points, normals).colour, result.colour)  # deterministic


def test_points_no_view_sees_are_unseen():
    view = ground_view(camera_at((0.0, -6.0, 6.0)))
    result = blend([view], np.array([[0.0, 0.0, -5.0], [0.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.0]] * 2))
    assert result.seen.tolist() == [False, True]  # below the ground: hidden in the depth pass
    assert result.colour[0].tolist() == [0.0] * 4


# --------------------------------------------------------------------------- reprojection

def test_reproject_shows_what_earlier_views_textured_and_masks_only_new_pixels():
    first = ground_view(camera_at((0.0, -5.0, 4.0)))
    second = camera_at((5.0, -1.0, 4.0))
    depth = ground_depth(second)
    image, mask = reproject([first], second, depth)
    points, normals = depth_normals(second, depth)
    foreground = np.isfinite(points).all(-1)
    weight = blend([first], points[foreground], normals[foreground]).weight
    known = np.zeros(foreground.shape, bool)
    known[foreground] = weight >= KNOWN_WEIGHT
    assert known.sum() > 0.2 * known.size and (~known & foreground).sum() > 0.05 * known.size
    assert np.array_equal(mask == 0, known)
    assert set(np.unique(mask)) <= {0, 255}
    truth = ground_colour(np.nan_to_num(points))
    error = np.abs(image[known] - truth[known]).max(axis=1)
    # Far along the ground, one pixel of the first view spans a long stretch: bilinear error grows there.
    assert np.percentile(error, 95) < 0.01 and error.max() < 0.1
    assert np.all(image[~known] == 0.5)
    # Normals from the depth pass of a plane are the plane's.
    assert np.allclose(normals[foreground], [0.0, 0.0, 1.0], atol=1e-6)


def test_reproject_with_no_earlier_view_masks_everything():
    second = camera_at((5.0, -1.0, 4.0))
    image, mask = reproject([], second, ground_depth(second))
    assert np.all(mask == 255) and np.all(image == 0.5)


# --------------------------------------------------------------------------- texels

def test_rasterize_covers_the_uv_square_and_interpolates_the_surface():
    size = 16
    uvs = np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], float)
    points = np.concatenate([uvs * 4.0, np.full((2, 3, 1), 2.0)], axis=2)   # world = (4u, 4v, 2)
    normals = np.tile([0.0, 0.0, 1.0], (2, 3, 1))
    texels = rasterize(uvs, points, normals, size)
    assert texels.covered.all()
    rows, cols = np.divmod(texels.index, size)
    centre_uv = np.stack([(cols + 0.5) / size, (rows + 0.5) / size], 1)
    assert np.allclose(texels.points[:, :2], centre_uv * 4.0)
    assert np.allclose(texels.points[:, 2], 2.0)
    assert np.allclose(texels.normals, [0.0, 0.0, 1.0])
    half = rasterize(uvs[:1], points[:1], normals[:1], size)
    assert abs(len(half.index) - size * size / 2) <= size  # the diagonal's texels count once
    with pytest.raises(ValueError, match="shape|expected"):
        rasterize(uvs[:, :2], points, normals, size)


def test_fill_keeps_known_texels_dilates_borders_and_leaves_nothing_empty():
    image = np.zeros((32, 32, 4), np.float32)
    known = np.zeros((32, 32), bool)
    known[8:16, 8:16] = True
    image[8:16, 8:16] = [0.2, 0.4, 0.6, 1.0]
    image[12, 12] = [1.0, 1.0, 1.0, 1.0]
    filled = fill(image, known, margin=2)
    assert np.array_equal(filled[known], image[known])
    assert np.allclose(filled[16, 10], np.mean([image[15, 9], image[15, 10], image[15, 11]], axis=0))
    far = filled[~known]
    assert np.all(far[:, 3] > 0.99)            # every texel has colour (alpha from the known ones)
    assert np.all((far >= 0.2 - 1e-6) & (far <= 1.0 + 1e-6))  # a mean of known colours
    assert np.array_equal(fill(image, known, margin=2), filled)  # deterministic
    nothing = np.zeros((4, 4), bool)
    assert np.array_equal(fill(image[:4, :4], nothing), image[:4, :4])
