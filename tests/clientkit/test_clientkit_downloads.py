"""clientkit.downloads: what a feature lacks on a server, worded for a painter with the download or
command that fixes it, and the tracker that follows one download from ``download_model`` to its end.
(The tracker over a real link and server: tests/backend/test_download_clients.py.)"""
from __future__ import annotations

import pytest

from clientkit import downloads as dl
from clientkit.events import DownloadNotSent
from protocol import DownloadFailed, DownloadFinished, DownloadInfo, DownloadProgress, ErrorCode, ModelInfo, ModelList
from protocol.transport import Disconnected

DEMO = ModelInfo("demo", "Demo", "base", "demo", demo=True)
DEMO_CANNY = ModelInfo("demo-canny", "Demo canny", "controlnet", "demo", control_type="canny", demo=True)
SD15 = ModelInfo("v1-5", "SD 1.5", "base", "sd15")
SDXL = ModelInfo("xl", "SDXL", "base", "sdxl")
CANNY15 = ModelInfo("canny15", "Canny", "controlnet", "sd15", control_type="canny")
OFFERS = (
    DownloadInfo("sd15", "base", "sd15", "Stable Diffusion 1.5 (pruned, EMA)", 4_265_000_000),
    DownloadInfo("sdxl", "base", "sdxl", "Stable Diffusion XL base 1.0", 6_939_000_000),
    DownloadInfo("sd15-canny", "controlnet-canny", "sd15", "ControlNet canny for SD 1.x (fp16)", 723_000_000),
    DownloadInfo("sd15-depth", "controlnet-depth", "sd15", "ControlNet depth for SD 1.x (fp16)", 723_000_000),
    DownloadInfo("sdxl-depth", "controlnet-depth", "sdxl", "ControlNet depth for SDXL", 2_500_000_000),
    DownloadInfo("annotators", "preprocessors", "", "weights of the preprocessors", 2_700_000_000),
    DownloadInfo("taesd", "previews", "sd15", "TAESD for SD 1.x", 10_000_000),
)


def listing(*models: ModelInfo, offers=OFFERS) -> ModelList:
    return ModelList(tuple(models), downloads=tuple(offers))


def test_a_demo_only_server_lacks_a_base_model_and_offers_sd15():
    missing = dl.check(listing(DEMO, DEMO_CANNY), dl.base_model())
    assert missing.message == "The server has only the demo model, which paints noise."
    assert missing.offer.name == "sd15" and missing.button_text == "Download (4.3 GB)"
    assert missing.text == "The server has only the demo model, which paints noise. Get Stable Diffusion 1.5 (pruned, EMA):"
    assert dl.check(listing(DEMO, SD15), dl.base_model()) is None


def test_a_server_without_downloads_names_the_command_to_run():
    missing = dl.check(listing(DEMO, offers=()), dl.base_model())
    assert missing.offer is None and missing.button_text == ""
    assert missing.command == "easel download sd15" and "`easel download sd15` on the server's machine" in missing.text
    net = dl.check(listing(SDXL, offers=()), dl.controlnet("depth", "sdxl", "the Depth control layer"))
    assert net.message == "The Depth control layer needs a depth ControlNet for SDXL models; the server has none."
    assert net.command == "easel download sdxl-depth"


def test_a_controlnet_is_missing_for_the_chosen_family_only():
    need = dl.controlnet("canny", "sd15", "the Sketch control layer")
    assert dl.check(listing(SD15, CANNY15), need) is None
    missing = dl.check(listing(SD15, DEMO_CANNY), need)  # a canny ControlNet of another family does not count
    assert missing.offer.name == "sd15-canny" and missing.button_text == "Download (723 MB)"
    depth_xl = dl.check(listing(SDXL, CANNY15), dl.controlnet("depth", "sdxl"))
    assert depth_xl.offer.name == "sdxl-depth"  # the offer of the model's family, not sd15-depth


def test_a_controlnet_no_preset_brings_says_where_to_put_one():
    missing = dl.check(listing(SDXL), dl.controlnet("lineart", "sdxl"))
    assert missing.offer is None and missing.command == ""
    assert missing.fix == ("Put a lineart ControlNet for SDXL into the server's ControlNet folder, or pick a "
                           "model of another family.")
    flux = dl.check(listing(ModelInfo("f", "Flux", "base", "flux")), dl.controlnet("depth", "flux"))
    assert flux.offer is None and "for Flux models" in flux.message


def test_an_offer_the_server_already_has_fixes_nothing():
    have = tuple(DownloadInfo(o.name, o.feature, o.family, o.description, o.size, have=o.name == "sd15-canny")
                 for o in OFFERS)
    missing = dl.check(listing(SD15, offers=have), dl.controlnet("canny", "sd15"))
    assert missing.offer is None and missing.command == "easel download sd15-canny"


def test_preprocessor_weights_are_judged_by_the_annotators_offer():
    assert dl.check(listing(SD15), dl.preprocessor("canny")) is None  # an image operation: no weights
    missing = dl.check(listing(SD15), dl.preprocessor("depth_midas", "making a depth layer"))
    assert missing.offer.name == "annotators" and missing.message.startswith("Making a depth layer needs the annotator")
    have = tuple(DownloadInfo(o.name, o.feature, o.family, o.description, o.size, have=True) for o in OFFERS)
    assert dl.check(listing(SD15, offers=have), dl.preprocessor("depth_midas")) is None
    assert dl.check(listing(SD15, offers=()), dl.preprocessor("depth_midas")) is None  # the server did not say


def test_previews_need_taesd_of_the_family():
    missing = dl.check(listing(SD15), dl.previews("sd2"))  # TAESD for SD 1.x serves SD 2.1 too
    assert missing.offer.name == "taesd" and "blurry" in missing.message
    assert dl.check(listing(SDXL), dl.previews("sdxl")) is None  # no taesdxl offered: cannot tell
    assert dl.check(listing(SD15, offers=()), dl.previews("sd15")) is None


def test_first_missing_takes_needs_in_order():
    needs = [dl.base_model(), dl.controlnet("canny", "sd15"), dl.preprocessor("depth_midas")]
    assert dl.first_missing(listing(SD15, CANNY15), needs).offer.name == "annotators"
    assert dl.first_missing(listing(DEMO), needs).offer.name == "sd15"
    assert dl.first_missing(listing(SD15, CANNY15, offers=()), needs) is None


def test_the_command_table_is_the_servers_presets():
    download = pytest.importorskip("backend.download")
    assert dl.PRESETS == {(p.feature, p.family): p.name for p in download.PRESETS.values()}


def test_the_weightless_preprocessors_are_the_servers():
    preprocessors = pytest.importorskip("backend.preprocessors")
    assert dl.WEIGHTLESS_PREPROCESSORS == {p.name for p in preprocessors.PREPROCESSORS.values() if not p.files}


def test_sizes_for_people():
    assert [dl.size_text(n) for n in (10_000_000, 723_000_000, 4_265_000_000, 2_500)] == ["10 MB", "723 MB", "4.3 GB", "2 kB"]


# --------------------------------------------------------------------------- the tracker


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.refreshed = 0
        self.views: list = []

    def tracker(self) -> dl.DownloadTracker:
        return dl.DownloadTracker(lambda i, n: self.sent.append((i, n)), self.refresh, self.views.append, prefix="t")

    def refresh(self) -> None:
        self.refreshed += 1


CANNY_OFFER = OFFERS[2]
ANNOTATORS = OFFERS[5]


def test_the_tracker_follows_a_download_to_its_end_and_refreshes_the_list():
    seen = Recorder()
    tracker = seen.tracker()
    download_id = tracker.start(CANNY_OFFER)
    assert seen.sent == [(download_id, "sd15-canny")] and tracker.running
    assert tracker.handle(DownloadProgress(download_id, "control.safetensors", 361_500_000, 723_000_000))
    assert tracker.view.fraction == pytest.approx(0.5)
    assert tracker.view.text == "Downloading ControlNet canny for SD 1.x (fp16): 362 MB of 723 MB."
    assert not tracker.handle(DownloadProgress("someone-else", "x", 1, 2))  # not ours
    assert tracker.handle(DownloadFinished(download_id, "sd15-canny"))
    assert tracker.view.state == dl.FINISHED and tracker.view.fraction == 1.0 and not tracker.running
    assert tracker.view.text == "ControlNet canny for SD 1.x (fp16) is on the server now."
    assert seen.refreshed == 1
    assert [v.state for v in seen.views if v] == ["running", "running", "finished"]
    tracker.dismiss()
    assert tracker.view is None


def test_progress_over_several_files_counts_the_files_done():
    tracker = Recorder().tracker()
    download_id = tracker.start(ANNOTATORS)
    tracker.handle(DownloadProgress(download_id, "dpt_hybrid-midas-501f0c75.pt", 50, 100, file_index=2, files=4))
    assert tracker.view.fraction == pytest.approx((2 + 0.5) / 4)
    assert tracker.view.text.endswith("(file 3 of 4).")


def test_a_failure_is_one_sentence_and_a_second_download_waits():
    seen = Recorder()
    tracker = seen.tracker()
    download_id = tracker.start(CANNY_OFFER)
    with pytest.raises(RuntimeError, match="still downloading"):
        tracker.start(ANNOTATORS)
    tracker.handle(DownloadFailed(download_id, ErrorCode.LIMIT_EXCEEDED,
                                  "not enough free disk space: 0.5 GB free, 0.7 GB needed", "ab12"))
    assert tracker.view.state == dl.FAILED and seen.refreshed == 0
    assert tracker.view.text == ("The download of ControlNet canny for SD 1.x (fp16) failed: Not enough free disk "
                                 "space: 0.5 GB free, 0.7 GB needed. (Server log id ab12.)")
    assert tracker.start(ANNOTATORS) == "t-2"  # ended: the next one may start


def test_a_request_that_was_not_sent_and_a_dropped_connection_end_the_download():
    tracker = Recorder().tracker()
    download_id = tracker.start(CANNY_OFFER)
    assert tracker.handle(DownloadNotSent(download_id, "not connected to the Easel server; press Connect"))
    assert tracker.view.text.startswith("The download of ControlNet canny for SD 1.x (fp16) was not sent: Not connected")
    tracker.start(CANNY_OFFER)
    assert not tracker.handle(Disconnected("gone", will_retry=True))  # others see the drop too
    assert tracker.view.state == dl.FAILED and "the server goes on with it" in tracker.view.text


def test_the_tracker_keeps_the_latest_listing_and_leaves_it_to_others():
    tracker = Recorder().tracker()
    assert not tracker.handle(listing(SD15))
    assert tracker.listing.downloads == OFFERS


def test_a_failed_download_says_why_and_offers_to_try_again():
    offer = DownloadInfo("sd15", "base", "sd15", "Stable Diffusion 1.5", 4_265_000_000)
    missing = dl.Missing(dl.base_model(), "The server has no model to paint with.", offer)
    failed = dl.DownloadView("d1", "sd15", "failed", 0.4, "The download of Stable Diffusion 1.5 failed: No space.")
    assert dl.banner_state(missing, failed) == dl.BannerState(failed.text, "Try again (4.3 GB)", None, True)
    running = dl.DownloadView("d1", "sd15", "running", 0.4, "Downloading…")
    assert dl.banner_state(missing, running) == dl.BannerState("Downloading…", "", 0.4)
    done = dl.DownloadView("d1", "sd15", "finished", 1.0, "Stable Diffusion 1.5 is on the server now.")
    assert dl.banner_state(missing, done).button == "Download (4.3 GB)"  # something else is missing now: it comes first
    assert dl.banner_state(None, None) == dl.BannerState()
