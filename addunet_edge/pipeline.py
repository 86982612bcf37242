"""Frame-level inference: any frame size through any engine, by tiling with overlap, blending and batching.

Colour rule (also in `run --help`):
  * a model trained on gray (1 channel) applied to an RGB frame denoises the luma only: Y = 0.299 R + 0.587 G
    + 0.114 B (ITU-R BT.601); the chroma (Cb, Cr) is kept, so each of R, G, B moves by the same Y' - Y;
  * a 3-channel model applied to a gray frame sees the gray value replicated to R, G and B, and its output
    is turned back into gray with the same BT.601 weights;
  * an alpha channel (gray+alpha, RGBA) is passed through untouched.
Frames are uint8, uint16 (scaled by 255 or 65535) or float in [0, 1]; the result has the input's dtype and
shape.

Tiling: tiles of one size (so they batch) are spread evenly over the frame, adjacent tiles sharing at least
`overlap` pixels. Each tile's output is weighted by a window that is 0 for the `overlap // 4` pixels next to
an inner tile edge, rises as a raised cosine over the middle half of the overlap and is 1 elsewhere; the
weighted outputs are averaged. So a model whose receptive-field radius is at most `overlap // 4` gives the
same result tiled as whole (zero padding at a tile edge never reaches a pixel that is used), and the smooth
ramp hides what is left for models with wider, decaying receptive fields. Multi-scale models need tile
origins on a multiple of their `size_multiple`; the frame is edge-padded to such a multiple and every tile
starts on one. The class of a tiled frame comes from the mean of its tiles' logits.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

from . import media
from .artifacts import atomic_path, atomic_write_json
from .engines.base import Engine, InputProfile
from .errors import AddUNetEdgeError, ConfigError, DataError, ShapeError, StallError

BT601_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
DEFAULT_OVERLAP = 32


@dataclass(frozen=True)
class FrameResult:
    """One frame's output: `denoised` has the input's shape and dtype; class fields are None for K = 0."""

    denoised: np.ndarray
    class_index: int | None
    confidence: float | None
    probabilities: np.ndarray | None
    tiles: int


# -- pixel conversion and the colour rule --------------------------------------------------------------------
def to_unit_float(frame: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float frame -> float32 in [0, 1], same shape."""
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255.0
    if frame.dtype == np.uint16:
        return frame.astype(np.float32) / 65535.0
    if np.issubdtype(frame.dtype, np.floating):
        x = frame.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise ShapeError("frame contains NaN or infinite values")
        if x.size and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise ShapeError(f"float frames must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
        return np.clip(x, 0.0, 1.0)
    raise ShapeError(f"frames must be uint8, uint16 or float in [0, 1], got {frame.dtype}")


def from_unit_float(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float in [0, 1] -> `dtype` (rounded and clipped for integers)."""
    x = np.clip(x, 0.0, 1.0)
    if dtype == np.uint8:
        return np.rint(x * 255.0).astype(np.uint8)
    if dtype == np.uint16:
        return np.rint(x * 65535.0).astype(np.uint16)
    return x.astype(dtype)


def _split_channels(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W[, C]) float -> colour planes (C, H, W) with C in {1, 3}, and the alpha plane (H, W) or None."""
    if frame.ndim == 2:
        return frame[None], None
    if frame.ndim != 3:
        raise ShapeError(f"a frame must be (H, W) or (H, W, C), got shape {frame.shape}")
    c = frame.shape[2]
    if c == 1:
        return frame[..., 0][None], None
    if c == 2:
        return frame[..., 0][None], frame[..., 1]
    if c == 3:
        return frame.transpose(2, 0, 1), None
    if c == 4:
        return frame[..., :3].transpose(2, 0, 1), frame[..., 3]
    raise ShapeError(f"a frame must have 1 to 4 channels, got {c}")


def to_model_channels(planes: np.ndarray, model_channels: int) -> np.ndarray:
    """Colour planes (C, H, W) -> the model's channels, by the module's colour rule."""
    c = planes.shape[0]
    if c == model_channels:
        return planes
    if model_channels == 1 and c == 3:
        return np.tensordot(BT601_LUMA, planes, axes=1)[None]
    if model_channels == 3 and c == 1:
        return np.repeat(planes, 3, axis=0)
    raise ShapeError(f"cannot feed a {c}-channel frame to a {model_channels}-channel model")


def from_model_channels(planes_in: np.ndarray, model_in: np.ndarray, model_out: np.ndarray) -> np.ndarray:
    """Model output -> colour planes of the frame: luma delta on RGB, or the luma of an RGB output."""
    c, m = planes_in.shape[0], model_out.shape[0]
    if c == m:
        return model_out
    if m == 1 and c == 3:
        return planes_in + (model_out - model_in)  # R, G, B each move by Y' - Y: Cb and Cr are unchanged
    if m == 3 and c == 1:
        return np.tensordot(BT601_LUMA, model_out, axes=1)[None]
    raise ShapeError(f"cannot map a {m}-channel output back to a {c}-channel frame")


# -- tiling ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one frame lie, on the frame padded (edge mode, bottom/right) to `padded_hw`."""

    frame_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]
    overlap: int

    @property
    def count(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    def origins(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.starts_y for x in self.starts_x]


def _round_up(v: int, k: int) -> int:
    return -(-v // k) * k


def axis_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, ...]:
    """Tile origins on one axis: evenly spread, on multiples of `multiple`, neighbours sharing >= overlap."""
    if length <= tile:
        return (0,)
    if overlap >= tile:
        raise ConfigError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    span = length - tile
    n = max(2, math.ceil((length - overlap) / (tile - overlap)))
    while True:
        starts = [(round(i * span / (n - 1)) // multiple) * multiple for i in range(n)]
        starts[-1] = span
        if all(b - a <= tile - overlap for a, b in itertools.pairwise(starts)):
            return tuple(starts)
        n += 1


def window_1d(tile: int, overlap: int, inner_start: bool, inner_end: bool) -> np.ndarray:
    """Blending weights along one axis of a tile: 0 near an inner edge, cosine ramp, 1 in the middle."""
    w = np.ones(tile, dtype=np.float32)
    margin = overlap // 4
    ramp_len = overlap - 2 * margin
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_len, dtype=np.float32) + 0.5) / max(ramp_len, 1))
    edge = np.concatenate([np.zeros(margin, np.float32), ramp]) if overlap > 0 else np.zeros(0, np.float32)
    edge = edge[:tile]
    if inner_start:
        w[: edge.size] *= edge
    if inner_end:
        w[tile - edge.size :] *= edge[::-1]
    return w


def plan_tiles(
    frame_hw: tuple[int, int], profile: InputProfile, tile: int | None, overlap: int = DEFAULT_OVERLAP
) -> TilePlan:
    """Choose the tile size for a frame and an engine profile (fixed_hw, max_hw, min_hw, size_multiple).

    tile=None runs the whole frame when the profile allows it, else the largest tile it allows.
    """
    h, w = frame_hw
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0, got {overlap}")
    if tile is not None and tile < 1:
        raise ConfigError(f"tile must be a positive number of pixels, got {tile}")
    if tile is not None and overlap >= tile:
        raise ConfigError(f"overlap ({overlap}) must be smaller than the tile ({tile}); a quarter of it is usual")
    k = max(1, profile.size_multiple)
    min_h, min_w = profile.min_hw
    if profile.fixed_hw is not None:
        if tile is not None and (tile, tile) != tuple(profile.fixed_hw):
            raise ConfigError(
                f"the engine takes only {profile.fixed_hw[0]}x{profile.fixed_hw[1]} inputs; omit --tile or "
                f"rebuild it with a dynamic profile (asked for tile {tile})"
            )
        th, tw = profile.fixed_hw
        if overlap >= min(th, tw):
            raise ConfigError(f"overlap ({overlap}) must be smaller than the engine's fixed input {th}x{tw}")
        ph, pw = max(h, th), max(w, tw)
    else:
        whole_fits = profile.max_hw is None or (h <= profile.max_hw[0] and w <= profile.max_hw[1])
        if tile is None and whole_fits:
            # Whole frame: the engine pads to its size multiple itself; only a too-small frame is padded here.
            ph, pw = max(h, min_h), max(w, min_w)
            return TilePlan((h, w), (ph, pw), (ph, pw), (0,), (0,), overlap)
        if tile is None:  # the frame exceeds max_hw (else it would have run whole): largest allowed tile
            max_hw = profile.max_hw or (h, w)
            th, tw = (max_hw[0] // k) * k, (max_hw[1] // k) * k
        else:
            if tile % k:
                raise ConfigError(f"tile must be a multiple of the engine's size multiple {k}, got {tile}")
            if profile.max_hw is not None and (tile > profile.max_hw[0] or tile > profile.max_hw[1]):
                raise ConfigError(
                    f"tile {tile} exceeds the engine's maximum input {profile.max_hw[0]}x{profile.max_hw[1]}"
                )
            th = tw = tile
        ph, pw = max(_round_up(h, k), _round_up(min_h, k)), max(_round_up(w, k), _round_up(min_w, k))
        th, tw = min(th, ph), min(tw, pw)
        if th < min_h or tw < min_w:
            raise ConfigError(f"tile {th}x{tw} is smaller than the engine's minimum input {min_h}x{min_w}")
    sy = axis_starts(ph, th, overlap, k)
    sx = axis_starts(pw, tw, overlap, k)
    return TilePlan((h, w), (ph, pw), (th, tw), sy, sx, overlap)


def pad_to(planes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, *hw) by repeating the last row / column (the model's own padding mode)."""
    dh, dw = hw[0] - planes.shape[1], hw[1] - planes.shape[2]
    if dh == 0 and dw == 0:
        return planes
    return np.pad(planes, ((0, 0), (0, dh), (0, dw)), mode="edge")


def extract_tiles(planes: np.ndarray, plan: TilePlan) -> np.ndarray:
    """(C, H, W) -> (n_tiles, C, th, tw)."""
    padded = pad_to(planes, plan.padded_hw)
    th, tw = plan.tile_hw
    return np.stack([padded[:, y : y + th, x : x + tw] for y, x in plan.origins()])


def blend_tiles(tiles: np.ndarray, plan: TilePlan) -> np.ndarray:
    """(n_tiles, C, th, tw) -> (C, H, W): window-weighted average, cropped to the frame."""
    if plan.count == 1:
        return tiles[0][:, : plan.frame_hw[0], : plan.frame_hw[1]]
    th, tw = plan.tile_hw
    ph, pw = plan.padded_hw
    acc = np.zeros((tiles.shape[1], ph, pw), dtype=np.float32)
    weight = np.zeros((ph, pw), dtype=np.float32)
    wy = {y: window_1d(th, plan.overlap, y > 0, y + th < ph) for y in plan.starts_y}
    wx = {x: window_1d(tw, plan.overlap, x > 0, x + tw < pw) for x in plan.starts_x}
    for tile_out, (y, x) in zip(tiles, plan.origins(), strict=True):
        w2 = np.outer(wy[y], wx[x])
        acc[:, y : y + th, x : x + tw] += tile_out * w2
        weight[y : y + th, x : x + tw] += w2
    # Every pixel has weight > 0: neighbours share >= overlap pixels, and each zeroes only overlap // 4.
    return (acc / np.maximum(weight, 1e-12))[:, : plan.frame_hw[0], : plan.frame_hw[1]]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# -- the frame denoiser ------------------------------------------------------------------------------
class FrameDenoiser:
    """Denoise (and classify) whole frames of any size with an engine; call it from a capture loop.

    >>> with open_engine("model.fp32.onnx") as engine:
    ...     denoise = FrameDenoiser(engine, tile=256, overlap=32, batch_size=8)
    ...     result = denoise(frame)          # frame: (H, W) or (H, W, C), uint8 / uint16 / float
    ...     result.denoised, result.class_index, result.confidence

    tile: None runs whole frames when the engine's profile allows it (else the largest tile it allows);
    an int tiles every frame with tiles of that size. overlap: pixels shared by neighbouring tiles; tiling is
    exact for a model whose receptive-field radius is at most overlap // 4 (see the module docstring for the
    colour rule and the blending window). batch_size: tiles per engine call (capped by the profile).
    """

    def __init__(
        self, engine: Engine, tile: int | None = None, overlap: int = DEFAULT_OVERLAP, batch_size: int = 4
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.engine = engine
        self.tile = tile
        self.overlap = overlap
        info = engine.info
        self.profile = info.profile
        self.num_classes = info.num_classes
        max_batch = self.profile.max_batch
        self.batch_size = min(batch_size, max_batch) if max_batch is not None else batch_size
        self.batch_size = max(self.batch_size, 1)
        # Validate tile / overlap against the profile now, not on the first frame of a stream.
        probe = max(tile or 1, *self.profile.min_hw)
        plan_tiles((probe, probe), self.profile, tile, overlap)

    def __call__(self, frame: np.ndarray) -> FrameResult:
        return self.process_batch([frame])[0]

    def process_batch(self, frames: Sequence[np.ndarray]) -> list[FrameResult]:
        """Denoise several frames; tiles of frames with the same tile size share engine calls."""
        prepared = []
        for frame in frames:
            frame = np.asarray(frame)
            x = to_unit_float(frame)
            planes, alpha = _split_channels(x)
            model_in = to_model_channels(planes, self.profile.channels)
            plan = plan_tiles(model_in.shape[1:], self.profile, self.tile, self.overlap)
            prepared.append((frame, planes, alpha, model_in, plan, extract_tiles(model_in, plan)))

        outputs = self._run_grouped([(p[4].tile_hw, p[5]) for p in prepared])

        results = []
        for (frame, planes, alpha, model_in, plan, _), (den_tiles, logits) in zip(prepared, outputs, strict=True):
            model_out = blend_tiles(den_tiles, plan)
            out_planes = from_model_channels(planes, model_in, model_out)
            results.append(self._result(frame, out_planes, alpha, logits, plan.count))
        return results

    def _run_grouped(self, jobs: list[tuple[tuple[int, int], np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run every frame's tiles, batching tiles of the same size together; results in job order."""
        results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(jobs)
        for hw in dict.fromkeys(j[0] for j in jobs):
            members = [i for i, j in enumerate(jobs) if j[0] == hw]
            stacked = np.concatenate([jobs[i][1] for i in members])
            den, logits = self._run_tiles(stacked)
            offset = 0
            for i in members:
                n = jobs[i][1].shape[0]
                results[i] = (den[offset : offset + n], logits[offset : offset + n])
                offset += n
        return [r for r in results if r is not None]

    def _run_tiles(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dens, logits = [], []
        for start in range(0, tiles.shape[0], self.batch_size):
            chunk = tiles[start : start + self.batch_size]
            n = chunk.shape[0]
            if n < self.profile.min_batch:  # a fixed-batch plan: fill with copies, drop their outputs
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.profile.min_batch - n, axis=0)])
            pred = self.engine(np.ascontiguousarray(chunk, dtype=np.float32))
            dens.append(np.asarray(pred.denoised, dtype=np.float32)[:n])
            logits.append(np.asarray(pred.logits, dtype=np.float32).reshape(chunk.shape[0], -1)[:n])
        return np.concatenate(dens), np.concatenate(logits)

    def _result(
        self, frame: np.ndarray, planes: np.ndarray, alpha: np.ndarray | None, logits: np.ndarray, tiles: int
    ) -> FrameResult:
        if frame.ndim == 2:
            out = planes[0]
        elif frame.shape[2] in (1, 3):
            out = planes.transpose(1, 2, 0)
        else:
            kept = alpha if alpha is not None else np.ones(frame.shape[:2], np.float32)
            out = np.concatenate([planes.transpose(1, 2, 0), kept[..., None]], axis=2)
        denoised = from_unit_float(out, frame.dtype).reshape(frame.shape)
        if self.num_classes == 0 or logits.shape[-1] == 0:
            return FrameResult(denoised, None, None, None, tiles)
        probs = softmax(logits.mean(axis=0))
        idx = int(np.argmax(probs))
        return FrameResult(denoised, idx, float(probs[idx]), probs, tiles)


# -- running over files, folders, videos and streams ---------------------------------------------------------
@dataclass(frozen=True)
class MediaJob:
    """One input to process and where its output goes (relative to the output folder)."""

    kind: str  # 'image' | 'video' | 'stream'
    source: str
    output: Path


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
INTERRUPTED = "interrupted"  # how a stream ended on Ctrl-C (the others are media.ENDED and its siblings)
FAILED = "failed"


@dataclass
class StreamStats:
    """One video, camera or stream: every frame read from it is either written or dropped with a reason.

    frames_read == frames_written + frames_dropped once the stream is done, however it ended (frames the
    reader had read but the run never processed, on Ctrl-C or an error, are dropped "not processed").
    `ended` is one of media.ENDED, ENDED_EARLY, STALLED, MAX_FRAMES, STOPPED, or INTERRUPTED / FAILED.
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

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def stalled(self) -> list[StreamStats]:
        return [s for s in self.streams if s.ended == media.STALLED]

    @property
    def ended_early(self) -> list[StreamStats]:
        return [s for s in self.streams if s.ended == media.ENDED_EARLY]

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
            "streams": [s.to_dict() for s in self.streams],
        }


_VIDEO_OUT_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v"})


def _output_name(path: Path) -> Path:
    suffix = path.suffix.lower()
    if suffix in media.VIDEO_SUFFIXES:
        return path.with_suffix(suffix if suffix in _VIDEO_OUT_SUFFIXES else ".mp4")
    return path.with_suffix(media.output_suffix(suffix))


def plan_jobs(inputs: Sequence[str]) -> tuple[list[MediaJob], list[tuple[str, str]]]:
    """Expand inputs (files, folders, cameras, URLs, pipelines) into jobs; returns (jobs, skipped).

    An image or video keeps its stem (out/<stem>.png); a folder keeps relative paths (out/<sub>/<stem>.png);
    a JPEG becomes PNG. Two inputs that would write the same output get the input's extension in the name
    (photo_jpg.png), then a counter.
    """
    jobs: list[MediaJob] = []
    skipped: list[tuple[str, str]] = []
    for i, spec in enumerate(inputs):
        path = Path(spec)
        if path.is_dir():
            found = list(media.iter_media_files(path))
            if not found:
                skipped.append((spec, "folder holds no PNG, JPEG, TIFF or video file"))
            for f in found:
                kind = "video" if f.suffix.lower() in media.VIDEO_SUFFIXES else "image"
                jobs.append(MediaJob(kind, str(f), _output_name(f.relative_to(path))))
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in media.IMAGE_SUFFIXES:
                jobs.append(MediaJob("image", spec, _output_name(Path(path.name))))
            elif suffix in media.VIDEO_SUFFIXES:
                jobs.append(MediaJob("video", spec, _output_name(Path(path.name))))
            else:
                skipped.append((spec, f"not an image or video this tool reads ({suffix or 'no extension'})"))
        elif media.is_stream_spec(spec):
            jobs.append(MediaJob("stream", spec, Path(media.stream_name(spec, i) + ".mp4")))
        else:
            skipped.append((spec, "no such file, folder, camera or stream"))
    return _deduplicate(jobs), skipped


def _deduplicate(jobs: list[MediaJob]) -> list[MediaJob]:
    counts: dict[Path, int] = {}
    for j in jobs:
        counts[j.output] = counts.get(j.output, 0) + 1
    taken: set[Path] = set()
    out = []
    for j in jobs:
        name = j.output
        if counts[name] > 1:
            ext = Path(j.source).suffix.lower().lstrip(".") or "in"
            name = name.with_name(f"{name.stem}_{ext}{name.suffix}")
        base, n = name, 2
        while name in taken:
            name = base.with_name(f"{base.stem}_{n}{base.suffix}")
            n += 1
        taken.add(name)
        out.append(MediaJob(j.kind, j.source, name))
    return out


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

    Videos, cameras and streams are read by a `media.FrameReader` thread: a frame that cannot be used is
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
        stall_timeout: float = media.DEFAULT_STALL_TIMEOUT,
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
        source = media.open_video(job.source, stall_timeout=self.stall_timeout)
        stats = StreamStats(job.source, str(job.output), frames_expected=source.frame_count)
        self.summary.streams.append(stats)
        reader = media.FrameReader(source, stall_timeout=self.stall_timeout, max_frames=self.max_frames)
        writers: list[media.VideoWriter] = []
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
        end = reader.end or media.StreamEnd(media.STOPPED, "the run stopped reading")
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
        if stats.ended == media.STALLED:
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
        reader: media.FrameReader,
        fps: float,
        writers: list[media.VideoWriter],
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
        self, job: MediaJob, fps: float, taken: list[_Taken], writers: list[media.VideoWriter], stats: StreamStats
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
        writers: list[media.VideoWriter],
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
            writers.append(media.VideoWriter(self.out_dir / name, fps, (w, h), color=True))
            if self.side_by_side:
                path = self.out_dir / "side_by_side" / name
                writers.append(media.VideoWriter(path, fps, (2 * w, h), color=True))
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
            atomic_write_json(self.out_dir / "run_summary.json", self.summary.to_dict())


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, then raise it: for work that must not stop half done.

    Python raises KeyboardInterrupt at the first line after a C call returns; after cv2 has written a frame,
    that line is the one that counts it, and a Ctrl-C during the encode would leave the file holding a frame
    the summary does not (it did, in a test). So writing, counting and recording a frame go together.
    Only in the main thread, and only over Python's own SIGINT handler: anything else is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:  # raised even over an error of the block's own: the user asked to stop
            raise KeyboardInterrupt


def _finish(writers: list[media.VideoWriter], stats: StreamStats) -> None:
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
