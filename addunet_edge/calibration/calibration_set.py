"""The images a calibration runs on: checked, served in batches, split into a calibration and a held-out part."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..data import array_hash
from ..errors import ConfigError, DataError

# Fewer images than this give ranges that are mostly noise; refused rather than silently trusted.
MIN_CALIBRATION_IMAGES = 8


class CalibrationSet:
    """Noisy images (N, C, H, W) float32 in [0, 1], optional clean targets and labels, served in batches."""

    def __init__(
        self,
        noisy: np.ndarray,
        clean: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        batch_size: int = 8,
        size: int | None = None,
        name: str = "arrays",
    ) -> None:
        noisy = np.asarray(noisy)
        if noisy.ndim != 4:
            raise DataError(f"calibration images must be (N, C, H, W), got shape {noisy.shape}")
        if size is not None:
            if size < 1:
                raise ConfigError(f"calibration size must be positive, got {size}")
            noisy = noisy[:size]
            clean = None if clean is None else np.asarray(clean)[:size]
            labels = None if labels is None else np.asarray(labels)[:size]
        n = noisy.shape[0]
        if n == 0:
            raise DataError(f"calibration set '{name}' is empty: give it at least {MIN_CALIBRATION_IMAGES} images")
        if n < MIN_CALIBRATION_IMAGES:
            raise DataError(
                f"calibration set '{name}' has {n} image(s); at least {MIN_CALIBRATION_IMAGES} are needed "
                "for ranges that generalise (use a larger --calibration-images or another dataset)"
            )
        if not np.issubdtype(noisy.dtype, np.floating):
            raise DataError(f"calibration images must be float in [0, 1], got dtype {noisy.dtype}")
        if not np.all(np.isfinite(noisy)):
            raise DataError(f"calibration set '{name}' contains NaN or infinite values")
        if clean is not None:
            clean = np.asarray(clean, dtype=np.float32)
            if clean.shape != noisy.shape:
                raise DataError(f"clean targets have shape {clean.shape}, noisy images {noisy.shape}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (n,):
                raise DataError(f"labels have shape {labels.shape}, expected ({n},)")
        if batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        self.noisy = np.ascontiguousarray(noisy, dtype=np.float32)
        self.clean = clean
        self.labels = labels
        self.batch_size = int(batch_size)
        self.name = name

    def __len__(self) -> int:
        return int(self.noisy.shape[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self), self.batch_size):
            yield self.noisy[start : start + self.batch_size]

    @property
    def channels(self) -> int:
        return int(self.noisy.shape[1])

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self) / self.batch_size)

    @property
    def data_sha256(self) -> str:
        """Identifies the images that ranges were computed from (the noisy inputs only)."""
        return array_hash(self.noisy)

    def check_channels(self, channels: int | None, model: str | Path) -> None:
        if channels is not None and channels != self.channels:
            raise DataError(
                f"calibration set '{self.name}' has {self.channels} channel(s) but {model} expects "
                f"{channels}: load the dataset with the model's channel count"
            )

    def split(self, holdout_fraction: float = 0.25) -> tuple[CalibrationSet, CalibrationSet]:
        """(calibration part, held-out part): ranges come from the first, drift is scored on the second."""
        n_hold = max(2, round(len(self) * holdout_fraction))
        n_cal = len(self) - n_hold
        if n_cal < MIN_CALIBRATION_IMAGES:
            raise DataError(
                f"calibration set '{self.name}' has {len(self)} images: too few to hold out {n_hold} "
                f"for scoring and keep {MIN_CALIBRATION_IMAGES} for ranges "
                f"(use at least {MIN_CALIBRATION_IMAGES + 3})"
            )

        def part(sl: slice, suffix: str) -> CalibrationSet:
            return CalibrationSet(
                self.noisy[sl],
                None if self.clean is None else self.clean[sl],
                None if self.labels is None else self.labels[sl],
                batch_size=self.batch_size,
                name=f"{self.name}[{suffix}]",
            )

        cal = part(slice(0, n_cal), "calibration")
        # The held-out part may be smaller than the calibration minimum: bypass that check for it.
        hold = CalibrationSet.__new__(CalibrationSet)
        hold.noisy, hold.batch_size, hold.name = self.noisy[n_cal:], self.batch_size, f"{self.name}[held-out]"
        hold.clean = None if self.clean is None else self.clean[n_cal:]
        hold.labels = None if self.labels is None else self.labels[n_cal:]
        return cal, hold


def as_calibration_set(data: CalibrationSet | np.ndarray, batch_size: int = 8) -> CalibrationSet:
    return data if isinstance(data, CalibrationSet) else CalibrationSet(data, batch_size=batch_size)
