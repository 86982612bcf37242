"""The measurement: engines opened side by side, timed in alternating rounds, the baseline included."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import Engine
from ..errors import AddUNetEdgeError, ArtifactError, ConfigError
from ..progress import progress_bar
from .contenders import Contender, Shape, check_device, macs_per_image
from .lineup import check_shapes, open_contenders
from .results import ROUND_ITERATIONS, BenchResult, BenchRow, ScheduleEntry
from .system import DeviceMemory, device_index, load_average, proc_status_kib, reset_peak_rss, system_info
from .tegrastats import TegrastatsSampler

_POWER_WINDOW_S = 1.5
_MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------------------
def _latency_stats(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples, dtype=np.float64)
    return {
        "latency_ms_min": float(a.min()),
        "latency_ms_median": float(np.median(a)),
        "latency_ms_mean": float(a.mean()),
        "latency_ms_p90": float(np.percentile(a, 90)),
        "latency_ms_p99": float(np.percentile(a, 99)),
        "latency_ms_max": float(a.max()),
    }


def _validate(
    batches: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    threads: int,
    warmup: int,
    iterations: int,
    seconds: float | None,
    device: str,
) -> None:
    if not batches:
        raise ConfigError("no batch size given")
    if any(int(b) < 1 for b in batches):
        raise ConfigError(f"batch sizes must be at least 1, got {list(batches)}")
    if not sizes:
        raise ConfigError("no input size given")
    for size in sizes:
        if len(size) != 2 or any(int(v) < 1 for v in size):
            raise ConfigError(f"sizes must be positive (height, width) pairs, got {size!r}")
    if threads < 0:
        raise ConfigError(f"threads must be >= 0 (0 = library default), got {threads}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if iterations < 1:
        raise ConfigError(f"iterations must be at least 1, got {iterations}")
    if seconds is not None and not seconds > 0:
        raise ConfigError(f"seconds must be positive, got {seconds}")
    check_device(device)


@contextlib.contextmanager
def _maybe_tegrastats(notes: list[str]) -> Iterator[TegrastatsSampler | None]:
    exe = shutil.which("tegrastats")
    if exe is None:
        yield None
        return
    try:
        sampler = TegrastatsSampler(exe)
        sampler.__enter__()
    except OSError as e:
        notes.append(f"tegrastats found but could not be started: {e}")
        yield None
        return
    try:
        yield sampler
    finally:
        sampler.__exit__(None, None, None)


def bench(
    artifacts: Sequence[str | Path | Engine],
    *,
    baseline: str | Path | None = None,
    batches: Sequence[int] = (1,),
    sizes: Sequence[tuple[int, int]] = ((256, 256),),
    threads: int = 0,
    warmup: int = 3,
    iterations: int = 20,
    seconds: float | None = None,
    device: str = "cpu",
    cuda_graph: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> BenchResult:
    """Time every artifact (checkpoint folder, .onnx, .plan or an open Engine) and the PyTorch baseline.

    For each (batch, size): every engine is warmed up (`warmup` runs, host / device memory measured there),
    then timed in alternating rounds of ROUND_ITERATIONS runs (A B A B ...) until each has `iterations`
    runs, or, with `seconds`, until that much time was spent on the shape (all engines together).
    The baseline is `baseline` or the checkpoint the artifacts' manifests name; it is always timed.
    """
    _validate(batches, sizes, threads, warmup, iterations, seconds, device)
    notes: list[str] = []
    shapes = [(int(b), int(h), int(w)) for (h, w) in sizes for b in batches]
    contenders, opened = open_contenders(artifacts, baseline, device, threads, cuda_graph, notes)
    try:
        c_in = check_shapes(contenders, shapes)
        system = system_info(device, threads, command)
        system["round_iterations"] = ROUND_ITERATIONS
        result = BenchResult(system=system, rows=[], notes=notes)
        with _maybe_tegrastats(notes) as sampler, progress_bar(progress) as bar:
            system["tegrastats"] = sampler is not None
            for batch, height, width in shapes:
                shape = (batch, c_in, height, width)
                result.rows.extend(
                    _bench_shape(contenders, shape, warmup, iterations, seconds, device, sampler, bar, result)
                )
    finally:
        for engine in opened:
            engine.close()
    _fill_speedups(result.rows)
    result.system["load_average_end"] = load = load_average()
    cpus = result.system.get("cpu_affinity") or result.system.get("cpu_count") or 0
    if load is not None and cpus and load > cpus:
        # Multi-threaded eager PyTorch suffers most: each layer's OpenMP barrier waits for a descheduled thread.
        notes.append(
            f"the machine was busy (load average {load:.1f} on {cpus} CPUs): latencies are noisy, and "
            "multi-threaded runs more so; repeat the run or use a quieter machine before trusting a ratio"
        )
    return result


def _bench_shape(
    contenders: Sequence[Contender],
    shape: Shape,
    warmup: int,
    iterations: int,
    seconds: float | None,
    device: str,
    sampler: TegrastatsSampler | None,
    bar: Any,
    result: BenchResult,
) -> list[BenchRow]:
    """Warm every contender up at `shape`, time them in alternating rounds, and make their rows."""
    memory = DeviceMemory(device_index(device)) if device.startswith("cuda") else None
    warm = [_warm_up(c, shape, warmup, device, memory, result) for c in contenders]
    timers = [w.timer for w in warm]
    samples = _time_rounds(contenders, timers, shape, iterations, seconds, bar, result)
    return [_row(c, w, s, shape, sampler) for c, w, s in zip(contenders, warm, samples, strict=True)]


@dataclass(frozen=True)
class _Warm:
    """A contender's timer at one shape, and the memory its warm-up took (MiB)."""

    timer: Callable[[int], list[float]]
    peak_rss_mib: float | None
    rss_delta_mib: float | None
    device_memory_mib: float | None


def _warm_up(
    c: Contender, shape: Shape, warmup: int, device: str, memory: DeviceMemory | None, result: BenchResult
) -> _Warm:
    """At least one untimed run (first-call setup is never timed); host and device memory measured around it."""
    batch, _, height, width = shape
    timer = c.timer(shape)
    rss_before = proc_status_kib("VmRSS")
    reset = reset_peak_rss()
    used_before = memory.used_bytes() if memory else None
    torch_cuda = c.backend == "torch" and device.startswith("cuda")
    if torch_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(c.engine.device)  # type: ignore[attr-defined]
    try:
        timer(max(1, warmup))
    except AddUNetEdgeError:
        raise
    except Exception as e:  # a backend's own error type (onnxruntime, TensorRT) at this shape
        raise ArtifactError(f"{c.label} failed at batch {batch}, {height}x{width}: {e}") from None
    result.schedule.append(ScheduleEntry(c.label, c.timing, batch, height, width, max(1, warmup), True))
    peak = proc_status_kib("VmHWM")
    device_mib = None
    if torch_cuda:
        device_mib = torch.cuda.max_memory_allocated(c.engine.device) / _MIB  # type: ignore[attr-defined]
    elif memory is not None:
        used_after = memory.used_bytes()
        grown = max(0, used_after - used_before) if used_after is not None and used_before is not None else 0
        device_mib = ((c.device_base_bytes or 0) + grown) / _MIB
    return _Warm(
        timer=timer,
        peak_rss_mib=peak / 1024 if peak is not None else None,
        rss_delta_mib=(peak - rss_before) / 1024 if reset and peak is not None and rss_before is not None else None,
        device_memory_mib=device_mib,
    )


def _time_rounds(
    contenders: Sequence[Contender],
    timers: list[Callable[[int], list[float]]],
    shape: Shape,
    iterations: int,
    seconds: float | None,
    bar: Any,
    result: BenchResult,
) -> list[list[float]]:
    """Rounds of ROUND_ITERATIONS runs, A B A B ..., until each has `iterations` (or `seconds` have passed)."""
    batch, _, height, width = shape
    samples: list[list[float]] = [[] for _ in contenders]
    budget_total = seconds if seconds is not None else iterations * len(contenders)
    task = bar.add_task(f"batch {batch}, {height}x{width}", total=budget_total)
    started = time.perf_counter()

    def done() -> bool:
        if seconds is not None:
            return time.perf_counter() - started >= seconds and all(samples)
        return all(len(s) >= iterations for s in samples)

    while not done():
        for i, c in enumerate(contenders):
            n = ROUND_ITERATIONS if seconds is not None else min(ROUND_ITERATIONS, iterations - len(samples[i]))
            if n <= 0:
                continue
            samples[i].extend(timers[i](n))
            result.schedule.append(ScheduleEntry(c.label, c.timing, batch, height, width, n, False))
            if seconds is None:
                bar.advance(task, n)
        if seconds is not None:
            bar.update(task, completed=min(seconds, time.perf_counter() - started))
    bar.remove_task(task)
    return samples


def _row(c: Contender, warm: _Warm, samples: list[float], shape: Shape, sampler: TegrastatsSampler | None) -> BenchRow:
    batch, _, height, width = shape
    stats = _latency_stats(samples)
    img_s = batch * 1e3 / stats["latency_ms_median"]
    macs = macs_per_image(c.model_config, height, width)
    power, energy = _power(c, warm.timer, batch, sampler)
    info = c.engine.info
    return BenchRow(
        artifact=c.artifact,
        label=c.label,
        backend=c.backend,
        precision=info.precision,
        target=info.extra.get("target"),
        device=info.device,
        timing=c.timing,
        cuda_graph=c.cuda_graph,
        baseline=c.baseline,
        batch=batch,
        height=height,
        width=width,
        iterations=len(samples),
        **stats,
        throughput_img_s=img_s,
        throughput_mpix_s=img_s * height * width / 1e6,
        peak_rss_mib=warm.peak_rss_mib,
        rss_delta_mib=warm.rss_delta_mib,
        device_memory_mib=warm.device_memory_mib,
        macs_per_image=macs,
        gmac_s=macs * img_s / 1e9 if macs is not None else None,
        avg_power_mw=power,
        energy_mj_per_image=energy,
    )


def _power(
    c: Contender, timer: Callable[[int], list[float]], batch: int, sampler: TegrastatsSampler | None
) -> tuple[float | None, float | None]:
    """Average board power while this engine runs back to back, and the energy of one image (mJ)."""
    if sampler is None:
        return None, None
    # Alternating rounds are far shorter than a tegrastats interval, so power gets its own window.
    start = time.monotonic()
    images = 0
    while time.monotonic() - start < _POWER_WINDOW_S:
        timer(ROUND_ITERATIONS)
        images += ROUND_ITERATIONS * batch
    end = time.monotonic()
    readings = [s.input_mw for s in sampler.between(start, end) if s.input_mw is not None]
    if not readings:
        return None, None
    avg_mw = float(np.mean(readings))
    return avg_mw, avg_mw * (end - start) / images  # mW * s / image = mJ / image


def _fill_speedups(rows: list[BenchRow]) -> None:
    """speedup_vs_torch = baseline median / row median, at the same shape and the same kind of timing."""
    base = {(r.batch, r.height, r.width, r.timing): r.latency_ms_median for r in rows if r.baseline}
    for r in rows:
        ref = base.get((r.batch, r.height, r.width, r.timing))
        if ref is None:  # e.g. an ORT CUDA end-to-end row with a torch baseline on the host: not comparable
            ref = base.get((r.batch, r.height, r.width, "end_to_end"))
        r.speedup_vs_torch = ref / r.latency_ms_median if ref and r.latency_ms_median > 0 else None
