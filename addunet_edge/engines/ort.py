"""The ONNX Runtime backend: any .onnx of ours (fp32, fp16, int8 Q/DQ) on the CPU, CUDA or TensorRT providers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import available, require
from ..artifacts import read_manifest
from ..errors import ArtifactError
from .base import INPUT_NAME, OUTPUT_NAMES, Engine, EngineInfo, InputProfile

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_OPT_LEVELS = ("disable", "basic", "extended", "all")
# ONNX Runtime's WeightBiasQuantization pass (every optimisation level) rewrites a float conv bias into int32 with
# scale = input scale * weight scale computed in the scales' own dtype: with the float16 scales of a tensorrt
# int8 model that product underflows and the bias overflows (-4 dB on the quickstart model). TensorRT does
# no such thing, so every session runs the graph without it, as written (an unknown name is ignored).
DISABLED_OPTIMIZERS: tuple[str, ...] = ("WeightBiasQuantization",)


def ort_session(
    model: Any,
    *,
    providers: tuple[str, ...] = ("cpu",),
    threads: int = 0,
    optimization: str = "all",
    optimized_model_path: str | Path | None = None,
) -> Any:
    """The one way the package opens an ONNX Runtime session, on a path or a ModelProto: the same optimizer
    settings everywhere (engine, calibration, export parity), and ArtifactError when ORT refuses the model."""
    ort = require("onnxruntime", "ONNX Runtime inference")
    if optimization not in _OPT_LEVELS:
        raise ArtifactError(f"optimization must be one of {_OPT_LEVELS}, got {optimization!r}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    available = set(ort.get_available_providers())
    wanted = [_PROVIDERS.get(p, p) for p in providers]
    missing = [p for p in wanted if p not in available]
    if missing:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            f"onnxruntime here has no {', '.join(missing)} (available: {', '.join(sorted(available))}); "
            "install onnxruntime-gpu for CUDA / TensorRT providers"
        )
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    name = model if isinstance(model, (str, Path)) else "the model"
    try:
        return ort.InferenceSession(
            source, sess_options=opts, providers=wanted, disabled_optimizers=list(DISABLED_OPTIMIZERS)
        )
    except Exception as e:  # onnxruntime raises its own exception types for corrupt models
        raise ArtifactError(f"{name} cannot be loaded by onnxruntime: {e}") from None


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"
    # InferenceSession.run is documented thread-safe: concurrent calls share the session and its thread pool.
    reentrant = True

    def __init__(
        self,
        path: str | Path,
        *,
        providers: tuple[str, ...] = ("cpu",),
        threads: int = 0,
        optimization: str = "all",
        optimized_model_path: str | Path | None = None,
    ) -> None:
        super().__init__(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path} does not exist")
        if optimization not in _OPT_LEVELS:
            raise ArtifactError(f"optimization must be one of {_OPT_LEVELS}, got {optimization!r}")
        self.manifest = read_manifest(self.path)  # refuses a hash mismatch; None if there is no manifest
        check_external_data(self.path)
        self.providers, self.threads, self.optimization = providers, threads, optimization
        self.optimized_model_path = optimized_model_path
        self._session = None
        self._info: EngineInfo | None = None

    def _activate(self) -> None:
        self._session = ort_session(
            self.path,
            providers=self.providers,
            threads=self.threads,
            optimization=self.optimization,
            optimized_model_path=self.optimized_model_path,
        )
        self._info = self._describe()

    def _describe(self) -> EngineInfo:
        assert self._session is not None
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if INPUT_NAME not in inputs or tuple(outputs) != OUTPUT_NAMES:
            raise ArtifactError(
                f"{self.path} is not an addunet-edge model: inputs {list(inputs)}, outputs {outputs} "
                f"(expected {INPUT_NAME!r} -> {OUTPUT_NAMES})"
            )
        shape = inputs[INPUT_NAME].shape
        channels = shape[1] if isinstance(shape[1], int) else 1
        fixed = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:]) else None
        m = self.manifest or {}
        logits_shape = self._session.get_outputs()[1].shape
        num_classes = m.get("num_classes", logits_shape[1] if isinstance(logits_shape[1], int) else 0)
        return EngineInfo(
            backend=self.backend,
            precision=m.get("precision", "fp32"),
            device=",".join(self._session.get_providers()),
            profile=InputProfile(
                channels=channels,
                fixed_hw=fixed,
                size_multiple=int(m.get("size_multiple", 1)),
                max_batch=shape[0] if isinstance(shape[0], int) else None,
            ),
            num_classes=int(num_classes),
            source=str(self.path),
            source_sha256=m.get("sha256"),
            extra={"manifest": bool(self.manifest), "target": m.get("target")},
        )

    @property
    def info(self) -> EngineInfo:
        self.activate()
        assert self._info is not None
        return self._info

    def _infer(self, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._session is not None
        denoised, logits = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: noisy})
        return denoised.astype(np.float32, copy=False), logits.astype(np.float32, copy=False)

    def _deactivate(self) -> None:
        self._session = None


def check_external_data(path: Path) -> None:
    """Refuse an ONNX whose external tensor data lies outside its folder, before onnxruntime opens it.

    Recent onnxruntime refuses such files too, but older ones (and other readers) follow the path: a
    file from elsewhere could make the engine read any file the user can read.
    """
    if not available("onnx"):  # an edge box with onnxruntime alone relies on onnxruntime's own check
        return
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, OSError, ...: the file is not an ONNX model
        raise ArtifactError(
            f"{path} cannot be loaded: not a readable ONNX file ({type(e).__name__}: {e}); re-export it"
        ) from None
    base = path.parent.resolve()
    for tensor in _external_tensors(model.graph):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not location or Path(location).is_absolute() or not (base / location).resolve().is_relative_to(base):
            raise ArtifactError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder; "
                "refusing to read it (re-export the model, or keep its .data file beside it)"
            )


def _external_tensors(graph: Any) -> list[Any]:  # an onnx GraphProto (onnx is imported lazily)
    """Every tensor of `graph` and its sub-graphs that keeps its data in an external file."""
    found = [t for t in graph.initializer if t.data_location == 1]  # TensorProto.EXTERNAL
    found += [s.values for s in graph.sparse_initializer if s.values.data_location == 1]
    for node in graph.node:
        for attr in node.attribute:
            found += [t for t in (attr.t, *attr.tensors) if t.data_location == 1]
            for sub in (attr.g, *attr.graphs):
                found += _external_tensors(sub)
    return found
