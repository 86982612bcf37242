"""The engine protocol: one small lifecycle and one I/O contract shared by every backend."""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ShapeError

INPUT_NAME = "noisy"
OUTPUT_NAMES = ("denoised", "logits")


@dataclass(frozen=True)
class Prediction:
    """What every engine returns: `denoised` (N, C, H, W) float32 and `logits` (N, K) float32."""

    denoised: np.ndarray
    logits: np.ndarray


@dataclass(frozen=True)
class InputProfile:
    """The input shapes an engine accepts; None means unbounded on that axis."""

    channels: int
    min_batch: int = 1
    max_batch: int | None = None
    min_hw: tuple[int, int] = (1, 1)
    max_hw: tuple[int, int] | None = None
    fixed_hw: tuple[int, int] | None = None
    # Spatial sizes that are not a multiple of this are padded by the engine (or refused when fixed).
    size_multiple: int = 1
    opt_batch: int | None = None
    opt_hw: tuple[int, int] | None = None

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise ShapeError with a clear message if `shape` is outside this profile."""
        if len(shape) != 4:
            raise ShapeError(f"expected input of shape (N, C, H, W), got {tuple(shape)}")
        n, c, h, w = shape
        if c != self.channels:
            raise ShapeError(f"engine expects {self.channels} channel(s), input has {c} (shape {tuple(shape)})")
        if n < 1:
            raise ShapeError("batch size must be at least 1")
        if n < self.min_batch or (self.max_batch is not None and n > self.max_batch):
            hi = self.max_batch if self.max_batch is not None else "∞"
            raise ShapeError(f"batch {n} is outside the engine's profile [{self.min_batch}, {hi}]")
        if self.fixed_hw is not None and (h, w) != self.fixed_hw:
            raise ShapeError(f"engine was built for {self.fixed_hw[0]}x{self.fixed_hw[1]} inputs, got {h}x{w}")
        if h < self.min_hw[0] or w < self.min_hw[1]:
            raise ShapeError(f"input {h}x{w} is smaller than the profile minimum {self.min_hw[0]}x{self.min_hw[1]}")
        if self.max_hw is not None and (h > self.max_hw[0] or w > self.max_hw[1]):
            raise ShapeError(f"input {h}x{w} is larger than the profile maximum {self.max_hw[0]}x{self.max_hw[1]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EngineInfo:
    backend: str
    precision: str
    device: str
    profile: InputProfile
    num_classes: int
    source: str
    source_sha256: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = self.profile.to_dict()
        return d


class Engine(abc.ABC):
    """Base lifecycle: construct (cheap), activate on first use or `with`, infer, close.

    Subclasses implement `_activate`, `_infer` and `_deactivate`; the guard logic (input checks,
    dtype conversion, output checks) lives here once.

    Threads: any engine may be called from several threads at once, and every call returns what it would
    have returned alone. A backend whose `_infer` is safe to run concurrently says so with
    `reentrant = True`, and its calls overlap (ONNX Runtime: `InferenceSession.run` is thread-safe; torch:
    an eval-mode model under inference_mode keeps no state between calls). Any other backend's calls are
    serialised by a per-engine lock, which is the default: a TensorRT execution context, its bound buffers
    and its stream serve one inference at a time. Either way the engine activates once however many
    threads call it first, and `close()` waits for the calls in flight. For parallel throughput on a
    backend that is not reentrant, open one engine per thread.
    """

    backend: ClassVar[str] = "base"
    reentrant: ClassVar[bool] = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._active = False
        # Guards activation, closing and the count of calls in flight. Reentrant lock: a call activates
        # the engine while it holds it, and a backend's `info` may activate again from inside a call.
        self._state = threading.Condition(threading.RLock())
        self._in_flight = 0
        self._infer_lock = threading.Lock()  # one `_infer` at a time, unless the backend is reentrant

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def activate(self) -> None:
        with self._state:
            if not self._active:
                self._activate()
                self._active = True

    def close(self) -> None:
        """Release the backend's resources once the calls in flight have returned; a later call reopens it."""
        with self._state:
            self._state.wait_for(lambda: self._in_flight == 0)
            if self._active:
                self._deactivate()
                self._active = False

    @contextlib.contextmanager
    def _one_call(self) -> Iterator[None]:
        """One call in flight: the engine is active when it starts and stays so until it ends."""
        with self._state:
            self.activate()
            self._in_flight += 1
        try:
            yield
        finally:
            with self._state:
                self._in_flight -= 1
                self._state.notify_all()

    def __del__(self) -> None:  # best effort; never raise from a finaliser
        with contextlib.suppress(Exception):
            self.close()

    # -- inference -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo: ...

    def __call__(self, noisy: Any) -> Prediction:
        """Run one batch. `noisy`: (N, C, H, W) float32 in [0, 1] (a (C, H, W) image is promoted)."""
        with self._one_call():
            return self._checked_call(noisy)

    def _checked_call(self, noisy: Any) -> Prediction:
        array = self._prepare(noisy)
        n, _, h, w = array.shape if isinstance(array, np.ndarray) else tuple(array.shape)
        m = self.info.profile.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if (pad_h or pad_w) and isinstance(array, np.ndarray):
            # Multi-scale graphs need multiples of 2**depth: pad by edge replication, crop back below.
            array = np.pad(array, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")
        if self.reentrant:
            denoised, logits = self._infer(array)
        else:
            with self._infer_lock:
                denoised, logits = self._infer(array)
        if pad_h or pad_w:
            denoised = denoised[..., :h, :w]
        out_shape = tuple(denoised.shape)
        if out_shape[0] != n or out_shape[2:] != (h, w):
            raise ShapeError(f"{self.backend} engine returned denoised {tuple(denoised.shape)} for input {n}x{h}x{w}")
        return Prediction(denoised=denoised, logits=logits)

    def _prepare(self, noisy: Any) -> Any:
        if not isinstance(noisy, np.ndarray):
            if hasattr(noisy, "__array__") and not _is_torch_cuda(noisy):
                noisy = np.asarray(noisy)
            elif self._accepts_device_tensor(noisy):
                self.info.profile.check(tuple(noisy.shape))
                return noisy
            else:
                raise ShapeError(f"{self.backend} engine takes a numpy array, got {type(noisy).__name__}")
        if noisy.ndim == 3:
            noisy = noisy[None]
        if noisy.dtype != np.float32:
            if not np.issubdtype(noisy.dtype, np.floating):
                raise ShapeError(f"input must be float in [0, 1], got dtype {noisy.dtype}")
            noisy = noisy.astype(np.float32)
        self.info.profile.check(noisy.shape)
        return np.ascontiguousarray(noisy)

    def _accepts_device_tensor(self, tensor: Any) -> bool:
        return False

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, noisy: Any) -> tuple[Any, Any]: ...

    def _deactivate(self) -> None:
        return None


def _is_torch_cuda(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and getattr(getattr(x, "device", None), "type", "") == "cuda"
