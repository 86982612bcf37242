"""Engines: one protocol (engines.base) and one module per backend; open_engine picks the backend.
`SelfEnsemble(engine)` (engines.ensemble) runs any of them as a test-time self-ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError
from .base import INPUT_NAME, OUTPUT_NAMES, Engine, EngineInfo, InputProfile, Prediction
from .ensemble import SelfEnsemble

PLAN_SUFFIXES = (".plan", ".engine", ".trt")


def backend_for(path: str | Path) -> str:
    """'torch' for a checkpoint folder, 'onnxruntime' for .onnx, 'tensorrt' for a plan."""
    path = Path(path)
    if path.is_dir():
        from ..checkpoint import is_checkpoint

        if is_checkpoint(path):
            return "torch"
        raise ArtifactError(f"{path} is a folder but not a checkpoint (no config.json inside)")
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in PLAN_SUFFIXES:
        return "tensorrt"
    raise ArtifactError(
        f"cannot tell which backend runs {path}: expected a checkpoint folder, an .onnx or a .plan file"
    )


def options_for(
    artifact: str | Path, device: str = "cpu", threads: int = 0, cuda_graph: bool = False
) -> dict[str, Any]:
    """The keyword options each backend takes for one --device / --threads / --cuda-graph choice."""
    backend = backend_for(artifact)
    if backend == "torch":
        return {"device": device, "threads": threads}
    if backend == "onnxruntime":
        return {"providers": ("cuda", "cpu") if device.startswith("cuda") else ("cpu",), "threads": threads}
    if device == "cpu":
        raise ConfigError(f"{artifact} is a TensorRT plan, which runs on a GPU: pass --device cuda or cuda:N")
    index = device.partition(":")[2]
    if not device.startswith("cuda") or (index and not index.isdigit()):
        raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    return {"device": int(index or 0), "cuda_graph": cuda_graph}


def open_engine(path: str | Path, **options: Any) -> Engine:
    """Open any artifact of ours behind the one Engine protocol; backend-specific options pass through."""
    backend = backend_for(path)
    if backend == "torch":
        from .torch_backend import TorchEngine

        return TorchEngine(path, **options)
    if backend == "onnxruntime":
        from .ort import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, **options)
    from .tensorrt import TensorRTEngine

    return TensorRTEngine(path, **options)


__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "Engine",
    "EngineInfo",
    "InputProfile",
    "Prediction",
    "SelfEnsemble",
    "backend_for",
    "open_engine",
    "options_for",
]
