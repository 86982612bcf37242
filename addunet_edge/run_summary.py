"""What a `run` reports: per-frame latency percentiles, per-stream counts, and the run's summary.

`LatencyHistogram` keeps latencies in constant memory (a camera runs for days); `StreamStats` accounts for
every frame read from one video, camera or stream (written, or dropped with a reason) and how it ended;
`RunSummary` is what was processed, skipped, left partial, stalled or ended early, written as
out/run_summary.json. `rss_mib` and `peak_rss_mib` read this process's memory for those reports.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import video_io


class LatencyHistogram:
    """Per-frame latencies in constant memory, for runs of any length: log-spaced bins 1 % wide.

    A camera runs for days (millions of frames); keeping every latency to sort at the end would grow without
    bound. A percentile read from the bins (the geometric middle of its bin) is within 0.5 % of the exact
    one, as in HdrHistogram; count, mean, min and max are exact.
    """

    LOWEST_MS = 1e-3
    GROWTH = 1.01
    BINS = 2400  # 1 us up to 1e-3 * 1.01**2400 ms (about 6 hours); anything slower lands in the last bin

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS, dtype=np.int64)
        self.count = 0
        self.total_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        ms = max(float(ms), 0.0)
        i = 0 if ms <= self.LOWEST_MS else int(math.log(ms / self.LOWEST_MS) / math.log(self.GROWTH))
        self.counts[min(i, self.BINS - 1)] += 1
        self.count += 1
        self.total_ms += ms
        self.min_ms = min(self.min_ms, ms)
        self.max_ms = max(self.max_ms, ms)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0 < q <= 100) in ms, None before the first frame."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        return min(max(self.LOWEST_MS * self.GROWTH ** (i + 0.5), self.min_ms), self.max_ms)

    def to_dict(self) -> dict[str, Any]:
        if self.count == 0:
            return {"frames": 0}
        p50, p90, p99 = (self.percentile(q) for q in (50, 90, 99))
        return {
            "frames": self.count,
            "p50": round(p50 or 0.0, 3),
            "p90": round(p90 or 0.0, 3),
            "p99": round(p99 or 0.0, 3),
            "max": round(self.max_ms, 3),
            "mean": round(self.total_ms / self.count, 3),
        }


# Broken frames listed one by one per stream (in `skipped` and the stream's `examples`); past these, only
# counted by reason: a camera that sends a bad frame a minute must not grow the summary for days.
_MAX_EXAMPLES = 20
_MAX_REASONS = 16
_OTHER_REASONS = "other reasons"
INTERRUPTED = "interrupted"  # how a stream ended on Ctrl-C (the others are video_io.ENDED and its siblings)
FAILED = "failed"


@dataclass
class StreamStats:
    """One video, camera or stream: every frame read from it is either written or dropped with a reason.

    frames_read == frames_written + frames_dropped once the stream is done, however it ended (frames the
    reader had read but the run never processed, on Ctrl-C or an error, are dropped "not processed").
    `ended` is one of video_io.ENDED, ENDED_EARLY, STALLED, MAX_FRAMES, STOPPED, or INTERRUPTED / FAILED.
    Latency is per frame, from the run taking it from the reader to its output being written (denoising,
    colour conversion and encoding; not the wait in the reader's queue of at most 4 frames).
    """

    input: str
    output: str
    frames_expected: int | None = None
    outputs: list[str] = field(default_factory=list)  # the files finished so far: one, or one per segment
    writing: str | None = None  # the file being written now (not in the summary until it is finished)
    frames_read: int = 0
    frames_written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    broken: int = 0
    ended: str = ""
    message: str = ""
    seconds: float = 0.0
    reader_abandoned: bool = False
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    # Resident memory (MiB) after 1, 2, 4, 8, ... written frames and at the end: a flat tail over days of
    # camera input says nothing leaks, in at most 40 numbers.
    rss_mib: dict[str, float] = field(default_factory=dict)

    def note_written(self) -> None:
        self.frames_written += 1
        n = self.frames_written
        if n & (n - 1) == 0:
            self.note_rss(str(n))

    def note_rss(self, key: str) -> None:
        rss = rss_mib()
        if rss is not None:
            self.rss_mib[key] = round(rss, 2)

    @property
    def frames_dropped(self) -> int:
        return sum(self.dropped.values())

    def drop(self, reason: str, *, index: int | None = None, count: int = 1) -> None:
        """Count `count` dropped frames; one with an index is a broken frame, listed while examples last."""
        key = reason if reason in self.dropped or len(self.dropped) < _MAX_REASONS else _OTHER_REASONS
        self.dropped[key] = self.dropped.get(key, 0) + count
        if index is not None:
            self.broken += count
            if len(self.examples) < _MAX_EXAMPLES:
                self.examples.append(f"frame {index}: {reason}")

    def settle(self, reason: str) -> None:
        """Count the frames read but neither written nor dropped (in flight when the run stopped) as dropped."""
        in_flight = self.frames_read - self.frames_written - self.frames_dropped
        if in_flight > 0:
            self.drop(reason, count=in_flight)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "outputs": self.outputs,
            "ended": self.ended,
            "message": self.message,
            "frames_expected": self.frames_expected,
            "frames_read": self.frames_read,
            "frames_written": self.frames_written,
            "frames_dropped": self.frames_dropped,
            "dropped_by_reason": self.dropped,
            "broken_frames": self.examples,
            "seconds": round(self.seconds, 3),
            "fps": round(self.frames_written / self.seconds, 3) if self.seconds > 0 else 0.0,
            "latency_ms": self.latency.to_dict(),
            "reader_thread_abandoned": self.reader_abandoned,
            "rss_mib_after_frames": self.rss_mib,
        }


def rss_mib() -> float | None:
    """This process's resident memory now, in MiB (VmRSS; None where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError):
        return None
    return None


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


@dataclass
class RunSummary:
    processed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    streams: list[StreamStats] = field(default_factory=list)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    # With --self-ensemble: engines.ensemble.SelfEnsemble.usage() (images through 8 or 4 transforms, calls).
    self_ensemble: dict[str, Any] | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def stalled(self) -> list[StreamStats]:
        return [s for s in self.streams if s.ended == video_io.STALLED]

    @property
    def ended_early(self) -> list[StreamStats]:
        return [s for s in self.streams if s.ended == video_io.ENDED_EARLY]

    def to_dict(self) -> dict[str, Any]:
        rss = peak_rss_mib()
        return {
            "processed": self.processed,
            "skipped": [{"input": s, "reason": r} for s, r in self.skipped],
            "partial": self.partial,
            "stalled": [s.input for s in self.stalled],
            "ended_early": [s.input for s in self.ended_early],
            "frames": self.frames,
            "frames_dropped": sum(s.frames_dropped for s in self.streams),
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 3),
            "latency_ms": self.latency.to_dict(),
            "peak_rss_mib": None if rss is None else round(rss, 1),
            "interrupted": self.interrupted,
            "self_ensemble": self.self_ensemble,
            "streams": [s.to_dict() for s in self.streams],
        }
