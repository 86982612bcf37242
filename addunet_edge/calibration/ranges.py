"""Calibration sets, graph preparation and activation ranges (minmax, percentile, entropy), cached in JSON."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._lazy import require
from ..artifacts import atomic_write_json, read_json, sha256_file
from ..data import array_hash
from ..errors import ArtifactError, ConfigError, DataError
from ..progress import progress_bar

log = logging.getLogger("addunet_edge.calibration")

Method = Literal["minmax", "entropy", "percentile"]
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
INPUT_NAME = "noisy"
OUTPUT_NAMES = ("denoised", "logits")
# Fewer images than this give ranges that are mostly noise; refused rather than silently trusted.
MIN_CALIBRATION_IMAGES = 8
DEFAULT_PERCENTILE = 99.999  # DESIGN §2a: beats MinMax by ~0.2 dB on the multi-task model
CACHE_SCHEMA = 1
_PERCENTILE_BINS = 16384  # fine enough that the 99.999th percentile is not just the max bin edge
_ENTROPY_BINS = 2048  # TensorRT's entropy calibrator uses 2048 bins of |x| and 128 quantized levels
_ENTROPY_LEVELS = 128
_ENTROPY_STRIDE = 4  # candidate thresholds every 4 bins: 4x faster, same answer to a bin or two


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


# --- ONNX loading and preparation -------------------------------------------------------------------


def load_onnx(path: str | Path) -> Any:
    """Load and check a float model with the package's signature; ArtifactError on anything else."""
    onnx = require("onnx", "calibration")
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError... for corrupt files
        raise ArtifactError(f"{path} is not a valid ONNX model ({type(e).__name__}: {e}); re-export it") from None
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or tuple(outputs) != OUTPUT_NAMES:
        raise ArtifactError(
            f"{path} has inputs {inputs} and outputs {outputs}; expected input '{INPUT_NAME}' and outputs "
            f"{list(OUTPUT_NAMES)} (export it with addunet-edge export)"
        )
    return model


def model_channels(model: Any) -> int | None:
    """Channel count of the 'noisy' input, or None when it is symbolic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[1].dim_value) if len(dims) == 4 and dims[1].HasField("dim_value") else None


def prepare_model(path: str | Path) -> Any:
    """The float graph every precision variant starts from: constants folded, shared weights unshared.

    ONNX Runtime's basic (hardware-independent) optimisations fold Constant/Identity chains and constant
    sub-graphs (a live Softplus on the gates, say) so that every Conv sees plain initializers, which the
    quantizers need. Weight initializers shared by several nodes get one copy each, because int8 biases
    are scaled per consumer. The result depends only on the file, so ranges and Q/DQ agree on names.
    """
    from ..engines.ort import ort_session

    onnx = require("onnx", "calibration")
    load_onnx(path)
    with tempfile.TemporaryDirectory(prefix="addunet-prep-") as tmp:
        out = Path(tmp) / "prepared.onnx"
        ort_session(path, optimization="basic", optimized_model_path=out)
        model = onnx.load(str(out))
    _unshare_initializers(model)
    strip_unused_opsets(model)
    toposort(model.graph)
    return model


def _unshare_initializers(model: Any) -> None:
    onnx = require("onnx", "calibration")
    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or node.op_type}_{i}"
                model.graph.initializer.append(copy)
                node.input[i] = copy.name
            else:
                seen.add(name)


def strip_unused_opsets(model: Any) -> None:
    """Drop opset imports of domains no node uses (ORT adds a dozen that other tools warn about)."""
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def toposort(graph: Any) -> None:
    """Sort nodes topologically in place (graph rewriters append nodes at the end)."""
    available = {t.name for t in graph.initializer} | {t.name for t in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ArtifactError(f"graph has a cycle or a dangling input near node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def activation_tensors(model: Any) -> list[str]:
    """Every float32 tensor computed from the input (node inputs and outputs, the input itself)."""
    onnx = require("onnx", "calibration")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    constants = {t.name for t in model.graph.initializer}
    names: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        for name in [*node.input, *node.output]:
            if name and name not in constants and name not in seen:
                seen.add(name)
                if types.get(name) == onnx.TensorProto.FLOAT:
                    names.append(name)
    return names


def session(model: Any, threads: int = 0) -> Any:
    """A CPU ONNX Runtime session on a ModelProto or a path; ArtifactError when ORT refuses it."""
    from ..engines.ort import ort_session

    return ort_session(model, threads=threads)


# --- ranges ---------------------------------------------------------------------------------------


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
