"""Inside Krita: live strength, steps and seed come back as the painter left them (issue 13)."""
import sys

from scenario_kit import find_docker


def run(ctx):
    ext = sys.modules["easel_krita"].extension
    body = find_docker(ctx.app.activeWindow())  # the Easel docker's content; its Live workspace
    yield 0.2
    settings = ext.live.settings
    ctx.record("loaded", {"strength": settings.strength, "steps": settings.steps, "seed": settings.seed})
    ctx.record("docker", None if body is None else {
        "strength": body.live_strength_slider.value() / 100, "steps": body.live_steps_spin.value(),
        "seed": body.live_seed_spin.value()})
    if body is not None:  # the painter changes them in the docker's Live workspace; Krita quits next
        body.set_workspace("live")
        body.live_strength_slider.setValue(45)
        body.live_steps_spin.setValue(5)
    yield 0.2
