"""The learned activation ranges of a QAT fine-tune on the ONNX side: layer -> ONNX tensor, laid over the
calibrated ranges of the other tensors for the Q/DQ quantizer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ArtifactError
from .fake_quant import FakeQuant

# ONNX ops that only move values around: a range learned on their output holds for their input too (ORT's
# cpu quantizer gives a Reshape's output the quantization parameters of its input).
_VALUE_PRESERVING_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose")


def layer_inputs_in_onnx(model: Any, layers: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Layer name -> the data input tensor of its Conv / ConvTranspose / Gemm node in `model` (a prepared
    ONNX graph), found by weight values, so no assumption is made about the exporter's names."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    candidates = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
                w = w.T  # torch's Linear stores (out, in); a Gemm without transB holds (in, out)
            candidates.append((node, w))
    found: dict[str, str] = {}
    for name, weight in layers.items():
        hits = [n for n, w in candidates if w.shape == weight.shape and np.allclose(w, weight, rtol=1e-5, atol=1e-6)]
        if len(hits) != 1:
            raise ArtifactError(
                f"layer {name} matches {len(hits)} weighted node(s) of the exported ONNX, expected exactly one; "
                "the export changed the weights (re-export and retry)"
            )
        found[name] = hits[0].input[0]
    return found


def _upstream_aliases(model: Any, tensor: str) -> list[str]:
    """`tensor` and the tensors it is a pure reshape of (walking up single-consumer shape-only ops)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names = [tensor]
    node = producer.get(tensor)
    while node is not None and node.op_type in _VALUE_PRESERVING_OPS:
        names.append(node.input[0])
        node = producer.get(node.input[0])
    return names


def merge_ranges(
    calibrated: Mapping[str, tuple[float, float]], learned: Mapping[str, tuple[float, float]], model: Any
) -> dict[str, tuple[float, float]]:
    """Calibrated ranges with the learned ones laid over them (and over their pure-reshape sources)."""
    merged = dict(calibrated)
    for tensor, rng in learned.items():
        for alias in _upstream_aliases(model, tensor):
            merged[alias] = (float(rng[0]), float(rng[1]))
    return merged


def learned_tensor_ranges(fq: FakeQuant, tensor_of: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """ONNX tensor -> learned range; a tensor feeding several layers gets the union of their ranges."""
    out: dict[str, tuple[float, float]] = {}
    for name, q in fq.ranges().items():
        lo, hi = q.range()
        tensor = tensor_of[name]
        if tensor in out:
            lo, hi = min(lo, out[tensor][0]), max(hi, out[tensor][1])
        out[tensor] = (lo, hi)
    return out
