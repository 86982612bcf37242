"""Frame-level inference: any frame size through any engine, by tiling with overlap, blending and batching.

Colour rule (also in `run --help`):
  * a model trained on gray (1 channel) applied to an RGB frame denoises the luma only: Y = 0.299 R + 0.587 G
    + 0.114 B (ITU-R BT.601); the chroma (Cb, Cr) is kept, so each of R, G, B moves by the same Y' - Y;
  * a 3-channel model applied to a gray frame sees the gray value replicated to R, G and B, and its output
    is turned back into gray with the same BT.601 weights;
  * an alpha channel (gray+alpha, RGBA) is passed through untouched.
Frames are uint8, uint16 (scaled by 255 or 65535) or float in [0, 1]; the result has the input's dtype and
shape.

Tiling (where the tiles lie, the blending window, when tiling is exact) is in `tiling`; the class of a tiled
frame comes from the mean of its tiles' logits. Running a denoiser over files, folders, videos and streams
is `media_runner.MediaRunner`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .engines.base import Engine
from .errors import ConfigError, ShapeError
from .tiling import DEFAULT_OVERLAP, blend_tiles, extract_tiles, plan_tiles

BT601_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


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
    exact for a model whose receptive-field radius is at most overlap // 4 (see this module's docstring for the
    colour rule, `tiling`'s for the blending window). batch_size: tiles per engine call (capped by the profile).
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
