"""The last step's preview renders while the VAE decodes, and is still delivered before the result.

No timing: the last preview's delivery blocks until the decode has started. Had the worker waited
for the previews before decoding (as it did), that delivery would wait for a decode that never
starts and the job would fail on the bounded wait below.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import backend.tasks.common as common
from tiny_models import Recorder, engine, model_dirs, run  # noqa: F401 - engine and model_dirs are fixtures

WAIT_S = 60.0  # a bound so a regression fails instead of hanging; not a timing claim


@dataclass
class WaitsForDecode(Recorder):
    decoding: threading.Event = field(default_factory=threading.Event)
    order: list[str] = field(default_factory=list)

    def preview(self, step: int, total: int, width: int, height: int, jpeg: bytes) -> None:
        if step == total:
            assert self.decoding.wait(WAIT_S), "the last preview was waited for before the decode started"
        super().preview(step, total, width, height, jpeg)
        self.order.append(f"preview {step}")


def test_the_last_preview_overlaps_the_decode_and_arrives_before_the_result(engine, monkeypatch):  # noqa: F811
    progress = WaitsForDecode()
    decode = common.decode_latents

    def decode_latents(*args, **kwargs):
        progress.decoding.set()
        out = decode(*args, **kwargs)
        progress.order.append("decoded")
        return out

    monkeypatch.setattr(common, "decode_latents", decode_latents)
    output, _ = run(engine, "txt2img", model="tiny", width=64, height=64, steps=2, progress=progress)
    progress.order.append("result")
    assert [p[0] for p in progress.previews] == [1, 2]
    assert progress.order[-1] == "result" and "preview 2" in progress.order  # every preview before run() returned
    assert len(output.images) == 1
