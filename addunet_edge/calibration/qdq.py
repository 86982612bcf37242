"""INT8 ONNX with explicit Q/DQ: TensorRT flavour (NVIDIA ModelOpt's placement, float16 around it), CPU flavour
(ONNX Runtime's quantizer). Both are fed our own activation ranges."""

from __future__ import annotations

import contextlib
import logging
import re
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._lazy import require
from ..artifacts import atomic_path, sha256_file, shape_fields, write_manifest
from ..errors import ArtifactError, ConfigError
from .fp16 import FP16_OVERFLOW_ABS
from .graph import (
    INPUT_NAME,
    activation_tensors,
    model_channels,
    prepare_model,
    session,
    strip_unused_opsets,
    toposort,
)

Target = Literal["cpu", "tensorrt"]
TARGETS: tuple[str, ...] = ("cpu", "tensorrt")
# The dtype of what is not int8 (element-wise tails, Clip, heads, casts): a strongly typed TensorRT network
# computes in the ONNX's own types, so float32 there would be float32 in the plan.
HighPrecision = Literal["fp16", "fp32"]
HIGH_PRECISIONS: tuple[str, ...] = ("fp16", "fp32")

# Op types whose nodes the cpu quantizer puts in int8 one by one (the units of the sensitivity analysis).
# For tensorrt the units are read off ModelOpt's own placement (quantizable_nodes).
_CPU_SENSITIVITY_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "GlobalAveragePool", "AveragePool")
_INT8_MAX = 127.0  # symmetric int8 scale = amax / 127, as TensorRT's calibration caches hold it
_MIN_AMAX = 1e-6  # an all-zero tensor still needs a positive scale
_FP16_TINY = 2.0**-24  # the smallest positive float16


def quantizable_nodes(model: Any, target: Target, *, dla: bool = False) -> list[str]:
    """Names of the nodes that the `target` quantizer puts in int8 (what exclude_nodes may name), in graph
    order. For tensorrt these are the nodes that ModelOpt's placement feeds through DequantizeLinear (it
    skips, for instance, convolutions too narrow for TensorRT's int8 kernels and classifiers under 16
    outputs), found by running it once with placeholder ranges: the placement does not depend on them."""
    if target == "cpu":
        return [n.name for n in model.graph.node if n.op_type in _CPU_SENSITIVITY_OPS]
    placeholder = {name: (-1.0, 1.0) for name in activation_tensors(model)}
    quantized = _int8_consumers(_quantize_modelopt(model, placeholder, [], [], "fp32", dla))
    return [n.name for n in model.graph.node if n.name in quantized]


def quantize_int8(
    onnx_in: str | Path,
    onnx_out: str | Path,
    ranges: Mapping[str, tuple[float, float]],
    *,
    target: Target = "tensorrt",
    per_channel: bool = True,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    high_precision: HighPrecision | None = None,
    dla: bool = False,
    manifest_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an int8 Q/DQ model of `onnx_in` to `onnx_out` (atomically, with a manifest) using `ranges`.

    `ranges` are activation ranges from `collect_ranges` on the same model; `exclude_nodes` and
    `exclude_op_types` stay in float; `manifest_extra` adds sections to the manifest (QAT records its
    ranges there). The output is checked with onnx's full checker and run once on ONNX Runtime before
    it is written.

    target 'tensorrt' is made by NVIDIA ModelOpt (`modelopt.onnx.quantization`, on the CPU) with our ranges
    as its calibration cache: Q/DQ where TensorRT fuses them, per-channel int8 weights, opset 19 and
    everything outside the int8 ops in `high_precision` (default fp16; 'fp32' on request). `dla` asks
    ModelOpt for the DLA placement (Q/DQ on every tensor). target 'cpu' is ONNX Runtime's QDQ layout, whose
    float parts are float32 (`high_precision` must then be None or 'fp32').
    """
    precision = _high_precision_for(target, high_precision, per_channel, dla)
    onnx = require("onnx", "int8 quantization")
    model = prepare_model(onnx_in)
    _check_model_covered(model, onnx_in, ranges, exclude_nodes, target, dla)
    if target == "tensorrt":
        if precision == "fp16":
            _check_fp16_ranges(ranges)
        qmodel = _quantize_modelopt(model, ranges, list(exclude_nodes), list(exclude_op_types), precision, dla)
        _check_scales(qmodel, ranges)
        tool = f"modelopt {require('modelopt', 'int8 quantization for TensorRT').__version__}"
    else:
        qmodel = _quantize_cpu(model, ranges, per_channel, list(exclude_nodes), set(exclude_op_types))
        tool = f"onnxruntime {require('onnxruntime', 'int8 quantization').__version__}"
    strip_unused_opsets(qmodel)
    toposort(qmodel.graph)
    try:
        onnx.checker.check_model(qmodel, full_check=True)
    except Exception as e:
        raise ArtifactError(f"the int8 model of {onnx_in} fails the ONNX checker: {e}") from None
    _smoke_run(qmodel)
    onnx_out = Path(onnx_out)
    with atomic_path(onnx_out) as tmp:
        onnx.save(qmodel, str(tmp))
    tensorrt_only = {"dla": dla} if target == "tensorrt" else {}
    write_manifest(
        onnx_out,
        kind="onnx",
        precision="int8",
        target=target,
        quantizer=tool,
        activations="int8 symmetric" if target == "tensorrt" else "uint8 asymmetric",
        weights="int8 symmetric " + ("per-channel" if per_channel else "per-tensor"),
        high_precision=precision,
        **tensorrt_only,
        opset=max(o.version for o in qmodel.opset_import if o.domain in ("", "ai.onnx")),
        calibration=_calibration_record(ranges),
        source=Path(onnx_in).name,
        source_sha256=sha256_file(onnx_in),
        **shape_fields(onnx_in),
        excluded_nodes=list(exclude_nodes),
        excluded_op_types=list(exclude_op_types),
        **dict(manifest_extra or {}),
    )
    return onnx_out


def _high_precision_for(target: str, high_precision: str | None, per_channel: bool, dla: bool) -> str:
    """The dtype outside the int8 ops (fp16 for tensorrt, fp32 for cpu unless asked); refuses what a target
    cannot do."""
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    precision = high_precision or ("fp16" if target == "tensorrt" else "fp32")
    if precision not in HIGH_PRECISIONS:
        raise ConfigError(f"high_precision must be one of {', '.join(HIGH_PRECISIONS)}; got {high_precision!r}")
    if target == "cpu" and (precision != "fp32" or dla):
        raise ConfigError(
            "target cpu keeps float32 outside its int8 ops (ONNX Runtime's x86 kernels) and has no DLA: "
            "high_precision='fp16' and dla are for target tensorrt"
        )
    if target == "tensorrt" and not per_channel:
        raise ConfigError("target tensorrt quantizes weights per channel (ModelOpt, as TensorRT wants them)")
    return precision


def _check_model_covered(
    model: Any,
    onnx_in: str | Path,
    ranges: Mapping[str, tuple[float, float]],
    exclude_nodes: Sequence[str],
    target: Target,
    dla: bool,
) -> None:
    """The ranges must cover every activation of `model`, and every excluded node must be one of its nodes."""
    missing = [n for n in activation_tensors(model) if n not in ranges]
    if missing:
        raise ConfigError(
            f"the ranges do not cover {len(missing)} activation(s) of {onnx_in} (e.g. {missing[:3]}): "
            "they were computed for another model; run collect_ranges on this one"
        )
    known = {n.name for n in model.graph.node}
    unknown = [n for n in exclude_nodes if n not in known]
    if unknown:
        sample = ", ".join(quantizable_nodes(model, target, dla=dla)[:12])
        raise ConfigError(f"--exclude names unknown node(s) {unknown}; quantizable nodes include: {sample}")


def _calibration_record(ranges: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """The manifest's `calibration` entry: how the ranges were made (None for plain mappings without that record)."""
    return {
        "method": getattr(ranges, "method", None),
        "data": getattr(ranges, "data_name", None),
        "percentile": getattr(ranges, "percentile", None),
        "set_size": getattr(ranges, "set_size", None),
        "data_sha256": getattr(ranges, "data_sha256", None),
    }


def _smoke_run(model: Any) -> None:
    """One tiny inference: a graph ORT cannot run must never be written out."""
    channels = model_channels(model) or 1
    try:
        session(model).run(None, {INPUT_NAME: np.full((1, channels, 32, 32), 0.5, dtype=np.float32)})
    except Exception as e:
        raise ArtifactError(f"ONNX Runtime cannot run the int8 model: {e}") from None


# --- tensorrt: NVIDIA ModelOpt's placement, fed with our ranges ---------------------------------------
#
# ModelOpt (`modelopt.onnx.quantization.quantize`) places Q/DQ by TensorRT's fusion rules (conv inputs and
# weights, the residual operand of an Add/Sub that does not fuse into the preceding conv, nothing on convs
# narrower than TensorRT's int8 kernels), then converts every other float tensor to float16, which a
# strongly typed TensorRT network (the only kind TensorRT 11 has) computes in as written. It replaced our own
# placement (float32 outside the int8 ops) after an A/B on the quickstart model with the same ranges and
# /head/Conv float (benchmarks/modelopt_ab.py, ORT CPU running the graph as written): drift -0.098 / -0.058 /
# -0.008 dB at sigma 15 / 25 / 50 against ours' -0.118 / -0.068 / -0.010, accuracy change 0.00 pt at each
# (ours +0.74), 21 tensors with Q/DQ instead of 30, and 25 float16 nodes where ours had 24 float32 ones.


def _quantize_modelopt(
    model: Any,
    ranges: Mapping[str, tuple[float, float]],
    exclude: list[str],
    exclude_ops: list[str],
    high_precision: str,
    dla: bool,
) -> Any:
    onnx = require("onnx", "int8 quantization")
    mq = require("modelopt.onnx.quantization", "int8 quantization for TensorRT")
    channels = model_channels(model) or 1
    with tempfile.TemporaryDirectory(prefix="addunet-modelopt-") as tmp:
        src, dst, cache = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "ranges.cache"
        onnx.save(model, str(src))
        _write_calibration_cache(cache, ranges)
        try:
            with _quiet_ort_advice(), _ort_registries_kept():
                mq.quantize(
                    str(src),
                    quantize_mode="int8",
                    # ORT's calibration inside ModelOpt still runs once; every scale it finds is then
                    # replaced from the cache, so one grey image is enough to let it run.
                    calibration_data=np.full((1, channels, 32, 32), 0.5, dtype=np.float32),
                    calibration_method="max",
                    calibration_cache_path=str(cache),
                    calibration_eps=["cpu"],
                    # ModelOpt reads these as regular expressions matched at the start of a name.
                    nodes_to_exclude=[f"{re.escape(n)}$" for n in exclude] or None,
                    op_types_to_exclude=exclude_ops or None,
                    high_precision_dtype=high_precision,
                    # int8 weight initializers behind a DequantizeLinear (a quarter of float32's size); the
                    # DLA placement also quantizes constants of Mul nodes, which ModelOpt cannot pre-quantize.
                    dq_only=not dla,
                    target_dla=dla,
                    output_path=str(dst),
                    log_level="CRITICAL",  # its INFO lines go to stdout, and a CPU machine gets an NVML error
                )
        except Exception as e:
            raise ArtifactError(f"ModelOpt's int8 quantizer failed: {type(e).__name__}: {e}") from None
        if not dst.is_file():
            raise ArtifactError("ModelOpt's int8 quantizer wrote no model")
        qmodel = onnx.load(str(dst))
    _float_inputs_for(qmodel, set(exclude), set(exclude_ops))
    return qmodel


@contextlib.contextmanager
def _ort_registries_kept() -> Iterator[None]:
    """Undo what ModelOpt does to ONNX Runtime's quantizer on the way out.

    ModelOpt removes operators (Relu, Concat, Pad, ...) from ONNX Runtime's module-level op registries to shape
    its own placement, and never puts them back: a cpu-target int8 made after a tensorrt one in the same
    process then came out differently. The dicts are restored in place (other modules hold them by reference).
    """
    from onnxruntime.quantization import registry

    kept = {
        name: dict(table)
        for name, table in vars(registry).items()
        if name.endswith("Registry") and isinstance(table, dict)
    }
    try:
        yield
    finally:
        for name, saved in kept.items():
            table = getattr(registry, name)
            table.clear()
            table.update(saved)


def _float_inputs_for(model: Any, names: set[str], op_types: set[str]) -> None:
    """Feed the excluded nodes the float tensors themselves. ModelOpt leaves them out of its placement, but a
    tensor it quantizes for another consumer reaches every consumer through the one DequantizeLinear (the
    deepest encoder state feeds the classifier's conv and the first decoder Add, say); an excluded node is
    meant to compute from float values."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name not in names and node.op_type not in op_types:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = None if dq is None or dq.op_type != "DequantizeLinear" else producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits:
                node.input[i] = q.input[0]
    # Q/DQ pairs that no node reads any more go, with their scales and zero points.
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [
            n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not set(n.output) & read
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    live = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(live)


def _write_calibration_cache(path: Path, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Our ranges as a TensorRT calibration cache, the format ModelOpt imports precomputed scales from: a
    header line, then one `tensor: scale` line per tensor, the scale (amax / 127) as a big-endian float32
    in hex."""
    lines = ["TRT-8601-EntropyCalibration2"]
    for name, (lo, hi) in ranges.items():
        if ": " in name or "\n" in name:
            raise ConfigError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        amax = max(abs(float(lo)), abs(float(hi)), _MIN_AMAX)
        lines.append(f"{name}: {struct.pack('!f', amax / _INT8_MAX).hex()}")
    path.write_text("\n".join(lines) + "\n")


def _check_fp16_ranges(ranges: Mapping[str, tuple[float, float]]) -> None:
    loud = {n: r for n, r in ranges.items() if max(abs(r[0]), abs(r[1])) > FP16_OVERFLOW_ABS}
    if loud:
        name, (lo, hi) = next(iter(loud.items()))
        raise ConfigError(
            f"{len(loud)} activation(s) exceed float16's range on the calibration data (e.g. {name}: "
            f"{lo:.4g} .. {hi:.4g}): quantize with high_precision='fp32'"
        )


def _graph_initializers(model: Any) -> dict[str, np.ndarray]:
    onnx = require("onnx", "int8 quantization")
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def _check_scales(model: Any, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Every activation scale must be ours: a ModelOpt that read the cache differently would otherwise ship
    the scales of its one grey calibration image, silently."""
    inits = _graph_initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        tensor = node.input[0]
        while tensor not in ranges and tensor in producer and producer[tensor].op_type == "Cast":
            tensor = producer[tensor].input[0]  # the float16 cast of a float32 input
        if tensor not in ranges:
            raise ArtifactError(f"ModelOpt quantized {node.input[0]!r}, a tensor the ranges do not know")
        lo, hi = ranges[tensor]
        stored = inits[node.input[1]]
        want = np.float32(max(abs(float(lo)), abs(float(hi)), _MIN_AMAX) / _INT8_MAX)
        if stored.dtype == np.float16:  # ModelOpt rounds scales to float16, lifting any below its smallest
            want = np.float16(max(want, _FP16_TINY))
        got = float(stored)
        if not np.isclose(got, float(want), rtol=1e-3, atol=0.0):
            raise ArtifactError(
                f"ModelOpt did not apply the calibration range of {tensor!r} (scale {got:.6g}, expected "
                f"{want:.6g}): this ModelOpt version reads calibration caches differently"
            )


def _int8_consumers(model: Any) -> set[str]:
    """Names of the nodes with an input coming through a DequantizeLinear (the nodes computing in int8)."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {
        n.name
        for n in model.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and set(n.input) & dq_outputs
    }


# --- cpu: ONNX Runtime's QDQ quantizer, fed with our ranges ---------------------------------------------


def _quantize_cpu(
    model: Any,
    ranges: Mapping[str, tuple[float, float]],
    per_channel: bool,
    exclude: list[str],
    exclude_ops: set[str],
) -> Any:
    """uint8 activations and int8 per-channel weights in ORT's QDQ layout, which its x86 CPU provider
    fuses into QLinearConv / QLinearAdd / QGemm kernels (DESIGN §2a: 2.75x over fp32 at 256x256)."""
    onnx = require("onnx", "int8 quantization")
    quant = require("onnxruntime.quantization", "int8 quantization")
    calibrate = require("onnxruntime.quantization.calibrate", "int8 quantization")
    registry = require("onnxruntime.quantization.registry", "int8 quantization")
    op_types = sorted((set(registry.QLinearOpsRegistry) | set(registry.QDQRegistry)) - exclude_ops)
    data = {
        name: calibrate.TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
        for name, (lo, hi) in ranges.items()
    }
    with tempfile.TemporaryDirectory(prefix="addunet-q-") as tmp:
        src, dst, cache = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
        onnx.save(model, str(src))
        # quantize_static takes precomputed ranges through its calibration cache: our ranges, not its own.
        calibrate.save_tensors_data(calibrate.TensorsData(quant.CalibrationMethod.MinMax, data), cache)
        try:
            with _quiet_ort_advice():
                quant.quantize_static(
                    str(src),
                    str(dst),
                    calibration_data_reader=None,
                    calibration_cache_path=str(cache),
                    calibrate_method=quant.CalibrationMethod.MinMax,
                    quant_format=quant.QuantFormat.QDQ,
                    op_types_to_quantize=op_types,
                    per_channel=per_channel,
                    activation_type=quant.QuantType.QUInt8,
                    weight_type=quant.QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                )
        except Exception as e:
            raise ArtifactError(f"ONNX Runtime's quantizer failed: {e}") from None
        return onnx.load(str(dst))


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_ort_advice() -> Iterator[None]:
    """ORT's quantizer logs advice to pre-process on the root logger; prepare_model already did it."""
    flt = _DropPreprocessAdvice()
    logging.getLogger().addFilter(flt)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(flt)
