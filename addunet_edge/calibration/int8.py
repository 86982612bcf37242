"""The one way to make an int8 ONNX: calibration data read from the model's own record, then ranges, Q/DQ
and (with a budget) the float fallback, with the same defaults for build, calibrate, quickstart and QAT."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .calibration_set import CalibrationSet
from .qdq import HighPrecision, Target
from .ranges import DEFAULT_PERCENTILE
from .sensitivity import (
    DEFAULT_METHOD,
    CalibrationReport,
    EvalImages,
    FallbackReport,
    OnMiss,
    calibrate,
    fallback_to_budget,
)

log = logging.getLogger("addunet_edge.calibration")

DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_CALIBRATION_SIGMA = 25.0
# A budget is checked where validate checks it: every one of its noise levels. The lowest drifts most
# (the same int8 error costs more dB on a cleaner output): -0.33 dB at sigma 15 against -0.21 at 25.
DEFAULT_BUDGET_SIGMAS: tuple[float, ...] = (15.0, 25.0, 50.0)


@dataclass(frozen=True)
class DataSpec:
    """Which images a model's calibration and budget use: its training data, as its checkpoint records it."""

    source: str  # a load_dataset argument: 'digits', 'photos', a folder or an .npz
    in_channels: int
    size: int = 32  # image size of digits / class folders
    seed: int = 0  # the split seed: the budget is measured on the validation split the training held out

    @classmethod
    def of(cls, source: str | Path, dataset: str | None = None, in_channels: int | None = None) -> DataSpec:
        """The data recorded by a checkpoint (or by the manifest of an ONNX exported from one).

        `dataset` overrides it; calibrating on other data than the model was trained on is allowed, with
        a warning, and with no record at all `dataset` is required (nothing falls back to digits).
        """
        from ..artifacts import read_manifest
        from ..checkpoint import is_checkpoint, read_checkpoint_meta

        source = Path(source)
        if is_checkpoint(source):
            meta = read_checkpoint_meta(source)
            data = meta.get("data") or {}
            channels = int((meta.get("model") or {}).get("in_channels", data.get("in_channels", 1)))
        else:
            manifest = read_manifest(source, verify_hash=False) or {}
            data = manifest.get("data") or {}
            channels = int(manifest.get("in_channels", data.get("in_channels", 1)))
        recorded = data.get("source") or data.get("dataset")
        if dataset is None and not recorded:
            raise DataError(f"{source} records no training data to calibrate on: pass --dataset digits|photos|PATH")
        if dataset is not None and recorded and str(dataset) != str(recorded):
            log.warning(
                "calibrating %s on %s although it was trained on %s: its ranges and drift budget then "
                "describe other images than the ones it was made for",
                source,
                dataset,
                recorded,
            )
        return cls(
            source=str(dataset or recorded),
            in_channels=in_channels or channels,
            size=int(data.get("size", 32)),
            seed=int(data.get("seed", 0)),
        )

    def calibration_arrays(
        self, count: int = DEFAULT_CALIBRATION_IMAGES, sigma: float = DEFAULT_CALIBRATION_SIGMA
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Noisy, clean and labels from the training split, with the noise of the intended use."""
        from ..data import add_noise, load_dataset

        ds = load_dataset(
            self.source, size=self.size, in_channels=self.in_channels, seed=self.seed, patches_per_epoch=max(count, 64)
        )
        rng = np.random.default_rng([self.seed, 7])
        clean, labels = ds.train.epoch(rng)
        clean = clean[:count]
        labels = None if labels is None else labels[:count]
        return add_noise(clean, sigma, rng), clean, labels

    def budget_images(self, sigmas: Sequence[float] = DEFAULT_BUDGET_SIGMAS) -> list[EvalImages]:
        """The validation split at each noise level: where a drift budget is measured during calibration
        (the test split stays for validate)."""
        from ..data import load_dataset

        val = load_dataset(self.source, size=self.size, in_channels=self.in_channels, seed=self.seed).val
        return [EvalImages(f"sigma {s:g}", val.noisy(s, self.seed), val.clean, val.labels) for s in sigmas]


@dataclass(frozen=True)
class Int8Budget:
    """A drift budget for int8, as magnitudes: PSNR drift no worse than -max_psnr_drift_db and accuracy no
    more than max_acc_drop_pt points lower than fp32's, at every noise level in `sigmas`."""

    max_psnr_drift_db: float = float("inf")
    max_acc_drop_pt: float = 100.0
    sigmas: tuple[float, ...] = DEFAULT_BUDGET_SIGMAS
    on_miss: OnMiss = "raise"


def make_int8(
    fp32_onnx: str | Path,
    out_path: str | Path,
    data: DataSpec,
    *,
    target: Target,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    sigma: float = DEFAULT_CALIBRATION_SIGMA,
    budget: Int8Budget | None = None,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    high_precision: HighPrecision | None = None,
    dla: bool = False,
    progress: bool = True,
) -> CalibrationReport | FallbackReport:
    """Calibrate `fp32_onnx` on `data` and write the int8 Q/DQ model (and its manifest) to `out_path`.

    Without a budget: ranges by `method` ('auto' tries each and keeps the least drift). With one: the
    most sensitive nodes stay float until it holds at every noise level of the budget. `high_precision`
    (tensorrt target: fp16 by default, fp32 on request) is what runs outside the int8 ops; `dla` asks for
    ModelOpt's DLA placement.
    """
    noisy, clean, labels = data.calibration_arrays(calibration_images, sigma)
    images = CalibrationSet(noisy, clean, labels, batch_size=batch_size, name=data.source)
    common = {
        "target": target,
        "percentile": percentile,
        "exclude_nodes": exclude_nodes,
        "exclude_op_types": exclude_op_types,
        "cache_dir": cache_dir,
        "batch_size": batch_size,
        "high_precision": high_precision,
        "dla": dla,
        "progress": progress,
    }
    if budget is None:
        return calibrate(fp32_onnx, out_path, images, method=method, **common)
    return fallback_to_budget(
        fp32_onnx,
        out_path,
        images,
        data.budget_images(budget.sigmas),
        method=DEFAULT_METHOD if method == "auto" else method,
        max_psnr_drift_db=budget.max_psnr_drift_db,
        max_acc_drop_pt=budget.max_acc_drop_pt,
        on_miss=budget.on_miss,
        **common,
    )
