"""Reading and writing the images `run` processes (Pillow / tifffile), and telling its kinds of input apart.

Arrays are (H, W) for gray and (H, W, C) for colour, channels in RGB(A) order, dtype uint8 or uint16 as the
file stored them. OpenCV is imported lazily, only for 16-bit colour PNG, so images work without it. Which
inputs are images, videos (`VIDEO_SUFFIXES`) or streams (`is_stream_spec`) is said here; reading and writing
video, cameras and streams is in `video_io`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ._lazy import require
from .artifacts import atomic_path
from .errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm"})
# 100 megapixels is above any camera sensor a denoiser sees; a larger header is a decompression bomb.
MAX_PIXELS = 100_000_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cv2(purpose: str) -> ModuleType:
    return require("cv2", purpose)


# -- images ----------------------------------------------------------------------------------------
def _check_pixels(path: Path, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise DataError(
            f"{path}: {width}x{height} pixels is more than the {max_pixels} allowed (a decompression bomb "
            "or a mosaic); split it into smaller images first"
        )


def _png_is_16bit_colour(path: Path) -> bool:
    """Pillow decodes 16-bit RGB PNG to 8 bits; the IHDR says whether cv2 must read it instead."""
    with open(path, "rb") as f:
        head = f.read(29)
    # IHDR data: width(4) height(4) bit depth(1) colour type(1); colour types 2 and 6 are RGB and RGBA.
    return len(head) == 29 and head[:8] == _PNG_SIGNATURE and head[24] == 16 and head[25] in (2, 6)


def _from_pillow(img: Any, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "1":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16)
    elif mode == "I":
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"{path}: 32-bit integer image with values outside 0..65535 is not supported")
        return arr.astype(np.uint16)
    elif mode == "F":
        raise DataError(f"{path}: floating-point images are not supported; save it as 8- or 16-bit")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {arr.dtype} (mode {mode})")
    return arr


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a PNG, JPEG or TIFF as uint8/uint16 (H, W) or (H, W, C); a bad or huge file raises DataError.

    The pixel count is checked from the header, before any pixel is decoded.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(f"{path}: not an image this tool reads (expected one of {sorted(IMAGE_SUFFIXES)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if suffix in (".tif", ".tiff"):
            arr = _read_tiff(path, max_pixels)
        elif suffix == ".png" and _png_is_16bit_colour(path):
            arr = _read_with_cv2(path, max_pixels)
        else:
            arr = _read_with_pillow(path, max_pixels)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from None
    return _normalise_layout(arr, path)


def _read_with_pillow(path: Path, max_pixels: int) -> np.ndarray:
    from PIL import Image

    # Our own limit (checked from the header) replaces Pillow's warning; its hard error still applies.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)  # lazy: only the header is read here
        except Image.DecompressionBombError as e:
            raise DataError(f"{path}: {e}; a decompression bomb or a mosaic, split it first") from None
        with img:
            _check_pixels(path, img.height, img.width, max_pixels)
            img.load()
            return _from_pillow(img, path)


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    tifffile = require("tifffile", "reading TIFF images")
    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise DataError(f"{path}: TIFF file has no image")
        page = tif.pages.first
        _check_pixels(path, int(page.imagelength), int(page.imagewidth), max_pixels)
        arr = page.asarray()
    if arr.dtype not in (np.uint8, np.uint16):
        if arr.dtype == np.bool_:
            return arr.astype(np.uint8) * 255
        raise DataError(f"{path}: TIFF pixel type {arr.dtype} is not supported; save it as 8- or 16-bit")
    return arr


def _read_with_cv2(path: Path, max_pixels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        _check_pixels(path, img.height, img.width, max_pixels)
    cv2 = _cv2("reading 16-bit colour PNG (Pillow reduces it to 8 bits)")
    data = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DataError(f"{path}: cannot decode the PNG")
    if arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]
    return np.ascontiguousarray(arr)


def _normalise_layout(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (2, 3, 4)):
        if min(arr.shape[:2]) < 1:
            raise DataError(f"{path}: empty image")
        return np.ascontiguousarray(arr)
    raise DataError(f"{path}: unsupported image layout {arr.shape} (expected H x W or H x W x 1..4)")


def output_suffix(input_suffix: str) -> str:
    """PNG and TIFF keep their format; JPEG becomes PNG so the denoised frame is not re-damaged by JPEG."""
    s = input_suffix.lower()
    return s if s in (".png", ".tif", ".tiff") else ".png"


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write uint8/uint16 gray or RGB(A) losslessly (PNG or TIFF by suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if image.dtype not in (np.uint8, np.uint16):
        raise DataError(f"cannot write {image.dtype} pixels to {path}: convert to uint8 or uint16 first")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 2, 3, 4))):
        raise DataError(f"cannot write an image of shape {image.shape} to {path}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            tifffile = require("tifffile", "writing TIFF images")
            photometric = "rgb" if image.ndim == 3 and image.shape[2] >= 3 else "minisblack"
            extras = image.shape[2] - 3 if photometric == "rgb" else None
            tifffile.imwrite(
                tmp, image, photometric=photometric, extrasamples=["unassalpha"] * extras if extras else None
            )
        elif suffix == ".png":
            _write_png(tmp, image)
        else:
            raise DataError(f"{path}: output images are written as .png or .tif, not {suffix}")


def _write_png(tmp: Path, image: np.ndarray) -> None:
    from PIL import Image

    if image.dtype == np.uint16 and image.ndim == 3:
        # Pillow has no 16-bit RGB mode; cv2 writes it (and is the only reader that keeps it, see read_image).
        cv2 = _cv2("writing 16-bit colour PNG")
        bgr = image[..., [2, 1, 0, 3]] if image.shape[2] == 4 else image[..., ::-1] if image.shape[2] == 3 else image
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
        if not ok:
            raise DataError(f"cv2 could not encode a {image.shape} image as PNG")
        tmp.write_bytes(buf.tobytes())
        return
    # uint16 (H, W) becomes mode I;16, which Pillow writes as a 16-bit gray PNG.
    Image.fromarray(np.ascontiguousarray(image.astype(image.dtype.newbyteorder("="), copy=False))).save(
        tmp, format="PNG"
    )


def iter_media_files(folder: Path) -> Iterator[Path]:
    """Image and video files under `folder`, recursively, sorted; hidden files and folders skipped."""
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            yield p


# -- video and stream inputs ----------------------------------------------------------------------------
_CAMERA_RE = re.compile(r"^(?:\d+|/dev/video\d+)$")


def is_stream_spec(spec: str) -> bool:
    """A camera index, /dev/videoN, an RTSP/HTTP URL or a GStreamer pipeline (contains '!')."""
    return bool(_CAMERA_RE.match(spec)) or "://" in spec or "!" in spec


def stream_name(spec: str, index: int) -> str:
    """A file stem for a stream's output: camera0, video2, stream<index>."""
    if spec.isdigit():
        return f"camera{spec}"
    if spec.startswith("/dev/video"):
        return Path(spec).name
    return f"stream{index}"
