"""Bake time of *Texture All Views*: 4 orbit views baked into one texture per object, in Blender.

Run in a Blender venv (bpy), from the repository root::

    .venv-blender/bin/python benchmarks/blender_bake_bench.py --sizes 1024 2048 --runs 3

It installs the extension from its zip (built with the main venv's Python, as the tests do), builds
the in-Blender tests' scene (a cube, a subdivided UV sphere, a ground plane), makes a 4-view orbit
rig, renders each view's depth pass at the view size, and gives each view a seeded random image (the
bake does not care what the pixels show; no server is needed). Then, per texture size, it times the
whole bake of all three objects (:func:`bake.bake_object`: evaluated mesh → texels, blend, fill,
image, material) and its parts, medians over ``--runs``. Sizes run alternately in one process, so
their ratio holds under load; the seconds are for scale only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="easel-bench-user-"))

import bpy  # noqa: E402  (after BLENDER_USER_RESOURCES)
import numpy as np  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "blender" / "in_blender"))
from scene import build_objects_scene  # noqa: E402


def install(python: str) -> object:
    folder = Path(tempfile.mkdtemp(prefix="easel-bench-zip-"))
    archive = folder / "easel-blender.zip"
    subprocess.run([python, str(ROOT / "plugin_blender" / "build.py"), "--output", str(archive)], check=True,
                   stdout=subprocess.DEVNULL)
    assert bpy.ops.extensions.package_install_files(filepath=str(archive), repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    return sys.modules["bl_ext.user_default.easel"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--view-size", type=int, nargs=2, default=[512, 512], metavar=("W", "H"))
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"),
                        help="the main venv's Python, to build the zip")
    args = parser.parse_args()
    easel = install(args.python)
    objects = build_objects_scene()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = args.view_size
    targets = [objects["cube"], objects["sphere"], objects["plane"]]
    cameras = easel.multiview.make_orbit_rig(bpy.context, targets, 4, 30.0, 1.0)
    width, height = args.view_size
    rng = np.random.default_rng(0)
    views = []
    for camera in cameras:
        scene.camera = camera
        with tempfile.TemporaryDirectory() as folder:
            depth, _ = easel.render.render_depth(scene, bpy.context.view_layer, width, height, folder)
        projection = easel.render.camera_projection(scene, width, height)
        views.append(easel.blend.View(projection, depth, rng.random((height, width, 4), dtype=np.float32)))
    uv = {obj.name: easel.bake.prepare_uv(obj, "SMART") for obj in targets}
    depsgraph = bpy.context.evaluated_depsgraph_get()
    timings: dict[int, dict[str, list[float]]] = {size: {} for size in args.sizes}

    def timed(size: int, part: str, call):
        start = time.perf_counter()
        out = call()
        timings[size].setdefault(part, []).append(time.perf_counter() - start)
        return out

    for _run in range(args.runs):
        for size in args.sizes:  # alternating, so load hits every size alike
            start = time.perf_counter()
            for obj in targets:
                easel.bake.bake_object(obj, views, uv[obj.name], size, name=f"bench {obj.name}", job_id="bench",
                                       depsgraph=depsgraph)
            timings[size].setdefault("whole bake (3 objects)", []).append(time.perf_counter() - start)
            for obj in targets:
                texels = timed(size, "texels (evaluated mesh → UV raster)",
                               lambda: easel.bake.surface_texels(obj, depsgraph, uv[obj.name], size))
                result = timed(size, "blend 4 views", lambda: easel.blend.blend(views, texels.points, texels.normals))
                colour = np.zeros((size * size, 4), np.float32)
                colour[texels.index[result.seen]] = result.colour[result.seen]
                known = np.zeros(size * size, bool)
                known[texels.index[result.seen]] = True
                timed(size, "fill unseen texels", lambda: easel.texels.fill(colour.reshape(size, size, 4),
                                                                               known.reshape(size, size)))
            for image in [i for i in bpy.data.images if i.name.startswith("bench ")]:
                image.use_fake_user = False
                bpy.data.images.remove(image)
    print(f"Blender {bpy.app.version_string}; views {width}x{height}; medians of {args.runs} runs (3 objects)")
    parts = list(timings[args.sizes[0]])
    print("| part | " + " | ".join(f"{s}²" for s in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    for part in parts:
        # The parts are timed per object: sum the three objects of each run, then take the median.
        cells = []
        for size in args.sizes:
            values = timings[size][part]
            per_run = values if part.startswith("whole") else [sum(values[i:i + 3]) for i in range(0, len(values), 3)]
            cells.append(f"{statistics.median(per_run):.2f} s")
        print(f"| {part} | " + " | ".join(cells) + " |")
    bpy.ops.preferences.addon_disable(module="bl_ext.user_default.easel")


if __name__ == "__main__":
    main()
