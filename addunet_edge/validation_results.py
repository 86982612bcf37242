"""Drift budgets and what `validation.validate` returns: rows per engine and sigma, per-artifact summaries,
sample crops, the JSON layout and the error that names every artifact over its budget."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import AddUNetEdgeError, ConfigError
from .metrics import fmt_signed, psnr

if TYPE_CHECKING:
    from .engines.base import EngineInfo

SCHEMA = "addunet-edge/validate"
# 2: rows carry accuracy_change_pt (negative = worse, like the drift) instead of accuracy_drop_pt.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Budget:
    """How much worse than PyTorch an artifact may be: PSNR drift (dB) and accuracy drop (points)."""

    max_psnr_drift_db: float
    max_acc_drop_pt: float

    def __post_init__(self) -> None:
        if not (self.max_psnr_drift_db >= 0 and self.max_acc_drop_pt >= 0):
            raise ConfigError(
                f"budgets are magnitudes and must be >= 0, got {self.max_psnr_drift_db} dB, {self.max_acc_drop_pt} pt"
            )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# Default budgets per precision. fp32 should reproduce PyTorch to float rounding; fp16 measured under
# 0.001 dB on our models (the budget leaves room for other data); int8 is the DESIGN's target of
# 0.16-0.26 dB with BatchNorm + bounded states, rounded up.
DEFAULT_BUDGETS: dict[str, Budget] = {
    "fp32": Budget(max_psnr_drift_db=0.01, max_acc_drop_pt=0.0),
    "fp16": Budget(max_psnr_drift_db=0.05, max_acc_drop_pt=0.2),
    "int8": Budget(max_psnr_drift_db=0.3, max_acc_drop_pt=1.0),
}


def resolve_budgets(
    max_psnr_drift_db: float | None = None,
    max_acc_drop_pt: float | None = None,
    base: Mapping[str, Budget] | None = None,
) -> dict[str, Budget]:
    """The per-precision budget table with the given limits (when not None) applied to every precision."""
    table = dict(DEFAULT_BUDGETS if base is None else base)
    return {
        p: Budget(
            max_psnr_drift_db=b.max_psnr_drift_db if max_psnr_drift_db is None else float(max_psnr_drift_db),
            max_acc_drop_pt=b.max_acc_drop_pt if max_acc_drop_pt is None else float(max_acc_drop_pt),
        )
        for p, b in table.items()
    }


@dataclass
class Row:
    """One engine at one noise level. Drift and drop are against the PyTorch reference at the same sigma."""

    artifact: str
    backend: str
    precision: str
    target: str | None
    sigma: float
    images: int
    psnr_db: float
    ssim: float
    noisy_psnr_db: float
    psnr_drift_db: float  # negative = worse than PyTorch
    fidelity_psnr_db: float  # PSNR of this engine's output against PyTorch's output (inf if identical)
    max_abs_error: float  # of `denoised` against PyTorch's
    logits_max_abs_error: float
    accuracy: float  # NaN without classes or labels
    accuracy_change_pt: float  # accuracy minus PyTorch's, percentage points: negative = worse
    agreement: float  # top-1 agreement with PyTorch
    reference: bool
    budget: Budget | None
    passed: bool
    self_ensemble: bool = False  # run as a test-time self-ensemble (engines.ensemble): label "+x8"

    @classmethod
    def from_metrics(
        cls,
        path: Path,
        info: EngineInfo,
        precision: str,
        target: str | None,
        sigma: float,
        n: int,
        noisy: np.ndarray,
        clean: np.ndarray,
        m: Mapping[str, float],
        reference: bool = False,
    ) -> Row:
        """The row of one engine (`info`) at one sigma from its figures `m` (validation's `_metrics`)."""
        return cls(
            **_engine_fields(path, info, precision, target),
            sigma=sigma,
            images=n,
            psnr_db=m["psnr_db"],
            ssim=m["ssim"],
            noisy_psnr_db=psnr(noisy, clean),
            psnr_drift_db=m["psnr_drift_db"],
            fidelity_psnr_db=m["fidelity_psnr_db"],
            max_abs_error=m["max_abs_error"],
            logits_max_abs_error=m["logits_max_abs_error"],
            accuracy=m["accuracy"],
            accuracy_change_pt=m["accuracy_change_pt"],
            agreement=m["agreement"],
            reference=reference,
            budget=None,
            passed=True,
        )

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


@dataclass
class ArtifactSummary:
    artifact: str
    backend: str
    precision: str
    target: str | None
    budget: Budget | None
    passed: bool
    worst_psnr_drift_db: float
    worst_accuracy_change_pt: float
    reference: bool = False
    self_ensemble: bool = False

    @classmethod
    def from_rows(
        cls,
        path: Path,
        info: EngineInfo,
        precision: str,
        target: str | None,
        budget: Budget | None,
        rows: list[Row],
        reference: bool = False,
    ) -> ArtifactSummary:
        """One engine's verdict over its rows (one per sigma)."""
        changes = [r.accuracy_change_pt for r in rows if math.isfinite(r.accuracy_change_pt)]
        return cls(
            **_engine_fields(path, info, precision, target),
            budget=budget,
            passed=all(r.passed for r in rows),
            worst_psnr_drift_db=min(r.psnr_drift_db for r in rows),
            worst_accuracy_change_pt=min(changes) if changes else float("nan"),
            reference=reference,
        )

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)


@dataclass
class Samples:
    """A few crops at one sigma for the figure: clean, noisy and each engine's output (same order as summaries)."""

    sigma: float
    clean: np.ndarray  # (S, C, h, w)
    noisy: np.ndarray
    outputs: list[np.ndarray]


@dataclass
class ValidationResult:
    checkpoint: str
    dataset: dict[str, Any]
    sigmas: tuple[float, ...]
    seed: int
    rows: list[Row]
    artifacts: list[ArtifactSummary]  # the reference first
    budgets: dict[str, Budget]
    warnings: list[str] = field(default_factory=list)
    samples: Samples | None = None
    # With a self-ensemble: transforms, label, and per sigma the reference's figures with and without it.
    self_ensemble: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    @property
    def failed(self) -> list[ArtifactSummary]:
        return [a for a in self.artifacts if not a.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "checkpoint": self.checkpoint,
            "dataset": self.dataset,
            "sigmas": list(self.sigmas),
            "seed": self.seed,
            "budgets": {p: b.to_dict() for p, b in self.budgets.items()},
            "artifacts": [a.to_dict() for a in self.artifacts],
            "rows": [r.to_dict() for r in self.rows],
            "warnings": list(self.warnings),
            "passed": self.passed,
            "self_ensemble": _json_safe(self.self_ensemble),
        }


def _engine_fields(path: Path, info: EngineInfo, precision: str, target: str | None) -> dict[str, Any]:
    """What names the engine in a row or summary: its file, backend, precision, target, self-ensemble or not."""
    return {
        "artifact": str(path),
        "backend": str(info.backend),
        "precision": precision,
        "target": target,
        "self_ensemble": "self_ensemble" in info.extra,
    }


def _record_dict(record: Row | ArtifactSummary) -> dict[str, Any]:
    """A row or summary as JSON: numbers made JSON-safe, the budget as its own object (None without one)."""
    d = {k: _json_number(v) for k, v in asdict(record).items()}
    d["budget"] = None if record.budget is None else record.budget.to_dict()
    return d


def _json_safe(v: Any) -> Any:
    """Nested dicts and lists with every number made JSON-safe."""
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return _json_number(v)


def _json_number(v: Any) -> Any:
    # JSON has no NaN / inf: "not applicable" (NaN) and "identical" (inf) both become null.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def budget_error(result: ValidationResult) -> AddUNetEdgeError:
    """The BudgetError (exit code 3) that names every artifact over its budget."""
    from .errors import BudgetError

    parts = []
    for a in result.failed:
        b = a.budget
        limits = "" if b is None else f" (budget -{b.max_psnr_drift_db:g} dB / -{b.max_acc_drop_pt:g} pt)"
        acc = (
            ""
            if math.isnan(a.worst_accuracy_change_pt)
            else f", accuracy {fmt_signed(a.worst_accuracy_change_pt, '.2f')} pt"
        )
        parts.append(f"{a.artifact}: worst drift {fmt_signed(a.worst_psnr_drift_db, '.4f')} dB{acc}{limits}")
    return BudgetError(f"{len(parts)} artifact(s) break their drift budget: " + "; ".join(parts))
