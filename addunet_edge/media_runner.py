"""Running a `FrameDenoiser` over images, folders, videos, cameras and streams: `MediaRunner`.

Images are read and written whole; videos and streams are read by a `video_io.FrameReader` thread and batched
through the denoiser, their outputs written by `video_io.VideoWriter` (in segments if asked), every frame
counted in its `run_summary.StreamStats`. Per-frame classes go to a predictions file that is never held in
memory; Ctrl-C is held back while a frame is written and counted, so that files and summary agree.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

from . import media, video_io
from .artifacts import atomic_path, atomic_write_json
from .ctrl_c import ctrl_c_deferred
from .engines.ensemble import SelfEnsemble
from .errors import AddUNetEdgeError, ConfigError, DataError, StallError
from .pipeline import FrameDenoiser, FrameResult
from .run_jobs import MediaJob, plan_jobs
from .run_summary import FAILED, INTERRUPTED, RunSummary, StreamStats

FrameCallback = Callable[[str, int, int | None], None]

# What a single bad input may raise: our own errors, I/O errors, and the runtimes' errors for a bad tensor.
_SKIPPABLE = (AddUNetEdgeError, OSError, ValueError, RuntimeError)


class _Taken(NamedTuple):
    """A usable frame the run took from the reader, and when (the start of its latency)."""

    index: int
    image: np.ndarray
    taken_at: float


class _PredictionWriter:
    """Per-frame rows appended to a hidden temporary file that is renamed into place when the run ends.

    The rows are not kept in memory: a camera that runs for days makes millions of them. The file is
    created with the first row (a run without one writes none); `close()` renames it (artifacts.atomic_path:
    fsync, then rename). A later row reopens it: the rows so far are copied into a new temporary file.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self._stack: contextlib.ExitStack | None = None
        self._file: TextIO | None = None
        self._csv: csv.DictWriter[str] | None = None

    def add(self, row: dict[str, Any]) -> None:
        if self._file is None:
            self._open(list(row))
        assert self._file is not None
        if self._csv is not None:
            self._csv.writerow(row)
        else:
            self._file.write(json.dumps(row) + "\n")

    def _open(self, fields: list[str]) -> None:
        stack = contextlib.ExitStack()
        tmp = stack.enter_context(atomic_path(self.path))
        had_rows = self.path.is_file()
        if had_rows:
            shutil.copyfile(self.path, tmp)
        # newline="" lets the csv module write its own line ends, as it asks.
        self._file = stack.enter_context(open(tmp, "a", encoding="utf-8", newline=""))  # noqa: SIM115
        self._stack = stack
        if self.fmt == "csv":
            self._csv = csv.DictWriter(self._file, fieldnames=fields)
            if not had_rows:
                self._csv.writeheader()

    def close(self) -> None:
        """Close and rename the file into place (it keeps every row written, Ctrl-C or not)."""
        stack, self._stack, self._file, self._csv = self._stack, None, None, None
        if stack is not None:
            stack.close()


class MediaRunner:
    """Run a FrameDenoiser over image files, folders, videos and streams, writing results under `out_dir`.

    Outputs are written atomically (images) or to a hidden temporary file renamed at the end (videos). On
    Ctrl-C the video being written is closed and renamed (so a camera recording keeps its frames; it is
    listed as partial), predictions and the summary are written, and KeyboardInterrupt propagates. A broken
    file is reported in `summary.skipped` and the run goes on; `failures` keeps the error of every input
    skipped whole, so that a caller can tell bad input from other failures.

    Videos, cameras and streams are read by a `video_io.FrameReader` thread: a frame that cannot be used is
    dropped with its reason and the stream goes on; a source that delivers no usable frame for
    `stall_timeout` seconds is ended there (its video kept, complete; `summary.stalled`); a file that ends
    before the frame count its header announces is processed as far as it decodes (`summary.ended_early`).
    Each gets a `StreamStats` in `summary.streams`: frames read, written and dropped, latency percentiles.
    Nothing is kept per frame, except by the video file being written: an MP4 muxer holds an index entry per
    frame (about 84 bytes) until the file is closed, and a file whose writer is killed (kill -9, power) has
    no index and does not play. `segment_frames` bounds both: each video is written as files of that many
    frames (<stem>_00000.mp4, <stem>_00001.mp4, ...), each renamed into place complete when it is full.
    """

    def __init__(
        self,
        denoiser: FrameDenoiser,
        out_dir: str | Path,
        *,
        predictions: str = "csv",
        side_by_side: bool = False,
        max_frames: int | None = None,
        stall_timeout: float = video_io.DEFAULT_STALL_TIMEOUT,
        segment_frames: int | None = None,
        on_frame: FrameCallback | None = None,
    ) -> None:
        if predictions not in ("csv", "jsonl", "none"):
            raise ConfigError(f"predictions must be csv, jsonl or none, got {predictions!r}")
        if not stall_timeout > 0:
            raise ConfigError(f"the stall timeout must be > 0 seconds, got {stall_timeout}")
        if segment_frames is not None and segment_frames < 1:
            raise ConfigError(f"segment_frames must be >= 1, got {segment_frames}")
        self.denoiser = denoiser
        self.out_dir = Path(out_dir)
        self.predictions = predictions if denoiser.num_classes > 0 else "none"
        self.side_by_side = side_by_side
        self.max_frames = max_frames
        self.stall_timeout = float(stall_timeout)
        self.segment_frames = segment_frames
        self.on_frame = on_frame
        self.summary = RunSummary()
        self.failures: list[BaseException] = []
        path = self.predictions_path
        self._predictions = None if path is None else _PredictionWriter(path, self.predictions)

    @property
    def predictions_path(self) -> Path | None:
        return None if self.predictions == "none" else self.out_dir / f"predictions.{self.predictions}"

    def run(self, inputs: Sequence[str]) -> RunSummary:
        jobs, skipped = plan_jobs(inputs)
        self.summary.skipped.extend(skipped)
        self.failures.extend(DataError(f"{source}: {reason}") for source, reason in skipped)
        start = time.perf_counter()
        try:
            for job in jobs:
                try:
                    if job.kind == "image":
                        self._image(job)
                    else:
                        self._video(job)
                except _SKIPPABLE as e:
                    self.summary.skipped.append((job.source, _reason(e)))
                    self.failures.append(e)
        except KeyboardInterrupt:
            self.summary.interrupted = True
            raise
        finally:
            self.summary.seconds += time.perf_counter() - start
            self._write_reports()
        return self.summary

    # -- one input -------------------------------------------------------------------------------------
    def _image(self, job: MediaJob) -> None:
        taken_at = time.perf_counter()
        frame = media.read_image(job.source)
        result = self.denoiser(frame)
        with ctrl_c_deferred():  # a written image is a processed one
            media.write_image(self.out_dir / job.output, result.denoised)
            if self.side_by_side:
                media.write_image(self.out_dir / "side_by_side" / job.output, _side_by_side(frame, result.denoised))
            self.summary.latency.add((time.perf_counter() - taken_at) * 1e3)
            self._record(job, 0, result)
            self.summary.processed.append(job.source)

    def _video(self, job: MediaJob) -> None:
        source = video_io.open_video(job.source, stall_timeout=self.stall_timeout)
        stats = StreamStats(job.source, str(job.output), frames_expected=source.frame_count)
        self.summary.streams.append(stats)
        reader = video_io.FrameReader(source, stall_timeout=self.stall_timeout, max_frames=self.max_frames)
        writers: list[video_io.VideoWriter] = []
        started = time.perf_counter()
        try:
            try:
                reader.start()
                self._pump(job, reader, source.fps, writers, stats)
            finally:
                # The reader's thread is joined on every way out; frames it read that the run never took
                # are counted as read (and, below, as dropped), so that no frame goes unaccounted for.
                stats.frames_read += reader.close()
                stats.reader_abandoned = reader.abandoned
                stats.seconds = time.perf_counter() - started
                stats.note_rss("end")
        except KeyboardInterrupt:
            stats.ended, stats.message = INTERRUPTED, "interrupted (Ctrl-C)"
            stats.settle("not processed: the run was interrupted")
            if stats.frames_written:
                _finish(writers, stats)
                self.summary.partial.append(job.source)
            else:
                for w in writers:
                    w.abort()
            raise
        except BaseException as e:
            stats.ended, stats.message = FAILED, _reason(e)
            stats.settle("not processed: the run failed")
            for w in writers:
                w.abort()
            raise
        end = reader.end or video_io.StreamEnd(video_io.STOPPED, "the run stopped reading")
        stats.ended, stats.message = end.reason, end.message
        if reader.abandoned:
            stats.message += (
                f"; the reader thread was still blocked in the source {reader.join_timeout:g} s later and was "
                "left behind (it releases the source if its read ever returns)"
            )
        stats.settle("not processed: the run stopped")
        if not stats.frames_written:
            for w in writers:
                w.abort()
            self._nothing_written(job, stats)
            return
        _finish(writers, stats)
        self.summary.processed.append(job.source)
        self.summary.skipped.extend((f"{job.source} {b}", "broken frame skipped") for b in stats.examples)
        if stats.broken > len(stats.examples):
            more = stats.broken - len(stats.examples)
            self.summary.skipped.append(
                (job.source, f"{more} more broken frames skipped (counted by reason in the summary's streams)")
            )

    def _nothing_written(self, job: MediaJob, stats: StreamStats) -> None:
        if stats.ended == video_io.STALLED:
            reason, error = stats.message, StallError(f"{job.source}: {stats.message}")
        else:
            reason = stats.examples[0] if stats.examples else f"no frame could be read ({stats.message})"
            # A broken frame may be the engine's fault as much as the file's: only an empty source is bad input.
            kind = DataError if not stats.examples else AddUNetEdgeError
            error = kind(f"{job.source}: {reason}")
        self.summary.skipped.append((job.source, reason))
        self.failures.append(error)

    def _pump(
        self,
        job: MediaJob,
        reader: video_io.FrameReader,
        fps: float,
        writers: list[video_io.VideoWriter],
        stats: StreamStats,
    ) -> None:
        """Take frames from the reader until the source ends, stalls or reaches max_frames."""
        # A camera's frame should leave as soon as it arrives; a file's frames can wait for a full batch.
        batch_size = 1 if job.kind == "stream" else self.denoiser.batch_size
        pending: list[_Taken] = []
        for item in reader:
            stats.frames_read += 1
            if item.image is None:
                stats.drop(item.problem or "unusable frame", index=item.index)
                continue
            pending.append(_Taken(item.index, item.image, time.perf_counter()))
            if len(pending) >= batch_size:
                self._video_frames(job, fps, pending, writers, stats)
                pending = []
        if pending:
            self._video_frames(job, fps, pending, writers, stats)

    def _video_frames(
        self, job: MediaJob, fps: float, taken: list[_Taken], writers: list[video_io.VideoWriter], stats: StreamStats
    ) -> None:
        frames = [t.image for t in taken]
        results: list[FrameResult | None]
        try:
            results = list(self.denoiser.process_batch(frames))
        except _SKIPPABLE:
            # One bad frame must not take its batch down: retry one by one, dropping only the broken ones.
            results = []
            for t in taken:
                try:
                    results.append(self.denoiser(t.image))
                except _SKIPPABLE as e:
                    stats.drop(_reason(e), index=t.index)
                    results.append(None)
        for t, result in zip(taken, results, strict=True):
            if result is not None:
                with ctrl_c_deferred():
                    self._write_frame(job, fps, t, result, writers, stats)

    def _write_frame(
        self,
        job: MediaJob,
        fps: float,
        t: _Taken,
        result: FrameResult,
        writers: list[video_io.VideoWriter],
        stats: StreamStats,
    ) -> None:
        """Write one frame (opening or rotating its file) and count it: run with Ctrl-C held back."""
        if writers and self.segment_frames is not None and writers[0].frames_written >= self.segment_frames:
            _finish(writers, stats)  # a full segment: complete on disk, its index out of memory
        if not writers:
            name = job.output
            if self.segment_frames is not None:
                name = name.with_name(f"{name.stem}_{len(stats.outputs):05d}{name.suffix}")
            h, w = result.denoised.shape[:2]
            writers.append(video_io.VideoWriter(self.out_dir / name, fps, (w, h), color=True))
            if self.side_by_side:
                path = self.out_dir / "side_by_side" / name
                writers.append(video_io.VideoWriter(path, fps, (2 * w, h), color=True))
            stats.writing = str(name)
        writers[0].write(result.denoised)
        stats.note_written()
        if self.side_by_side:
            writers[1].write(_side_by_side(t.image, result.denoised))
        latency_ms = (time.perf_counter() - t.taken_at) * 1e3
        stats.latency.add(latency_ms)
        self.summary.latency.add(latency_ms)
        self._record(job, t.index, result, stats.writing)

    def _record(self, job: MediaJob, frame_index: int, result: FrameResult, output: str | None = None) -> None:
        self.summary.frames += 1
        if self._predictions is not None and result.class_index is not None:
            self._predictions.add(
                {
                    "input": job.source,
                    "frame": frame_index,
                    "output": output or str(job.output),
                    "class_index": result.class_index,
                    "confidence": round(float(result.confidence or 0.0), 6),
                }
            )
        if self.on_frame is not None:
            self.on_frame(job.source, self.summary.frames, None)

    def _write_reports(self) -> None:
        try:
            if self._predictions is not None:
                self._predictions.close()
        finally:
            engine = self.denoiser.engine
            if isinstance(engine, SelfEnsemble):
                self.summary.self_ensemble = engine.usage()
            atomic_write_json(self.out_dir / "run_summary.json", self.summary.to_dict())


def _finish(writers: list[video_io.VideoWriter], stats: StreamStats) -> None:
    """Close and rename the file being written (and its side-by-side twin); it joins the stream's outputs."""
    for w in writers:
        w.finish()
    writers.clear()
    if stats.writing is not None:
        stats.outputs.append(stats.writing)
        stats.writing = None


def _reason(e: BaseException) -> str:
    return str(e) if isinstance(e, AddUNetEdgeError) else f"{type(e).__name__}: {e}"


def _side_by_side(frame: np.ndarray, denoised: np.ndarray) -> np.ndarray:
    """input | denoised, in the input's dtype and channel layout."""
    return np.concatenate([frame, denoised.astype(frame.dtype, copy=False)], axis=1)
