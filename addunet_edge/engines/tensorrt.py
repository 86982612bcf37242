"""TensorRT backend: runs a `.plan` from `addunet-edge build` once its manifest fits this machine."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import install_hint, require
from ..artifacts import sha256_bytes
from ..errors import ArtifactError, DeviceError, MissingDependencyError, ShapeError
from .base import INPUT_NAME, OUTPUT_NAMES, Engine, EngineInfo
from .cuda import open_cuda
from .plan import REBUILD_HINT, PlanMachine, check_plan_compatibility, input_profile_from_manifest, read_plan_manifest


# --------------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------------
@dataclass
class _Buffer:
    """A device buffer and its pinned host mirror, reused across calls and grown when a shape needs more."""

    device: Any = None
    host: np.ndarray | None = None
    nbytes: int = 0


class TensorRTEngine(Engine):
    """A TensorRT plan on one CUDA stream; numpy in/out, or torch CUDA tensors in/out without host copies."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, *, device: int = 0, cuda_graph: bool = False) -> None:
        super().__init__(path)
        self._trt = require("tensorrt", "Running a TensorRT plan")
        self._cuda = open_cuda("Running a TensorRT plan", device)
        self.device_index = device
        self.cuda_graph = cuda_graph
        if cuda_graph and self._cuda.binding != "cuda-python":
            raise MissingDependencyError(
                f"CUDA graph capture needs cuda-python (only pycuda is here): {install_hint('cuda')}"
            )
        self.manifest = read_plan_manifest(self.path)
        gpu = self._cuda.properties()
        self.gpu_name, self.compute_capability = gpu.name, gpu.compute_capability
        self._machine = PlanMachine(gpu.name, gpu.compute_capability, gpu.sm_count)
        check_plan_compatibility(self.manifest, self._trt.__version__, self._machine)
        self._profile = input_profile_from_manifest(self.manifest)
        self._info = self._describe()
        self._buffers: dict[str, _Buffer] = {}
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._shape: tuple[int, ...] | None = None
        self._out_shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._runtime = self._engine = self._context = self._stream = None

    @property
    def info(self) -> EngineInfo:
        return self._info

    def _describe(self) -> EngineInfo:
        m = self.manifest
        return EngineInfo(
            backend=self.backend,
            precision=str(m["precision"]),
            device=f"cuda:{self.device_index} ({self.gpu_name}, cc {self.compute_capability})",
            profile=self._profile,
            num_classes=int(m.get("num_classes") or 0),
            source=str(self.path),
            source_sha256=m.get("sha256"),
            extra={
                "tensorrt_version": m["tensorrt_version"],
                "source_onnx_sha256": m.get("source_sha256"),
                "cuda_binding": self._cuda.binding,
                "cuda_graph": self.cuda_graph,
                "options": m.get("options", {}),
            },
        )

    # -- lifecycle ---------------------------------------------------------------------------------------
    def _activate(self) -> None:
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        if runtime is None:
            raise DeviceError("TensorRT could not create a runtime (trt.Runtime returned None)")
        options = self.manifest.get("options", {})
        if options.get("version_compatible"):
            # Version-compatible plans embed the lean runtime, which TensorRT only runs when allowed to.
            runtime.engine_host_code_allowed = True
        plan = self.path.read_bytes()
        # The hash was checked at construction; check the bytes actually loaded, in case the file changed since,
        # and now that a runtime can say so, that the plan's DLA core exists here.
        here = replace(self._machine, dla_cores=int(runtime.num_DLA_cores))
        check_plan_compatibility(self.manifest, trt.__version__, here, plan_sha256=sha256_bytes(plan))
        if options.get("dla_core") is not None:
            runtime.DLA_core = int(options["dla_core"])
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.path}; {REBUILD_HINT}")
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if not {INPUT_NAME, *OUTPUT_NAMES} <= names:
            raise ArtifactError(f"{self.path} has tensors {sorted(names)}, expected {INPUT_NAME!r} and {OUTPUT_NAMES}")
        context = engine.create_execution_context()
        if context is None:
            raise DeviceError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
        self._dtypes = {name: np.dtype(trt.nptype(engine.get_tensor_dtype(name))) for name in names}
        self._runtime, self._engine, self._context = runtime, engine, context
        self._stream = self._cuda.stream()

    def _deactivate(self) -> None:
        if self._stream is not None:
            self._cuda.synchronize(self._stream)
        for graph_exec in self._graphs.values():
            self._cuda.graph_destroy(graph_exec)
        self._graphs.clear()
        for buf in self._buffers.values():
            self._release(buf)
        self._buffers.clear()
        self._shape = None
        # Released in reverse order of creation: the context needs its engine, the engine its runtime.
        self._context = self._engine = self._runtime = None
        if self._stream is not None:
            self._cuda.stream_destroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        super().__del__()
        cuda = getattr(self, "_cuda", None)
        if cuda is not None:
            with contextlib.suppress(Exception):
                cuda.close()

    # -- shapes and buffers ------------------------------------------------------------------------------
    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if shape == self._shape:
            return
        multiple = self._profile.size_multiple
        if multiple > 1 and (shape[2] % multiple or shape[3] % multiple):
            raise ShapeError(f"this plan needs height and width multiples of {multiple}, got {shape[2]}x{shape[3]}")
        if not self._context.set_input_shape(INPUT_NAME, shape):
            raise ShapeError(f"TensorRT refused input shape {shape} (plan profile: {self._profile})")
        self._out_shapes = {}
        for name in OUTPUT_NAMES:
            out = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in out):
                raise ArtifactError(f"TensorRT could not infer the shape of {name!r} for input {shape}")
            self._out_shapes[name] = out
        self._shape = shape

    def _ensure(self, name: str, shape: tuple[int, ...]) -> _Buffer:
        nbytes = int(np.prod(shape)) * self._dtypes[name].itemsize
        buf = self._buffers.setdefault(name, _Buffer())
        if buf.nbytes < nbytes:
            self._release(buf)
            buf.device, buf.host, buf.nbytes = (
                self._cuda.malloc(nbytes),
                self._cuda.host_alloc(nbytes),
                nbytes,
            )
            self._drop_graphs()  # captured graphs hold the old addresses
        return buf

    def _release(self, buf: _Buffer) -> None:
        if buf.device is not None:
            self._cuda.free(buf.device)
        if buf.host is not None:
            self._cuda.host_free(buf.host)
        buf.device, buf.host, buf.nbytes = None, None, 0

    def _drop_graphs(self) -> None:
        for graph_exec in self._graphs.values():
            self._cuda.graph_destroy(graph_exec)
        self._graphs.clear()

    def _host_view(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        buf = self._buffers[name]
        count = int(np.prod(shape))
        return buf.host[: count * self._dtypes[name].itemsize].view(self._dtypes[name]).reshape(shape)

    def _bind_own_buffers(self, shape: tuple[int, ...]) -> None:
        self._set_shape(shape)
        for name, tensor_shape in ((INPUT_NAME, shape), *self._out_shapes.items()):
            buf = self._ensure(name, tensor_shape)
            self._set_address(name, int(buf.device))

    def _set_address(self, name: str, address: int) -> None:
        if not self._context.set_tensor_address(name, address):
            raise DeviceError(f"TensorRT refused the device address of {name!r}")

    # -- execution ---------------------------------------------------------------------------------------
    def _enqueue(self, use_graph: bool) -> None:
        handle = self._cuda.stream_handle(self._stream)
        if not use_graph:
            if not self._context.execute_async_v3(handle):
                raise DeviceError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            return
        key = tuple(self._shape or ())
        if key not in self._graphs:
            # One plain run first: TensorRT does its per-shape setup outside the captured graph.
            self._enqueue(False)
            self._cuda.synchronize(self._stream)
            try:
                self._graphs[key] = self._cuda.capture(self._stream, lambda: self._enqueue(False))
            except DeviceError as e:
                raise DeviceError(f"CUDA graph capture of this plan failed ({e}); run without cuda_graph") from None
        self._cuda.launch(self._graphs[key], self._stream)

    def _h2d(self) -> None:
        buf = self._buffers[INPUT_NAME]
        self._cuda.htod(buf.device, self._host_view(INPUT_NAME, self._shape or ()), self._stream)

    def _d2h(self) -> None:
        for name, shape in self._out_shapes.items():
            self._cuda.dtoh(self._host_view(name, shape), self._buffers[name].device, self._stream)

    def _infer(self, noisy: Any) -> tuple[Any, Any]:
        if not isinstance(noisy, np.ndarray):
            return self._infer_torch(noisy)
        self._bind_own_buffers(tuple(noisy.shape))
        np.copyto(self._host_view(INPUT_NAME, noisy.shape), noisy, casting="same_kind")
        self._h2d()
        self._enqueue(self.cuda_graph)
        self._d2h()
        self._cuda.synchronize(self._stream)
        # Copies: the pinned buffers are reused by the next call.
        return tuple(self._host_view(n, self._out_shapes[n]).astype(np.float32) for n in OUTPUT_NAMES)  # type: ignore[return-value]

    def _accepts_device_tensor(self, tensor: Any) -> bool:
        return getattr(tensor, "is_cuda", False) and tensor.dim() == 4 and tensor.is_floating_point()

    def _infer_torch(self, noisy: Any) -> tuple[Any, Any]:
        torch = require("torch", "Passing torch CUDA tensors to a TensorRT plan")
        if noisy.device.index not in (None, self.device_index):
            raise DeviceError(f"input is on {noisy.device}, the plan runs on cuda:{self.device_index}")
        noisy = noisy.to(dtype=_torch_dtype(torch, self._dtypes[INPUT_NAME])).contiguous()
        shape = tuple(noisy.shape)
        self._set_shape(shape)
        outputs = {
            n: torch.empty(s, dtype=_torch_dtype(torch, self._dtypes[n]), device=noisy.device)
            for n, s in self._out_shapes.items()
        }
        self._set_address(INPUT_NAME, noisy.data_ptr())
        for name, tensor in outputs.items():
            self._set_address(name, tensor.data_ptr())
        # The input was written on torch's stream; ours must not start before it is done.
        torch.cuda.current_stream(noisy.device).synchronize()
        self._enqueue(False)  # addresses change per call, so no graph here
        self._cuda.synchronize(self._stream)
        # Our own buffers are bound again before the next numpy call.
        self._shape = None
        return tuple(outputs[n].float() for n in OUTPUT_NAMES)  # type: ignore[return-value]

    def time_inference(
        self,
        batch_shape: tuple[int, int, int, int],
        iterations: int,
        warmup: int = 0,
        *,
        include_copies: bool,
        use_cuda_graph: bool = False,
    ) -> list[float]:
        """Latency of each of `iterations` runs in milliseconds, timed with CUDA events on the engine's stream.

        `include_copies` adds the host-to-device input and device-to-host output copies (pinned memory) to
        each timed run; `use_cuda_graph` replays a captured CUDA graph instead of enqueuing the plan. Holds
        the engine's lock: no inference of another thread overlaps the timed runs.
        """
        with self._one_call(), self._infer_lock:
            return _time_inference(self, batch_shape, iterations, warmup, include_copies, use_cuda_graph)


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}[np.dtype(dtype)]


def _time_inference(
    engine: TensorRTEngine,
    batch_shape: tuple[int, int, int, int],
    iterations: int,
    warmup: int,
    include_copies: bool,
    use_cuda_graph: bool,
) -> list[float]:
    """Latency of each of `iterations` runs in milliseconds, timed with CUDA events on the engine's stream.

    `include_copies` adds the host-to-device input and device-to-host output copies (pinned memory) to
    each timed run; `use_cuda_graph` replays a captured CUDA graph instead of enqueuing the plan.
    """
    if iterations < 1 or warmup < 0:
        raise ShapeError(f"iterations must be >= 1 and warmup >= 0, got {iterations} and {warmup}")
    shape = tuple(int(d) for d in batch_shape)
    engine.info.profile.check(shape)
    engine.activate()
    engine._bind_own_buffers(shape)
    rng = np.random.default_rng(0)
    engine._host_view(INPUT_NAME, shape)[...] = rng.random(shape, dtype=np.float32)
    engine._h2d()
    cuda, stream = engine._cuda, engine._stream
    start, end = cuda.event(), cuda.event()
    latencies: list[float] = []
    try:
        for i in range(warmup + iterations):
            cuda.record(start, stream)
            if include_copies:
                engine._h2d()
            engine._enqueue(use_cuda_graph)
            if include_copies:
                engine._d2h()
            cuda.record(end, stream)
            elapsed = cuda.elapsed_ms(start, end)
            if i >= warmup:
                latencies.append(elapsed)
    finally:
        cuda.synchronize(stream)
        cuda.event_destroy(start)
        cuda.event_destroy(end)
    return latencies
