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
from ..metrics import Drift, fmt_signed, psnr, score_outputs, worst
from ..progress import progress_bar
from .calibration_set import CalibrationSet
from .graph import INPUT_NAME, load_onnx, model_channels, prepare_model, session
from .qdq import TARGETS, HighPrecision, Target, quantizable_nodes, quantize_int8
from .ranges import DEFAULT_PERCENTILE, METHODS, Ranges, collect_ranges

SensitivityMode = Literal["only", "leave_out"]
DEFAULT_METHOD = "percentile"  # DESIGN §2a: percentile 99.999 beat minmax; entropy was catastrophic
# The fallback gives up rather than keep more than this fraction of the quantizable nodes in float.
# Measured: the quickstart models need 1-4 of 25; a denoise-only digits model whose int8 error is spread
# over every node walked all 25 into float for a 0.08 dB budget, an "int8" model that is fp32 inside.
MAX_FLOAT_FRACTION = 0.25
OnMiss = Literal["raise", "keep_best"]


@dataclass(frozen=True)
class EvalImages:
    """Noisy images with their clean targets (and labels) scored as one group: one noise level, say.
    A budget must hold for every group, so the worst group is what counts."""

    name: str
    noisy: np.ndarray
    clean: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.noisy.shape != self.clean.shape or self.noisy.ndim != 4 or len(self.noisy) == 0:
            raise DataError(
                f"evaluation images '{self.name}': noisy {self.noisy.shape} and clean {self.clean.shape} must "
                "be equal, non-empty (N, C, H, W) arrays"
            )
        if self.labels is not None and len(self.labels) != len(self.noisy):
            raise DataError(f"evaluation images '{self.name}': {len(self.labels)} labels for {len(self.noisy)} images")


@dataclass
class CalibrationReport:
    out_path: Path
    target: str
    method: str
    percentile: float | None
    set_size: int
    scored_on: int
    fp32_psnr_db: float | None
    scores: dict[str, Drift]  # calibration method -> its int8 model against fp32 on the held-out images
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
    before: Drift  # worst group, every node int8
    after: Drift  # worst group, with float_nodes in float
    sensitivity: dict[str, float]  # node -> measured harm (bigger = keep in float first)
    mode: str
    max_psnr_drift_db: float
    max_acc_drop_pt: float
    groups: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_path"] = str(self.out_path)
        return d

    def summary(self) -> str:
        """One line a person reads: the worst drift and accuracy change over the budget's noise levels,
        before and after the fallback, signed as everywhere else (negative = worse)."""
        b, a = self.before, self.after
        return (
            f"int8 {self.target}, worst of {', '.join(self.groups)}: drift {fmt_signed(b.psnr_drift_db)} -> "
            f"{fmt_signed(a.psnr_drift_db)} dB, accuracy {fmt_signed(b.accuracy_change_pt, '.2f')} -> "
            f"{fmt_signed(a.accuracy_change_pt, '.2f')} pt (budget -{self.max_psnr_drift_db:g} dB / "
            f"-{self.max_acc_drop_pt:g} pt: {'met' if self.met_budget else 'NOT met'}); float nodes: "
            f"{', '.join(self.float_nodes) or 'none'}"
        )


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


def _rank_key(s: Drift) -> float:
    """Larger is better: drift when clean targets exist, else fidelity to fp32."""
    return s.psnr_drift_db if s.psnr_drift_db is not None else s.fidelity_psnr_db


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
    high_precision: HighPrecision | None = None,
    dla: bool = False,
    progress: bool = True,
) -> CalibrationReport:
    """Calibrate `onnx_fp32` on the noisy images and write the int8 model to `out_path`.

    With clean targets (or method 'auto'), the last quarter of the set is held out: ranges come from the
    rest and every candidate is scored there. 'auto' tries minmax, percentile and entropy and keeps the
    one with the least PSNR drift (or, without clean targets, the highest PSNR against fp32).
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
    scores: dict[str, Drift] = {}
    messages: list[str] = []
    found: dict[str, Ranges] = {}
    quantize: dict[str, Any] = {
        "target": target,
        "per_channel": per_channel,
        "exclude_nodes": exclude_nodes,
        "exclude_op_types": exclude_op_types,
        "high_precision": high_precision,
        "dla": dla,
    }
    with tempfile.TemporaryDirectory(prefix="addunet-cal-") as tmp:
        for m in candidates:
            ranges = collect_ranges(
                onnx_fp32, cal, m, percentile, _cache_file(cache_dir, onnx_fp32, m, cal), progress=progress
            )
            messages += ranges.messages
            found[m] = ranges
            trial = quantize_int8(onnx_fp32, Path(tmp) / f"{m}.onnx", ranges, **quantize)
            scores[m] = score_outputs(fp32_out, run_onnx(trial, hold.noisy, batch_size), hold.clean, hold.labels)
    best = max(scores, key=lambda m: _rank_key(scores[m]))
    out = quantize_int8(onnx_fp32, out_path, found[best], **quantize)
    return CalibrationReport(
        out_path=out,
        target=target,
        method=best,
        percentile=float(percentile) if best == "percentile" else None,
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
    evaluation: Sequence[EvalImages],
    *,
    target: Target = "tensorrt",
    max_psnr_drift_db: float,
    max_acc_drop_pt: float,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    mode: SensitivityMode = "only",
    max_float_nodes: int | None = None,
    max_float_fraction: float = MAX_FLOAT_FRACTION,
    on_miss: OnMiss = "raise",
    batch_size: int = 8,
    high_precision: HighPrecision | None = None,
    dla: bool = False,
    progress: bool = True,
) -> FallbackReport:
    """Quantize, then keep the most sensitive nodes in float, as few as possible, until the budget holds.

    The budget must hold for every group of `evaluation` (one per noise level, say): PSNR drift no worse
    than -max_psnr_drift_db and accuracy change (or top-1 disagreement with fp32 without labels) no worse
    than -max_acc_drop_pt. Sensitivity of a node is measured with mode 'only' as the harm when only that
    node is quantized (the default: it isolates nodes that only hurt together, such as the last decoder
    conv and the image head, which share one quantized tensor), with 'leave_out' as the improvement when
    only that node stays float. Nodes are then kept in float greedily in that order. When even
    `max_float_nodes` (default: `max_float_fraction` of the quantizable nodes, past which the "int8" model
    would be a float model in disguise) do not meet the budget, `on_miss='raise'` raises BudgetError and
    writes nothing; 'keep_best' writes the least harmful model found and reports met_budget=False.
    """
    _check_fallback_request(max_psnr_drift_db, max_acc_drop_pt, mode, on_miss, evaluation)
    data = _calibration_set(onnx_fp32, calib_noisy, None, None, batch_size)
    for group in evaluation:
        data.check_channels(group.noisy.shape[1], f"the evaluation images '{group.name}'")
    ranges = collect_ranges(
        onnx_fp32, data, method, percentile, _cache_file(cache_dir, onnx_fp32, method, data), progress=progress
    )
    base = list(exclude_nodes)
    candidates = [n for n in quantizable_nodes(prepare_model(onnx_fp32), target) if n not in base]
    budget = _Budget(max_psnr_drift_db, max_acc_drop_pt)
    limit = max(1, math.floor(max_float_fraction * len(candidates))) if max_float_nodes is None else max_float_nodes
    quantize: dict[str, Any] = {"exclude_op_types": exclude_op_types, "high_precision": high_precision, "dla": dla}
    with tempfile.TemporaryDirectory(prefix="addunet-fallback-") as tmp:
        trials = _Trials(onnx_fp32, Path(tmp), ranges, target, quantize, evaluation, batch_size)
        before, after, met, float_nodes, sensitivity = _search(trials, base, candidates, mode, budget, limit, progress)
    report = FallbackReport(
        out_path=Path(out_path),
        target=target,
        met_budget=met,
        float_nodes=float_nodes,
        before=before,
        after=after,
        sensitivity=sensitivity,
        mode=mode,
        max_psnr_drift_db=max_psnr_drift_db,
        max_acc_drop_pt=max_acc_drop_pt,
        groups=[g.name for g in evaluation],
        messages=list(ranges.messages),
    )
    if not met:
        _budget_missed(report, limit, on_miss)
    quantize_int8(onnx_fp32, out_path, ranges, target=target, exclude_nodes=[*base, *float_nodes], **quantize)
    return report


def _check_fallback_request(
    max_psnr_drift_db: float, max_acc_drop_pt: float, mode: str, on_miss: str, evaluation: Sequence[EvalImages]
) -> None:
    if max_psnr_drift_db < 0 or max_acc_drop_pt < 0:
        raise ConfigError("drift budgets are magnitudes and must be non-negative")
    if mode not in ("leave_out", "only"):
        raise ConfigError(f"sensitivity mode must be 'only' or 'leave_out', got {mode!r}")
    if on_miss not in ("raise", "keep_best"):
        raise ConfigError(f"on_miss must be 'raise' or 'keep_best', got {on_miss!r}")
    if not evaluation:
        raise DataError("the drift budget needs at least one group of evaluation images")


def _budget_missed(report: FallbackReport, limit: int, on_miss: OnMiss) -> None:
    """Raise BudgetError (on_miss 'raise', nothing written) or say in the report that the budget was not met."""
    after, kept = report.after, len(report.float_nodes)
    if on_miss == "raise":
        raise BudgetError(
            f"int8 cannot meet the budget (drift >= -{report.max_psnr_drift_db:g} dB, accuracy change >= "
            f"-{report.max_acc_drop_pt:g} pt at every noise level) with at most {limit} node(s) in float: the best "
            f"kept {kept} float and reached drift {fmt_signed(after.psnr_drift_db, '.3f')} dB, "
            f"accuracy change {fmt_signed(after.accuracy_change_pt, '.2f')} pt. Use the fp16 model, a looser "
            "budget, quantization-aware fine-tuning (finetune --qat), or retrain with norm/bound."
        )
    report.messages.append(
        f"int8 budget not met within {limit} float node(s): kept the least harmful model "
        f"({kept} float, drift {fmt_signed(after.psnr_drift_db, '.3f')} dB)"
    )


@dataclass(frozen=True)
class _Budget:
    max_psnr_drift_db: float
    max_acc_drop_pt: float

    def holds(self, s: Drift) -> bool:
        return not s.breaks(self.max_psnr_drift_db, self.max_acc_drop_pt)

    def harm(self, s: Drift) -> float:
        """Both budgets at once: each violation measured in units of its own budget (0 within both)."""
        drift = -(s.psnr_drift_db or 0.0)
        change = -s.accuracy_change_pt if math.isfinite(s.accuracy_change_pt) else 0.0
        return max(drift, 0.0) / max(self.max_psnr_drift_db, 1e-6) + max(change, 0.0) / max(self.max_acc_drop_pt, 1e-6)


class _Trials:
    """Quantize with some nodes kept in float and score the result at every evaluation group (worst wins)."""

    def __init__(
        self,
        onnx_fp32: str | Path,
        folder: Path,
        ranges: Ranges,
        target: Target,
        quantize: dict[str, Any],
        evaluation: Sequence[EvalImages],
        batch_size: int,
    ) -> None:
        self.onnx_fp32, self.path, self.ranges, self.target = onnx_fp32, folder / "trial.onnx", ranges, target
        self.quantize, self.evaluation, self.batch_size = quantize, evaluation, batch_size
        self.references = [run_onnx(onnx_fp32, g.noisy, batch_size) for g in evaluation]

    def score(self, excluded: Sequence[str]) -> Drift:
        quantize_int8(
            self.onnx_fp32,
            self.path,
            self.ranges,
            target=self.target,
            exclude_nodes=excluded,
            **self.quantize,
        )
        return worst(
            [
                score_outputs(ref, run_onnx(self.path, g.noisy, self.batch_size), g.clean, g.labels)
                for g, ref in zip(self.evaluation, self.references, strict=True)
            ]
        )


def _search(
    trials: _Trials,
    base: list[str],
    candidates: list[str],
    mode: SensitivityMode,
    budget: _Budget,
    limit: int,
    progress: bool,
) -> tuple[Drift, Drift, bool, list[str], dict[str, float]]:
    """(plain int8's score, the fallback's score, met, float nodes, node -> sensitivity): when plain int8
    breaks the budget, the candidates are ranked by sensitivity and up to `limit` of them kept float, most
    sensitive first."""
    before = trials.score(base)
    if budget.holds(before):
        return before, before, True, [], {}
    sensitivity = _sensitivity(trials, base, candidates, mode, before, budget, progress)
    ranked = sorted(candidates, key=lambda n: sensitivity[n], reverse=True)
    float_nodes, after, met = _keep_float(trials, base, ranked[:limit], before, budget)
    return before, after, met, float_nodes, sensitivity


def _sensitivity(
    trials: _Trials,
    base: list[str],
    candidates: list[str],
    mode: SensitivityMode,
    before: Drift,
    budget: _Budget,
    progress: bool,
) -> dict[str, float]:
    """node -> harm: quantized alone ('only'), or the harm saved by keeping it alone in float ('leave_out')."""
    sensitivity: dict[str, float] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task(f"sensitivity ({mode})", total=len(candidates))
        for node in candidates:
            if mode == "leave_out":
                sensitivity[node] = budget.harm(before) - budget.harm(trials.score([*base, node]))
            else:
                sensitivity[node] = budget.harm(trials.score([*base, *(n for n in candidates if n != node)]))
            bar.advance(task)
    return sensitivity


def _keep_float(
    trials: _Trials, base: list[str], ranked: list[str], before: Drift, budget: _Budget
) -> tuple[list[str], Drift, bool]:
    """Keep nodes float in rank order until the budget holds: (float nodes, their score, met); when it never
    holds, the least harmful set tried (none at all if no set beat plain int8)."""
    float_nodes: list[str] = []
    best_nodes: list[str] = []
    best = before
    for node in ranked:
        float_nodes.append(node)
        after = trials.score([*base, *float_nodes])
        if budget.holds(after):
            return float_nodes, after, True
        if budget.harm(after) < budget.harm(best):
            best, best_nodes = after, list(float_nodes)
    return best_nodes, best, False
