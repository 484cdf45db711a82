"""The preview painter (painter.py) that Generate's jobs and live mode both draw through: the newest
offered preview wins, a preview its target no longer wants is not drawn, a result waits for a
preview being drawn, and ``finish`` lets that preview land before it returns.

The host is the STUB HOST of ``krita_fake_host.py`` (its JPEG decoding is Pillow's); the draws are
recorded by the test's targets. The same painter runs against real Krita in
``test_krita_e2e.py`` (Generate's previews) and ``test_krita_live_e2e.py`` (live previews).
"""
from __future__ import annotations

import asyncio
import io
import time

from PIL import Image

from easel_krita import pixels
from easel_krita.canvas_io import CanvasIO
from easel_krita.geometry import Placement, Rect
from easel_krita.painter import PreviewPainter, PreviewTarget
from easel_krita.protocol import ImageFormat, ImagePayload, StepPreview
from krita_fake_host import FakeCanvas, FakeDoc

W, H = 16, 8
RECT = Rect(0, 0, W, H)
PLACEMENT = Placement(RECT, RECT)


def _preview(rgb: tuple[int, int, int], step: int) -> StepPreview:
    out = io.BytesIO()
    Image.new("RGB", (W, H), rgb).save(out, "JPEG", quality=95)
    return StepPreview("job", step, 4, W, H, out.getvalue())


def _painter() -> PreviewPainter:
    canvas = CanvasIO(FakeCanvas(FakeDoc(W, H)), lambda what, started: None)
    return PreviewPainter(canvas, lambda coroutine, what: asyncio.get_running_loop().create_task(coroutine),
                          time.monotonic)


def _colour(bgra: bytes) -> tuple[int, int, int]:
    """The (approximate, JPEG) RGB of the first pixel of a BGRA buffer."""
    b, g, r = bgra[0], bgra[1], bgra[2]
    return r, g, b


async def _settle(condition, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_only_the_newest_offered_preview_is_drawn():
    async def scenario() -> list[bytes]:
        painter, drawn = _painter(), []

        async def draw(bgra: bytes) -> None:
            drawn.append(bgra)

        target = PreviewTarget(PLACEMENT, None, lambda: True, draw)
        for step, rgb in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250)], 1):
            painter.offer(_preview(rgb, step), target)  # all three before the painter runs once
        await _settle(lambda: drawn)
        await asyncio.sleep(0.05)
        painter.stop()
        return drawn

    drawn = asyncio.run(scenario())
    assert len(drawn) == 1 and len(drawn[0]) == W * H * 4
    r, g, b = _colour(drawn[0])
    assert b > 200 and r < 50 and g < 50  # the third (blue) one; the older two were dropped


def test_a_preview_its_target_no_longer_wants_is_not_drawn():
    async def scenario() -> tuple[list[bytes], int]:
        painter, drawn, asked = _painter(), [], []

        async def draw(bgra: bytes) -> None:
            drawn.append(bgra)

        def wanted() -> bool:
            asked.append(True)
            return False

        painter.offer(_preview((250, 0, 0), 1), PreviewTarget(PLACEMENT, None, wanted, draw))
        await _settle(lambda: asked)
        await asyncio.sleep(0.02)
        painter.stop()
        return drawn, len(asked)

    drawn, asked = asyncio.run(scenario())
    assert drawn == [] and asked >= 1


def test_finish_lets_the_preview_being_drawn_land_and_a_result_waits_for_it():
    async def scenario() -> list[str]:
        painter, events = _painter(), []
        entered, gate = asyncio.Event(), asyncio.Event()

        async def draw_preview(bgra: bytes) -> None:
            entered.set()
            await gate.wait()  # the preview's layer write is still going on
            events.append("preview")

        async def draw_result(bgra: bytes) -> None:
            events.append("result")

        painter.offer(_preview((250, 0, 0), 1), PreviewTarget(PLACEMENT, None, lambda: True, draw_preview))
        await entered.wait()
        image = ImagePayload.build(ImageFormat.RGBA8, W, H, bytes((10, 20, 30, 255)) * (W * H))
        result = asyncio.get_running_loop().create_task(
            painter.paint_result(image, PreviewTarget(PLACEMENT, None, lambda: True, draw_result)))
        finishing = asyncio.get_running_loop().create_task(painter.finish())
        await asyncio.sleep(0.05)
        assert not result.done() and not finishing.done() and events == []  # both wait on the preview
        gate.set()
        assert await result is True
        await finishing
        assert not painter.running
        return events

    assert asyncio.run(scenario()) == ["preview", "result"]


def test_a_result_the_target_no_longer_wants_is_not_drawn():
    async def scenario() -> tuple[bool, bool, list[bytes]]:
        painter, drawn = _painter(), []

        async def draw(bgra: bytes) -> None:
            drawn.append(bgra)

        image = ImagePayload.build(ImageFormat.RGBA8, W, H, bytes((10, 20, 30, 255)) * (W * H))
        placed = await painter.paint_result(image, PreviewTarget(PLACEMENT, None, lambda: False, draw))
        kept = await painter.paint_result(image, PreviewTarget(PLACEMENT, None, lambda: True, draw))
        return placed, kept, drawn

    placed, kept, drawn = asyncio.run(scenario())
    assert placed is False and kept is True
    assert drawn == [pixels.swap_red_blue(bytes((10, 20, 30, 255)) * (W * H))]
