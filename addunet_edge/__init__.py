"""addunet-edge: train AddUNet, export it, quantize it, build TensorRT engines, validate and benchmark them.

The public API is re-exported lazily, so `import addunet_edge` stays light (an edge box that only runs
plans never imports torch, onnxruntime or tensorrt until it asks for them).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AddUNet": "model",
    "ConcatUNet": "model",
    "ModelConfig": "model",
    "build_model": "model",
    "gate_values": "model",
    "count_macs": "model",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "TrainConfig": "training",
    "train": "training",
    "load_dataset": "data",
    "open_engine": "engines",
    "Prediction": "engines.base",
    "Engine": "engines.base",
    "SelfEnsemble": "engines.ensemble",
    "export_onnx": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'addunet_edge' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
