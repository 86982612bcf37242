"""PSNR, SSIM, accuracy, agreement and the drift score: the one implementation used everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


def _as_nchw(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[None]
    if x.ndim != 4:
        raise ValueError(f"expected an image or a batch (N, C, H, W), got shape {x.shape}")
    return x


def psnr_per_image(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB of each image of a batch (N, C, H, W); identical images give +inf."""
    p, t = _as_nchw(pred), _as_nchw(target)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {t.shape}")
    mse = ((p - t) ** 2).reshape(p.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """Mean over images of the per-image PSNR (dB), the convention of denoising papers."""
    return float(np.mean(psnr_per_image(pred, target, data_range)))


def ssim_per_image(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """SSIM of each image (Wang et al. 2004: Gaussian window sigma 1.5, truncated at 3.5 sigma, K1 0.01,
    K2 0.03, population covariance), averaged over channels; matches skimage's
    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)."""
    p, t = _as_nchw(pred), _as_nchw(target)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {t.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    sigma, truncate = 1.5, 3.5
    pad = int(truncate * sigma + 0.5)

    from scipy.ndimage import gaussian_filter  # scipy costs a quarter second to import: only when asked

    def filt(a: np.ndarray) -> np.ndarray:
        # Filter H and W only, per image and channel.
        return gaussian_filter(a, sigma=(0, 0, sigma, sigma), truncate=truncate, mode="reflect")

    mu_p, mu_t = filt(p), filt(t)
    var_p = filt(p * p) - mu_p**2
    var_t = filt(t * t) - mu_t**2
    cov = filt(p * t) - mu_p * mu_t
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    h, w = s.shape[-2:]
    if h > 2 * pad and w > 2 * pad:
        s = s[..., pad : h - pad, pad : w - pad]  # skimage drops the border the window spills over
    return s.reshape(s.shape[0], s.shape[1], -1).mean(axis=2).mean(axis=1)


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    return float(np.mean(ssim_per_image(pred, target, data_range)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]; NaN when there are no logits (denoise-only model) or no labels."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[1] == 0 or labels.size == 0:
        return float("nan")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Fraction of images whose top-1 class is the same for both; NaN without logits."""
    a, b = np.asarray(logits_a), np.asarray(logits_b)
    if a.ndim != 2 or a.shape[1] == 0:
        return float("nan")
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)))


@dataclass(frozen=True)
class Drift:
    """How a candidate's outputs compare with a reference's on the same images. One sign everywhere:
    negative = worse than the reference (PSNR drift and accuracy change alike)."""

    psnr_db: float | None  # candidate (clipped to [0, 1]) against the clean images; None without them
    psnr_drift_db: float | None  # candidate PSNR minus reference PSNR
    fidelity_psnr_db: float  # candidate against the reference's raw output
    max_abs_error: float  # largest |candidate - reference| of the image output
    agreement: float  # fraction of images whose top-1 class matches the reference; NaN without logits
    accuracy: float  # candidate top-1 accuracy; NaN without labels or logits
    accuracy_change_pt: float  # accuracy minus the reference's, in points; without labels -100 x disagreement

    def breaks(self, max_psnr_drift_db: float, max_acc_drop_pt: float) -> bool:
        """True when the drift or the accuracy change goes past a budget given as magnitudes (>= 0).
        A missing or NaN drift (no clean images) cannot pass silently."""
        drift, change = self.psnr_drift_db, self.accuracy_change_pt
        return (
            drift is None
            or not math.isfinite(drift)
            or drift < -max_psnr_drift_db
            or (math.isfinite(change) and change < -max_acc_drop_pt)
        )


def score_outputs(
    reference: tuple[np.ndarray, np.ndarray],
    candidate: tuple[np.ndarray, np.ndarray],
    clean: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Drift:
    """Score a candidate's (denoised, logits) against the reference's on the same noisy images.

    PSNR against the clean images uses outputs clipped to [0, 1] (what `run` writes); fidelity and the
    largest error use the raw outputs, so nothing is hidden by the clip.
    """
    ref_den, ref_logits = reference
    den, logits = candidate
    psnr_db = drift = None
    if clean is not None:
        psnr_db = psnr(np.clip(den, 0.0, 1.0), clean)
        drift = psnr_db - psnr(np.clip(ref_den, 0.0, 1.0), clean)
    agree = agreement(logits, ref_logits)
    acc = accuracy(logits, labels) if labels is not None else float("nan")
    if math.isfinite(acc):
        change = 100.0 * (acc - accuracy(ref_logits, labels))
    else:
        change = float("nan") if math.isnan(agree) else 100.0 * (agree - 1.0)
    return Drift(psnr_db, drift, psnr(den, ref_den), max_abs_error(den, ref_den), agree, acc, change)


def _lowest(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return min(finite) if finite else float("nan")


def _lowest_or_none(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else _lowest([v for v in values if v is not None])


def worst(drifts: Sequence[Drift]) -> Drift:
    """Field by field, the worst of several scores (one per noise level, say): what a budget must hold for."""
    if not drifts:
        raise ValueError("worst() of no scores")
    return Drift(
        psnr_db=_lowest_or_none([d.psnr_db for d in drifts]),
        psnr_drift_db=_lowest_or_none([d.psnr_drift_db for d in drifts]),
        fidelity_psnr_db=_lowest([d.fidelity_psnr_db for d in drifts]),
        max_abs_error=max(d.max_abs_error for d in drifts),
        agreement=_lowest([d.agreement for d in drifts]),
        accuracy=_lowest([d.accuracy for d in drifts]),
        accuracy_change_pt=_lowest([d.accuracy_change_pt for d in drifts]),
    )


def fmt_signed(value: float | None, spec: str = ".3f") -> str:
    """A drift or change as a person reads it everywhere: with its sign (negative = worse), '-' when absent."""
    if value is None or math.isnan(value):
        return "-"
    return format(value + 0.0, "+" + spec)  # + 0.0 turns -0.0 into 0.0: no "-0.00" for "no change"
