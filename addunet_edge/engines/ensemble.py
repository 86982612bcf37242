"""Test-time self-ensemble over any engine: the eight dihedral transforms of the input, averaged.

Each input is turned by 0, 1, 2 and 3 quarter turns, each of these also mirrored left-right; the engine
denoises the eight, every output is turned back, and the eight outputs are averaged. The class logits are
those of the untransformed pass: a classifier of upright images is not invariant to turns (a 6 turned half
way is a 9; averaging the eight views' logits took digit accuracy from 92 % to 37 %). It costs about eight
times the inference; it helps where the model is nearly, but not exactly, equivariant to these symmetries
(a denoiser).

One wrapper serves every backend, since it only calls the Engine protocol: `SelfEnsemble(open_engine(p))`
is itself an Engine (same `info`, `extra["self_ensemble"]` added; a context manager; calls overlap from
several threads exactly where the wrapped engine's do, because every call goes through it). Quarter turns
swap height and width, so the ensemble accepts the shapes the engine takes both ways round (its profile is
the engine's made symmetric; an input the engine takes only one way round is a ShapeError). With
`fallback=True` it accepts every shape the engine does, and where the turned shape does not fit (a plan
built for one non-square size) runs the four shape-keeping transforms (identity, half turn, the two
mirrors) instead; `usage()` counts the images that ran each way.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError
from .base import Engine, EngineInfo, InputProfile

# (quarter turns counter-clockwise, then mirrored left-right): the eight symmetries of a square.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))
# The four that keep a non-square shape: identity, half turn, mirrored left-right, mirrored top-bottom.
SHAPE_KEEPING: tuple[tuple[int, bool], ...] = ((0, False), (2, False), (0, True), (2, True))
LABEL = "+x8"  # what a report appends to the name of an engine run as a self-ensemble


def symmetric_profile(profile: InputProfile) -> InputProfile | None:
    """The shapes `profile` takes both ways round (height and width swapped); None if there are none."""
    lo = max(profile.min_hw)
    hi = None if profile.max_hw is None else min(profile.max_hw)
    fixed = profile.fixed_hw
    if (fixed is not None and fixed[0] != fixed[1]) or (hi is not None and lo > hi):
        return None
    opt = profile.opt_hw
    if opt is not None:
        side = max(lo, min(opt) if hi is None else min(min(opt), hi))
        opt = (side, side)
    return replace(profile, min_hw=(lo, lo), max_hw=None if hi is None else (hi, hi), opt_hw=opt)


def transform(x: Any, k: int, flip: bool) -> Any:
    """Transform (k, flip) of a (N, C, H, W) numpy array or torch tensor: k quarter turns, then a mirror."""
    if isinstance(x, np.ndarray):
        y = np.rot90(x, k, axes=(2, 3))
        return y[..., ::-1] if flip else y
    import torch  # only a torch device tensor gets here (Engine._prepare turns anything else into numpy)

    y = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(y, dims=(3,)) if flip else y


def untransform(y: Any, k: int, flip: bool) -> Any:
    """The inverse of `transform(., k, flip)`: undo the mirror, then turn back."""
    if isinstance(y, np.ndarray):
        return np.rot90(y[..., ::-1] if flip else y, -k, axes=(2, 3))
    import torch

    return torch.rot90(torch.flip(y, dims=(3,)) if flip else y, -k, dims=(2, 3))


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], np.ndarray):
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    import torch

    return torch.cat(parts).contiguous()


class SelfEnsemble(Engine):
    """Any engine as a test-time self-ensemble of the eight dihedral transforms (about 8x the time).

    >>> with SelfEnsemble(open_engine("model.fp32.onnx")) as engine:
    ...     pred = engine(noisy)   # the mean of the eight turned-back outputs; the upright pass's logits

    Transforms that give the same shape share one call of the wrapped engine where its batch profile and
    `batch` (the most images per call; None: as many as the profile takes) allow, so a square input is one
    call of 8N images; otherwise they are split into as few calls as those allow, down to one per
    transform. On a CPU, one call per transform is the faster (measured with PyTorch and ONNX Runtime: a
    call of 8N images takes 1.1 to 3x as long as eight calls of N, whose activations stay in cache): pass
    `batch=N` there. Closing the ensemble closes the engine it wraps.
    """

    # Holds no state between calls (the usage counters have their own lock): the wrapped engine decides
    # which calls overlap.
    reentrant = True

    def __init__(self, engine: Engine, *, fallback: bool = False, batch: int | None = None) -> None:
        super().__init__(engine.path)
        if batch is not None and batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        self.engine = engine
        self.fallback = fallback
        self.batch = batch
        self.backend = engine.backend  # type: ignore[misc]  # reports name the backend that runs it
        inner = engine.info
        profile = inner.profile if fallback else symmetric_profile(inner.profile)
        if profile is None:
            raise ShapeError(
                f"{engine.path} takes no input shape both ways round ({_describe(inner.profile)}), and the "
                "self-ensemble turns inputs by quarter turns, which swap height and width: rebuild it with a "
                "square or dynamic profile, or allow the fallback to the four shape-keeping transforms"
            )
        self._inner_profile = inner.profile
        record = {"transforms": len(DIHEDRAL), "fallback_transforms": len(SHAPE_KEEPING) if fallback else None}
        self._info = replace(inner, profile=profile, extra={**inner.extra, "self_ensemble": record})
        self._usage_lock = threading.Lock()
        self._images = {len(DIHEDRAL): 0, len(SHAPE_KEEPING): 0}
        self._calls = 0

    @property
    def info(self) -> EngineInfo:
        return self._info

    def usage(self) -> dict[str, Any]:
        """What ran so far: images through all eight transforms, through the four (fallback), engine calls."""
        with self._usage_lock:
            images = {str(k): v for k, v in self._images.items()}
            calls = self._calls
        return {"transforms": len(DIHEDRAL), "fallback": self.fallback, "images": images, "engine_calls": calls}

    # -- lifecycle: the wrapped engine's ----------------------------------------------------------------
    def _activate(self) -> None:
        self.engine.activate()

    def _deactivate(self) -> None:
        self.engine.close()

    def __del__(self) -> None:
        # Never close the wrapped engine from a finaliser: whoever opened it may still be using it.
        return None

    def _accepts_device_tensor(self, tensor: Any) -> bool:
        return self.engine._accepts_device_tensor(tensor)

    def _prepare(self, noisy: Any) -> Any:
        try:
            return super()._prepare(noisy)
        except ShapeError as e:
            shape = tuple(np.shape(noisy)) if isinstance(noisy, np.ndarray) else tuple(getattr(noisy, "shape", ()))
            if len(shape) == 3:
                shape = (1, *shape)
            if len(shape) != 4 or not _fits(self._inner_profile, shape):
                raise
            h, w = shape[2:]
            raise ShapeError(
                f"{e}: the self-ensemble also runs the input turned a quarter ({w}x{h}), and {self.engine.path} "
                f"takes inputs both ways round only within {_describe(self.info.profile)}; cut it into tiles "
                "that fit (`run` does), or run without the self-ensemble"
            ) from None

    # -- inference -----------------------------------------------------------------------------------------
    def _infer(self, noisy: Any) -> tuple[Any, Any]:
        n, c, h, w = tuple(noisy.shape)
        turned_fits = not self.fallback or _fits(self._inner_profile, (n, c, w, h))
        transforms = DIHEDRAL if turned_fits else SHAPE_KEEPING
        denoised = logits = None
        groups = self._groups(transforms, n, h == w)
        for group in groups:
            pred = self.engine(_concat([transform(noisy, k, flip) for k, flip in group]))
            for i, (k, flip) in enumerate(group):
                d = untransform(pred.denoised[i * n : (i + 1) * n], k, flip)
                denoised = d if denoised is None else denoised + d
                if (k, flip) == (0, False):
                    logits = pred.logits[i * n : (i + 1) * n]
        with self._usage_lock:
            self._images[len(transforms)] += n
            self._calls += len(groups)
        scale = 1.0 / len(transforms)
        if isinstance(denoised, np.ndarray):
            return np.ascontiguousarray(denoised * np.float32(scale)), np.ascontiguousarray(logits)
        return (denoised * scale).contiguous(), logits.contiguous()  # type: ignore[union-attr]

    def _groups(self, transforms: tuple[tuple[int, bool], ...], n: int, square: bool) -> list[list[tuple[int, bool]]]:
        """The transforms in engine calls: those of one shape together, as many as the batch profile allows."""
        caps = [b for b in (self._inner_profile.max_batch, self.batch) if b is not None]
        per_call = max(1, min(caps) // n) if caps else len(transforms)
        shapes = [transforms] if square else [[t for t in transforms if t[0] % 2 == odd] for odd in (0, 1)]
        groups = []
        for same in filter(None, shapes):
            calls = -(-len(same) // per_call)
            groups += [list(same[i::calls]) for i in range(calls)]
        return groups


def _fits(profile: InputProfile, shape: tuple[int, ...]) -> bool:
    try:
        profile.check(shape)
    except ShapeError:
        return False
    return True


def _describe(profile: InputProfile) -> str:
    if profile.fixed_hw is not None:
        return f"only {profile.fixed_hw[0]}x{profile.fixed_hw[1]}"
    hi = "unbounded" if profile.max_hw is None else f"{profile.max_hw[0]}x{profile.max_hw[1]}"
    return f"{profile.min_hw[0]}x{profile.min_hw[1]} to {hi}"
