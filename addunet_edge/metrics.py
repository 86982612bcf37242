"""PSNR, SSIM, accuracy and agreement: the one implementation used by training, validation and compare."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

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
