"""Results survive what happens around them — in the real host, against ``easel serve`` on its demo
models: the connection drops while a job runs (a TCP proxy between the add-on and the server is
cut; the transport reconnects with the same client id and the server resumes the job), the result
arrived just before a drop, the server restarted and lost the job, another file was opened while a
job ran, and the objects a job was made for were deleted.

``bpy.app.timers`` never fire in Blender built as a module: the tests call the add-on's dispatcher
(``runtime.dispatch``, what its timer runs) directly, in loops — and where a test needs "the main
thread was busy while the network did something", it simply does not call it for a while.
"""
from __future__ import annotations

import re
import time

import bpy
import numpy as np
import pytest

from conftest import WAIT_S, free_port, serve
from scene import build_scene
from tcp_proxy import TcpProxy
from test_blender_controlnet import interior_error
from test_texture_from_depth import configure, wait_for_jobs


def materials() -> list[str]:
    return [bpy.data.objects[name].material_slots[0].material.name for name in ("Ground", "Box")]


def dispatch_until(easel, condition, what: str) -> list[str]:
    """Call the dispatcher until ``condition()``; returns the panel's status line after each call."""
    state = easel.runtime.get()
    statuses = []
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: timed out; status: {state.book.status}"
        easel.runtime.dispatch()
        statuses.append(state.book.status)
        time.sleep(0.02)
    return statuses


def start_texture(easel, url: str, **settings) -> str:
    configure(easel, url, **settings)
    assert bpy.ops.easel.texture_from_depth() == {"FINISHED"}
    (job_id,) = easel.runtime.get().book.jobs
    return job_id


def log_lines(log, pattern: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if re.search(pattern, line)]


@pytest.fixture
def proxy(backend):
    proxy = TcpProxy(backend.port)
    yield proxy
    proxy.close()


def test_a_job_running_when_the_connection_drops_is_resumed_and_applied(extension, backend, proxy):
    easel = extension
    state = easel.runtime.get()
    build_scene()
    job_id = start_texture(easel, f"ws://127.0.0.1:{proxy.port}", steps=60)
    job = state.book.jobs[job_id]
    dispatch_until(easel, lambda: job.phase == "running", "the job starts")
    assert proxy.cut() == 1  # the network drops mid-job
    statuses = dispatch_until(easel, lambda: not state.book.jobs, "the job ends")
    assert any(s.startswith("connection lost; reconnecting (1 job(s) wait") for s in statuses), statuses[:5]
    entry = state.book.entry(job_id)
    assert entry.status is easel.jobs.Status.APPLIED, entry.label
    assert materials() == ["Ground (Easel)", "Box (Easel)"]
    assert proxy.accepted == 2  # one reconnect, through the same proxy
    client = state.book.welcome.client_id
    resumed = log_lines(backend.log, rf"client {client} connected .*resumed 1 jobs")
    assert resumed, log_lines(backend.log, rf"client {client}")


def test_a_result_that_arrived_before_the_drop_is_applied(extension, backend, proxy):
    easel = extension
    state = easel.runtime.get()
    build_scene()
    job_id = start_texture(easel, f"ws://127.0.0.1:{proxy.port}", steps=3)
    # The main thread is busy elsewhere (no dispatch) while the server finishes and sends the result…
    deadline = time.monotonic() + WAIT_S
    while not (log_lines(backend.log, rf"/{job_id} finished") and proxy.downstream_idle(1.0)):
        assert time.monotonic() < deadline, "the server did not finish the job"
        time.sleep(0.05)
    # …then the network goes for good: the proxy now leads nowhere, so every reconnect fails.
    proxy.retarget(free_port())
    assert proxy.cut() == 1
    time.sleep(0.5)
    dispatch_until(easel, lambda: not state.book.jobs, "the result is applied")
    entry = state.book.entry(job_id)
    assert entry.status is easel.jobs.Status.APPLIED, entry.label
    assert materials() == ["Ground (Easel)", "Box (Easel)"]
    easel.runtime.dispatch()
    assert state.book.reconnecting  # the transport keeps trying; nothing was waiting on it


def test_a_job_the_restarted_server_no_longer_has_is_marked_lost(extension, backend, backend_cache, proxy, tmp_path):
    easel = extension
    state = easel.runtime.get()
    build_scene()
    with serve(backend_cache, tmp_path / "restarted.log") as restarted:
        job_id = start_texture(easel, f"ws://127.0.0.1:{proxy.port}", steps=150)
        job = state.book.jobs[job_id]
        dispatch_until(easel, lambda: job.phase == "running", "the job starts")
        # The server "restarts": the add-on's next connection reaches a server that never saw it.
        proxy.retarget(restarted.port)
        proxy.cut()
        dispatch_until(easel, lambda: not state.book.jobs, "the job ends")
        entry = state.book.entry(job_id)
        assert entry.status is easel.jobs.Status.LOST, entry.label
        assert "server no longer had this job" in entry.message and "run it again" in state.book.status
        assert materials() == ["Ground", "Box"] and bpy.data.images.get("Easel depth") is None


def test_a_result_for_a_file_that_was_closed_waits_in_the_history(extension, backend, tmp_path):
    easel = extension
    state = easel.runtime.get()
    build_scene()
    path = tmp_path / "scene.blend"
    assert bpy.ops.wm.save_as_mainfile(filepath=str(path)) == {"FINISHED"}
    job_id = start_texture(easel, backend.url, steps=30)
    job = state.book.jobs[job_id]
    depth = job.context["depth"]
    # The same file opened again: objects of the same names, but not the ones the job was made for.
    assert bpy.ops.wm.open_mainfile(filepath=str(path)) == {"FINISHED"}
    assert bpy.app.timers.is_registered(easel.runtime.dispatch)  # persistent: a load does not stop it
    dispatch_until(easel, lambda: not state.book.jobs, "the job ends")
    entry = state.book.entry(job_id)
    assert entry.status is easel.jobs.Status.KEPT and "another file was opened" in entry.message, entry.label
    assert materials() == ["Ground", "Box"]
    assert not [i for i in bpy.data.images if i.name.startswith("Easel")]  # nothing put into the other file
    assert [e.job_id for e in state.book.kept()] == [job_id]
    # Apply (the history's button): onto the objects of those names, from the camera at submit time.
    assert bpy.ops.easel.apply_result.poll()
    assert bpy.ops.easel.apply_result(job_id=job_id) == {"FINISHED"}
    assert entry.status is easel.jobs.Status.APPLIED and materials() == ["Ground (Easel)", "Box (Easel)"]
    assert not bpy.ops.easel.apply_result.poll()
    # The depth pass image went with the old file: it was rebuilt from the job's depth, exactly.
    rebuilt = bpy.data.images["Easel depth"]
    assert rebuilt.packed_file is not None and rebuilt.colorspace_settings.name == "Non-Color"
    values = np.empty(len(rebuilt.pixels), np.float32)
    rebuilt.pixels.foreach_get(values)
    assert np.array_equal(values.reshape(*depth.shape, 4)[..., 0], depth)
    error = interior_error(entry.images[0].data, bpy.data.objects["Camera"], depth)
    print(f"applied after a file load: camera view max error {error.max()}/255 over {error.shape[0]} pixels")
    assert error.max() <= 2


def test_objects_deleted_while_a_job_runs_are_never_textured_by_name(extension, backend):
    easel = extension
    state = easel.runtime.get()
    objects = build_scene()
    job_id = start_texture(easel, backend.url, steps=20)
    bpy.data.objects.remove(objects["cube"])
    bpy.ops.mesh.primitive_cube_add(size=0.5, location=(3.0, 3.0, 3.0))  # another object takes its name
    impostor = bpy.context.object
    impostor.name = "Box"
    impostor.data.materials.append(bpy.data.materials.new("Impostor"))
    dispatch_until(easel, lambda: not state.book.jobs, "the job ends")
    entry = state.book.entry(job_id)
    assert entry.status is easel.jobs.Status.APPLIED and "gone before the result came: Box" in entry.message
    assert bpy.data.objects["Ground"].material_slots[0].material.name == "Ground (Easel)"
    assert impostor.material_slots[0].material.name == "Impostor" and "Easel Projection" not in impostor.data.uv_layers

    # All of them gone: the result is kept — its image packed into the file, the entry in the history.
    objects = build_scene()
    job_id = start_texture(easel, backend.url, steps=20)
    for role in ("plane", "cube", "under"):
        bpy.data.objects.remove(objects[role])
    dispatch_until(easel, lambda: not state.book.jobs, "the job ends")
    entry = state.book.entry(job_id)
    assert entry.status is easel.jobs.Status.KEPT and "were deleted" in entry.message, entry.label
    image = bpy.data.images[f"Easel texture {entry.seed}"]
    assert image.packed_file is not None and f"'{image.name}'" in entry.message
    with pytest.raises(RuntimeError, match="none of the objects it was made for"):
        bpy.ops.easel.apply_result(job_id=job_id)
    assert entry.status is easel.jobs.Status.KEPT
    # Objects of those names again (a new scene): Apply uses them.
    build_scene()
    assert bpy.ops.easel.apply_result(job_id=job_id) == {"FINISHED"}
    assert materials() == ["Ground (Easel)", "Box (Easel)"]
