"""Scoring a model on an evaluation split: batched prediction, then PSNR, SSIM and accuracy."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import EvalSet
from .metrics import accuracy, psnr, ssim


@torch.no_grad()
def predict(
    model: nn.Module, noisy: np.ndarray, batch_size: int = 64, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model` over (N, C, H, W) noisy images in batches -> (denoised, logits) as numpy."""
    was_training = model.training
    model.eval()
    outs, logits = [], []
    for i in range(0, len(noisy), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(noisy[i : i + batch_size])).to(device)
        d, lg = model(x)
        outs.append(d.cpu().numpy())
        logits.append(lg.cpu().numpy())
    model.train(was_training)
    return np.concatenate(outs), np.concatenate(logits)


def evaluate(
    model: nn.Module, eval_set: EvalSet, sigma: float, seed: int, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """PSNR / SSIM / accuracy of `model` on seeded noisy copies of `eval_set`, plus the noisy input's PSNR."""
    noisy = eval_set.noisy(sigma, seed)
    denoised, logits = predict(model, noisy, device=device)
    denoised = np.clip(denoised, 0.0, 1.0)  # scored as the image a user would see
    out = {
        "sigma": sigma,
        "psnr_db": psnr(denoised, eval_set.clean),
        "ssim": ssim(denoised, eval_set.clean),
        "noisy_psnr_db": psnr(noisy, eval_set.clean),
    }
    if eval_set.labels is not None and logits.shape[1] > 0:
        out["accuracy"] = accuracy(logits, eval_set.labels)
    return out
