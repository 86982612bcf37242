"""Lazy imports of optional heavy packages, with one clear error naming the package and its install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .ctrl_c import ctrl_c_deferred
from .errors import MissingDependencyError

# module -> (distribution to install, extra of addunet-edge that brings it)
_HINTS: dict[str, tuple[str, str | None]] = {
    "tensorrt": ("tensorrt-cu12", "tensorrt-cu12"),
    "cuda": ("cuda-python", "tensorrt-cu12"),
    "cuda.bindings": ("cuda-python", "tensorrt-cu12"),
    "pycuda": ("pycuda", None),
    "cv2": ("opencv-python-headless", "camera"),
    "modelopt": ("nvidia-modelopt", None),  # a dependency: the tensorrt int8 target needs it
    "bm3d": ("bm3d", "baselines"),
    "onnxruntime": ("onnxruntime", None),
}


def install_hint(module: str) -> str:
    top = module.split(".")[0]
    dist, extra = _HINTS.get(module, _HINTS.get(top, (top, None)))
    if extra and extra.startswith("tensorrt-"):
        # Which TensorRT depends on the machine: the driver's CUDA major, or JetPack's own on a Jetson.
        return (
            "pip install 'addunet-edge[tensorrt-cu12]' (CUDA 12 driver) or 'addunet-edge[tensorrt-cu13]' "
            "(CUDA 13 driver); on a Jetson use JetPack's TensorRT. `addunet-edge doctor` says which fits here"
        )
    if extra:
        return f"pip install '{dist}'  (or: pip install 'addunet-edge[{extra}]')"
    return f"pip install '{dist}'"


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise MissingDependencyError saying what needs it and how to install it."""
    try:
        with ctrl_c_deferred():  # Ctrl-C inside a native module's init can crash the process: take it after
            return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module}', which is not importable here ({e}). "
            f"Install it with: {install_hint(module)}"
        ) from e


def available(module: str) -> bool:
    """True when `module` imports; never raises."""
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True
