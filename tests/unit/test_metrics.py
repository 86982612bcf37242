"""The one metrics module agrees with scikit-image's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from addunet_edge.metrics import accuracy, agreement, max_abs_error, psnr, psnr_per_image, ssim


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
