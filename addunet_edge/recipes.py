"""Training recipes: the measured defaults per dataset, and training with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import DEFAULT_SIGMA_RANGE, load_dataset, parse_sigma
from .errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """Defaults for one kind of data; every field can be overridden from the CLI."""

    width: int
    depth: int
    kernel_sizes: tuple[int, ...]
    resampling: str
    epochs: int
    sigma: tuple[float, float]
    val_sigma: float
    lr: float
    batch_size: int
    patch_size: int = 64
    patches_per_epoch: int = 2048
    minutes: float | None = None
    cls_weight: float = 0.0  # lambda of L = MSE + lambda * CE (digits only)
    residual_output: bool = True  # predict the noise (True) or the clean image (False)
    upsampling: str = "transposed"
    unshuffle: int = 1


# digits: 32x32 images, 10 classes, sigma 25 (the paper's multi-task setting). Measured (2-core CPU, seed 0):
# 12 epochs at lambda 0.05 gave 28.58 dB / 93.3 %; 16 epochs at lambda 0.1 gave 28.70 dB / 98.1 %;
# width 24 / depth 3 trailed both in accuracy (36 % at epoch 7 vs 87 %).
# Direct output (the trunk carries the clean image, which the classifier also wants, instead of the noise):
# benchmarks/head_ab.py, 16 epochs, lambda 0.1, test split: 30.92 dB / 98.1 % (seed 0), 30.90 / 99.3 % (seed 1),
# against 29.27 / 98.5 and 29.53 / 97.8 predicting the noise; denoise-only gave 31.65 dB direct, 30.75 residual.
DIGITS = Recipe(
    width=32,
    depth=4,
    kernel_sizes=(3,),
    resampling="none",
    epochs=16,
    sigma=(25.0, 25.0),
    val_sigma=25.0,
    lr=2e-3,
    batch_size=64,
    cls_weight=0.1,
    residual_output=False,
)
# photos: a blind gray denoiser on patches of scikit-image's photographs (held-out: camera, coins, astronaut).
# Chosen by an A/B at equal wall-clock budget (benchmarks/photos_ab.py: 10 min, 1 thread of a 2-core CPU,
# seed 0; camera() PSNR dB at sigma 15 / 25 / 50): batch 64 reached 27.56 / 26.83 / 24.01 (96 steps);
# batch 16 30.05 / 28.60 / 26.30 (832 steps); batch 8 30.03 / 28.64; batch 16 without BatchNorm 29.62 /
# 28.57 / 26.05; batch 16 at width 32 29.92 / 27.58 / 26.00. On a CPU budget, steps matter most.
# Up-sampling (issue 20; 12 min, 1 thread each, two arms at a time beside the interruption soak, seed 0):
# transposed 28.48 / 27.77 / 24.93, bilinear 29.21 / 28.06 / 24.74; pixel-unshuffle 2 at width 96 (equal MACs)
# 29.30 / 27.42 / 24.19, with bilinear 28.48 / 26.92 / 22.85. Bilinear won on the mean over the three sigmas.
PHOTOS = Recipe(
    width=48,
    depth=4,
    kernel_sizes=(3,),
    resampling="stride",
    epochs=1000,
    sigma=DEFAULT_SIGMA_RANGE,
    val_sigma=25.0,
    lr=2e-3,
    batch_size=16,
    patch_size=64,
    patches_per_epoch=1024,
    minutes=30.0,
    upsampling="bilinear",
)


def recipe_for(dataset: str, labelled: bool) -> Recipe:
    if dataset == "photos" or not labelled:
        return PHOTOS
    return DIGITS


def train_recipe(
    *,
    dataset: str,
    out: str | Path,
    arch: str = "addunet",
    sigma: str | None = None,
    epochs: int | None = None,
    minutes: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    cls_weight: float | None = None,
    width: int | None = None,
    depth: int | None = None,
    kernel_sizes: str | None = None,
    resampling: str | None = None,
    upsampling: str | None = None,
    unshuffle: int | None = None,
    residual_output: bool | None = None,
    norm: str | None = None,
    bound: float | None = None,
    head: str = "limited",
    head_projection: bool | None = None,
    head_detach: bool | None = None,
    plain: bool = False,
    denoise_only: bool = False,
    in_channels: int = 1,
    size: int = 32,
    patch_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the data, fill the recipe's defaults, train; returns the training summary.

    None (or 0, or "") means the recipe's value, or the model's default where the recipe has none; `bound`:
    None or negative is the model's default, 0 unbounded.
    """
    from .model import ModelConfig
    from .training import TrainConfig, train

    base = PHOTOS if dataset == "photos" else DIGITS
    ds = load_dataset(
        dataset,
        size=size,
        in_channels=in_channels,
        seed=seed,
        patch_size=patch_size or base.patch_size,
        patches_per_epoch=base.patches_per_epoch,
    )
    recipe = recipe_for(dataset, ds.num_classes > 0)
    num_classes = 0 if denoise_only else ds.num_classes
    mc = ModelConfig(
        arch=arch,
        in_channels=ds.in_channels,
        width=width or recipe.width,
        depth=depth or recipe.depth,
        kernel_sizes=_kernel_sizes(kernel_sizes) or recipe.kernel_sizes,
        resampling=resampling or recipe.resampling,
        upsampling=upsampling or recipe.upsampling,
        unshuffle=unshuffle or recipe.unshuffle,
        num_classes=num_classes,
        head=head,
        residual_output=recipe.residual_output if residual_output is None else residual_output,
        **_block_options(plain, norm, bound, head_projection, head_detach),
    )
    sig = parse_sigma(sigma) if sigma else recipe.sigma
    tc = TrainConfig(
        epochs=epochs or recipe.epochs,
        batch_size=batch_size or recipe.batch_size,
        lr=lr or recipe.lr,
        cls_weight=(recipe.cls_weight if cls_weight is None else cls_weight) if num_classes else 0.0,
        sigma=sig,
        val_sigma=recipe.val_sigma if sig[0] != sig[1] else sig[0],
        seed=seed,
        minutes=minutes if minutes is not None else (recipe.minutes if epochs is None else None),
        device=device,
    )
    return train(mc, tc, ds, out, resume=resume, progress=progress)


def _kernel_sizes(text: str | None) -> tuple[int, ...] | None:
    """'5,3,3' -> (5, 3, 3); None for None or "" (the recipe's)."""
    if not text:
        return None
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ConfigError(f"kernel sizes must be integers separated by commas, got {text!r}") from None


def _block_options(
    plain: bool, norm: str | None, bound: float | None, head_projection: bool | None, head_detach: bool | None
) -> dict[str, Any]:
    """The ModelConfig fields of the block options given (None: the model's default), `plain` first."""
    kw: dict[str, Any] = {}
    if plain:
        # The paper's plain blocks: no normalization, unbounded states, the classifier on the deepest state.
        if norm not in (None, "none") or (bound or 0.0) > 0 or head_projection:
            raise ConfigError("--plain means no BatchNorm, no state bound and no head projection; drop the others")
        kw.update(norm="none", bound=None, head_projection=False)
    if head_projection is not None:
        kw["head_projection"] = head_projection
    if head_detach is not None:
        kw["head_detach"] = head_detach
    if norm is not None:
        kw["norm"] = norm
    if bound is not None and bound >= 0:
        kw["bound"] = bound or None
    return kw
