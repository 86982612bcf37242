"""FP16 ONNX: float16 compute, float32 I/O, and a measured block list of nodes kept in float32."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..artifacts import atomic_path, sha256_file, shape_fields, write_manifest
from ..errors import ArtifactError
from .calibration_set import CalibrationSet, as_calibration_set
from .graph import INPUT_NAME, model_channels, prepare_model, session, strip_unused_opsets, toposort
from .ranges import collect_ranges

log = logging.getLogger("addunet_edge.calibration")

# Softplus (a live gate, if an exporter did not fold it) overflows float16 for large inputs and is cheap.
DEFAULT_BLOCK_OPS: tuple[str, ...] = ("Softplus",)
# Reductions that feed the classifier: kept in float32 only when measured to disturb the logits.
REDUCTION_OPS: tuple[str, ...] = ("ReduceMean", "ReduceSum", "GlobalAveragePool")
FP16_OVERFLOW_ABS = 60000.0  # float16 saturates at 65504; keep a margin for unseen inputs
# Logits error (relative to their spread) above which the reductions are retried in float32.
_LOGIT_TOLERANCE = 1e-2


def convert_fp16(
    onnx_in: str | Path,
    onnx_out: str | Path,
    *,
    block_ops: Sequence[str] = DEFAULT_BLOCK_OPS,
    block_nodes: Sequence[str] = (),
    calib: CalibrationSet | np.ndarray | None = None,
    overflow_abs: float = FP16_OVERFLOW_ABS,
    progress: bool = True,
) -> Path:
    """Write a float16 copy of `onnx_in` (float32 inputs and outputs, Casts at the boundaries).

    With `calib` (noisy images), activations are measured first: a node whose output exceeds
    `overflow_abs` in magnitude stays float32, and the reductions before the classifier stay float32 when
    converting them measurably changes the logits.
    """
    onnx = require("onnx", "fp16 conversion")
    model = prepare_model(onnx_in)
    blocked_nodes = list(block_nodes)
    blocked_ops = list(block_ops)
    measured: dict[str, Any] = {}
    data = None if calib is None else as_calibration_set(calib)
    if data is not None:
        ranges = collect_ranges(onnx_in, data, "minmax", progress=progress)
        producer = {o: n.name for n in model.graph.node for o in n.output}
        hot = sorted({producer[t] for t, (lo, hi) in ranges.items() if max(-lo, hi) > overflow_abs and t in producer})
        if hot:
            log.info("keeping %d node(s) in float32: activations beyond ±%g: %s", len(hot), overflow_abs, hot)
        blocked_nodes += [n for n in hot if n not in blocked_nodes]
        measured["max_abs_activation"] = max(max(-lo, hi) for lo, hi in ranges.values())
        measured["overflow_nodes"] = hot
    fp16 = _convert(model, blocked_ops, blocked_nodes)
    if data is not None and any(n.op_type in REDUCTION_OPS for n in model.graph.node):
        err = _logit_error(model, fp16, data)
        measured["logit_error"] = err
        if err > _LOGIT_TOLERANCE:
            alt = _convert(model, [*blocked_ops, *REDUCTION_OPS], blocked_nodes)
            alt_err = _logit_error(model, alt, data)
            if alt_err < err:
                log.info("reductions kept in float32: logits error %.3g -> %.3g", err, alt_err)
                fp16, blocked_ops = alt, [*blocked_ops, *REDUCTION_OPS]
                measured["logit_error"] = alt_err
    try:
        onnx.checker.check_model(fp16, full_check=True)
        session(fp16).run(None, {INPUT_NAME: np.full((1, model_channels(fp16) or 1, 32, 32), 0.5, np.float32)})
    except ArtifactError:
        raise
    except Exception as e:
        raise ArtifactError(f"the float16 model of {onnx_in} is invalid: {e}") from None
    onnx_out = Path(onnx_out)
    with atomic_path(onnx_out) as tmp:
        onnx.save(fp16, str(tmp))
    write_manifest(
        onnx_out,
        kind="onnx",
        precision="fp16",
        source=Path(onnx_in).name,
        source_sha256=sha256_file(onnx_in),
        **shape_fields(onnx_in),
        blocked_op_types=blocked_ops,
        blocked_nodes=blocked_nodes,
        measured=measured,
    )
    return onnx_out


def _convert(model: Any, block_ops: Sequence[str], block_nodes: Sequence[str]) -> Any:
    onnx = require("onnx", "fp16 conversion")
    f16 = require("onnxruntime.transformers.float16", "fp16 conversion")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        out = f16.convert_float_to_float16(
            copy,
            keep_io_types=True,
            op_block_list=[*f16.DEFAULT_OP_BLOCK_LIST, *block_ops],
            node_block_list=list(block_nodes),
        )
    except Exception as e:
        raise ArtifactError(f"float16 conversion failed: {e}") from None
    toposort(out.graph)  # the converter appends its boundary Casts at the end of the node list
    strip_unused_opsets(out)
    return out


def _logit_error(fp32: Any, fp16: Any, data: CalibrationSet) -> float:
    """Max |logits16 - logits32| over the calibration set, relative to the logits' spread."""
    s32, s16 = session(fp32), session(fp16)
    worst, spread = 0.0, 0.0
    for batch in data:
        a = s32.run(["logits"], {INPUT_NAME: batch})[0]
        if a.size == 0:
            return 0.0
        b = s16.run(["logits"], {INPUT_NAME: batch})[0]
        worst = max(worst, float(np.max(np.abs(a - b))))
        spread = max(spread, float(np.ptp(a)))
    return worst / max(spread, 1e-12)
