"""Calibrate end to end (method chosen by measured drift); fall back to float node by node to a budget."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import BudgetError, ConfigError, DataError
from ..metrics import accuracy, agreement, psnr
from ..progress import progress_bar
from .qdq import TARGETS, Target, quantizable_nodes, quantize_int8
from .ranges import (
    DEFAULT_PERCENTILE,
    INPUT_NAME,
    METHODS,
    CalibrationSet,
    Ranges,
    collect_ranges,
    load_onnx,
    model_channels,
    prepare_model,
    session,
)

SensitivityMode = Literal["leave_out", "only"]
DEFAULT_METHOD = "percentile"  # DESIGN §2a: percentile 99.999 beat minmax; entropy was catastrophic
# The fallback gives up (BudgetError) rather than keep more than this fraction of the quantizable nodes in
# float. Measured: the quickstart models need 1-4 of 25; a denoise-only digits model whose int8 error is
# spread over every node walked all 25 into float for a 0.08 dB budget, an "int8" model that is fp32 inside.
MAX_FLOAT_FRACTION = 0.25


@dataclass
class Score:
    """How one quantized model compares with the fp32 model on the same images."""

    label: str
    psnr_db: float | None  # vs clean targets (None without them)
    drift_db: float | None  # fp32 PSNR minus this PSNR: positive = worse
    psnr_vs_fp32_db: float  # fidelity to the fp32 model's own output
    agreement: float  # fraction of images whose top-1 class matches fp32 (NaN without a classifier)
    accuracy_drop_pt: float  # accuracy lost vs fp32 in points (labels), or 100 x disagreement


@dataclass
class CalibrationReport:
    out_path: Path
    target: str
    method: str
    percentile: float | None
    set_size: int
    scored_on: int
    fp32_psnr_db: float | None
    scores: list[Score]
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_path"] = str(self.out_path)
        return d


@dataclass
class FallbackReport:
    out_path: Path
    target: str
    met_budget: bool
    float_nodes: list[str]
    before: Score
    after: Score
    sensitivity: dict[str, float]  # node -> measured harm (bigger = keep in float first)
    mode: str
    max_psnr_drift_db: float
    max_acc_drop_pt: float
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_path"] = str(self.out_path)
        return d


# --- evaluation ---------------------------------------------------------------------------------------


def run_onnx(model: str | Path, noisy: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(denoised, logits) of an ONNX model over `noisy` in batches, on the CPU."""
    sess = session(model)
    den, log = [], []
    for start in range(0, len(noisy), batch_size):
        d, lg = sess.run(["denoised", "logits"], {INPUT_NAME: noisy[start : start + batch_size]})
        den.append(d)
        log.append(lg)
    return np.concatenate(den), np.concatenate(log)


def score(
    label: str,
    reference: tuple[np.ndarray, np.ndarray],
    candidate: tuple[np.ndarray, np.ndarray],
    clean: np.ndarray | None,
    labels: np.ndarray | None = None,
) -> Score:
    ref_den, ref_log = reference
    den, log = candidate
    psnr_db = drift_db = None
    if clean is not None:
        psnr_db = psnr(np.clip(den, 0, 1), clean)
        drift_db = psnr(np.clip(ref_den, 0, 1), clean) - psnr_db
    agree = agreement(log, ref_log)
    if labels is not None and log.shape[1] > 0:
        drop = 100.0 * (accuracy(ref_log, labels) - accuracy(log, labels))
    else:
        drop = 0.0 if math.isnan(agree) else 100.0 * (1.0 - agree)
    return Score(label, psnr_db, drift_db, psnr(den, ref_den), agree, drop)


def _rank_key(s: Score) -> float:
    """Smaller is better: drift when clean targets exist, else lost fidelity to fp32."""
    return s.drift_db if s.drift_db is not None else -s.psnr_vs_fp32_db


# --- calibrate ----------------------------------------------------------------------------------------


def _calibration_set(onnx_path: str | Path, noisy: Any, clean: Any, labels: Any, batch_size: int) -> CalibrationSet:
    model = load_onnx(onnx_path)  # a corrupt model fails here, before anything is written
    data = noisy if isinstance(noisy, CalibrationSet) else CalibrationSet(noisy, clean, labels, batch_size=batch_size)
    data.check_channels(model_channels(model), onnx_path)
    return data


def _cache_file(cache_dir: str | Path | None, onnx_path: str | Path, method: str, data: CalibrationSet) -> Path | None:
    """One file per model, method and calibration set, so two callers with different sets (the budget
    fallback uses every image, a plain calibration holds some out) do not keep replacing each other's."""
    if cache_dir is None:
        return None
    return Path(cache_dir) / f"{Path(onnx_path).stem}.ranges-{method}-{data.data_sha256[:12]}.json"


def calibrate(
    onnx_fp32: str | Path,
    out_path: str | Path,
    calib_noisy: np.ndarray | CalibrationSet,
    calib_clean: np.ndarray | None = None,
    *,
    target: Target = "tensorrt",
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    calib_labels: np.ndarray | None = None,
    batch_size: int = 8,
    per_channel: bool = True,
    progress: bool = True,
) -> CalibrationReport:
    """Calibrate `onnx_fp32` on the noisy images and write the int8 model to `out_path`.

    With clean targets (or method 'auto'), the last quarter of the set is held out: ranges come from the
    rest and every candidate is scored there. 'auto' tries minmax, percentile and entropy and keeps the
    one with the smallest PSNR drift (or, without clean targets, the highest PSNR against fp32).
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    if method not in (*METHODS, "auto"):
        raise ConfigError(f"method must be one of {', '.join(METHODS)} or auto; got {method!r}")
    data = _calibration_set(onnx_fp32, calib_noisy, calib_clean, calib_labels, batch_size)
    candidates = list(METHODS) if method == "auto" else [method]
    split = method == "auto" or (data.clean is not None and len(data) >= 11)
    cal, hold = data.split() if split else (data, data)
    fp32_out = run_onnx(onnx_fp32, hold.noisy, batch_size)
    fp32_psnr = None if hold.clean is None else psnr(np.clip(fp32_out[0], 0, 1), hold.clean)
    scores: list[Score] = []
    messages: list[str] = []
    found: dict[str, Ranges] = {}
    with tempfile.TemporaryDirectory(prefix="addunet-cal-") as tmp:
        for m in candidates:
            ranges = collect_ranges(
                onnx_fp32, cal, m, percentile, _cache_file(cache_dir, onnx_fp32, m, cal), progress=progress
            )
            messages += ranges.messages
            found[m] = ranges
            trial = quantize_int8(
                onnx_fp32,
                Path(tmp) / f"{m}.onnx",
                ranges,
                target=target,
                per_channel=per_channel,
                exclude_nodes=exclude_nodes,
                exclude_op_types=exclude_op_types,
            )
            scores.append(score(m, fp32_out, run_onnx(trial, hold.noisy, batch_size), hold.clean, hold.labels))
    best = min(scores, key=_rank_key) if method == "auto" else scores[0]
    out = quantize_int8(
        onnx_fp32,
        out_path,
        found[best.label],
        target=target,
        per_channel=per_channel,
        exclude_nodes=exclude_nodes,
        exclude_op_types=exclude_op_types,
    )
    return CalibrationReport(
        out_path=out,
        target=target,
        method=best.label,
        percentile=float(percentile) if best.label == "percentile" else None,
        set_size=len(cal),
        scored_on=len(hold),
        fp32_psnr_db=fp32_psnr,
        scores=scores,
        messages=messages,
    )


# --- sensitivity and fallback -------------------------------------------------------------------------


def fallback_to_budget(
    onnx_fp32: str | Path,
    out_path: str | Path,
    calib_noisy: np.ndarray | CalibrationSet,
    eval_noisy: np.ndarray,
    eval_clean: np.ndarray,
    *,
    target: Target = "tensorrt",
    max_psnr_drift_db: float,
    max_acc_drop_pt: float,
    labels: np.ndarray | None = None,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    mode: SensitivityMode = "leave_out",
    max_float_nodes: int | None = None,
    max_float_fraction: float = MAX_FLOAT_FRACTION,
    batch_size: int = 8,
    progress: bool = True,
) -> FallbackReport:
    """Quantize, then keep the most sensitive nodes in float, as few as possible, until the budget holds.

    Sensitivity of a node is measured on the evaluation set: with mode 'leave_out', the improvement when
    only that node stays float; with 'only', the harm when only that node is quantized. Nodes are then
    left in float greedily in that order until PSNR drift <= max_psnr_drift_db and the accuracy drop
    (or top-1 disagreement with fp32 without labels) <= max_acc_drop_pt. Raises BudgetError, writing
    nothing, when even `max_float_nodes` float nodes do not meet it (default: `max_float_fraction` of the
    quantizable nodes: past that the "int8" model would be a float model in disguise, slower than fp32).
    """
    if max_psnr_drift_db < 0 or max_acc_drop_pt < 0:
        raise ConfigError("drift budgets must be non-negative")
    if mode not in ("leave_out", "only"):
        raise ConfigError(f"sensitivity mode must be 'leave_out' or 'only', got {mode!r}")
    data = _calibration_set(onnx_fp32, calib_noisy, None, None, batch_size)
    eval_noisy = np.ascontiguousarray(eval_noisy, dtype=np.float32)
    eval_clean = np.asarray(eval_clean, dtype=np.float32)
    if eval_noisy.shape != eval_clean.shape or eval_noisy.ndim != 4 or len(eval_noisy) == 0:
        raise DataError(
            f"evaluation noisy {eval_noisy.shape} and clean {eval_clean.shape} must be equal, "
            "non-empty (N, C, H, W) arrays"
        )
    data.check_channels(eval_noisy.shape[1], "the evaluation images")
    ranges = collect_ranges(
        onnx_fp32, data, method, percentile, _cache_file(cache_dir, onnx_fp32, method, data), progress=progress
    )
    reference = run_onnx(onnx_fp32, eval_noisy, batch_size)
    base_excluded = list(exclude_nodes)
    candidates = [n for n in quantizable_nodes(prepare_model(onnx_fp32), target) if n not in base_excluded]

    def within(s: Score) -> bool:
        return (s.drift_db or 0.0) <= max_psnr_drift_db and s.accuracy_drop_pt <= max_acc_drop_pt

    def harm(s: Score) -> float:
        # Both budgets at once: each violation measured in units of its own budget.
        return max(s.drift_db or 0.0, 0.0) / max(max_psnr_drift_db, 1e-6) + max(s.accuracy_drop_pt, 0.0) / max(
            max_acc_drop_pt, 1e-6
        )

    with tempfile.TemporaryDirectory(prefix="addunet-fallback-") as tmp:

        def trial(excluded: Sequence[str], label: str) -> Score:
            path = quantize_int8(
                onnx_fp32,
                Path(tmp) / "trial.onnx",
                ranges,
                target=target,
                exclude_nodes=excluded,
                exclude_op_types=exclude_op_types,
            )
            return score(label, reference, run_onnx(path, eval_noisy, batch_size), eval_clean, labels)

        before = trial(base_excluded, "int8")
        sensitivity: dict[str, float] = {}
        float_nodes = list(base_excluded)
        after = before
        if not within(before):
            with progress_bar(progress) as bar:
                task = bar.add_task(f"sensitivity ({mode})", total=len(candidates))
                for node in candidates:
                    if mode == "leave_out":
                        sensitivity[node] = harm(before) - harm(trial([*base_excluded, node], node))
                    else:
                        others = [n for n in candidates if n != node]
                        sensitivity[node] = harm(trial([*base_excluded, *others], node))
                    bar.advance(task)
            ranked = sorted(candidates, key=lambda n: sensitivity[n], reverse=True)
            limit = max(1, math.floor(max_float_fraction * len(ranked))) if max_float_nodes is None else max_float_nodes
            for node in ranked[:limit]:
                float_nodes.append(node)
                after = trial(float_nodes, "int8+fallback")
                if within(after):
                    break
        report = FallbackReport(
            out_path=Path(out_path),
            target=target,
            met_budget=within(after),
            float_nodes=[n for n in float_nodes if n not in base_excluded],
            before=before,
            after=after,
            sensitivity=sensitivity,
            mode=mode,
            max_psnr_drift_db=max_psnr_drift_db,
            max_acc_drop_pt=max_acc_drop_pt,
            messages=list(ranges.messages),
        )
    if not report.met_budget:
        raise BudgetError(
            f"int8 cannot meet the budget (drift <= {max_psnr_drift_db} dB, accuracy drop <= "
            f"{max_acc_drop_pt} pt) even with {len(report.float_nodes)} node(s) in float: drift "
            f"{after.drift_db:.3f} dB, drop {after.accuracy_drop_pt:.2f} pt. Use the fp16 model, a looser "
            "budget, quantization-aware fine-tuning (finetune --qat), or retrain with norm/bound."
        )
    quantize_int8(
        onnx_fp32,
        out_path,
        ranges,
        target=target,
        exclude_nodes=float_nodes,
        exclude_op_types=exclude_op_types,
    )
    return report
