"""Datasets (bundled digits and photographs, image folders, npz), noise synthesis and seeded splits.

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
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .media import IMAGE_SUFFIXES, read_image

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
MAX_NPZ_BYTES = 8 << 30  # an .npz that unpacks to more is refused before it is inflated


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


# -- image reading -----------------------------------------------------------------------------------


def to_float01(image: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """uint8 / uint16 / bool / float image (H, W) or (H, W, C) -> float32 (C, H, W) in [0, 1]."""
    if image.dtype == np.uint8:
        f = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        f = image.astype(np.float32) / 65535.0
    elif image.dtype == bool:
        f = image.astype(np.float32)
    elif np.issubdtype(image.dtype, np.floating):
        f = image.astype(np.float32)
        if f.size and (not np.isfinite(f).all() or f.min() < -1e-3 or f.max() > 1.0 + 1e-3):
            raise DataError(f"{path}: float images must be finite and in [0, 1]")
    else:
        raise DataError(f"{path}: unsupported pixel type {image.dtype} (use 8- or 16-bit, or float in [0, 1])")
    if f.ndim == 2:
        return f[None]
    if f.ndim == 3:
        if f.shape[2] == 4:  # drop alpha
            f = f[:, :, :3]
        if f.shape[2] not in (1, 3):
            raise DataError(f"{path}: images must have 1 or 3 channels, found {f.shape[2]}")
        return np.ascontiguousarray(f.transpose(2, 0, 1))
    raise DataError(f"{path}: expected an image (H, W) or (H, W, C), got shape {f.shape}")


def convert_channels(image: np.ndarray, channels: int, path: str | Path = "<array>") -> np.ndarray:
    """(C, H, W) -> (channels, H, W): RGB to gray by BT.601 luma, gray to RGB by replication."""
    c = image.shape[0]
    if c == channels:
        return image
    if c == 3 and channels == 1:
        return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None].astype(np.float32)
    if c == 1 and channels == 3:
        return np.repeat(image, 3, axis=0)
    raise DataError(f"{path}: cannot convert {c} channel(s) to {channels}")


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (C, size, size): resize the shorter side to `size` then centre-crop."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[1:]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    t = torch.from_numpy(np.ascontiguousarray(image))[None]
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
    y, x = (nh - size) // 2, (nw - size) // 2
    return t[0, :, y : y + size, x : x + size].clamp(0, 1).numpy()


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


# -- user sources ------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(
    folder: str | Path, size: int, channels: int | None = None
) -> tuple[np.ndarray | list[np.ndarray], np.ndarray | None, list[str]]:
    """A folder with one subfolder per class -> (images (N, C, size, size), labels, class names).

    A flat folder of images (no subfolders) -> (list of whole images (C, H, W), None, []): photos to
    train a denoiser on by random patches.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_dirs:
        files = [(f, k) for k, d in enumerate(class_dirs) for f in _image_files(d)]
    else:
        files = [(f, -1) for f in _image_files(folder)]
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images: list[np.ndarray] = []
    seen_channels: dict[int, Path] = {}
    for path, _ in files:
        img = to_float01(read_image(path), path)
        seen_channels.setdefault(img.shape[0], path)
        images.append(img)
    if channels is None:
        if len(seen_channels) > 1:
            (c1, p1), (c2, p2) = list(seen_channels.items())[:2]
            raise DataError(
                f"{folder} mixes channel counts: {p1.name} has {c1}, {p2.name} has {c2}; "
                "pass in_channels to convert them all"
            )
        channels = next(iter(seen_channels))
    images = [convert_channels(img, channels, p) for img, (p, _) in zip(images, files, strict=True)]
    if not class_dirs:
        return images, None, []
    stacked = np.stack([_fit(img, size) for img in images]).astype(np.float32)
    labels = np.array([k for _, k in files], dtype=np.int64)
    return stacked, labels, [d.name for d in class_dirs]


def _check_npz_sizes(path: Path) -> None:
    """Refuse an .npz whose members unpack to more than MAX_NPZ_BYTES (a zip bomb), before inflating any.

    zipfile stops each member at its declared size, so the declared sizes bound what np.load can inflate.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except Exception:  # not a zip, or a broken one: np.load below turns it into a DataError saying why
        return
    if total > MAX_NPZ_BYTES:
        raise DataError(f"{path}: unpacks to {total} bytes, more than the {MAX_NPZ_BYTES} allowed (a zip bomb?)")


def load_npz(path: str | Path, size: int | None = None, channels: int | None = None):
    """An .npz with `images` (N, H, W[, C]) and optional `labels` (N,) -> (images (N, C, H, W), labels)."""
    path = Path(path)
    _check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise DataError(f"{path}: no 'images' array (found: {', '.join(npz.files) or 'nothing'})")
            raw = npz["images"]
            labels = npz["labels"] if "labels" in npz.files else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, MemoryError, KeyError, NotImplementedError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    except (RuntimeError, zlib.error, struct.error) as e:  # zipfile: encrypted member, corrupt deflate stream
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    if raw.ndim not in (3, 4) or raw.shape[0] == 0:
        raise DataError(f"{path}: 'images' must be (N, H, W) or (N, H, W, C) with N > 0, got {raw.shape}")
    images = np.stack([to_float01(raw[i], f"{path}[{i}]") for i in range(raw.shape[0])])
    if channels is not None and images.shape[1] != channels:
        images = np.stack([convert_channels(im, channels, path) for im in images])
    if size is not None and images.shape[-2:] != (size, size):
        images = np.stack([_fit(im, size) for im in images])
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: 'labels' must be integers of shape ({images.shape[0]},), got {labels.shape}")
        if labels.min() < 0:
            raise DataError(f"{path}: labels must be >= 0, found {labels.min()}")
        labels = labels.astype(np.int64)
    return images.astype(np.float32), labels


def check_labels(labels: np.ndarray | None, num_classes: int, source: str) -> None:
    if labels is None or num_classes == 0:
        return
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{source}: labels must lie in [0, {num_classes - 1}], found {labels.min()}..{labels.max()}")


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
    if src == "photos":
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
        # Unlabelled photos: hold out the last image(s) for val/test, train on patches of the rest.
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
    assert isinstance(images, np.ndarray)
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
