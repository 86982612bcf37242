"""Tiling a frame for an engine's input profile, and blending the tiles' outputs back into one frame.

Tiles of one size (so they batch) are spread evenly over the frame, adjacent tiles sharing at least
`overlap` pixels. Each tile's output is weighted by a window that is 0 for the `overlap // 4` pixels next to
an inner tile edge, rises as a raised cosine over the middle half of the overlap and is 1 elsewhere; the
weighted outputs are averaged. So a model whose receptive-field radius is at most `overlap // 4` gives the
same result tiled as whole (zero padding at a tile edge never reaches a pixel that is used), and the smooth
ramp hides what is left for models with wider, decaying receptive fields. Multi-scale models need tile
origins on a multiple of their `size_multiple`; the frame is edge-padded to such a multiple and every tile
starts on one. `pipeline.FrameDenoiser` runs the tiles and takes a tiled frame's class from the mean of its
tiles' logits.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .engines.base import InputProfile
from .errors import ConfigError

DEFAULT_OVERLAP = 32


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
