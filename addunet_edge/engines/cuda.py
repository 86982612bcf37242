"""CUDA for the TensorRT backend: cuda-python (preferred) or pycuda (where a Jetson image already has it),
buffers, streams, events and graph capture, each call checked; and the GPU's identity for plan manifests."""

from __future__ import annotations

import ctypes
import importlib
from typing import Any, NamedTuple

import numpy as np

from .._lazy import available, install_hint
from ..errors import DeviceError, MissingDependencyError


class GpuProperties(NamedTuple):
    """What a plan's manifest records of the GPU that built it."""

    name: str
    compute_capability: str  # 'major.minor'
    sm_count: int


def import_cudart() -> Any | None:
    # cuda-python >= 12.6 moved the runtime bindings to cuda.bindings.runtime; older releases had cuda.cudart.
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


class CudaPython:
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

    def properties(self) -> GpuProperties:
        prop = self._call(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        return GpuProperties(name.strip(), f"{prop.major}.{prop.minor}", int(prop.multiProcessorCount))

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


class PyCuda:
    """pycuda equivalent of CudaPython, on the device's primary context (the one TensorRT uses)."""

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

    def properties(self) -> GpuProperties:
        major, minor = self.dev.compute_capability()
        sms = int(self.dev.get_attribute(self.drv.device_attribute.MULTIPROCESSOR_COUNT))
        return GpuProperties(self.dev.name().strip(), f"{major}.{minor}", sms)

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


Cuda = CudaPython | PyCuda


def open_cuda(purpose: str, device: int = 0) -> Cuda:
    """CUDA through cuda-python, else pycuda; MissingDependencyError naming cuda-python if neither imports."""
    cudart = import_cudart()
    if cudart is not None:
        return CudaPython(cudart, device)
    if available("pycuda.driver"):
        return PyCuda(device)
    raise MissingDependencyError(
        f"{purpose} needs CUDA Python bindings: neither 'cuda-python' (cuda.bindings) nor 'pycuda' "
        "imports here. "
        f"Install with: {install_hint('cuda')}"
    )


def gpu_identity(device: int = 0) -> GpuProperties:
    """Name, 'major.minor' compute capability and SM count of `device`, as recorded in plan manifests."""
    cuda = open_cuda("reading the GPU's name", device)
    try:
        return cuda.properties()
    finally:
        cuda.close()
