"""Datasets (bundled digits and photographs; image folders and npz through `data_files`), noise synthesis and
seeded splits.

Splits of the bundled photographs (scikit-image's `skimage.data`, no network needed):

- train: brick, chelsea, clock, coffee, grass, gravel, hubble_deep_field, immunohistochemistry, page,
  retina, rocket, text
- val:   moon
- test:  camera, coins, astronaut (held out of every training set; the denoising figures are on these)

Images are float32 in [0, 1], channels first: (N, C, H, W). Noise sigma is given on the 0-255 scale.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data_files import check_labels, convert_channels, load_image_folder, load_npz, to_float01
from .errors import DataError

PHOTO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "brick",
        "chelsea",
        "clock",
        "coffee",
        "grass",
        "gravel",
        "hubble_deep_field",
        "immunohistochemistry",
        "page",
        "retina",
        "rocket",
        "text",
    ),
    "val": ("moon",),
    "test": ("camera", "coins", "astronaut"),
}
EVAL_TILE = 128  # held-out photographs are cut into tiles of this size so they stack into one batch
DEFAULT_SIGMA_RANGE = (5.0, 55.0)


@dataclass
class EvalSet:
    """Clean held-out images (N, C, H, W) and labels (N,) or None."""

    clean: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def noisy(self, sigma: float, seed: int) -> np.ndarray:
        """Seeded noisy copy: the same (sigma, seed) always gives the same images."""
        return add_noise(self.clean, sigma, np.random.default_rng(_noise_seed(seed, sigma)))


@dataclass
class Dataset:
    """A training source plus seeded val and test sets, and a description stored in checkpoints."""

    name: str
    in_channels: int
    num_classes: int
    train: TrainSource
    val: EvalSet
    test: EvalSet
    description: dict[str, Any] = field(default_factory=dict)


class TrainSource:
    """Yields one epoch of clean training images (and labels) from a seeded generator."""

    num_classes: int = 0

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class ArraySource(TrainSource):
    """Fixed images (digits, class folders, npz): one epoch is a shuffled pass over all of them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, num_classes: int) -> None:
        self.images, self.labels, self.num_classes = images, labels, num_classes

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        order = rng.permutation(len(self.images))
        return self.images[order], None if self.labels is None else self.labels[order]

    def __len__(self) -> int:
        return len(self.images)


class PatchSource(TrainSource):
    """Random crops with flips and 90-degree rotations from whole photographs (denoise only)."""

    def __init__(self, photos: Sequence[np.ndarray], patch_size: int, patches_per_epoch: int) -> None:
        usable = [p for p in photos if min(p.shape[-2:]) >= patch_size]
        if not usable:
            raise DataError(f"no training image is at least {patch_size}x{patch_size}; use a smaller patch size")
        self.photos, self.patch_size, self.patches_per_epoch = usable, patch_size, patches_per_epoch
        # Sample photos in proportion to their area, so big photos are not under-used.
        areas = np.array([p.shape[-1] * p.shape[-2] for p in usable], dtype=np.float64)
        self.weights = areas / areas.sum()

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        ps = self.patch_size
        c = self.photos[0].shape[0]
        out = np.empty((self.patches_per_epoch, c, ps, ps), dtype=np.float32)
        which = rng.choice(len(self.photos), size=self.patches_per_epoch, p=self.weights)
        for i, k in enumerate(which):
            img = self.photos[k]
            y = rng.integers(0, img.shape[1] - ps + 1)
            x = rng.integers(0, img.shape[2] - ps + 1)
            patch = img[:, y : y + ps, x : x + ps]
            if rng.random() < 0.5:
                patch = patch[:, :, ::-1]
            patch = np.rot90(patch, k=int(rng.integers(0, 4)), axes=(1, 2))
            out[i] = patch
        return out, None

    def __len__(self) -> int:
        return self.patches_per_epoch


# -- noise -------------------------------------------------------------------------------------------


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, sigma on the 0-255 scale; not clipped (the standard AWGN protocol)."""
    if sigma < 0:
        raise DataError(f"sigma must be >= 0, got {sigma}")
    noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return (clean + noise).astype(np.float32)


def _noise_seed(seed: int, sigma: float) -> int:
    return int(seed) * 1_000_003 + round(sigma * 1000)


def parse_sigma(text: str | float) -> tuple[float, float]:
    """'25' -> (25, 25); '5-55' or '5:55' -> (5, 55): a range means blind training."""
    if isinstance(text, (int, float)):
        return float(text), float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:[-:]\s*(\d+(?:\.\d*)?))?\s*", str(text))
    if match is None:
        raise DataError(f"sigma must be a number or a range like 5-55, got {text!r}")
    lo = float(match.group(1))
    hi = float(match.group(2)) if match.group(2) else lo
    if hi < lo:
        raise DataError(f"sigma range must go from low to high, got {text!r}")
    return lo, hi


# -- splits ------------------------------------------------------------------------------------------


def split_indices(n: int, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)):
    """Deterministic train / val / test index arrays from a seed."""
    if n < 3:
        raise DataError(f"need at least 3 images to split into train/val/test, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(f"{n} images are too few to split into train/val/test")
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


# -- bundled sources ---------------------------------------------------------------------------------


def load_digits_images(size: int = 32, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) resized to size x size."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    if size != 8:
        import torch
        import torch.nn.functional as F

        t = F.interpolate(torch.from_numpy(images), size=(size, size), mode="bilinear", align_corners=False)
        images = t.clamp(0, 1).numpy()
    if channels == 3:
        images = np.repeat(images, 3, axis=1)
    return np.ascontiguousarray(images, dtype=np.float32), bunch.target.astype(np.int64)


def load_photo(name: str, channels: int = 1) -> np.ndarray:
    """One of scikit-image's bundled photographs as float32 (C, H, W)."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise DataError(f"scikit-image has no bundled image named {name!r}")
    return convert_channels(to_float01(np.asarray(loader()), f"skimage.data.{name}"), channels, name)


def tile_images(images: Sequence[np.ndarray], tile: int) -> np.ndarray:
    """Non-overlapping tile x tile crops of each (C, H, W) image, stacked (N, C, tile, tile)."""
    tiles = [
        img[:, y : y + tile, x : x + tile]
        for img in images
        for y in range(0, img.shape[1] - tile + 1, tile)
        for x in range(0, img.shape[2] - tile + 1, tile)
    ]
    if not tiles:
        raise DataError(f"no image is at least {tile}x{tile}")
    return np.stack(tiles).astype(np.float32)


# -- one entry point ---------------------------------------------------------------------------------


def load_dataset(
    source: str | Path,
    *,
    size: int = 32,
    in_channels: int = 1,
    seed: int = 0,
    patch_size: int = 64,
    patches_per_epoch: int = 2048,
    num_classes: int | None = None,
) -> Dataset:
    """'digits', 'photos', an image folder or an .npz -> Dataset with seeded, deterministic splits."""
    src = str(source)
    if src == "digits":
        return _digits_dataset(size, in_channels, seed)
    if src == "photos":
        return _photos_dataset(in_channels, patch_size, patches_per_epoch)
    path = Path(src)
    if not path.exists():
        raise DataError(f"dataset {src!r} is neither 'digits', 'photos', nor an existing folder or .npz file")
    if path.is_dir():
        images, labels, classes = load_image_folder(path, size, in_channels)
    elif path.suffix.lower() == ".npz":
        images, labels = load_npz(path, size=size, channels=in_channels)
        classes = []
    else:
        raise DataError(f"{path}: a dataset must be a folder of images or an .npz file")
    if labels is None and isinstance(images, list):
        return _photo_folder_dataset(path, images, in_channels, seed, patch_size, patches_per_epoch)
    assert isinstance(images, np.ndarray)
    return _array_dataset(path, images, labels, classes, in_channels, size, seed, num_classes)


def _digits_dataset(size: int, in_channels: int, seed: int) -> Dataset:
    images, labels = load_digits_images(size, in_channels)
    tr, va, te = split_indices(len(images), seed)
    return Dataset(
        name="digits",
        in_channels=in_channels,
        num_classes=10,
        train=ArraySource(images[tr], labels[tr], 10),
        val=EvalSet(images[va], labels[va]),
        test=EvalSet(images[te], labels[te]),
        description={
            "source": "digits",
            "size": size,
            "seed": seed,
            "splits": [len(tr), len(va), len(te)],
        },
    )


def _photos_dataset(in_channels: int, patch_size: int, patches_per_epoch: int) -> Dataset:
    photos = [load_photo(n, in_channels) for n in PHOTO_SPLITS["train"]]
    val = tile_images([load_photo(n, in_channels) for n in PHOTO_SPLITS["val"]], EVAL_TILE)
    test = tile_images([load_photo(n, in_channels) for n in PHOTO_SPLITS["test"]], EVAL_TILE)
    return Dataset(
        name="photos",
        in_channels=in_channels,
        num_classes=0,
        train=PatchSource(photos, patch_size, patches_per_epoch),
        val=EvalSet(val, None),
        test=EvalSet(test, None),
        description={
            "source": "photos",
            "splits": {k: list(v) for k, v in PHOTO_SPLITS.items()},
            "patch_size": patch_size,
            "patches_per_epoch": patches_per_epoch,
            "eval_tile": EVAL_TILE,
        },
    )


def _photo_folder_dataset(
    path: Path, images: list[np.ndarray], in_channels: int, seed: int, patch_size: int, patches_per_epoch: int
) -> Dataset:
    """Unlabelled photos: hold out the last image(s) for val/test, train on patches of the rest."""
    if len(images) < 3:
        raise DataError(f"{path}: need at least 3 photos (train, val, test), found {len(images)}")
    tr, va, te = split_indices(len(images), seed)
    tile = min(EVAL_TILE, *(min(im.shape[-2:]) for im in images))
    return Dataset(
        name=path.name,
        in_channels=in_channels,
        num_classes=0,
        train=PatchSource([images[i] for i in tr], min(patch_size, tile), patches_per_epoch),
        val=EvalSet(tile_images([images[i] for i in va], tile), None),
        test=EvalSet(tile_images([images[i] for i in te], tile), None),
        description={"source": str(path), "kind": "photo folder", "seed": seed},
    )


def _array_dataset(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray | None,
    classes: list[str],
    in_channels: int,
    size: int,
    seed: int,
    num_classes: int | None,
) -> Dataset:
    """Fixed images (class folders, npz), labelled or not, split by the seed."""
    k = (
        num_classes
        if num_classes is not None
        else (len(classes) or (int(labels.max()) + 1 if labels is not None else 0))
    )
    check_labels(labels, k, str(path))
    tr, va, te = split_indices(len(images), seed)

    def sub(idx: np.ndarray) -> np.ndarray | None:
        return None if labels is None else labels[idx]

    return Dataset(
        name=path.name,
        in_channels=in_channels,
        num_classes=k,
        train=ArraySource(images[tr], sub(tr), k),
        val=EvalSet(images[va], sub(va)),
        test=EvalSet(images[te], sub(te)),
        description={"source": str(path), "classes": classes, "size": size, "seed": seed},
    )


def array_hash(*arrays: np.ndarray | None) -> str:
    """sha256 of arrays' shapes, dtypes and bytes: identifies a calibration or evaluation set."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
