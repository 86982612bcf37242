"""The float ONNX graph every precision variant starts from: loading and checking it, preparing it (constants
folded, weights unshared), topological order, its activation tensors, CPU sessions on it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .._lazy import require
from ..errors import ArtifactError

INPUT_NAME = "noisy"
OUTPUT_NAMES = ("denoised", "logits")


def load_onnx(path: str | Path) -> Any:
    """Load and check a float model with the package's signature; ArtifactError on anything else."""
    onnx = require("onnx", "calibration")
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError... for corrupt files
        raise ArtifactError(f"{path} is not a valid ONNX model ({type(e).__name__}: {e}); re-export it") from None
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or tuple(outputs) != OUTPUT_NAMES:
        raise ArtifactError(
            f"{path} has inputs {inputs} and outputs {outputs}; expected input '{INPUT_NAME}' and outputs "
            f"{list(OUTPUT_NAMES)} (export it with addunet-edge export)"
        )
    return model


def model_channels(model: Any) -> int | None:
    """Channel count of the 'noisy' input, or None when it is symbolic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[1].dim_value) if len(dims) == 4 and dims[1].HasField("dim_value") else None


def prepare_model(path: str | Path) -> Any:
    """The float graph every precision variant starts from: constants folded, shared weights unshared.

    ONNX Runtime's basic (hardware-independent) optimisations fold Constant/Identity chains and constant
    sub-graphs (a live Softplus on the gates, say) so that every Conv sees plain initializers, which the
    quantizers need. Weight initializers shared by several nodes get one copy each, because int8 biases
    are scaled per consumer. The result depends only on the file, so ranges and Q/DQ agree on names.
    """
    from ..engines.ort import ort_session

    onnx = require("onnx", "calibration")
    load_onnx(path)
    with tempfile.TemporaryDirectory(prefix="addunet-prep-") as tmp:
        out = Path(tmp) / "prepared.onnx"
        ort_session(path, optimization="basic", optimized_model_path=out)
        model = onnx.load(str(out))
    _unshare_initializers(model)
    strip_unused_opsets(model)
    toposort(model.graph)
    return model


def _unshare_initializers(model: Any) -> None:
    onnx = require("onnx", "calibration")
    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or node.op_type}_{i}"
                model.graph.initializer.append(copy)
                node.input[i] = copy.name
            else:
                seen.add(name)


def strip_unused_opsets(model: Any) -> None:
    """Drop opset imports of domains no node uses (ORT adds a dozen that other tools warn about)."""
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def toposort(graph: Any) -> None:
    """Sort nodes topologically in place (graph rewriters append nodes at the end)."""
    available = {t.name for t in graph.initializer} | {t.name for t in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ArtifactError(f"graph has a cycle or a dangling input near node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def activation_tensors(model: Any) -> list[str]:
    """Every float32 tensor computed from the input (node inputs and outputs, the input itself)."""
    onnx = require("onnx", "calibration")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    constants = {t.name for t in model.graph.initializer}
    names: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        for name in [*node.input, *node.output]:
            if name and name not in constants and name not in seen:
                seen.add(name)
                if types.get(name) == onnx.TensorProto.FLOAT:
                    names.append(name)
    return names


def session(model: Any, threads: int = 0) -> Any:
    """A CPU ONNX Runtime session on a ModelProto or a path; ArtifactError when ORT refuses it."""
    from ..engines.ort import ort_session

    return ort_session(model, threads=threads)
