"""Video files, cameras and streams through cv2: opening them, reading them on a thread, writing video.

`open_video` opens a file, camera, RTSP URL or GStreamer pipeline as a `VideoSource`; a `FrameReader` reads it
on a thread of its own, so that a source that stops delivering cannot hang a run, and says how it ended
(`StreamEnd`: end of input, ended early, stalled, max frames, stopped); a `VideoWriter` writes frames to a
hidden temporary file renamed into place when done. Frames are RGB or gray, uint8 or uint16, as in `media`.
OpenCV is imported lazily (the optional extra `camera`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ._lazy import require
from .errors import DataError


@dataclass
class VideoSource:
    """An open cv2.VideoCapture; `FrameReader` reads it on a thread of its own.

    frame_count is what a file's header announces (None for cameras and streams, which report 0 or nonsense):
    fewer decodable frames than that means the file was truncated or damaged.
    """

    spec: str
    capture: Any
    fps: float
    frame_count: int | None

    def close(self) -> None:
        self.capture.release()


# FFmpeg's own default for opening a network stream; a stall timeout above it raises it.
_OPEN_TIMEOUT_S = 30.0


def _msec(seconds: float) -> int:
    return min(int(1000 * seconds), 2**31 - 1)  # OpenCV takes its open parameters as C ints


def _open_capture(cv2: ModuleType, text: str, stall_timeout: float | None) -> Any:
    """A cv2.VideoCapture for `text`; URLs get FFmpeg's open and read timeouts where FFmpeg is there.

    The timeouts let FFmpeg give up on a dead network stream by itself, so that the reader thread ends and
    can be joined; a read timeout a second above the stall timeout keeps the stall (FrameReader's own clock)
    the one that is reported. Other backends refuse unknown open parameters, hence FFmpeg only, with a plain
    open as the fallback (an OpenCV that reads RTSP through GStreamer).
    """
    if stall_timeout is not None and "://" in text and cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            _msec(max(_OPEN_TIMEOUT_S, stall_timeout)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            _msec(stall_timeout + 1.0),
        ]
        cap = cv2.VideoCapture(text, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
    return cv2.VideoCapture(text)


def open_video(spec: str | Path, *, stall_timeout: float | None = None) -> VideoSource:
    """Open a video file, camera (index or /dev/videoN), RTSP URL or GStreamer pipeline.

    stall_timeout (seconds), where given, bounds how long FFmpeg waits on a network stream (see FrameReader).
    """
    cv2 = require("cv2", "reading video and camera streams")
    text = str(spec)
    if text.isdigit():
        cap = cv2.VideoCapture(int(text))
    elif "!" in text:
        if "GStreamer:                   YES" not in cv2.getBuildInformation():
            raise DataError(
                f"{text!r} looks like a GStreamer pipeline, but this OpenCV was built without GStreamer; "
                "use an OpenCV build with GStreamer (e.g. the one JetPack ships) or pass a file or camera"
            )
        cap = cv2.VideoCapture(text, cv2.CAP_GSTREAMER)
    else:
        if "://" not in text and not Path(text).exists():
            raise DataError(f"{text}: no such video file or device")
        cap = _open_capture(cv2, text, stall_timeout)
    if not cap.isOpened():
        cap.release()
        raise DataError(
            f"{text}: cannot open the video (unsupported codec, a file truncated before its index was written, "
            "a busy camera or an unreachable stream)"
        )
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    # Cameras and streams report 0 (or nonsense) for both.
    return VideoSource(
        spec=text, capture=cap, fps=fps if 0 < fps < 1000 else 30.0, frame_count=count if count > 0 else None
    )


# -- reading a source on a thread of its own ------------------------------------------------------------
# How a source ended (StreamEnd.reason); run_summary.json reports these words.
ENDED = "end of input"
ENDED_EARLY = "input ended early"
STALLED = "stalled"
MAX_FRAMES = "max frames"
STOPPED = "stopped"  # the run stopped reading (Ctrl-C, an error downstream)

DEFAULT_STALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class SourceFrame:
    """One frame as the source delivered it: `image` RGB or gray, or None with `problem` saying why not."""

    index: int
    image: np.ndarray | None
    problem: str | None = None


@dataclass(frozen=True)
class StreamEnd:
    reason: str  # one of ENDED, ENDED_EARLY, STALLED, MAX_FRAMES, STOPPED
    message: str


def _checked_rgb(cv2: ModuleType, frame: Any, expected: tuple[int, ...] | None) -> tuple[np.ndarray | None, str]:
    """A frame from cv2 (BGR) as RGB or gray, or (None, why it cannot be used).

    A driver or a damaged stream can hand over no image, a strange type or a frame of another size; any of
    them would break the denoiser or the video writer (whose size is fixed by the first frame), so it is
    dropped here, with the reason, and the stream goes on. `expected` is the first usable frame's shape.
    """
    if frame is None:
        return None, "the source returned no image"
    if not isinstance(frame, np.ndarray):
        return None, f"the source returned a {type(frame).__name__}, not an image"
    if frame.dtype not in (np.uint8, np.uint16):
        return None, f"pixel type {frame.dtype} (expected uint8 or uint16)"
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (3, 4))) or frame.size == 0:
        return None, f"frame layout {frame.shape} (expected H x W or H x W x 3 or 4)"
    if frame.ndim == 3:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB if frame.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
    if expected is not None and frame.shape != expected:
        return None, f"a {_shape_text(frame.shape)} frame in a {_shape_text(expected)} stream"
    return frame, ""


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}" + (f"x{shape[2]}" if len(shape) == 3 else " gray")


class _Finished:
    """The reader thread's last word in the queue: how the source ended."""

    def __init__(self, end: StreamEnd) -> None:
        self.end = end


class FrameReader:
    """Read a VideoSource on a thread of its own, so that a source that stops delivering cannot hang a run.

    cv2's read() blocks inside a driver, FFmpeg or GStreamer and cannot be interrupted from Python: the one
    way to give up on it is not to be the thread waiting in it. So this thread owns the capture (it alone
    reads and releases it), and iterating waits on a small queue with a timeout instead: no usable frame
    for `stall_timeout` seconds of waiting ends the stream as STALLED. The queue is small on purpose: a
    model slower than the camera makes the reader wait (backpressure) rather than pile frames up in memory.

    Iterate once; then `close()` (also on Ctrl-C) stops the thread and joins it. A thread still blocked in
    read() after `join_timeout` (a driver that never returns) is left behind as a daemon, `abandoned` says
    so, and it releases the capture itself if read() ever returns.
    """

    def __init__(
        self,
        source: VideoSource,
        *,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        max_frames: int | None = None,
        queue_size: int = 4,
        join_timeout: float = 2.0,
    ) -> None:
        if stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be > 0 seconds, got {stall_timeout}")
        self.source = source
        self.stall_timeout = float(stall_timeout)
        self.max_frames = max_frames
        self.join_timeout = join_timeout
        self.end: StreamEnd | None = None
        self.abandoned = False
        self._queue: queue.Queue[SourceFrame | _Finished] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._read = 0  # frames taken from the source, usable or not (written by the thread only)
        self._delivered = 0
        self._thread = threading.Thread(target=self._run, name=f"addunet-edge reader {source.spec[-60:]}", daemon=True)
        self._started = False

    # -- the reader thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        cv2 = require("cv2", "reading video")
        capture = self.source.capture
        expected: tuple[int, ...] | None = None
        end = StreamEnd(STOPPED, "the run stopped reading")
        try:
            # Bounded by the source (it ends), by max_frames, and by stop (set by close()).
            while not self._stop.is_set():
                if self.max_frames is not None and self._read >= self.max_frames:
                    end = StreamEnd(MAX_FRAMES, f"stopped after --max-frames {self.max_frames}")
                    break
                ok, frame = capture.read()
                if self._stop.is_set():  # read after the run stopped reading (a stall, Ctrl-C): not the run's
                    break
                if not ok:
                    end = self._ended(f"the source reported no more frames after {self._read}")
                    break
                image, problem = _checked_rgb(cv2, frame, expected)
                if image is not None and expected is None:
                    expected = image.shape
                item = SourceFrame(self._read, image, problem or None)
                self._read += 1
                if not self._put(item):
                    break
        except Exception as e:  # cv2.error from a broken driver or decoder ends the stream, it is not a crash
            end = self._ended(f"reading failed after {self._read} frames ({type(e).__name__}: {e})")
        finally:
            capture.release()
        self._put(_Finished(end))

    def _ended(self, message: str) -> StreamEnd:
        expected = self.source.frame_count
        if expected is not None and self._read < expected:
            return StreamEnd(
                ENDED_EARLY,
                f"{message}; the file announces {expected} frames, so it is truncated or damaged: "
                f"the {self._read} decodable frames were processed",
            )
        return StreamEnd(ENDED, message)

    def _put(self, item: SourceFrame | _Finished) -> bool:
        """Hand an item over, waiting while the queue is full; False once the run has stopped reading."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    # -- the run's side ---------------------------------------------------------------------------------------
    def start(self) -> FrameReader:
        self._thread.start()
        self._started = True
        return self

    def __enter__(self) -> FrameReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[SourceFrame]:
        """Frames (usable or not) until the source ends, stalls or reaches max_frames; then `end` says which."""
        if not self._started:
            raise RuntimeError("FrameReader.start() first")
        waited = 0.0  # seconds spent waiting since the last usable frame; processing time does not count
        unusable = 0
        while self.end is None:
            remaining = self.stall_timeout - waited
            got: SourceFrame | _Finished | None = None
            if remaining > 0:
                t0 = time.monotonic()
                with contextlib.suppress(queue.Empty):
                    got = self._queue.get(timeout=remaining)
                waited += time.monotonic() - t0
            if got is None:
                what = "no frame" if not unusable else f"no usable frame ({unusable} unusable ones)"
                self.end = StreamEnd(
                    STALLED,
                    f"{what} for {self.stall_timeout:g} s after {self._delivered} frames (--stall-timeout); "
                    "the stream was ended there",
                )
                return
            if isinstance(got, _Finished):
                self.end = got.end
                return
            self._delivered += 1
            if got.image is not None:
                waited, unusable = 0.0, 0
            else:
                unusable += 1
            yield got

    def close(self) -> int:
        """Stop and join the reader thread; returns how many frames it read that were never handed over."""
        self._stop.set()
        if not self._started:
            self.source.close()
            return 0
        self._drain()
        self._thread.join(timeout=self.join_timeout)
        self._drain()  # what it put between the first drain and its end
        self.abandoned = self._thread.is_alive()
        if self.end is None:
            self.end = StreamEnd(STOPPED, "the run stopped reading")
        # A thread still alive is blocked in read(): it has counted nothing it has not put, or lost at stop.
        return max(self._read - self._delivered, 0)

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:  # bounded: the queue holds at most queue_size items and the reader has stopped adding
                self._queue.get_nowait()


_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".webm": "VP80"}


class VideoWriter:
    """Write frames to a temporary file beside `path`; `finish()` renames it into place.

    Policy (documented in `run --help`): the temporary file is renamed on normal end *and* on Ctrl-C, so a
    stopped camera recording keeps every frame written so far; on any other error it is deleted.
    """

    def __init__(self, path: str | Path, fps: float, frame_size_wh: tuple[int, int], color: bool) -> None:
        cv2 = require("cv2", "writing video")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix.lower()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".partial{suffix}", dir=self.path.parent)
        os.close(fd)
        self.tmp_path = Path(tmp)
        fourcc = cv2.VideoWriter_fourcc(*_FOURCC.get(suffix, "mp4v"))
        self._writer = cv2.VideoWriter(str(self.tmp_path), fourcc, float(fps), frame_size_wh, color)
        if not self._writer.isOpened():
            self.tmp_path.unlink(missing_ok=True)
            raise DataError(f"cannot open a video writer for {self.path} (codec {_FOURCC.get(suffix)} unavailable?)")
        self._color = color
        self._size = frame_size_wh
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        cv2 = require("cv2", "writing video")
        if frame.dtype == np.uint16:
            frame = (frame.astype(np.uint32) * 255 + 32767) // 65535
        frame = frame.astype(np.uint8, copy=False)
        if (frame.shape[1], frame.shape[0]) != self._size:
            raise DataError(f"frame {frame.shape[1]}x{frame.shape[0]} does not match the video size {self._size}")
        if self._color:
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, axis=2)
            frame = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_RGB2BGR)
        elif frame.ndim == 3:
            frame = frame[..., 0]
        self._writer.write(np.ascontiguousarray(frame))
        self.frames_written += 1

    def finish(self) -> Path:
        """Close the file and move it into place; returns the final path."""
        self._writer.release()
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        self._writer.release()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()
