"""Datasets from the user's own files (image folders, .npz) and the pixel conversion every image goes through.

Images come out float32 in [0, 1], channels first: (C, H, W) one by one, (N, C, H, W) stacked. Nothing here
builds splits: `data.load_dataset` does that for every source.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError
from .media import IMAGE_SUFFIXES, read_image

MAX_NPZ_BYTES = 8 << 30  # an .npz that unpacks to more is refused before it is inflated


# -- pixels ------------------------------------------------------------------------------------------


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


# -- image folders and .npz files ---------------------------------------------------------------------


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
