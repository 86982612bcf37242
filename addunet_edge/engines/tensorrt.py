"""TensorRT backend: runs a `.plan` from `addunet-edge build` once its manifest fits this machine."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import available, install_hint, require
from ..artifacts import read_manifest, sha256_bytes
from ..errors import ArtifactError, DeviceError, MissingDependencyError, ShapeError
from .base import INPUT_NAME, OUTPUT_NAMES, Engine, EngineInfo, InputProfile
from .trt_build import PLAN_KIND, BuildProfile

REBUILD_HINT = "rebuild it on this machine with `addunet-edge build`"
# Hardware-compatible plans (HardwareCompatibilityLevel.AMPERE_PLUS) run on any GPU of compute capability 8.0+
_AMPERE = (8, 0)


# --------------------------------------------------------------------------------------------------------
# Manifest checks (pure: no TensorRT, no GPU; unit-tested on the CPU)
# --------------------------------------------------------------------------------------------------------
def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _cc_tuple(cc: str) -> tuple[int, ...]:
    return _version_tuple(cc)


def check_plan_compatibility(
    manifest: dict[str, Any],
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    *,
    plan_sha256: str | None = None,
) -> None:
    """Refuse (ArtifactError) a plan whose manifest says it cannot run with this TensorRT on this GPU.

    `compute_capability` is 'major.minor'. `plan_sha256`, when given, is compared with the manifest's hash.
    """
    name = manifest.get("artifact", "the plan")
    if manifest.get("kind") != PLAN_KIND:
        raise ArtifactError(
            f"{name}: manifest describes a {manifest.get('kind')!r}, not a TensorRT plan; {REBUILD_HINT}"
        )
    for key in ("tensorrt_version", "gpu", "precision", "profile", "channels", "num_classes"):
        if key not in manifest:
            raise ArtifactError(f"{name}: manifest lacks {key!r}; {REBUILD_HINT}")
    if plan_sha256 is not None and plan_sha256 != manifest.get("sha256"):
        raise ArtifactError(
            f"{name} does not match its manifest (sha256 {plan_sha256[:12]}… != "
            f"{str(manifest.get('sha256'))[:12]}…): "
            f"the plan was modified or truncated; {REBUILD_HINT}"
        )
    options = manifest.get("options", {})
    built_version = str(manifest["tensorrt_version"])
    if built_version != trt_version:
        # A version-compatible plan runs on the TensorRT that built it and later ones ("Engine Compatibility",
        # TensorRT 11 docs); any other plan only on the exact version that built it.
        later = _version_tuple(trt_version) >= _version_tuple(built_version)
        if not (options.get("version_compatible") and later):
            raise ArtifactError(
                f"{name} was built with TensorRT {built_version}, this machine has TensorRT {trt_version}; "
                f"a plan only runs on the TensorRT version that built it: {REBUILD_HINT}"
            )
    gpu = manifest["gpu"]
    built_cc, built_name = str(gpu.get("compute_capability")), str(gpu.get("name"))
    if options.get("hardware_compatible"):
        if _cc_tuple(compute_capability) < _AMPERE:
            raise ArtifactError(
                f"{name} is hardware-compatible (Ampere and newer) but this GPU, {gpu_name}, has compute "
                f"capability {compute_capability}: {REBUILD_HINT}"
            )
        return
    if built_cc != compute_capability or built_name != gpu_name:
        raise ArtifactError(
            f"{name} was built for {built_name} (compute capability {built_cc}); this GPU is {gpu_name} "
            f"(compute capability {compute_capability}). TensorRT plans are specific to the GPU model: "
            f"{REBUILD_HINT}"
        )


def read_plan_manifest(plan_path: str | Path) -> dict[str, Any]:
    """The plan's manifest, required and hash-checked (ArtifactError with what to do otherwise)."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise ArtifactError(f"TensorRT plan not found: {plan_path}")
    try:
        manifest = read_manifest(plan_path, verify_hash=True, required=True)
    except ArtifactError as e:
        raise ArtifactError(f"{e}. A plan is only loaded with its manifest: {REBUILD_HINT}") from None
    if manifest is None:  # unreachable with required=True; keeps the type honest
        raise ArtifactError(f"{plan_path} has no manifest; {REBUILD_HINT}")
    return manifest


def input_profile_from_manifest(manifest: dict[str, Any]) -> InputProfile:
    profile = BuildProfile.from_dict(manifest["profile"])
    return profile.to_input_profile(int(manifest["channels"]), int(manifest.get("size_multiple", 1)))


# --------------------------------------------------------------------------------------------------------
# CUDA through cuda-python (preferred) or pycuda (fallback where a Jetson image already has it)
# --------------------------------------------------------------------------------------------------------
def _import_cudart() -> Any | None:
    # cuda-python >= 12.6 moved the runtime bindings to cuda.bindings.runtime; older releases had cuda.cudart.
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


class _CudaPython:
    """The few CUDA runtime calls the backend needs, each checked."""

    binding = "cuda-python"

    def __init__(self, cudart: Any, device: int) -> None:
        self.rt = cudart
        self.device = device
        count = self._call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount", device_error=True)
        if device < 0 or device >= count:
            raise DeviceError(f"CUDA device {device} requested, {count} visible here")
        self._call(cudart.cudaSetDevice(device), "cudaSetDevice", device_error=True)

    def _call(self, result: Any, what: str, *, device_error: bool = False) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self.rt.cudaGetErrorString(err)
            message = text.decode() if isinstance(text, bytes) else str(text)
            if device_error:
                raise DeviceError(
                    f"no usable CUDA GPU ({what}: {message}). TensorRT plans need an NVIDIA GPU or a "
                    "Jetson with its driver; `nvidia-smi` (desktop) or `tegrastats` (Jetson) must work first"
                )
            raise DeviceError(f"CUDA error in {what}: {message}")
        return rest[0] if len(rest) == 1 else tuple(rest)

    def properties(self) -> tuple[str, str]:
        prop = self._call(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        return name.strip(), f"{prop.major}.{prop.minor}"

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(nbytes), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr), "cudaFree")

    def host_alloc(self, nbytes: int) -> np.ndarray:
        ptr = int(self._call(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=np.uint8)

    def host_free(self, array: np.ndarray) -> None:
        self._call(self.rt.cudaFreeHost(array.ctypes.data), "cudaFreeHost")

    def stream(self) -> Any:
        return self._call(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._call(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream: Any) -> None:
        self._call(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync")

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream), "cudaMemcpyAsync")

    def event(self) -> Any:
        return self._call(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event: Any, stream: Any) -> None:
        self._call(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._call(self.rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._call(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self._call(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def capture(self, stream: Any, enqueue: Any) -> Any:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = self._call(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            return self._call(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            self._call(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._call(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def graph_destroy(self, graph_exec: Any) -> None:
        self._call(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")

    def close(self) -> None:
        return None


class _PyCuda:
    """pycuda equivalent of _CudaPython, on the device's primary context (the one TensorRT uses)."""

    binding = "pycuda"

    def __init__(self, device: int) -> None:
        drv = importlib.import_module("pycuda.driver")
        self.drv = drv
        try:
            drv.init()
            count = drv.Device.count()
        except drv.Error as e:
            raise DeviceError(f"no usable CUDA GPU (pycuda: {e}); check the NVIDIA driver") from None
        if device < 0 or device >= count:
            raise DeviceError(f"CUDA device {device} requested, {count} visible here")
        self.dev = drv.Device(device)
        self.ctx = self.dev.retain_primary_context()
        self.ctx.push()

    def properties(self) -> tuple[str, str]:
        major, minor = self.dev.compute_capability()
        return self.dev.name().strip(), f"{major}.{minor}"

    def malloc(self, nbytes: int) -> Any:
        return self.drv.mem_alloc(nbytes)

    def free(self, ptr: Any) -> None:
        ptr.free()

    def host_alloc(self, nbytes: int) -> np.ndarray:
        return self.drv.pagelocked_empty(nbytes, np.uint8)

    def host_free(self, array: np.ndarray) -> None:
        return None  # freed with the array

    def stream(self) -> Any:
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        return None

    def htod(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def event(self) -> Any:
        return self.drv.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def event_destroy(self, event: Any) -> None:
        return None

    def capture(self, stream: Any, enqueue: Any) -> Any:
        raise MissingDependencyError(
            f"CUDA graph capture needs cuda-python (this machine only has pycuda): {install_hint('cuda')}"
        )

    def close(self) -> None:
        self.ctx.pop()


_Cuda = _CudaPython | _PyCuda


def open_cuda(purpose: str, device: int = 0) -> _Cuda:
    """CUDA through cuda-python, else pycuda; MissingDependencyError naming cuda-python if neither imports."""
    cudart = _import_cudart()
    if cudart is not None:
        return _CudaPython(cudart, device)
    if available("pycuda.driver"):
        return _PyCuda(device)
    raise MissingDependencyError(
        f"{purpose} needs CUDA Python bindings: neither 'cuda-python' (cuda.bindings) nor 'pycuda' "
        "imports here. "
        f"Install with: {install_hint('cuda')}"
    )


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, 'major.minor' compute capability) of `device`, as recorded in plan manifests."""
    cuda = open_cuda("reading the GPU's name", device)
    try:
        return cuda.properties()
    finally:
        cuda.close()


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
        self.gpu_name, self.compute_capability = self._cuda.properties()
        check_plan_compatibility(self.manifest, self._trt.__version__, self.gpu_name, self.compute_capability)
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
        if options.get("dla_core") is not None:
            runtime.DLA_core = int(options["dla_core"])
        plan = self.path.read_bytes()
        # The hash was checked at construction; check the bytes actually loaded, in case the file changed since.
        check_plan_compatibility(
            self.manifest, trt.__version__, self.gpu_name, self.compute_capability, plan_sha256=sha256_bytes(plan)
        )
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


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}[np.dtype(dtype)]


def time_inference(
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
