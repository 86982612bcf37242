"""The report of a QAT fine-tune: fp32 and int8 scores of the original and the fine-tuned model (ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .qat import QATConfig


def _scores(path: Path, noisy: np.ndarray, clean: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """PSNR (and accuracy, for a classifier) of the ONNX model at `path` on one noisy set."""
    from .calibration import run_onnx
    from .metrics import accuracy, psnr

    den, logits = run_onnx(path, noisy)
    out = {"psnr_db": psnr(np.clip(den, 0.0, 1.0), clean)}
    if labels is not None and logits.shape[1] > 0:
        out["accuracy"] = accuracy(logits, labels)
    return out


def qat_report(
    cfg: QATConfig, val: Any, base: dict[str, Path], fp32: Path, int8: Path, qat_info: dict[str, Any]
) -> dict[str, Any]:
    """fp32 and int8 scores on the held-out val split (ORT, CPU); drift is signed: int8 minus fp32."""
    noisy, clean, labels = val.noisy(cfg.sigma, cfg.seed), val.clean, val.labels
    qat_fp32, qat_int8 = _scores(fp32, noisy, clean, labels), _scores(int8, noisy, clean, labels)
    qat_int8["drift_db"] = qat_int8["psnr_db"] - qat_fp32["psnr_db"]
    report: dict[str, Any] = {
        "target": cfg.target,
        "sigma": cfg.sigma,
        "eval_images": len(clean),
        "qat": qat_info,
        "finetuned": {"fp32": qat_fp32, "int8": qat_int8, "onnx": {"fp32": fp32.name, "int8": int8.name}},
    }
    orig_fp32 = _scores(base["fp32"], noisy, clean, labels)
    qat_int8["drift_vs_original_db"] = qat_int8["psnr_db"] - orig_fp32["psnr_db"]
    report["original"] = {"fp32": orig_fp32}
    if "int8" in base:
        orig_int8 = _scores(base["int8"], noisy, clean, labels)
        orig_int8["drift_db"] = orig_int8["psnr_db"] - orig_fp32["psnr_db"]
        report["original"]["int8"] = orig_int8
    return json.loads(json.dumps(report, allow_nan=True))
