"""`run` on long and broken streams: a soak through the camera / stream reader, and the faults a camera has.

Every stream here goes through the code a camera goes through: `video_io.open_video` -> `cv2.VideoCapture` ->
the `video_io.FrameReader` thread -> `MediaRunner` (stream jobs, one frame per engine call). The sources are
a generated video read as a `file://` URL and over HTTP (FFmpeg's network path, as RTSP takes), and
scripted stand-ins for `cv2.VideoCapture(0)` for what only a driver does (a frame of the wrong size, a read
that never returns). The model is the tiny trained checkpoint of conftest, exported to ONNX.

The soak's short form runs in CI (8000 frames, seconds); its long form is opt-in: ADDUNET_STREAM_SOAK=1
(ADDUNET_STREAM_SOAK_FRAMES sets its length, 60000 by default) and prints its figures.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from addunet_edge import video_io
from addunet_edge.artifacts import read_json
from addunet_edge.errors import StallError
from addunet_edge.run_summary import LatencyHistogram

cv2 = pytest.importorskip("cv2")
pytest.importorskip("torch")

from video_files import video_info  # noqa: E402  (it needs cv2)

HW = (48, 64)
SHORT_FRAMES = 8000
LONG_FRAMES = int(os.environ.get("ADDUNET_STREAM_SOAK_FRAMES", "60000"))
LONG_SOAK = os.environ.get("ADDUNET_STREAM_SOAK") == "1"
# Resident memory may grow by at most this much (MiB) from the first sample at or after 10 % of the frames to
# the end. Measured here: the allocator takes a few steps of about 0.6 MiB each up to some 12000 frames and
# is flat after them (short form: +1.5 MiB from frame 1024 to 8000; long form: -0.4 MiB from frame 8192 to
# 60000). So the short form is a coarse guard: the per-frame row `run` used to keep for predictions.csv
# (about 240 bytes a frame) made it +3.1 MiB. The long form is the flatness check: 2 MiB over 54000 frames
# is under 40 bytes a frame.
MAX_RSS_GROWTH_SHORT_MIB = 2.5
MAX_RSS_GROWTH_LONG_MIB = 2.0
# The soak writes its stream as files of this many frames (--segment-frames): an MP4 muxer keeps an index
# entry per frame (about 84 bytes) until the file is closed, which one file per days-long stream would grow.
SEGMENT = 1000


def _frames(n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """n distinct BGR frames: a noisy picture that moves one pixel a frame, as a panning camera's would."""
    base = np.random.default_rng(seed).integers(0, 256, (*HW, 3), dtype=np.uint8)
    for i in range(n):
        yield np.roll(base, i, axis=1)


def _write_avi(path: Path, n: int, fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (HW[1], HW[0]), True)
    for frame in _frames(n):
        writer.write(frame)
    writer.release()
    return path


def _app():
    from addunet_edge.cli import app

    return app


def _invoke(*args: str | Path):
    result = CliRunner().invoke(_app(), [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _text(result) -> str:
    return " ".join(result.output.split())  # rich folds long lines at the runner's width


def _accounted(stream: dict[str, Any]) -> None:
    """Every frame read is written or dropped, and the dropped ones add up by reason."""
    assert stream["frames_read"] == stream["frames_written"] + stream["frames_dropped"], stream
    assert sum(stream["dropped_by_reason"].values()) == stream["frames_dropped"], stream


def _one_stream(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's summary and its one stream, whose frames are all accounted for."""
    summary = read_json(out / "run_summary.json")
    (stream,) = summary["streams"]
    _accounted(stream)
    return summary, stream


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("addunet-edge reader")]


@pytest.fixture(scope="module")
def onnx_model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from addunet_edge.export import export_onnx

    path, _parity = export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("model") / "tiny.fp32.onnx")
    return Path(path)


@pytest.fixture(scope="module")
def short_stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_avi(tmp_path_factory.mktemp("stream") / "long.avi", SHORT_FRAMES)


# -- latency percentiles in constant memory -----------------------------------------------------------------
def test_latency_percentiles_are_within_one_percent_of_exact_ones() -> None:
    rng = np.random.default_rng(0)
    ms = np.concatenate([rng.lognormal(1.0, 0.4, 20_000), rng.lognormal(4.0, 0.2, 300)])  # a slow tail
    hist = LatencyHistogram()
    for v in ms:
        hist.add(float(v))
    for q in (50, 90, 99):
        exact = float(np.percentile(ms, q, method="inverted_cdf"))
        assert abs(hist.percentile(q) / exact - 1) < 0.01, q
    assert hist.count == ms.size and hist.max_ms == ms.max() and hist.counts.size == LatencyHistogram.BINS
    assert LatencyHistogram().to_dict() == {"frames": 0}


# -- the soak ------------------------------------------------------------------------------------------------
def _soak(onnx_model: Path, video: Path, frames: int, out: Path, max_growth_mib: float) -> dict[str, Any]:
    """`addunet-edge run MODEL file://VIDEO` in a process of its own, as a user runs it on a stream."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "addunet_edge", "run", str(onnx_model), video.resolve().as_uri()),
            *("--out", str(out), "--threads", "1", "--stall-timeout", "20", "--segment-frames", str(SEGMENT)),
        ],
        capture_output=True,
        text=True,
        timeout=max(600, frames // 50),
    )
    minutes = (time.perf_counter() - started) / 60
    assert done.returncode == 0, done.stderr[-4000:]
    summary = read_json(out / "run_summary.json")
    (stream,) = summary["streams"]
    assert stream["input"] == video.resolve().as_uri() and stream["output"] == "stream0.mp4"
    segments = -(-frames // SEGMENT)
    assert stream["outputs"] == [f"stream0_{k:05d}.mp4" for k in range(segments)]
    assert stream["ended"] == video_io.ENDED, stream["message"]
    # Every frame either written or counted as dropped; here none is dropped.
    assert stream["frames_read"] == frames == stream["frames_expected"]
    _accounted(stream)
    assert stream["frames_dropped"] == 0 and summary["frames"] == frames
    # Every segment complete and playable: full ones hold SEGMENT frames, the last the rest.
    for k, name in enumerate(stream["outputs"]):
        assert video_info(out / name) == (min(SEGMENT, frames - k * SEGMENT), HW), name
    with open(out / "predictions.csv", newline="") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    assert rows == frames
    # Latency percentiles, per stream and for the run.
    lat = stream["latency_ms"]
    assert lat["frames"] == frames and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert summary["latency_ms"] == lat
    # Memory flat after warm-up: samples after 1, 2, 4, ... frames and at the end.
    rss = {k: v for k, v in stream["rss_mib_after_frames"].items() if k != "end"}
    after_warmup = min(int(k) for k in rss if int(k) >= frames // 10)
    growth = stream["rss_mib_after_frames"]["end"] - rss[str(after_warmup)]
    figures = {
        "frames": frames,
        "minutes": round(minutes, 2),
        "fps": stream["fps"],
        "rss_mib_first_frame": rss["1"],
        "rss_mib_after_warmup": rss[str(after_warmup)],
        "warmup_frames": after_warmup,
        "rss_mib_end": stream["rss_mib_after_frames"]["end"],
        "rss_growth_mib": round(growth, 2),
        "dropped": stream["frames_dropped"],
        "latency_ms": lat,
    }
    print("\nstream soak:", json.dumps(figures))
    assert growth < max_growth_mib, figures
    assert not list(out.glob(".*")), "temporary files left behind"
    return figures


def test_stream_soak_short(onnx_model: Path, short_stream: Path, tmp_path: Path) -> None:
    _soak(onnx_model, short_stream, SHORT_FRAMES, tmp_path / "out", MAX_RSS_GROWTH_SHORT_MIB)


@pytest.mark.slow
@pytest.mark.skipif(
    not LONG_SOAK, reason="the long stream soak takes minutes: run it with ADDUNET_STREAM_SOAK=1 (CI runs the short)"
)
def test_stream_soak_long(onnx_model: Path, tmp_path: Path) -> None:
    video = _write_avi(tmp_path / "long.avi", LONG_FRAMES)
    _soak(onnx_model, video, LONG_FRAMES, tmp_path / "out", MAX_RSS_GROWTH_LONG_MIB)


# -- a camera that hands over broken frames --------------------------------------------------------------------
BLOCK = object()  # a read that does not return until the test lets it


class ScriptedCamera:
    """Stands for cv2.VideoCapture(0): hands over what a driver might, item by item, then ends.

    An item is a frame (any object cv2 could return with ok=True, None included) or BLOCK.
    """

    def __init__(self, script: list[Any], period_s: float = 0.0) -> None:
        self.script = script
        self.period_s = period_s
        self.unblock = threading.Event()
        self.released = threading.Event()
        self.reads = 0

    def isOpened(self) -> bool:
        return True

    def get(self, _prop: int) -> float:
        return 0.0  # what cameras report for the frame count (and often the fps)

    def read(self) -> tuple[bool, Any]:
        if self.reads >= len(self.script):
            return False, None
        item = self.script[self.reads]
        self.reads += 1
        if item is BLOCK:
            self.unblock.wait(timeout=60)
            return False, None
        if self.period_s:
            time.sleep(self.period_s)
        return True, item

    def release(self) -> None:
        self.released.set()


@pytest.fixture()
def camera(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ScriptedCamera]]:
    """Installs the next ScriptedCamera as camera 0; lets any blocked read go at the end."""
    cameras: list[ScriptedCamera] = []

    def capture(index: Any, *args: Any) -> ScriptedCamera:
        assert index == 0 and not args, "only camera 0 is scripted"
        return cameras[0]

    monkeypatch.setattr(cv2, "VideoCapture", capture)
    yield cameras
    for cam in cameras:
        cam.unblock.set()


def test_corrupt_frames_in_a_camera_stream_are_dropped_with_reasons(onnx_model, camera, tmp_path):
    frames = list(_frames(60))
    script: list[Any] = list(frames)
    script[20] = frames[20][:32, :32]  # another size: would break the video writer
    script[30] = frames[30].astype(np.float32)  # another pixel type
    script[40] = None  # ok=True and no image
    script[45] = b"\x00garbage"  # not an array at all
    camera.append(ScriptedCamera(script))
    out = tmp_path / "out"
    result = _invoke("run", onnx_model, "0", "--out", out, "--threads", "1")
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "0: 60 frames read, 56 written, 4 dropped; end of input" in text
    assert "frame 20: a 32x32x3 frame in a 64x48x3 stream" in text
    summary, stream = _one_stream(out)
    assert (stream["frames_read"], stream["frames_written"], stream["frames_dropped"]) == (60, 56, 4)
    assert stream["dropped_by_reason"] == {
        "a 32x32x3 frame in a 64x48x3 stream": 1,
        "pixel type float32 (expected uint8 or uint16)": 1,
        "the source returned no image": 1,
        "the source returned a bytes, not an image": 1,
    }
    assert [b.split(":")[0] for b in stream["broken_frames"]] == ["frame 20", "frame 30", "frame 40", "frame 45"]
    assert summary["processed"] == ["0"] and summary["frames"] == 56 and summary["frames_dropped"] == 4
    assert video_info(out / "camera0.mp4") == (56, HW)
    assert camera[0].released.is_set() and not _reader_threads()


# -- a truncated video file ---------------------------------------------------------------------------------
def test_truncated_video_is_processed_as_far_as_it_decodes(onnx_model, tmp_path):
    whole = _write_avi(tmp_path / "whole.avi", 40).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: len(whole) // 2])  # the index at the end is gone, half the frames with it
    out = tmp_path / "out"
    result = _invoke("run", onnx_model, cut, "--out", out, "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "input ended early" in _text(result) and "truncated or damaged" in _text(result)
    summary, stream = _one_stream(out)
    assert summary["ended_early"] == [str(cut)] and stream["ended"] == video_io.ENDED_EARLY
    assert stream["frames_expected"] == 40 and 10 < stream["frames_read"] < 40
    # What was decodable is written, into a complete file that decodes to its end.
    assert video_info(out / "cut.avi") == (stream["frames_written"], HW)
    assert stream["frames_written"] >= stream["frames_read"] - 1  # the last, half-written frame may not decode
    assert not list(out.glob(".*partial*"))


def test_truncated_mp4_without_its_index_is_bad_input(onnx_model, tmp_path):
    whole = tmp_path / "whole.mp4"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (HW[1], HW[0]), True)
    for frame in _frames(20):
        writer.write(frame)
    writer.release()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # mp4 writes its index (moov) last
    out = tmp_path / "out"
    result = _invoke("run", onnx_model, cut, "--out", out)
    assert result.exit_code == 2, result.output
    assert "cannot open the video" in _text(result) and "truncated" in _text(result)
    assert read_json(out / "run_summary.json")["skipped"][0]["input"] == str(cut)
    assert not list(out.glob("*.mp4")) and not list(out.glob(".*partial*"))


# -- a source that stops delivering -------------------------------------------------------------------------
class StallingHTTPServer:
    """Serves a video over HTTP, sends the first `fraction` of it, then holds the connection open silently.

    FFmpeg reads it as it reads an IP camera: what a network camera that hangs looks like to `run`.
    """

    def __init__(self, data: bytes, fraction: float) -> None:
        self.data, self.fraction = data, fraction
        self.release = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(30)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/camera.avi"
        self._thread = threading.Thread(target=self._serve, name="stalling http server", daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:  # nobody came (or closed): nothing to serve
            return
        with conn:
            conn.recv(4096)
            head = f"HTTP/1.0 200 OK\r\nContent-Type: video/x-msvideo\r\nContent-Length: {len(self.data)}\r\n\r\n"
            conn.sendall(head.encode() + self.data[: int(len(self.data) * self.fraction)])
            self.release.wait(timeout=60)

    def __enter__(self) -> StallingHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._sock.close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


def test_network_stream_that_stalls_ends_with_exit_6_and_a_complete_video(onnx_model, tmp_path):
    video = _write_avi(tmp_path / "cam.avi", 200, fps=10.0)
    out = tmp_path / "out"
    with StallingHTTPServer(video.read_bytes(), fraction=0.6) as server:
        started = time.monotonic()
        result = _invoke("run", onnx_model, server.url, "--out", out, "--threads", "1", "--stall-timeout", "1")
        elapsed = time.monotonic() - started
    assert result.exit_code == StallError.exit_code == 6, result.output
    text = _text(result)
    assert f"{server.url} stalled after" in text and "no frame for 1 s" in text and "is complete" in text
    summary, stream = _one_stream(out)
    assert summary["stalled"] == [server.url] and stream["ended"] == video_io.STALLED
    assert 100 <= stream["frames_written"] < 200 and stream["frames_dropped"] == 0
    assert video_info(out / "stream0.mp4") == (stream["frames_written"], HW)
    # FFmpeg's own read timeout (a second above the stall timeout) let the reader thread go: it was joined.
    assert stream["reader_thread_abandoned"] is False and not _reader_threads()
    assert elapsed < 30


def test_camera_whose_read_never_returns_is_ended_and_its_thread_left_behind(onnx_model, camera, tmp_path):
    camera.append(ScriptedCamera([*_frames(12), BLOCK]))
    out = tmp_path / "out"
    result = _invoke("run", onnx_model, "0", "--out", out, "--threads", "1", "--stall-timeout", "0.5")
    assert result.exit_code == 6, result.output
    text = _text(result)
    assert "0 stalled after 12 written frames (no frame for 0.5 s after 12 frames" in text
    assert "left behind" in text
    _, stream = _one_stream(out)
    assert stream["frames_written"] == 12 and stream["reader_thread_abandoned"] is True
    assert video_info(out / "camera0.mp4") == (12, HW)
    # The driver's read returns at last: the thread releases the camera and ends.
    (thread,) = _reader_threads()
    camera[0].unblock.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and camera[0].released.is_set()


def test_camera_that_only_sends_garbage_stalls_and_one_that_never_starts_writes_nothing(onnx_model, camera, tmp_path):
    # 20 good frames, then unusable ones at 100 per second: no usable frame for the stall timeout ends it.
    camera.append(ScriptedCamera([*_frames(20), *([None] * 500)], period_s=0.01))
    result = _invoke("run", onnx_model, "0", "--out", tmp_path / "a", "--stall-timeout", "0.5")
    assert result.exit_code == 6, result.output
    assert "no usable frame (" in _text(result)
    (stream,) = read_json(tmp_path / "a" / "run_summary.json")["streams"]
    _accounted(stream)
    assert stream["frames_written"] == 20 and 10 < stream["dropped_by_reason"]["the source returned no image"] < 500
    assert len(stream["broken_frames"]) == 20  # listed one by one up to 20; all counted by reason
    camera.clear()
    camera.append(ScriptedCamera([BLOCK]))
    result = _invoke("run", onnx_model, "0", "--out", tmp_path / "b", "--stall-timeout", "0.3")
    assert result.exit_code == 6, result.output
    assert "no frame for 0.3 s after 0 frames" in _text(result)
    assert not (tmp_path / "b" / "camera0.mp4").exists()
    camera[0].unblock.set()
    for thread in _reader_threads():
        thread.join(timeout=10)


def test_stall_timeout_must_be_a_positive_number(onnx_model, tmp_path):
    for bad in ("0", "-1", "nan", "inf"):
        result = _invoke("run", onnx_model, "0", "--out", tmp_path / "out", "--stall-timeout", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "--stall-timeout must be a number of seconds > 0" in _text(result)


# -- Ctrl-C during a stream --------------------------------------------------------------------------------
def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_stream_closes_the_video_cleanly(onnx_model, short_stream, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "addunet_edge", "run", str(onnx_model), short_stream.resolve().as_uri()),
            *("--out", str(out), "--threads", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that starts this suite in the background ignores SIGINT, and its children inherit that:
        # give the run Python's own Ctrl-C handling, as a terminal would.
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        # The hidden temporary video appears with the first denoised frame: interrupt a stream in full flow.
        while not list(out.glob(".stream0.*.partial.mp4")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    summary, stream = _one_stream(out)
    assert summary["interrupted"] is True and stream["ended"] == "interrupted"
    assert summary["partial"] == [short_stream.resolve().as_uri()]
    assert 0 < stream["frames_written"] < SHORT_FRAMES
    # A playable file holding exactly the frames the summary says were written; no temporary file left.
    assert video_info(out / "stream0.mp4") == (stream["frames_written"], HW)
    assert not list(out.glob(".*partial*"))
