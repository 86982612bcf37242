"""Activation ranges (minmax, percentile, entropy) of the prepared graph on a calibration set, cached in JSON."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._lazy import require
from ..artifacts import atomic_write_json, read_json, sha256_file
from ..errors import ArtifactError, ConfigError, DataError
from ..progress import progress_bar
from .calibration_set import CalibrationSet, as_calibration_set
from .graph import INPUT_NAME, activation_tensors, model_channels, prepare_model, session

log = logging.getLogger("addunet_edge.calibration")

Method = Literal["minmax", "entropy", "percentile"]
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
DEFAULT_PERCENTILE = 99.999  # DESIGN §2a: beats MinMax by ~0.2 dB on the multi-task model
CACHE_SCHEMA = 1
_PERCENTILE_BINS = 16384  # fine enough that the 99.999th percentile is not just the max bin edge
_ENTROPY_BINS = 2048  # TensorRT's entropy calibrator uses 2048 bins of |x| and 128 quantized levels
_ENTROPY_LEVELS = 128
_ENTROPY_STRIDE = 4  # candidate thresholds every 4 bins: 4x faster, same answer to a bin or two


class Ranges(dict[str, tuple[float, float]]):
    """tensor name -> (lo, hi), plus where the numbers came from (written into the int8 manifest)."""

    def __init__(
        self,
        ranges: dict[str, tuple[float, float]],
        *,
        method: str,
        percentile: float | None,
        set_size: int,
        data_sha256: str,
        model_sha256: str,
        from_cache: bool = False,
        messages: Sequence[str] = (),
        data_name: str = "",
    ) -> None:
        super().__init__(ranges)
        self.data_name = data_name  # which images: the dataset a calibration set was drawn from
        self.method = method
        self.percentile = percentile
        self.set_size = set_size
        self.data_sha256 = data_sha256
        self.model_sha256 = model_sha256
        self.from_cache = from_cache
        self.messages = list(messages)


def _augmented(model: Any, names: Sequence[str]) -> Any:
    onnx = require("onnx", "calibration")
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    for name in names:
        if name not in existing:
            aug.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return aug


def _run_passes(
    model: Any, names: list[str], calib: CalibrationSet, method: str, percentile: float, progress: bool
) -> dict[str, tuple[float, float]]:
    sess = session(_augmented(model, names))
    lo = {n: math.inf for n in names}
    hi = {n: -math.inf for n in names}
    passes = 1 if method == "minmax" else 2
    hists: dict[str, np.ndarray] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task(f"calibrating ({method})", total=calib.num_batches * passes)
        for batch in calib:
            for name, value in zip(names, sess.run(names, {INPUT_NAME: batch}), strict=True):
                if value.size:
                    vmin, vmax = float(value.min()), float(value.max())
                    if not (math.isfinite(vmin) and math.isfinite(vmax)):
                        raise DataError(
                            f"the model produces NaN or infinite values in '{name}' on the calibration data"
                        )
                    lo[name], hi[name] = min(lo[name], vmin), max(hi[name], vmax)
            bar.advance(task)
        bad = [n for n in names if lo[n] == math.inf]
        if passes == 2:
            for batch in calib:
                for name, value in zip(names, sess.run(names, {INPUT_NAME: batch}), strict=True):
                    if value.size and name not in bad:
                        _accumulate(hists, name, value, lo[name], hi[name], method)
                bar.advance(task)
    out: dict[str, tuple[float, float]] = {}
    for name in names:
        if name in bad:  # empty tensor (the (N, 0) logits of a denoise-only model): nothing to quantize
            out[name] = (0.0, 0.0)
            continue
        if method == "percentile":
            a, b = _percentile_range(hists[name], lo[name], hi[name], percentile)
        elif method == "entropy":
            a, b = _entropy_range(hists[name], lo[name], hi[name])
        else:
            a, b = lo[name], hi[name]
        # Zero must be exactly representable (padding, ReLU): every range includes it.
        out[name] = (min(a, 0.0), max(b, 0.0))
    return out


def _accumulate(hists: dict[str, np.ndarray], name: str, value: np.ndarray, lo: float, hi: float, method: str) -> None:
    if method == "percentile":
        bins, start, width = _PERCENTILE_BINS, lo, (hi - lo) / _PERCENTILE_BINS
        x = value.ravel()
    else:
        amax = max(abs(lo), abs(hi))
        bins, start, width = _ENTROPY_BINS, 0.0, amax / _ENTROPY_BINS
        x = np.abs(value.ravel())
    if width <= 0:
        idx = np.zeros(x.size, dtype=np.int64)
    else:
        idx = np.clip(((x - start) / width).astype(np.int64), 0, bins - 1)
    counts = np.bincount(idx, minlength=bins)
    hists[name] = hists[name] + counts if name in hists else counts


def _percentile_range(hist: np.ndarray, lo: float, hi: float, percentile: float) -> tuple[float, float]:
    """Clip (100 - p) / 2 % of the values on each side (at most: the exact min/max otherwise)."""
    if hi <= lo:
        return lo, hi
    width = (hi - lo) / hist.size
    cdf = np.cumsum(hist) / hist.sum()
    tail = (100.0 - percentile) / 200.0
    i_lo = int(np.searchsorted(cdf, tail, side="left"))
    i_hi = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return max(lo, lo + i_lo * width), min(hi, lo + (i_hi + 1) * width)


def _entropy_range(hist: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """TensorRT-style KL threshold on |x|: the clipping point whose 128-level copy loses least information."""
    amax = max(abs(lo), abs(hi))
    if amax == 0 or hist.sum() == 0:
        return lo, hi
    width = amax / hist.size
    h = hist.astype(np.float64)
    best_i, best_kl = hist.size, math.inf
    for i in range(_ENTROPY_LEVELS, hist.size + 1, _ENTROPY_STRIDE):
        p = h[:i].copy()
        p[-1] += h[i:].sum()  # outliers are clipped into the last bin
        nonzero = h[:i] > 0
        level = (np.arange(i) * _ENTROPY_LEVELS) // i
        sums = np.bincount(level, weights=h[:i], minlength=_ENTROPY_LEVELS)
        counts = np.bincount(level, weights=nonzero, minlength=_ENTROPY_LEVELS)
        q = np.where(nonzero, sums[level] / np.maximum(counts[level], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p, q = p / ps, q / qs
        mask = p > 0
        # A bin with mass in P but none in Q (the clipped tail) costs a large but finite penalty.
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    threshold = best_i * width
    return max(lo, -threshold), min(hi, threshold)


def _cache_keys(model_sha: str, data_sha: str, method: str, percentile: float | None) -> dict[str, Any]:
    return {"model_sha256": model_sha, "data_sha256": data_sha, "method": method, "percentile": percentile}


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    )


def _read_cache(cache: Path, keys: dict[str, Any], names: list[str]) -> tuple[dict | None, str | None]:
    """(ranges, None) on a hit; (None, why) when the cache is absent, corrupt or made for something else."""
    if not cache.exists():
        return None, None
    try:
        obj = read_json(cache, what="ranges cache")
    except ArtifactError as e:
        return None, f"{e}; recomputing the ranges"
    if obj.get("schema") != CACHE_SCHEMA or not isinstance(obj.get("ranges"), dict):
        return None, f"ranges cache {cache} has an unknown layout; recomputing the ranges"
    what = {
        "model_sha256": "model",
        "data_sha256": "calibration data",
        "method": "method",
        "percentile": "percentile",
    }
    for key, label in what.items():
        if obj.get(key) != keys[key]:
            return None, (
                f"ranges cache {cache} was made for another {label} ({obj.get(key)!s:.16} != "
                f"{keys[key]!s:.16}); recomputing the ranges and replacing the cache"
            )
    # Each range must be [lo, hi] of two JSON numbers: a string such as "12" would index into (1.0, 2.0),
    # and an integer beyond float range overflows.
    try:
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in obj["ranges"].items() if _is_pair(v)}
    except OverflowError:
        return None, f"ranges cache {cache} holds malformed ranges; recomputing the ranges"
    if len(ranges) != len(obj["ranges"]):
        return None, f"ranges cache {cache} holds malformed ranges; recomputing the ranges"
    missing = [n for n in names if n not in ranges]
    if missing or not all(math.isfinite(a) and math.isfinite(b) and a <= b for a, b in ranges.values()):
        return None, f"ranges cache {cache} does not cover this graph's tensors; recomputing the ranges"
    return ranges, None


def collect_ranges(
    onnx_path: str | Path,
    calib_set: CalibrationSet | np.ndarray,
    method: Method = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    cache: str | Path | None = None,
    *,
    progress: bool = True,
) -> Ranges:
    """Range (lo, hi) of every float activation of the prepared graph of `onnx_path` on `calib_set`.

    `cache` (a JSON file) is reused only when it was made for this model (sha256), these images (hash of
    their bytes) and this method and percentile; otherwise the ranges are recomputed, the cache is replaced
    atomically and the reason is logged and kept in `Ranges.messages`.
    """
    if method not in METHODS:
        raise ConfigError(f"calibration method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
    calib = as_calibration_set(calib_set)
    model = prepare_model(onnx_path)
    calib.check_channels(model_channels(model), onnx_path)
    names = activation_tensors(model)
    model_sha, data_sha = sha256_file(onnx_path), calib.data_sha256
    pct = float(percentile) if method == "percentile" else None
    keys = _cache_keys(model_sha, data_sha, method, pct)
    messages: list[str] = []
    meta = {
        "method": method,
        "percentile": pct,
        "set_size": len(calib),
        "data_sha256": data_sha,
        "model_sha256": model_sha,
        "data_name": calib.name,
    }
    if cache is not None:
        cache = Path(cache)
        cached, why = _read_cache(cache, keys, names)
        if why:
            log.warning(why)
            messages.append(why)
        if cached is not None:
            return Ranges(cached, from_cache=True, messages=messages, **meta)
    ranges = _run_passes(model, names, calib, method, percentile, progress)
    if cache is not None:
        try:
            atomic_write_json(
                cache, {"schema": CACHE_SCHEMA, **keys, "ranges": {k: list(v) for k, v in ranges.items()}}
            )
        except (OSError, ArtifactError) as e:  # a read-only or full cache folder must not fail the calibration
            messages.append(f"could not write the ranges cache {cache}: {e}")
            log.warning(messages[-1])
    return Ranges(ranges, from_cache=False, messages=messages, **meta)
