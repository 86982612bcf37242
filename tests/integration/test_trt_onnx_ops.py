"""The ONNX we hand TensorRT uses only operators, input types and opsets its ONNX parser supports.

The supported operators come from onnx-tensorrt's docs/operators.md, listed into
tests/data/onnx_tensorrt_ops/<version>.txt by scripts/trt_binding_names.py (TensorRT 10.3, JetPack 6, and
the newest 11.x whose list was available; see each file's header for its source). The graphs are made by the
package's own pipeline (`make_precision_onnx`): fp32, fp16 and int8 for target `tensorrt`, for the default
model, for a multi-scale, paper-plain one (strided resampling, no BatchNorm, no bound, MLP head) and for the
packaged photo denoiser.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from addunet_edge.build import make_precision_onnx
from addunet_edge.export import OPSET

OPS_DIR = Path(__file__).resolve().parents[1] / "data" / "onnx_tensorrt_ops"
# ONNX element types as operators.md names them
TRT_TYPE = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "DOUBLE",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT4: "INT4",
}


def load_support(path: Path) -> tuple[tuple[int, int], dict[str, set[str]]]:
    """(opset range, {operator: supported types}) from one committed list."""
    opsets, ops = None, {}
    for line in path.read_text().splitlines():
        if line.startswith("# opsets "):
            lo, hi = line.removeprefix("# opsets ").split("-")
            opsets = (int(lo), int(hi))
        elif line.strip() and not line.startswith("#"):
            name, _, types = line.partition(" ")
            ops[name] = {t for t in types.split(",") if t}
    assert opsets is not None, f"{path} states no opset range"
    return opsets, ops


SUPPORT = {p.stem: load_support(p) for p in sorted(OPS_DIR.glob("*.txt"))}


def unsupported(model: onnx.ModelProto, version: str) -> list[str]:
    """Why TensorRT `version`'s ONNX parser would reject `model` (empty: it would not, by operators.md)."""
    (lo, hi), ops = SUPPORT[version]
    problems = []
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if not lo <= opset <= hi:
        problems.append(f"opset {opset} outside {lo}-{hi}")
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for v in (*graph.input, *graph.output, *graph.value_info):
        types[v.name] = v.type.tensor_type.elem_type
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name}: {node.domain}::{node.op_type} is not a standard ONNX operator")
            continue
        if node.op_type not in ops:
            problems.append(f"{node.name}: {node.op_type} is not supported")
            continue
        # operators.md lists the types of the (first) data input; an input-less node is judged by its output
        tensor = next((i for i in node.input if i), None) or node.output[0]
        dtype = TRT_TYPE.get(types.get(tensor, TensorProto.UNDEFINED), "unknown")
        if ops[node.op_type] and dtype not in ops[node.op_type]:
            problems.append(f"{node.name}: {node.op_type} on {dtype} (supported: {sorted(ops[node.op_type])})")
    return problems


@pytest.fixture(scope="module")
def plain_multiscale_checkpoint(tmp_path_factory: pytest.TempPathFactory, digits_npz: Path) -> Path:
    """A width-8, depth-2 paper-plain AddUNet with strided resampling and an MLP head, trained one epoch."""
    from addunet_edge.data import load_dataset
    from addunet_edge.model import ModelConfig
    from addunet_edge.training import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "plain"
    config = ModelConfig(
        width=8,
        depth=2,
        num_classes=10,
        resampling="stride",
        head="full",
        norm="none",
        bound=None,
        head_projection=False,
    )
    train(
        config,
        TrainConfig(epochs=1, batch_size=16, warmup_steps=2),
        load_dataset(digits_npz, size=16),
        out,
        progress=False,
    )
    return out


@pytest.fixture(scope="module", params=["default", "plain-multiscale", "packaged-photos"])
def graphs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, onnx.ModelProto]:
    if request.param == "packaged-photos":  # the model `run` uses when given none (bilinear, unshuffle, ...)
        from addunet_edge.pretrained import pretrained_dir

        checkpoint = pretrained_dir("photos")
    else:
        fixture = "tiny_checkpoint" if request.param == "default" else "plain_multiscale_checkpoint"
        checkpoint = request.getfixturevalue(fixture)
    out = tmp_path_factory.mktemp(f"trt-ops-{request.param}")
    paths = {
        "fp32": make_precision_onnx(checkpoint, out, "fp32", progress=False),
        "fp16": make_precision_onnx(checkpoint, out, "fp16", progress=False, calibration_images=32),
        "int8-tensorrt": make_precision_onnx(
            checkpoint, out, "int8", target="tensorrt", progress=False, calibration_images=32
        ),
    }
    return {tag: onnx.load(str(path)) for tag, path in paths.items()}


def test_support_lists_are_the_ones_we_expect() -> None:
    assert "10.3" in SUPPORT and any(v.startswith("11.") for v in SUPPORT), sorted(SUPPORT)
    for version, ((lo, hi), ops) in SUPPORT.items():
        assert lo <= OPSET <= hi, version  # the export opset
        assert {"Conv", "QuantizeLinear", "DequantizeLinear", "Cast"} <= set(ops), version
        assert "INT8" in ops["DequantizeLinear"] and "UINT8" not in ops["DequantizeLinear"], version
        assert not {"QLinearConv", "DynamicQuantizeLinear", "MatMulInteger"} & set(ops), version


@pytest.mark.parametrize("version", sorted(SUPPORT))
def test_every_graph_we_hand_tensorrt_parses(graphs: dict[str, onnx.ModelProto], version: str) -> None:
    seen = set()
    for tag, model in graphs.items():
        seen |= {n.op_type for n in model.graph.node}
        assert unsupported(model, version) == [], f"{tag} for TensorRT {version}"
    # the precisions really differ: Q/DQ in int8, float16 casts in fp16
    assert {"QuantizeLinear", "DequantizeLinear", "Cast", "Conv"} <= seen, seen
    assert any(n.op_type == "QuantizeLinear" for n in graphs["int8-tensorrt"].graph.node)
    assert not any(n.op_type == "QuantizeLinear" for n in graphs["fp32"].graph.node)


def _qdq_model(zero_point_type: int, opset: int = 17) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> y: a minimal explicit-quantization graph."""
    from onnx import helper

    zero = helper.make_tensor("zero", zero_point_type, [], [0])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dq"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "qdq", io[:1], io[1:], initializer=[zero, scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _dynamic_quantize_model() -> onnx.ModelProto:
    """x -> DynamicQuantizeLinear: an operator onnx-tensorrt does not import."""
    from onnx import helper

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero"], name="dql")
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4]),
        helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("y_zero", TensorProto.UINT8, []),
    ]
    graph = helper.make_graph([node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_check_rejects_what_tensorrt_rejects() -> None:
    """Unsigned Q/DQ (the cpu int8 flavour), an operator TensorRT lacks, a too-new opset: each is reported."""
    for version, ((_, newest), _) in SUPPORT.items():
        assert unsupported(_qdq_model(TensorProto.INT8), version) == [], version
        assert any("DequantizeLinear on UINT8" in p for p in unsupported(_qdq_model(TensorProto.UINT8), version))
        lacking = unsupported(_dynamic_quantize_model(), version)
        assert any("DynamicQuantizeLinear is not supported" in p for p in lacking), version
        too_new = unsupported(_qdq_model(TensorProto.INT8, opset=newest + 1), version)
        assert any(p.startswith(f"opset {newest + 1} outside") for p in too_new), version
