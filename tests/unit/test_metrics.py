"""The one metrics module agrees with scikit-image's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from addunet_edge.metrics import (
    accuracy,
    agreement,
    fmt_signed,
    max_abs_error,
    psnr,
    psnr_per_image,
    score_outputs,
    ssim,
    worst,
)


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_and_ssim_match_skimage(channels: int) -> None:
    rng = np.random.default_rng(0)
    clean = rng.random((2, channels, 40, 33))
    noisy = clean + 0.08 * rng.standard_normal(clean.shape)
    for i in range(2):
        ref_psnr = peak_signal_noise_ratio(clean[i], noisy[i], data_range=1.0)
        ref_ssim = structural_similarity(
            noisy[i].transpose(1, 2, 0),
            clean[i].transpose(1, 2, 0),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=2,
        )
        assert psnr(noisy[i : i + 1], clean[i : i + 1]) == pytest.approx(ref_psnr, abs=1e-9)
        assert ssim(noisy[i : i + 1], clean[i : i + 1]) == pytest.approx(ref_ssim, abs=1e-9)


def test_psnr_is_mean_of_per_image_values() -> None:
    a = np.zeros((2, 1, 4, 4))
    b = a.copy()
    b[0] += 0.1
    b[1] += 0.01
    per = psnr_per_image(b, a)
    assert per == pytest.approx([20.0, 40.0])
    assert psnr(b, a) == pytest.approx(30.0)


def test_classification_metrics() -> None:
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert agreement(logits, logits[:, ::-1]) == 0.0
    assert np.isnan(accuracy(np.zeros((3, 0)), np.array([0, 1, 1])))
    assert max_abs_error(np.ones(3), np.array([1.0, 1.5, 0.0])) == 1.0


def _logits(classes: list[int], k: int = 3) -> np.ndarray:
    out = np.zeros((len(classes), k), np.float32)
    out[np.arange(len(classes)), classes] = 1.0
    return out


def test_drift_and_accuracy_change_are_negative_when_worse() -> None:
    rng = np.random.default_rng(0)
    clean = rng.random((4, 1, 16, 16)).astype(np.float32)
    labels = np.array([0, 1, 2, 0])
    good = (clean + rng.normal(0, 0.01, clean.shape).astype(np.float32), _logits([0, 1, 2, 0]))
    bad = (clean + rng.normal(0, 0.05, clean.shape).astype(np.float32), _logits([0, 1, 1, 1]))
    worse = score_outputs(good, bad, clean, labels)
    assert worse.psnr_drift_db < 0 and worse.accuracy_change_pt == pytest.approx(-50.0)
    assert worse.agreement == pytest.approx(0.5)
    better = score_outputs(bad, good, clean, labels)
    assert better.psnr_drift_db == pytest.approx(-worse.psnr_drift_db) and better.accuracy_change_pt == 50.0
    # Without labels the change is the disagreement with the reference, negative too.
    assert score_outputs(good, bad, clean).accuracy_change_pt == pytest.approx(-50.0)
    same = score_outputs(good, good, clean, labels)
    assert same.psnr_drift_db == 0.0 and same.accuracy_change_pt == 0.0 and same.max_abs_error == 0.0
    # A budget is magnitudes: broken when drift or change fall below minus the budget.
    assert worse.breaks(max_psnr_drift_db=100.0, max_acc_drop_pt=49.0)
    assert not worse.breaks(max_psnr_drift_db=100.0, max_acc_drop_pt=50.0)
    assert worse.breaks(max_psnr_drift_db=-worse.psnr_drift_db / 2, max_acc_drop_pt=100.0)
    assert not better.breaks(0.0, 0.0)
    assert score_outputs(good, bad).breaks(100.0, 100.0)  # no clean images: no drift, never a pass


def test_worst_takes_each_field_at_its_worst_group() -> None:
    rng = np.random.default_rng(1)
    clean = rng.random((2, 1, 8, 8)).astype(np.float32)
    labels = np.array([0, 1])
    ref = (clean, _logits([0, 1]))
    near = score_outputs(ref, (clean + 0.01, _logits([0, 0])), clean, labels)
    far = score_outputs(ref, (clean + 0.1, _logits([0, 1])), clean, labels)
    w = worst([near, far])
    assert w.psnr_drift_db == far.psnr_drift_db and w.accuracy_change_pt == near.accuracy_change_pt
    assert w.max_abs_error == far.max_abs_error


def test_signed_format_shows_the_sign_and_no_negative_zero() -> None:
    assert fmt_signed(-0.3325, ".3f") == "-0.333" and fmt_signed(0.05, ".2f") == "+0.05"
    assert fmt_signed(-0.0, ".2f") == "+0.00" and fmt_signed(None) == "-" and fmt_signed(float("nan")) == "-"
