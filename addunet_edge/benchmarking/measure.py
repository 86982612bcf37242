"""The measurement: engines opened side by side, timed in alternating rounds, the baseline included."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import Engine, backend_for, open_engine, options_for
from ..errors import AddUNetEdgeError, ArtifactError, ConfigError, ShapeError
from ..plotting import unique_label
from ..progress import progress_bar
from .contenders import Contender, check_device, engine_label, lineage, macs_per_image, timings_for
from .results import ROUND_ITERATIONS, BenchResult, BenchRow, ScheduleEntry
from .system import DeviceMemory, device_index, load_average, proc_status_kib, reset_peak_rss, system_info
from .tegrastats import TegrastatsSampler

_POWER_WINDOW_S = 1.5
_MIB = 1024 * 1024

Shape = tuple[int, int, int, int]


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


def _open_contenders(
    artifacts: Sequence[str | Path | Engine],
    baseline: str | Path | None,
    device: str,
    threads: int,
    cuda_graph: bool,
    notes: list[str],
) -> tuple[list[Contender], list[Engine]]:
    """The baseline first, then every artifact; also returns the engines this run opened (to close)."""
    opened: list[Engine] = []
    try:
        return _open_all(artifacts, baseline, device, threads, cuda_graph, notes, opened)
    except BaseException:
        for engine in opened:
            engine.close()
        raise


def _open_all(
    artifacts: Sequence[str | Path | Engine],
    baseline: str | Path | None,
    device: str,
    threads: int,
    cuda_graph: bool,
    notes: list[str],
    opened: list[Engine],
) -> tuple[list[Contender], list[Engine]]:
    """_open_contenders' work; every engine it opens goes into `opened` at once, for the caller to close."""
    from ..checkpoint import is_checkpoint

    baseline_path = Path(baseline) if baseline is not None else None
    if baseline_path is not None and not is_checkpoint(baseline_path):
        raise ArtifactError(f"--baseline must be a checkpoint folder (model.safetensors + config.json): {baseline}")
    items: list[tuple[Path, Engine | None, Path | None, dict[str, Any] | None]] = []
    for item in artifacts:
        if isinstance(item, Engine):
            ckpt, model = lineage(item.path)
            items.append((item.path, item, ckpt, model))
        elif backend_for(item) == "torch":  # refuses a missing or unknown file before it is opened
            # A checkpoint is opened below, once it is known whether it is the baseline too.
            ckpt, model = lineage(item)
            items.append((Path(item), None, ckpt, model))
        else:
            # Opening verifies the file (manifest hash, ONNX decode, plan manifest), so a corrupt artifact is
            # refused as such rather than reported as an artifact without a baseline. Activation (the
            # session, the device memory it takes) waits for add() below, which measures it.
            path = Path(item)
            engine = open_engine(path, **options_for(path, device, threads, cuda_graph))
            opened.append(engine)
            ckpt, model = lineage(path)
            items.append((path, engine, ckpt, model))
    if baseline_path is None:
        found = [ckpt for _, _, ckpt, _ in items if ckpt is not None]
        if not found:
            raise ConfigError(
                "no PyTorch baseline: none of the artifacts is a checkpoint or names one in its manifest; "
                "pass --baseline CHECKPOINT_FOLDER"
            )
        baseline_path = found[0]
    for path, _, ckpt, _ in items:
        if ckpt is not None and ckpt.resolve() != baseline_path.resolve():
            notes.append(f"{path.name} was made from {ckpt}, not from the baseline {baseline_path}")

    taken: set[str] = set()
    contenders: list[Contender] = []

    def add(path: Path, engine: Engine, is_baseline: bool, model: dict[str, Any] | None, label: str) -> None:
        base = None
        memory = DeviceMemory(device_index(device)) if device.startswith("cuda") else None
        if memory is not None and engine.backend != "torch":
            before = memory.used_bytes()
            engine.activate()
            after = memory.used_bytes()
            base = max(0, after - before) if before is not None and after is not None else None
        for timing in timings_for(engine.backend, device):
            contenders.append(
                Contender(
                    label=label,
                    artifact=str(path),
                    engine=engine,
                    timing=timing,
                    baseline=is_baseline,
                    model_config=model,
                    cuda_graph=cuda_graph and engine.backend == "tensorrt",
                    device_base_bytes=base,
                )
            )

    baseline_engine = open_engine(baseline_path, device=device, threads=threads)
    opened.append(baseline_engine)
    _, baseline_model = lineage(baseline_path)
    add(baseline_path, baseline_engine, True, baseline_model, unique_label(f"{baseline_path.name} (torch)", taken))
    for path, already_open, _, model in items:
        if already_open is not None:
            engine = already_open
        elif path.resolve() == baseline_path.resolve():
            continue  # the baseline is this artifact; it is timed once
        else:
            engine = open_engine(path, **options_for(path, device, threads, cuda_graph))
            opened.append(engine)
        add(path, engine, False, model, unique_label(engine_label(path, engine.backend), taken))
    return contenders, opened


def _check_shapes(contenders: Sequence[Contender], shapes: Sequence[tuple[int, int, int]]) -> int:
    """Refuse, before any timing, a shape some engine cannot take; returns the channel count."""
    channels = {c.label: c.engine.info.profile.channels for c in contenders}
    if len(set(channels.values())) != 1:
        raise ShapeError(f"the engines disagree on input channels: {channels}")
    c_in = next(iter(channels.values()))
    for contender in contenders:
        profile = contender.engine.info.profile
        for batch, height, width in shapes:
            try:
                profile.check((batch, c_in, height, width))
                m = profile.size_multiple
                if contender.backend == "tensorrt" and m > 1 and (height % m or width % m):
                    raise ShapeError(f"this plan needs height and width multiples of {m}, got {height}x{width}")
            except ShapeError as e:
                raise ShapeError(f"{contender.label} cannot be timed at batch {batch}, {height}x{width}: {e}") from None
    return c_in


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
    contenders, opened = _open_contenders(artifacts, baseline, device, threads, cuda_graph, notes)
    try:
        c_in = _check_shapes(contenders, shapes)
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
    batch, _, height, width = shape
    memory = DeviceMemory(device_index(device)) if device.startswith("cuda") else None
    timers, host_mem, device_mem = {}, {}, {}
    for i, c in enumerate(contenders):
        timers[i] = c.timer(shape)
        rss_before = proc_status_kib("VmRSS")
        reset = reset_peak_rss()
        used_before = memory.used_bytes() if memory else None
        torch_cuda = c.backend == "torch" and device.startswith("cuda")
        if torch_cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(c.engine.device)  # type: ignore[attr-defined]
        try:
            timers[i](max(1, warmup))  # at least one untimed run: first-call setup is never timed
        except AddUNetEdgeError:
            raise
        except Exception as e:  # a backend's own error type (onnxruntime, TensorRT) at this shape
            raise ArtifactError(f"{c.label} failed at batch {batch}, {height}x{width}: {e}") from None
        result.schedule.append(ScheduleEntry(c.label, c.timing, batch, height, width, max(1, warmup), True))
        peak = proc_status_kib("VmHWM")
        host_mem[i] = (
            peak / 1024 if peak is not None else None,
            (peak - rss_before) / 1024 if reset and peak is not None and rss_before is not None else None,
        )
        if torch_cuda:
            device_mem[i] = torch.cuda.max_memory_allocated(c.engine.device) / _MIB  # type: ignore[attr-defined]
        elif memory is not None:
            used_after = memory.used_bytes()
            grown = max(0, used_after - used_before) if used_after is not None and used_before is not None else 0
            device_mem[i] = ((c.device_base_bytes or 0) + grown) / _MIB
        else:
            device_mem[i] = None

    samples: dict[int, list[float]] = {i: [] for i in range(len(contenders))}
    budget_total = seconds if seconds is not None else iterations * len(contenders)
    task = bar.add_task(f"batch {batch}, {height}x{width}", total=budget_total)
    started = time.perf_counter()

    def done() -> bool:
        if seconds is not None:
            return time.perf_counter() - started >= seconds and all(samples.values())
        return all(len(s) >= iterations for s in samples.values())

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

    rows = []
    for i, c in enumerate(contenders):
        stats = _latency_stats(samples[i])
        img_s = batch * 1e3 / stats["latency_ms_median"]
        macs = macs_per_image(c.model_config, height, width)
        power, energy = _power(c, timers[i], batch, sampler)
        info = c.engine.info
        rows.append(
            BenchRow(
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
                iterations=len(samples[i]),
                **stats,
                throughput_img_s=img_s,
                throughput_mpix_s=img_s * height * width / 1e6,
                peak_rss_mib=host_mem[i][0],
                rss_delta_mib=host_mem[i][1],
                device_memory_mib=device_mem[i],
                macs_per_image=macs,
                gmac_s=macs * img_s / 1e9 if macs is not None else None,
                avg_power_mw=power,
                energy_mj_per_image=energy,
            )
        )
    return rows


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
