"""Reading and writing the frames `run` processes: image files (Pillow / tifffile), video and cameras (cv2).

Arrays are (H, W) for gray and (H, W, C) for colour, channels in RGB(A) order, dtype uint8 or uint16 as the
file stored them. OpenCV is imported lazily (the optional extra `camera`), so images work without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
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


# -- video and streams ----------------------------------------------------------------------------------
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


@dataclass
class VideoSource:
    """An open cv2.VideoCapture yielding RGB (or gray) uint8 frames."""

    spec: str
    capture: Any
    fps: float
    frame_count: int | None

    def frames(self) -> Iterator[np.ndarray]:
        """RGB frames until the source ends (cv2 cannot skip an undecodable frame: it ends the file)."""
        cv2 = _cv2("reading video")
        while True:
            ok, frame = self.capture.read()
            if not ok or frame is None:
                return
            if frame.ndim == 3 and frame.shape[2] == 3:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            elif frame.ndim == 3 and frame.shape[2] == 4:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
            yield frame

    def close(self) -> None:
        self.capture.release()


def open_video(spec: str | Path) -> VideoSource:
    """Open a video file, camera (index or /dev/videoN), RTSP URL or GStreamer pipeline."""
    cv2 = _cv2("reading video and camera streams")
    text = str(spec)
    if text.isdigit():
        cap = cv2.VideoCapture(int(text))
    elif "!" in text:
        if "GStreamer:                   YES" not in cv2.getBuildInformation():
            raise DataError(
                f"{text!r} looks like a GStreamer pipeline, but this OpenCV was built without GStreamer; "
                "use an OpenCV build with GStreamer (e.g. the one JetPack ships) or pass a file or camera"
            )
        cap = cv2.VideoCapture(text, cv2.CAP_GSTREAMER)
    else:
        if "://" not in text and not Path(text).exists():
            raise DataError(f"{text}: no such video file or device")
        cap = cv2.VideoCapture(text)
    if not cap.isOpened():
        cap.release()
        raise DataError(f"{text}: cannot open the video (unsupported codec, busy camera or unreachable stream)")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    # Cameras and streams report 0 (or nonsense) for both.
    return VideoSource(
        spec=text, capture=cap, fps=fps if 0 < fps < 1000 else 30.0, frame_count=count if count > 0 else None
    )


_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".webm": "VP80"}


class VideoWriter:
    """Write frames to a temporary file beside `path`; `finish()` renames it into place.

    Policy (documented in `run --help`): the temporary file is renamed on normal end *and* on Ctrl-C, so a
    stopped camera recording keeps every frame written so far; on any other error it is deleted.
    """

    def __init__(self, path: str | Path, fps: float, frame_size_wh: tuple[int, int], color: bool) -> None:
        cv2 = _cv2("writing video")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix.lower()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".partial{suffix}", dir=self.path.parent)
        os.close(fd)
        self.tmp_path = Path(tmp)
        fourcc = cv2.VideoWriter_fourcc(*_FOURCC.get(suffix, "mp4v"))
        self._writer = cv2.VideoWriter(str(self.tmp_path), fourcc, float(fps), frame_size_wh, color)
        if not self._writer.isOpened():
            self.tmp_path.unlink(missing_ok=True)
            raise DataError(f"cannot open a video writer for {self.path} (codec {_FOURCC.get(suffix)} unavailable?)")
        self._color = color
        self._size = frame_size_wh
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        cv2 = _cv2("writing video")
        if frame.dtype == np.uint16:
            frame = (frame.astype(np.uint32) * 255 + 32767) // 65535
        frame = frame.astype(np.uint8, copy=False)
        if (frame.shape[1], frame.shape[0]) != self._size:
            raise DataError(f"frame {frame.shape[1]}x{frame.shape[0]} does not match the video size {self._size}")
        if self._color:
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, axis=2)
            frame = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_RGB2BGR)
        elif frame.ndim == 3:
            frame = frame[..., 0]
        self._writer.write(np.ascontiguousarray(frame))
        self.frames_written += 1

    def finish(self) -> Path:
        """Close the file and move it into place; returns the final path."""
        self._writer.release()
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        self._writer.release()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()
