"""Latency, throughput, memory and energy of every engine, with the PyTorch baseline timed in the same run."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import atomic_write_json, atomic_write_text, package_versions
from .engines import Engine, backend_for, open_engine, options_for
from .errors import AddUNetEdgeError, ArtifactError, ConfigError, ShapeError
from .plotting import pyplot, save_figure, unique_label
from .progress import progress_bar

SCHEMA = "addunet-edge/bench"
SCHEMA_VERSION = 1
# Short rounds: every engine sees the same stretch of a drifting machine (thermals, neighbours), while a
# round stays long enough that switching engines costs little next to the timed work.
ROUND_ITERATIONS = 5
# Manifests point at what an artifact was made from (plan -> int8 ONNX -> fp32 ONNX -> checkpoint).
_TEGRASTATS_INTERVAL_MS = 100
_POWER_WINDOW_S = 1.5
_MIB = 1024 * 1024

Shape = tuple[int, int, int, int]


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------
@dataclass
class BenchRow:
    """One engine at one input shape with one way of timing it."""

    artifact: str
    label: str
    backend: str
    precision: str
    target: str | None
    device: str
    # 'host': numpy in and out on the CPU; 'compute': device-resident input, no copies; 'end_to_end': numpy in
    # and out with the host-device copies included (trtexec's "GPU Compute Time" vs "Latency").
    timing: str
    cuda_graph: bool
    baseline: bool
    batch: int
    height: int
    width: int
    iterations: int
    latency_ms_min: float
    latency_ms_median: float
    latency_ms_mean: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_max: float
    throughput_img_s: float
    throughput_mpix_s: float
    peak_rss_mib: float | None
    rss_delta_mib: float | None
    device_memory_mib: float | None
    macs_per_image: int | None
    gmac_s: float | None
    speedup_vs_torch: float | None = None
    avg_power_mw: float | None = None
    energy_mj_per_image: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScheduleEntry:
    """One block of timed runs, in the order they ran (warm-up blocks have warmup=True)."""

    label: str
    timing: str
    batch: int
    height: int
    width: int
    iterations: int
    warmup: bool


@dataclass
class BenchResult:
    system: dict[str, Any]
    rows: list[BenchRow]
    schedule: list[ScheduleEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "system": self.system,
            "notes": self.notes,
            "rows": [r.to_dict() for r in self.rows],
            "schedule": [asdict(s) for s in self.schedule],
        }


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(BenchRow))


# --------------------------------------------------------------------------------------------------------
# tegrastats (Jetson): a pure parser, unit-tested on the Orin and Xavier formats, and a background sampler
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TegraSample:
    """The power and clock figures of one tegrastats line."""

    rails_mw: dict[str, int]
    # Board input power: VDD_IN (Orin, Xavier NX, TX2) or POM_5V_IN (Nano); else the sum of all rails.
    input_mw: int | None
    input_rail: str | None
    gpu_load_pct: int | None = None
    gpu_freq_mhz: int | None = None
    emc_freq_mhz: int | None = None
    cpu_freq_mhz: tuple[int, ...] = ()


# A rail is an upper-case name then current/average, in mW with or without the unit (JetPack 4 prints none).
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = frozenset({"RAM", "SWAP", "IRAM", "LFB"})
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_GR3D = re.compile(r"\bGR3D(?:_FREQ)?\s+(\d+)%(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC(?:_FREQ)?\s+\d+%@(\d+)")
_CPU = re.compile(r"\bCPU\s+\[([^\]]*)\]", re.IGNORECASE)


def parse_tegrastats(line: str) -> TegraSample | None:
    """Power rails (mW) and clocks (MHz) of one tegrastats line; None for a line without any power rail."""
    rails = {name: int(now) for name, now, _avg in _RAIL.findall(line) if name not in _NOT_RAILS}
    if not rails:
        return None
    input_rail = next((r for r in _INPUT_RAILS if r in rails), None)
    input_mw = rails[input_rail] if input_rail else sum(rails.values())
    gpu_load = gpu_freq = emc = None
    if m := _GR3D.search(line):
        gpu_load = int(m.group(1))
        if m.group(2):
            # Orin prints one frequency per GPC ([305,305]); they run in lockstep, report the highest.
            gpu_freq = max(int(v) for v in m.group(2).split(",") if v)
    if m := _EMC.search(line):
        emc = int(m.group(1))
    cpu: tuple[int, ...] = ()
    if m := _CPU.search(line):
        cpu = tuple(int(f) for f in re.findall(r"@(\d+)", m.group(1)))
        # JetPack 3 form: CPU [12%,3%,off,off]@1734, one frequency for the cluster.
        if not cpu and (tail := re.match(r"@(\d+)", line[m.end() :])):
            cpu = (int(tail.group(1)),)
    return TegraSample(
        rails_mw=rails,
        input_mw=input_mw,
        input_rail=input_rail or "sum of rails",
        gpu_load_pct=gpu_load,
        gpu_freq_mhz=gpu_freq,
        emc_freq_mhz=emc,
        cpu_freq_mhz=cpu,
    )


class TegrastatsSampler:
    """Runs `tegrastats --interval 100` in the background and keeps (monotonic time, sample) pairs."""

    def __init__(self, executable: str, interval_ms: int = _TEGRASTATS_INTERVAL_MS) -> None:
        self.executable, self.interval_ms = executable, interval_ms
        self.samples: list[tuple[float, TegraSample]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> TegrastatsSampler:
        self._proc = subprocess.Popen(
            [self.executable, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            sample = parse_tegrastats(line)
            if sample is not None:
                with self._lock:
                    self.samples.append((time.monotonic(), sample))

    def between(self, start: float, end: float) -> list[TegraSample]:
        with self._lock:
            return [s for t, s in self.samples if start <= t <= end]

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)


# --------------------------------------------------------------------------------------------------------
# Host and device memory (Linux /proc; no psutil)
# --------------------------------------------------------------------------------------------------------
def _proc_status_kib(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0) so the next peak belongs to what runs next."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class _DeviceMemory:
    """Device-wide used bytes via cudaMemGetInfo (through torch, else cuda-python); None when neither works."""

    def __init__(self, device_index: int) -> None:
        self.device_index = device_index

    def used_bytes(self) -> int | None:
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info(self.device_index)
                return int(total - free)
        with contextlib.suppress(Exception):
            from .engines.tensorrt import _import_cudart

            rt = _import_cudart()
            if rt is not None:
                err, free, total = rt.cudaMemGetInfo()
                if int(err) == 0:
                    return int(total - free)
        return None


# --------------------------------------------------------------------------------------------------------
# What the machine is
# --------------------------------------------------------------------------------------------------------
def load_average() -> float | None:
    """The 1-minute load average (runnable threads, all processes): above the CPU count, timings are noisy."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Hardware", "Model", "cpu model"):
        if m := re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE):
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def system_info(device: str, threads: int, command: str | None) -> dict[str, Any]:
    """CPU, GPU, threads, package versions and the command line, recorded with every report."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads_requested": threads,
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "device": device,
        "versions": package_versions("addunet-edge", "torch", "onnxruntime", "onnx", "numpy", "tensorrt"),
        "command": command if command is not None else shlex.join(sys.argv),
        "load_average_start": load_average(),
        "created_unix": round(time.time(), 3),
    }
    with contextlib.suppress(OSError):
        info["board"] = Path("/proc/device-tree/model").read_text().strip("\0\n ")
    with contextlib.suppress(Exception):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            index = torch.device(device).index or 0
            info["gpu"] = torch.cuda.get_device_name(index)
            info["gpu_compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
    if device.startswith("cuda") and "gpu" not in info:
        with contextlib.suppress(Exception):
            from .engines.tensorrt import gpu_identity

            info["gpu"], info["gpu_compute_capability"] = gpu_identity(_device_index(device))
    return info


# --------------------------------------------------------------------------------------------------------
# Where an artifact came from: its checkpoint (the baseline) and its model config (the MACs)
# --------------------------------------------------------------------------------------------------------
def lineage(artifact: str | Path) -> tuple[Path | None, dict[str, Any] | None]:
    """(checkpoint folder, model config dict) an artifact was made from, following manifests' `source`."""
    from .artifacts import trace_provenance
    from .checkpoint import is_checkpoint, read_checkpoint_meta

    path = Path(artifact)
    if path.is_dir():
        return (path, read_checkpoint_meta(path).get("model")) if is_checkpoint(path) else (None, None)
    prov = trace_provenance(path, verify=False)
    model = prov.model
    if prov.checkpoint is not None and model is None:
        model = read_checkpoint_meta(prov.checkpoint).get("model")
    return prov.checkpoint, model


_MAC_CACHE: dict[tuple[str, int, int], int] = {}


def macs_per_image(model_config: dict[str, Any] | None, height: int, width: int) -> int | None:
    """Multiply-accumulates of one image at height x width (None without a model config)."""
    if not model_config:
        return None
    key = (repr(sorted(model_config.items())), height, width)
    if key not in _MAC_CACHE:
        from .model import ModelConfig, build_model, count_macs

        _MAC_CACHE[key] = count_macs(build_model(ModelConfig.from_dict(model_config)), height, width).macs
    return _MAC_CACHE[key]


# --------------------------------------------------------------------------------------------------------
# Contenders: one engine timed one way
# --------------------------------------------------------------------------------------------------------
def _device_index(device: str) -> int:
    index = device.partition(":")[2]
    return int(index) if index else 0


def _check_device(device: str) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {device!r}")


@dataclass
class _Contender:
    label: str
    artifact: str
    engine: Engine
    timing: str
    baseline: bool
    model_config: dict[str, Any] | None
    cuda_graph: bool = False
    device_base_bytes: int | None = None

    @property
    def backend(self) -> str:
        return self.engine.backend

    def timer(self, shape: Shape) -> Callable[[int], list[float]]:
        """A function running n timed inferences at `shape`, returning their latencies in ms."""
        if self.backend == "tensorrt":
            from .engines.tensorrt import time_inference

            copies = self.timing == "end_to_end"
            return lambda n: time_inference(self.engine, shape, n, 0, copies, self.cuda_graph)  # type: ignore[arg-type]
        if self.timing == "compute":  # torch on CUDA, input already on the device
            import torch

            device = self.engine.device  # type: ignore[attr-defined]
            x = torch.rand(shape, device=device, generator=torch.Generator(device=device).manual_seed(0))
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def run_device(n: int) -> list[float]:
                out = []
                for _ in range(n):
                    start.record()
                    self.engine(x)
                    end.record()
                    end.synchronize()
                    out.append(float(start.elapsed_time(end)))
                return out

            return run_device
        x_host = np.random.default_rng(0).random(shape, dtype=np.float32)

        def run_host(n: int) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                self.engine(x_host)
                out.append((time.perf_counter() - t0) * 1e3)
            return out

        return run_host


def _timings_for(backend: str, device: str) -> tuple[str, ...]:
    if backend == "tensorrt":
        return ("compute", "end_to_end")
    if device == "cpu":
        return ("host",)
    return ("compute", "end_to_end") if backend == "torch" else ("end_to_end",)


def _engine_label(artifact: Path, backend: str) -> str:
    return f"{artifact.name} (torch)" if backend == "torch" else artifact.name


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
    _check_device(device)


def _open_contenders(
    artifacts: Sequence[str | Path | Engine],
    baseline: str | Path | None,
    device: str,
    threads: int,
    cuda_graph: bool,
    notes: list[str],
) -> tuple[list[_Contender], list[Engine]]:
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
) -> tuple[list[_Contender], list[Engine]]:
    """_open_contenders' work; every engine it opens goes into `opened` at once, for the caller to close."""
    from .checkpoint import is_checkpoint

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
    contenders: list[_Contender] = []

    def add(path: Path, engine: Engine, is_baseline: bool, model: dict[str, Any] | None, label: str) -> None:
        base = None
        memory = _DeviceMemory(_device_index(device)) if device.startswith("cuda") else None
        if memory is not None and engine.backend != "torch":
            before = memory.used_bytes()
            engine.activate()
            after = memory.used_bytes()
            base = max(0, after - before) if before is not None and after is not None else None
        for timing in _timings_for(engine.backend, device):
            contenders.append(
                _Contender(
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
        add(path, engine, False, model, unique_label(_engine_label(path, engine.backend), taken))
    return contenders, opened


def _check_shapes(contenders: Sequence[_Contender], shapes: Sequence[tuple[int, int, int]]) -> int:
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
    contenders: Sequence[_Contender],
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
    memory = _DeviceMemory(_device_index(device)) if device.startswith("cuda") else None
    timers, host_mem, device_mem = {}, {}, {}
    for i, c in enumerate(contenders):
        timers[i] = c.timer(shape)
        rss_before = _proc_status_kib("VmRSS")
        reset = _reset_peak_rss()
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
        peak = _proc_status_kib("VmHWM")
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
    c: _Contender, timer: Callable[[int], list[float]], batch: int, sampler: TegrastatsSampler | None
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


# --------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


_TABLE_COLUMNS: tuple[tuple[str, str, Callable[[BenchRow], str]], ...] = (
    ("engine", "left", lambda r: r.label),
    ("prec", "left", lambda r: r.precision + (f"/{r.target}" if r.target else "")),
    ("timing", "left", lambda r: r.timing + (" +graph" if r.cuda_graph else "")),
    ("NxHxW", "left", lambda r: f"{r.batch}x{r.height}x{r.width}"),
    ("median ms", "right", lambda r: _fmt(r.latency_ms_median)),
    ("p90 ms", "right", lambda r: _fmt(r.latency_ms_p90)),
    ("p99 ms", "right", lambda r: _fmt(r.latency_ms_p99)),
    ("img/s", "right", lambda r: _fmt(r.throughput_img_s, 1)),
    ("MPix/s", "right", lambda r: _fmt(r.throughput_mpix_s)),
    ("GMAC/s", "right", lambda r: _fmt(r.gmac_s, 1)),
    ("RSS MiB", "right", lambda r: _fmt(r.peak_rss_mib, 0)),
    ("dev MiB", "right", lambda r: _fmt(r.device_memory_mib, 0)),
    ("mJ/img", "right", lambda r: _fmt(r.energy_mj_per_image)),
    ("×torch", "right", lambda r: f"{r.speedup_vs_torch:.2f}" if r.speedup_vs_torch else "-"),
)
# The Markdown file has room for the full spread of latencies; the terminal table does not.
_MARKDOWN_EXTRA = (
    ("min ms", "right", lambda r: _fmt(r.latency_ms_min)),
    ("max ms", "right", lambda r: _fmt(r.latency_ms_max)),
)


def _columns(result: BenchResult, markdown: bool = False) -> list[tuple[str, str, Callable[[BenchRow], str]]]:
    """The table's columns, without those that are empty for every row (no GPU, no tegrastats)."""
    skip = set()
    if all(r.device_memory_mib is None for r in result.rows):
        skip.add("dev MiB")
    if all(r.energy_mj_per_image is None for r in result.rows):
        skip.add("mJ/img")
    cols = [c for c in _TABLE_COLUMNS if c[0] not in skip]
    return [*cols[:4], _MARKDOWN_EXTRA[0], *cols[4:7], _MARKDOWN_EXTRA[1], *cols[7:]] if markdown else cols


# Dropped first from the terminal table when it is narrow (all of them stay in JSON, CSV and Markdown).
_NARROW_DROPS = ("prec", "p99 ms", "MPix/s", "dev MiB", "mJ/img")
_NARROW_WIDTH = 130


def render_table(result: BenchResult, width: int | None = None) -> Any:
    """A rich Table of the result (one row per engine, shape and timing); fewer columns under 130 characters."""
    from rich import box
    from rich.table import Table

    sysinfo = result.system
    title = f"bench: {sysinfo.get('cpu')}" + (f" + {sysinfo['gpu']}" if sysinfo.get("gpu") else "")
    caption = (
        f"threads {sysinfo.get('threads_requested')} (0 = library default), device {sysinfo.get('device')}; "
        "×torch = PyTorch median / engine median at the same shape"
    )
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    cols = _columns(result)
    if width is not None and width < _NARROW_WIDTH:
        cols = [c for c in cols if c[0] not in _NARROW_DROPS]
    for name, justify, _ in cols:
        if name == "engine":
            table.add_column(name, justify=justify, min_width=14, overflow="fold")  # type: ignore[arg-type]
        else:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in result.rows:
        table.add_row(*(get(r) for _, _, get in cols), style="dim" if r.baseline else None)
    return table


def markdown_report(result: BenchResult) -> str:
    s = result.system
    lines = [
        "# addunet-edge bench",
        "",
        f"- CPU: {s.get('cpu')} ({s.get('cpu_count')} logical, {s.get('cpu_affinity')} usable)",
        f"- GPU: {s.get('gpu', 'none')}; device: {s.get('device')}; threads: {s.get('threads_requested')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items() if v),
        f"- command: `{s.get('command')}`",
        "",
    ]
    cols = _columns(result, markdown=True)
    lines.append("| " + " | ".join(name for name, _, _ in cols) + " |")
    lines.append("|" + "|".join("---:" if j == "right" else "---" for _, j, _ in cols) + "|")
    for r in result.rows:
        lines.append("| " + " | ".join(get(r).replace("|", "/") for _, _, get in cols) + " |")
    if result.notes:
        lines += ["", *(f"- note: {n}" for n in result.notes)]
    return "\n".join(lines) + "\n"


def csv_report(result: BenchResult) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), lineterminator="\n")
    writer.writeheader()
    for r in result.rows:
        writer.writerow(r.to_dict())
    return buf.getvalue()


def plot_latency(result: BenchResult, path: str | Path) -> Path:
    """PNG: median latency (band: min to p90) and throughput against batch size, one panel pair per size."""
    plt = pyplot()

    sizes = sorted({(r.height, r.width) for r in result.rows})
    series = list(dict.fromkeys((r.label, r.timing) for r in result.rows))
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 4.2 * len(sizes)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row_axes, (h, w) in zip(axes, sizes, strict=True):
        ax_lat, ax_thr = row_axes
        for k, (label, timing) in enumerate(series):
            rows = sorted(
                (r for r in result.rows if (r.label, r.timing, r.height, r.width) == (label, timing, h, w)),
                key=lambda r: r.batch,
            )
            if not rows:
                continue
            x = [r.batch for r in rows]
            name = (label if timing == "host" else f"{label} [{timing}]") + (" (baseline)" if rows[0].baseline else "")
            style = {"color": colors(k % 10), "marker": "o", "linestyle": "--" if rows[0].baseline else "-"}
            ax_lat.plot(x, [r.latency_ms_median for r in rows], label=name, **style)
            ax_lat.fill_between(
                x, [r.latency_ms_min for r in rows], [r.latency_ms_p90 for r in rows], color=style["color"], alpha=0.12
            )
            ax_thr.plot(x, [r.throughput_img_s for r in rows], label=name, **style)
        batches = sorted({r.batch for r in result.rows})
        for ax, ylabel in ((ax_lat, "ms per batch (median; band: min to p90)"), (ax_thr, "images / s")):
            if len(batches) > 1 and batches[-1] / batches[0] >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{h}x{w}: " + ("latency" if ax is ax_lat else "throughput"))
        ax_lat.legend(fontsize=8, loc="upper left")
    s = result.system
    fig.suptitle(
        f"{s.get('cpu')}" + (f" + {s['gpu']}" if s.get("gpu") else "") + f", threads {s.get('threads_requested')}",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def write_reports(
    result: BenchResult,
    *,
    json: str | Path | None = None,
    csv: str | Path | None = None,
    markdown: str | Path | None = None,
    plot: str | Path | None = None,
) -> list[Path]:
    """Write the requested reports atomically; returns the paths written."""
    written = []
    if json is not None:
        atomic_write_json(json, result.to_dict())
        written.append(Path(json))
    if csv is not None:
        atomic_write_text(csv, csv_report(result))
        written.append(Path(csv))
    if markdown is not None:
        atomic_write_text(markdown, markdown_report(result))
        written.append(Path(markdown))
    if plot is not None:
        written.append(plot_latency(result, plot))
    return written


__all__ = [
    "ROUND_ITERATIONS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "BenchResult",
    "BenchRow",
    "ScheduleEntry",
    "TegraSample",
    "TegrastatsSampler",
    "bench",
    "lineage",
    "macs_per_image",
    "markdown_report",
    "parse_tegrastats",
    "plot_latency",
    "render_table",
    "system_info",
    "write_reports",
]
