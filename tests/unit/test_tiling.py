"""Tiling, blending, batching and the colour rule of FrameDenoiser, on a real (numpy) Engine subclass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addunet_edge.engines.base import Engine, EngineInfo, InputProfile
from addunet_edge.errors import ConfigError, ShapeError
from addunet_edge.pipeline import BT601_LUMA, FrameDenoiser
from addunet_edge.tiling import axis_starts, blend_tiles, extract_tiles, plan_tiles, window_1d


def box_blur(x: np.ndarray, radius: int) -> np.ndarray:
    """(N, C, H, W) mean over a (2r+1)^2 window, zero padded: local, like a conv net's receptive field."""
    h, w = x.shape[2:]
    p = np.pad(x, ((0, 0), (0, 0), (radius, radius), (radius, radius)))
    out = np.zeros_like(x)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out += p[:, :, dy : dy + h, dx : dx + w]
    return out / (2 * radius + 1) ** 2


class BlurEngine(Engine):
    """An engine whose 'model' is a box blur of radius `radius`; logits = (mean, 1 - mean) per image."""

    backend = "numpy-blur"

    def __init__(self, profile: InputProfile, radius: int = 2, num_classes: int = 2) -> None:
        super().__init__("blur")
        self._profile = profile
        self.radius = radius
        self.num_classes = num_classes
        self.batches: list[tuple[int, ...]] = []

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("numpy-blur", "fp32", "cpu", self._profile, self.num_classes, "blur", None)

    def _activate(self) -> None:
        return None

    def _infer(self, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(noisy.shape)
        m = noisy.mean(axis=(1, 2, 3))
        logits = np.stack([m, 1 - m], axis=1)[:, : self.num_classes] * 10
        return box_blur(noisy, self.radius).astype(np.float32), logits.astype(np.float32)


def _frame(h: int, w: int, c: int | None = None, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    hi = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, hi + 1, size=shape).astype(dtype)


def _reference(frame: np.ndarray, radius: int) -> np.ndarray:
    x = frame.astype(np.float64) / (255 if frame.dtype == np.uint8 else 65535)
    planes = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    return box_blur(planes[None], radius)[0]


def test_axis_starts_cover_with_overlap():
    starts = axis_starts(300, 64, 16)
    assert starts[0] == 0 and starts[-1] == 300 - 64
    assert all(0 < b - a <= 64 - 16 for a, b in itertools.pairwise(starts))
    assert axis_starts(50, 64, 16) == (0,)
    aligned = axis_starts(320, 64, 20, multiple=8)
    assert all(s % 8 == 0 for s in aligned) and aligned[-1] == 256


def test_window_is_partition_of_unity_in_the_overlap():
    a = window_1d(64, 32, inner_start=False, inner_end=True)
    b = window_1d(64, 32, inner_start=True, inner_end=False)
    # b starts where a's last 32 pixels begin
    np.testing.assert_allclose(a[32:] + b[:32], 1.0, atol=1e-6)
    assert a[-8:].max() == 0 and b[:8].max() == 0  # overlap // 4 never used
    assert a[:32].min() == 1


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 150),
    w=st.integers(1, 150),
    tile=st.sampled_from([16, 32, 48]),
    overlap=st.sampled_from([8, 12]),
)
def test_tiled_blur_equals_whole_frame(h, w, tile, overlap):
    """Radius 2 <= overlap // 4: every used pixel sees the same neighbourhood as in the whole frame."""
    planes = np.random.default_rng(h * 1000 + w).random((1, h, w), dtype=np.float32)
    plan = plan_tiles((h, w), InputProfile(channels=1), tile, overlap)
    tiles = extract_tiles(planes, plan)
    out = blend_tiles(box_blur(tiles, 2), plan)
    ref = box_blur(planes[None], 2)[0]
    # Frames smaller than a tile are one tile: padding only at the bottom/right frame edge (edge mode)
    if plan.count > 1 or (plan.padded_hw == (h, w)):
        np.testing.assert_allclose(out, ref, atol=1e-5)
    assert out.shape == (1, h, w)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [None, 3])
def test_frame_denoiser_tiled_matches_reference_and_keeps_dtype(dtype, channels):
    profile = InputProfile(channels=1 if channels is None else 3)
    engine = BlurEngine(profile)
    frame = _frame(97, 130, channels, dtype)
    res = FrameDenoiser(engine, tile=40, overlap=12, batch_size=3)(frame)
    assert res.denoised.shape == frame.shape and res.denoised.dtype == frame.dtype
    assert res.tiles > 1
    ref = _reference(frame, 2)
    ref = ref[0] if channels is None else ref.transpose(1, 2, 0)
    scale = 255 if dtype == np.uint8 else 65535
    expected = np.rint(np.clip(ref, 0, 1) * scale)
    # Inner pixels only: at the frame border the blur zero-pads, and tiles are edge-padded there
    assert np.abs(res.denoised[2:-2, 2:-2].astype(np.int64) - expected[2:-2, 2:-2]).max() <= 1
    assert all(b[0] <= 3 for b in engine.batches)


def test_gray_model_on_rgb_frame_changes_luma_only():
    engine = BlurEngine(InputProfile(channels=1))
    frame = np.random.default_rng(1).random((40, 50, 3)).astype(np.float32) * 0.5 + 0.25
    out = FrameDenoiser(engine)(frame).denoised
    assert out.shape == frame.shape and out.dtype == np.float32
    delta = (out - frame)[3:-3, 3:-3]  # the zero-padded border darkens enough to clip; skip it
    # The same Y' - Y is added to R, G and B: chroma (B - Y, R - Y) is unchanged.
    np.testing.assert_allclose(delta[..., 0], delta[..., 1], atol=1e-6)
    np.testing.assert_allclose(delta[..., 0], delta[..., 2], atol=1e-6)
    y = frame @ BT601_LUMA
    np.testing.assert_allclose((out @ BT601_LUMA)[3:-3, 3:-3], box_blur(y[None, None], 2)[0, 0, 3:-3, 3:-3], atol=1e-5)


def test_rgb_model_on_gray_frame_and_alpha_passthrough():
    engine = BlurEngine(InputProfile(channels=3))
    gray = _frame(30, 30)
    out = FrameDenoiser(engine)(gray).denoised
    assert out.shape == gray.shape
    np.testing.assert_allclose(out[2:-2, 2:-2] / 255, _reference(gray, 2)[0, 2:-2, 2:-2], atol=1 / 255)
    rgba = _frame(30, 30, 4)
    out = FrameDenoiser(engine)(rgba).denoised
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])


def test_profile_rules_fixed_and_max_hw_and_multiple():
    fixed = BlurEngine(InputProfile(channels=1, fixed_hw=(32, 32), min_batch=4, max_batch=4))
    frame = _frame(70, 45)
    res = FrameDenoiser(fixed, overlap=8, batch_size=2)(frame)
    assert res.denoised.shape == frame.shape
    assert {b[2:] for b in fixed.batches} == {(32, 32)} and {b[0] for b in fixed.batches} == {4}
    # a frame smaller than the fixed size is padded up and cropped back
    assert FrameDenoiser(fixed, overlap=8)(_frame(10, 12)).denoised.shape == (10, 12)
    with pytest.raises(ConfigError, match="32x32"):
        FrameDenoiser(fixed, tile=64, overlap=8)

    capped = BlurEngine(InputProfile(channels=1, max_hw=(48, 48), size_multiple=8))
    FrameDenoiser(capped, overlap=8)(_frame(100, 61))
    assert all(b[2] <= 48 and b[3] <= 48 and b[2] % 8 == 0 and b[3] % 8 == 0 for b in capped.batches)
    with pytest.raises(ConfigError, match="multiple"):
        FrameDenoiser(capped, tile=36)
    with pytest.raises(ConfigError, match="maximum"):
        FrameDenoiser(capped, tile=64)


def test_whole_frame_by_default_and_classification():
    engine = BlurEngine(InputProfile(channels=1))
    bright = np.full((20, 20), 230, np.uint8)
    res = FrameDenoiser(engine)(bright)
    assert res.tiles == 1 and engine.batches == [(1, 1, 20, 20)]
    assert res.class_index == 0 and res.confidence > 0.99
    assert FrameDenoiser(engine)(np.full((20, 20), 10, np.uint8)).class_index == 1
    none = FrameDenoiser(BlurEngine(InputProfile(channels=1), num_classes=0))(bright)
    assert none.class_index is None and none.confidence is None


def test_process_batch_shares_engine_calls_across_frames():
    engine = BlurEngine(InputProfile(channels=1))
    frames = [_frame(24, 24, seed=i) for i in range(5)]
    results = FrameDenoiser(engine, batch_size=8).process_batch(frames)
    assert engine.batches == [(5, 1, 24, 24)]
    for frame, res in zip(frames, results, strict=True):
        np.testing.assert_array_equal(res.denoised, FrameDenoiser(BlurEngine(InputProfile(channels=1)))(frame).denoised)


def test_bad_frames_are_refused():
    den = FrameDenoiser(BlurEngine(InputProfile(channels=1)))
    with pytest.raises(ShapeError):
        den(np.zeros((4, 4), np.int32))
    with pytest.raises(ShapeError, match="NaN"):
        den(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ShapeError, match=r"\[0, 1\]"):
        den(np.full((4, 4), 3.0, np.float32))
    with pytest.raises(ConfigError):
        FrameDenoiser(BlurEngine(InputProfile(channels=1)), tile=16, overlap=16)
