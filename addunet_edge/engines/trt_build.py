"""Builds a TensorRT plan from a precision ONNX: strongly typed, one profile, atomic plan + manifest."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from .._lazy import require
from ..artifacts import atomic_path, atomic_write_bytes
from ..errors import ArtifactError, ConfigError, DeviceError
from .base import INPUT_NAME, OUTPUT_NAMES
from .build_progress import build_progress, cancel_on_sigint
from .cuda import gpu_identity
from .plan import BuildProfile, PlanLayers, PlanMachine, check_layers, read_layers
from .plan_request import PlanRequest, validate_options

_LOG_TAIL = 20


# --------------------------------------------------------------------------------------------------------
# TensorRT callbacks: log and progress (classes made on first use, since tensorrt is imported lazily)
# --------------------------------------------------------------------------------------------------------
def _make_logger(trt: Any) -> Any:
    class BuildLogger(trt.ILogger):
        """Keeps TensorRT's messages (INFO and above) for build.log; may be called from builder threads."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.start = time.perf_counter()
            self.lines: list[str] = []
            self.errors: list[str] = []
            self._lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            level = getattr(severity, "name", str(severity)).split(".")[-1]
            if level == "VERBOSE":
                return
            with self._lock:
                self.lines.append(f"[{time.perf_counter() - self.start:8.2f}s] {level}: {msg}")
                if level in ("ERROR", "INTERNAL_ERROR"):
                    self.errors.append(msg)

    return BuildLogger()


def _make_monitor(trt: Any, progress: Progress, cancel: threading.Event) -> Any:
    class BuildMonitor(trt.IProgressMonitor):
        """One rich progress bar per builder phase, indented under its parent phase."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._tasks: dict[str, Any] = {}
            self._depth: dict[str, int] = {}
            self._lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self._depth[phase_name] = depth
                self._tasks[phase_name] = progress.add_task("  " * depth + phase_name, total=num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                if phase_name in self._tasks:
                    progress.update(self._tasks[phase_name], completed=step + 1)
            return not cancel.is_set()  # False asks TensorRT to cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                task = self._tasks.pop(phase_name, None)
                self._depth.pop(phase_name, None)
                if task is not None:
                    progress.remove_task(task)

    return BuildMonitor()


# --------------------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------------------
def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _checked(value: Any, what: str) -> Any:
    if value is None:
        raise DeviceError(f"TensorRT returned nothing from {what}; see the build log for TensorRT's reason")
    return value


def _detected_precision(trt: Any, network: Any) -> str:
    """What the parsed ONNX computes in: Q/DQ layers mean int8, float16 tensors fp16, else fp32."""
    half = False
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.QUANTIZE:
            return "int8"
        half = half or any(layer.get_output(j).dtype == trt.DataType.HALF for j in range(layer.num_outputs))
    return "fp16" if half else "fp32"


def build_plan(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    precision: str,
    name: str | None = None,
    profile: BuildProfile,
    workspace_mib: int | None = None,
    timing_cache: Path | None = None,
    optimization_level: int | None = None,
    dla_core: int | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    log_dir: Path | None = None,
    device: int = 0,
    console: Console | None = None,
) -> Path:
    """Build `<out_dir>/<name>.<precision>.plan` (+ manifest, + `<name>.<precision>.build.log`) from an ONNX.

    The precision is the ONNX's own (fp32, float16 compute, or Q/DQ int8): the network is strongly typed
    and no precision flag or calibrator is used. Returns the plan's path.
    """
    validate_options(precision, workspace_mib, optimization_level, dla_core, hardware_compatible, profile)
    trt = require("tensorrt", "Building a TensorRT plan")

    gpu = gpu_identity(device)
    options = {
        "workspace_mib": workspace_mib,
        "optimization_level": optimization_level,
        "dla_core": dla_core,
        "gpu_fallback": dla_core is not None,
        "version_compatible": version_compatible,
        "hardware_compatible": hardware_compatible,
    }
    request = PlanRequest.check(
        onnx_path,
        out_dir,
        precision=precision,
        name=name,
        profile=profile,
        gpu=gpu,
        options=options,
        timing_cache=timing_cache,
        log_dir=log_dir,
    )
    logger = _make_logger(trt)
    start = time.perf_counter()
    outcome = "failed"
    layers: PlanLayers | None = None
    try:
        serialized, io = _build(trt, logger, request, console)
        layers = _read_back(trt, logger, serialized, dla_core)
        outcome = "ok"
    finally:
        seconds = time.perf_counter() - start
        request.write_log(trt.__version__, gpu, logger.lines, f"build {outcome} in {seconds:.1f} s", layers)
    # What the plan holds must be what was asked for; a refused plan is not written (its log is).
    check_layers(layers, precision, label=f"{request.plan_path.name} (see {request.log_path})")

    with atomic_path(request.plan_path) as tmp:
        tmp.write_bytes(memoryview(serialized))
    machine = PlanMachine(gpu.name, gpu.compute_capability, gpu.sm_count, io["dla_cores"])
    request.write_manifest(trt.__version__, machine, io, seconds, layers)
    return request.plan_path


def _read_back(trt: Any, logger: Any, serialized: Any, dla_core: int | None) -> PlanLayers:
    """Deserialize the new plan and ask the engine inspector what each layer computes in and where."""
    runtime = _checked(trt.Runtime(logger), "trt.Runtime")
    if dla_core is not None:
        runtime.DLA_core = dla_core
    engine = _checked(runtime.deserialize_cuda_engine(serialized), "deserialize_cuda_engine")
    inspector = _checked(engine.create_engine_inspector(), "create_engine_inspector")
    engine_json = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return read_layers(engine_json, list(logger.lines), dla_core)


def _build(trt: Any, logger: Any, request: PlanRequest, console: Console | None) -> tuple[Any, dict[str, Any]]:
    onnx_path, precision, label = request.onnx_path, request.precision, request.plan_path.name
    builder = _checked(trt.Builder(logger), "trt.Builder")
    # TensorRT 10.x: strong typing is opted into with this creation flag ("Strongly Typed Networks", 10.x
    # developer guide). TensorRT 11.x: every network is strongly typed and the flag is deprecated
    # ("TensorRT 11.0.0 Release Notes": createNetworkV2() is strongly typed by default).
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if _major(trt) < 11 else 0
    network = _checked(builder.create_network(flags), "create_network")
    parser = _checked(trt.OnnxParser(network, logger), "OnnxParser")
    # parse_from_file (not parse) so external weight files beside the ONNX are found.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"TensorRT's ONNX parser rejected {onnx_path}:\n" + "\n".join(errors or ["(no detail)"]))
    io = _network_io(trt, network, onnx_path)
    io["dla_cores"] = int(builder.num_DLA_cores)
    detected = _detected_precision(trt, network)
    if detected != precision:
        raise ConfigError(
            f"{onnx_path.name} computes in {detected} (TensorRT reads the precision from the ONNX), but "
            f"--precision {precision} was asked: pass the {precision} ONNX or --precision {detected}"
        )
    config, cache = _builder_config(trt, builder, logger, request, io["channels"])

    cancel = threading.Event()
    has_monitor = hasattr(trt, "IProgressMonitor")
    with build_progress(console, per_phase=has_monitor) as progress, cancel_on_sigint(cancel):
        progress.add_task(f"building {label}", total=None)
        if has_monitor:
            monitor = _make_monitor(trt, progress, cancel)
            config.progress_monitor = monitor  # must outlive the build: kept referenced until here
        serialized = builder.build_serialized_network(network, config)
    if cancel.is_set():
        raise KeyboardInterrupt
    if serialized is None:
        tail = "\n".join(logger.errors[-_LOG_TAIL:]) or "(TensorRT logged no error)"
        raise ArtifactError(f"TensorRT could not build {label}:\n{tail}")
    if cache is not None and request.timing_cache is not None:
        updated = _checked(config.get_timing_cache(), "get_timing_cache")
        atomic_write_bytes(request.timing_cache, bytes(memoryview(_checked(updated.serialize(), "serialize"))))
    return serialized, io


def _builder_config(trt: Any, builder: Any, logger: Any, request: PlanRequest, channels: int) -> tuple[Any, Any]:
    """The builder config of `request` (profile, workspace, optimization level, DLA, compatibility) and the
    timing cache it builds with."""
    options, profile = request.options, request.profile
    config = _checked(builder.create_builder_config(), "create_builder_config")
    # Per-layer types in the plan, so the engine inspector can say what each layer computes in.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    opt_profile = _checked(builder.create_optimization_profile(), "create_optimization_profile")
    opt_profile.set_shape(INPUT_NAME, *profile.shapes(channels))
    if config.add_optimization_profile(opt_profile) < 0:
        raise ConfigError(f"TensorRT rejected the optimization profile {profile.to_dict()}")
    if options["workspace_mib"] is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options["workspace_mib"] << 20)
    if options["optimization_level"] is not None:
        config.builder_optimization_level = options["optimization_level"]
    if options["dla_core"] is not None:
        _configure_dla(trt, builder, config, options["dla_core"])
    if options["version_compatible"]:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options["hardware_compatible"]:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    return config, _load_timing_cache(config, request.timing_cache, logger)


def _parser_error(error: Any) -> str:
    node = getattr(error, "node_name", lambda: "")() or str(error.node())
    operator = getattr(error, "node_operator", lambda: "")()
    where = f"node {node}" + (f" ({operator})" if operator else "")
    return f"  {where}: {error.desc()}"


def _network_io(trt: Any, network: Any, onnx_path: Path) -> dict[str, Any]:
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    outputs = {network.get_output(i).name: network.get_output(i) for i in range(network.num_outputs)}
    if set(inputs) != {INPUT_NAME} or not set(OUTPUT_NAMES) <= set(outputs):
        raise ArtifactError(
            f"{onnx_path.name} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; expected input "
            f"{INPUT_NAME!r} and outputs {OUTPUT_NAMES}: export it with `addunet-edge export`"
        )
    in_shape = tuple(inputs[INPUT_NAME].shape)
    if len(in_shape) != 4 or in_shape[1] < 1:
        raise ArtifactError(f"{onnx_path.name}: input {INPUT_NAME!r} must be (N, C, H, W) with fixed C, got {in_shape}")
    logits_shape = tuple(outputs["logits"].shape)
    return {
        "channels": int(in_shape[1]),
        "num_classes": int(logits_shape[-1]) if logits_shape and logits_shape[-1] >= 0 else None,
        "dtypes": {t.name: str(t.dtype).split(".")[-1] for t in (*inputs.values(), *outputs.values())},
    }


def _configure_dla(trt: Any, builder: Any, config: Any, dla_core: int) -> None:
    cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
    if cores == 0:
        reason = f"TensorRT {trt.__version__} reports no DLA core here (DLA exists on Jetson AGX/NX Orin)"
        if _major(trt) >= 11:
            # "Working with DLA" (TensorRT 11.4.1 docs): no DLA in 11.0-11.3; back in 11.4.1 on AGX Orin only.
            reason += "; TensorRT 11.0-11.3 have no DLA, 11.4.1+ supports it on Jetson AGX Orin with JetPack 7.2.2+"
        raise DeviceError(f"cannot build for DLA core {dla_core}: {reason}. Build without --dla-core to use the GPU")
    if dla_core >= cores:
        raise DeviceError(f"DLA core {dla_core} requested, this machine has {cores} (0..{cores - 1})")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _load_timing_cache(config: Any, path: Path | None, logger: Any) -> Any:
    """The timing cache to build with: `path`'s when it loads and fits this GPU and TensorRT, else a new one.

    A cache only speeds the build up, so one that is unreadable, corrupt (TensorRT returns None or raises) or
    from another GPU or TensorRT version is replaced by an empty cache with a warning, never a failed build;
    the build then writes the new cache over it.
    """
    if path is None:
        return None
    why = None
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError as e:
        data, why = b"", f"cannot be read ({e.strerror or e})"
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception as e:  # the bindings raise on a blob they cannot parse (the type varies by version)
            why = f"is corrupt ({type(e).__name__}: {e})"
        else:
            if cache is None:
                why = "is corrupt (TensorRT could not read it)"
            elif not config.set_timing_cache(cache, ignore_mismatch=False):
                why, cache = "was made on another GPU or TensorRT version", None
    if cache is None:
        if why is not None:
            logger.log("WARNING", f"timing cache {path} {why}; starting a new one")
        cache = _checked(config.create_timing_cache(b""), "create_timing_cache")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache
