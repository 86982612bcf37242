"""INT8 ONNX with explicit Q/DQ: TensorRT flavour (symmetric, its placement rules), CPU flavour (ORT)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._lazy import require
from ..artifacts import atomic_path, sha256_file, write_manifest
from ..errors import ArtifactError, ConfigError
from .ranges import (
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

# Weighted ops and the axis of their weight that holds output channels (per-channel scales run along it).
WEIGHTED_OPS: dict[str, int] = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0, "MatMul": -1}
ELEMENTWISE_OPS = ("Add", "Sub")
# Op types whose nodes are worth keeping in float one by one (the units of the sensitivity analysis).
SENSITIVITY_OPS: dict[str, tuple[str, ...]] = {
    "tensorrt": (*WEIGHTED_OPS, *ELEMENTWISE_OPS),
    "cpu": (*WEIGHTED_OPS, "Add", "Mul", "GlobalAveragePool", "AveragePool"),
}
_INT8_MAX = 127.0  # symmetric int8 uses [-127, 127], as TensorRT does, so that -x quantizes like x
_MIN_AMAX = 1e-6  # an all-zero tensor still needs a positive scale


def quantizable_nodes(model: Any, target: Target) -> list[str]:
    """Names of the nodes that the `target` quantizer puts in int8 (what exclude_nodes may name)."""
    outputs = {o.name for o in model.graph.output}
    names = []
    for node in model.graph.node:
        if node.op_type not in SENSITIVITY_OPS[target]:
            continue
        if target == "tensorrt" and node.op_type in ELEMENTWISE_OPS and set(node.output) & outputs:
            continue  # the float tail that produces a graph output stays float
        names.append(node.name)
    return names


def quantize_int8(
    onnx_in: str | Path,
    onnx_out: str | Path,
    ranges: Mapping[str, tuple[float, float]],
    *,
    target: Target = "tensorrt",
    per_channel: bool = True,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    manifest_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an int8 Q/DQ model of `onnx_in` to `onnx_out` (atomically, with a manifest) using `ranges`.

    `ranges` are activation ranges from `collect_ranges` on the same model; `exclude_nodes` and
    `exclude_op_types` stay in float; `manifest_extra` adds sections to the manifest (QAT records its
    ranges there). The output is checked with onnx's full checker and run once on ONNX Runtime before
    it is written.
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    onnx = require("onnx", "int8 quantization")
    model = prepare_model(onnx_in)
    missing = [n for n in activation_tensors(model) if n not in ranges]
    if missing:
        raise ConfigError(
            f"the ranges do not cover {len(missing)} activation(s) of {onnx_in} (e.g. {missing[:3]}): "
            "they were computed for another model; run collect_ranges on this one"
        )
    known = {n.name for n in model.graph.node}
    unknown = [n for n in exclude_nodes if n not in known]
    if unknown:
        sample = ", ".join(quantizable_nodes(model, target)[:12])
        raise ConfigError(f"--exclude names unknown node(s) {unknown}; quantizable nodes include: {sample}")
    if target == "tensorrt":
        qmodel = _quantize_tensorrt(model, ranges, per_channel, set(exclude_nodes), set(exclude_op_types))
    else:
        qmodel = _quantize_cpu(model, ranges, per_channel, list(exclude_nodes), set(exclude_op_types))
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
    meta = getattr(ranges, "method", None)
    write_manifest(
        onnx_out,
        kind="onnx",
        precision="int8",
        target=target,
        activations="int8 symmetric" if target == "tensorrt" else "uint8 asymmetric",
        weights="int8 symmetric " + ("per-channel" if per_channel else "per-tensor"),
        calibration={
            "method": meta,
            "data": getattr(ranges, "data_name", None),
            "percentile": getattr(ranges, "percentile", None),
            "set_size": getattr(ranges, "set_size", None),
            "data_sha256": getattr(ranges, "data_sha256", None),
        },
        source=Path(onnx_in).name,
        source_sha256=sha256_file(onnx_in),
        excluded_nodes=list(exclude_nodes),
        excluded_op_types=list(exclude_op_types),
        **dict(manifest_extra or {}),
    )
    return onnx_out


def _smoke_run(model: Any) -> None:
    """One tiny inference: a graph ORT cannot run must never be written out."""
    channels = model_channels(model) or 1
    try:
        session(model).run(None, {INPUT_NAME: np.full((1, channels, 32, 32), 0.5, dtype=np.float32)})
    except Exception as e:
        raise ArtifactError(f"ONNX Runtime cannot run the int8 model: {e}") from None


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


# --- tensorrt: our own Q/DQ placement ----------------------------------------------------------------
#
# Placement follows TensorRT's "Explicit Quantization" guide, section "Q/DQ Layer-Placement
# Recommendations" (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
# quantized-types-explicit-quantization.html): quantize all inputs of weighted operations (Conv,
# ConvTranspose, Gemm/MatMul); do not quantize their outputs; do not simulate BN/ReLU fusions (Relu and
# Clip stay as they are, TensorRT fuses them); quantize the residual input of element-wise additions so
# that TensorRT fuses the add into the preceding convolution, and leave the operand that comes straight
# from a single-use weighted op unquantized (an extra Q/DQ there would split the fusion). Weights are
# pre-quantized int8 initializers behind a DequantizeLinear; biases stay float (TensorRT folds them).


def _quantize_tensorrt(
    model: Any,
    ranges: Mapping[str, tuple[float, float]],
    per_channel: bool,
    exclude: set[str],
    exclude_ops: set[str],
) -> Any:
    onnx = require("onnx", "int8 quantization")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    new_nodes: list[Any] = []
    dq_of: dict[str, str] = {}  # activation tensor -> its DequantizeLinear output

    def activation_dq(name: str) -> str:
        if name not in dq_of:
            lo, hi = ranges[name]
            amax = max(abs(float(lo)), abs(float(hi)), _MIN_AMAX)
            scale, zp = f"{name}_scale", f"{name}_zero_point"
            graph.initializer.append(numpy_helper.from_array(np.array(amax / _INT8_MAX, dtype=np.float32), scale))
            graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zp))
            q, dq = f"{name}_QuantizeLinear_Output", f"{name}_DequantizeLinear_Output"
            new_nodes.append(helper.make_node("QuantizeLinear", [name, scale, zp], [q], name=f"{name}_QuantizeLinear"))
            new_nodes.append(
                helper.make_node("DequantizeLinear", [q, scale, zp], [dq], name=f"{name}_DequantizeLinear")
            )
            dq_of[name] = dq
        return dq_of[name]

    def weight_dq(name: str, axis: int) -> str:
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        axis = axis % w.ndim
        if per_channel and w.ndim > 1:
            reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
            amax = np.max(np.abs(w), axis=reduce_axes)
            scale = np.maximum(amax, _MIN_AMAX) / _INT8_MAX
            bshape = [1] * w.ndim
            bshape[axis] = -1
            q = np.clip(np.round(w / scale.reshape(bshape)), -_INT8_MAX, _INT8_MAX).astype(np.int8)
            zp = np.zeros(scale.shape, dtype=np.int8)
            attrs = {"axis": axis}
        else:
            scale = np.array(max(float(np.max(np.abs(w))), _MIN_AMAX) / _INT8_MAX, dtype=np.float32)
            q = np.clip(np.round(w / scale), -_INT8_MAX, _INT8_MAX).astype(np.int8)
            zp = np.array(0, dtype=np.int8)
            attrs = {}
        qname, sname, zname, out = (
            f"{name}_quantized",
            f"{name}_scale",
            f"{name}_zero_point",
            f"{name}_DequantizeLinear_Output",
        )
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, qname),
                numpy_helper.from_array(scale.astype(np.float32), sname),
                numpy_helper.from_array(zp, zname),
            ]
        )
        new_nodes.append(
            helper.make_node("DequantizeLinear", [qname, sname, zname], [out], name=f"{name}_DequantizeLinear", **attrs)
        )
        return out

    def straight_from_weighted(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type in WEIGHTED_OPS and consumers.get(name, 0) == 1

    for node in graph.node:
        if node.name in exclude or node.op_type in exclude_ops:
            continue
        if node.op_type in WEIGHTED_OPS:
            axis = WEIGHTED_OPS[node.op_type]
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                axis = 0 if trans_b else 1
            for idx in (0, 1):
                name = node.input[idx]
                if name in inits:
                    node.input[idx] = weight_dq(name, axis) if idx == 1 else node.input[idx]
                elif name in ranges:
                    node.input[idx] = activation_dq(name)
        elif node.op_type in ELEMENTWISE_OPS and not set(node.output) & outputs:
            fused_one = False
            for idx, name in enumerate(node.input):
                if name in inits or name not in ranges:
                    continue  # constants stay float; TensorRT folds them
                if not fused_one and straight_from_weighted(name):
                    fused_one = True
                    continue
                node.input[idx] = activation_dq(name)
    graph.node.extend(new_nodes)
    # The float weights now behind int8 copies are dead: drop them (they would triple the file's size).
    used = {i for n in graph.node for i in n.input} | outputs
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return model
