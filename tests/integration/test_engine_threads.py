"""Engines under concurrency: one engine called from several threads answers every call as if it ran alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from addunet_edge.engines import Engine, EngineInfo, InputProfile, Prediction, open_engine
from addunet_edge.errors import ShapeError
from addunet_edge.export import export_onnx

THREADS = 4
CALLS = 20  # per thread, each with its own input
# Shapes change from call to call: a backend that kept per-shape state between calls would be caught.
SHAPES = ((1, 1, 16, 16), (2, 1, 16, 16), (3, 1, 24, 20), (1, 1, 20, 28))


@pytest.fixture(scope="module")
def fp32(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, report = export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.fp32.onnx")
    assert report.passed
    return path


def _inputs() -> list[list[np.ndarray]]:
    rng = np.random.default_rng(7)
    return [[rng.random(SHAPES[(t + i) % len(SHAPES)], dtype=np.float32) for i in range(CALLS)] for t in range(THREADS)]


def _from_threads(
    engine: Engine, inputs: list[list[np.ndarray]], refused: type[Exception] | None = None
) -> list[list[Prediction | None]]:
    """Every thread's calls, all threads released at once. A call refused with `refused` gives None; any
    other exception in a thread fails the test."""
    start = threading.Barrier(len(inputs))
    results: list[list[Prediction | None]] = [[] for _ in inputs]
    errors: list[BaseException] = []

    def one(x: np.ndarray) -> Prediction | None:
        try:
            return engine(x)
        except Exception as e:
            if refused is not None and isinstance(e, refused):
                return None
            raise

    def work(t: int) -> None:
        try:
            start.wait()
            results[t] = [one(x) for x in inputs[t]]
        except BaseException as e:  # reported below: an exception in a thread would otherwise only be printed
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
    return results


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """TorchEngine(threads=N) sets torch's process-wide thread count: give the other tests theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("torch_threads")
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_four_threads_get_the_single_threaded_outputs_bit_for_bit(
    backend: str, tiny_checkpoint: Path, fp32: Path
) -> None:
    # Bit-exact, not a tolerance: a call's arithmetic does not depend on what runs beside it. ONNX Runtime
    # (2 intra-op threads, one pool shared by the concurrent runs) splits a kernel's work by the pool's size,
    # not by which of its threads are free. Torch runs with one intra-op thread per call: 4 callers with 2
    # OpenMP threads each would stall a busy 2-core machine at every barrier for no extra coverage.
    artifact, threads = (fp32, 2) if backend == "onnxruntime" else (tiny_checkpoint, 1)
    inputs = _inputs()
    with open_engine(artifact, threads=threads) as engine:
        assert engine.reentrant  # both backends run calls side by side, with no lock between them
        alone = [[engine(x) for x in per_thread] for per_thread in inputs]
        together = _from_threads(engine, inputs)
    for t in range(THREADS):
        for i in range(CALLS):
            a, b = alone[t][i], together[t][i]
            assert b is not None
            assert b.denoised.shape == inputs[t][i].shape, (t, i)
            assert np.array_equal(a.denoised, b.denoised) and np.array_equal(a.logits, b.logits), (t, i)
    # Different inputs give different outputs: a call answered with another call's result would be caught.
    assert not np.array_equal(alone[0][0].denoised, alone[1][3].denoised)


class StagedEngine(Engine):
    """Like a TensorRT context: the input is staged in one buffer the engine owns, then read back out.

    Two overlapping calls would overwrite each other's staged input; the sleep lets the other threads run
    in the middle of a call. Records how many calls were inside `_infer` at once, and how many activations.
    """

    backend = "staged"

    def __init__(self) -> None:
        super().__init__("staged")
        self.inside = self.most_inside = self.activations = self.deactivations = 0
        self.count_lock = threading.Lock()
        self.staged: np.ndarray | None = None
        self.release = threading.Event()
        self.release.set()

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(self.backend, "fp32", "cpu", InputProfile(channels=1), 0, "staged", None)

    def _activate(self) -> None:
        time.sleep(0.05)  # a slow start (deserialising a plan): the other first callers arrive meanwhile
        self.activations += 1

    def _deactivate(self) -> None:
        self.deactivations += 1

    def _infer(self, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.count_lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            self.staged = noisy.copy()
            time.sleep(0.002)
            self.release.wait()
            out = self.staged * 2.0
            return out.astype(np.float32), np.zeros((out.shape[0], 0), np.float32)
        finally:
            with self.count_lock:
                self.inside -= 1


class CarelessStagedEngine(StagedEngine):
    """The same engine wrongly declared reentrant: shows that the threads below really do overlap."""

    reentrant = True


def test_an_engine_that_is_not_reentrant_serves_one_call_at_a_time_and_activates_once() -> None:
    inputs = _inputs()
    engine = StagedEngine()
    assert not engine.reentrant  # the default: a backend must declare itself reentrant
    together = _from_threads(engine, inputs)
    assert engine.most_inside == 1
    assert engine.activations == 1
    for t in range(THREADS):
        for i in range(CALLS):
            got = together[t][i]
            assert got is not None and np.array_equal(got.denoised, inputs[t][i] * 2.0), (t, i)

    careless = CarelessStagedEngine()
    mixed = _from_threads(careless, inputs, refused=ShapeError)
    assert careless.most_inside > 1  # without the lock the same harness sees overlapping calls...
    wrong = sum(
        got is None or not np.array_equal(got.denoised, x * 2.0)
        for per_thread, xs in zip(mixed, inputs, strict=True)
        for got, x in zip(per_thread, xs, strict=True)
    )
    assert wrong > 0  # ...and answers some with another call's data, or returns a shape the base refuses


def test_close_waits_for_the_calls_in_flight() -> None:
    engine = StagedEngine()
    engine.release.clear()  # the call below stays inside the engine until released
    x = np.ones((1, 1, 4, 4), np.float32)
    result: list[Prediction] = []
    caller = threading.Thread(target=lambda: result.append(engine(x)))
    caller.start()
    while engine.inside == 0:
        time.sleep(0.001)
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(timeout=0.3)
    assert closer.is_alive() and engine.deactivations == 0  # the resources stay while the call uses them
    engine.release.set()
    caller.join(timeout=10)
    closer.join(timeout=10)
    assert not caller.is_alive() and not closer.is_alive()
    assert engine.deactivations == 1
    assert np.array_equal(result[0].denoised, x * 2.0)


def test_the_tensorrt_backend_is_serialised() -> None:
    # Importable without TensorRT; its execution context, bound buffers and stream serve one call at a time.
    from addunet_edge.engines.tensorrt import TensorRTEngine

    assert TensorRTEngine.reentrant is False
