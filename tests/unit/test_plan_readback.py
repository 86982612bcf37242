"""Reading a plan back: per-layer precision and device from the engine inspector and the build log, and the
refusals `build` makes with them. Pure parsing, no TensorRT: the JSON follows the inspector's documented
layout (ProfilingVerbosity.DETAILED, "Layers" with "Inputs"/"Outputs" and their "Format/Datatype"; TensorRT
11 may give a bare "DataType"); the log lines follow what the builder prints for a DLA build."""

from __future__ import annotations

import json

import pytest

from addunet_edge.engines.plan import BuildProfile, PlanLayers, check_layers, format_summary, read_layers
from addunet_edge.engines.plan_request import validate_options
from addunet_edge.errors import ArtifactError, BudgetError, ConfigError

INT8 = "Thirty-two wide channel vectorized row major Int8 format"
HALF = "Channel major FP16 format where channel % 8 == 0"
FLOAT = "Row major linear FP32"


def _layer(name: str, kind: str, fmt_in: str, fmt_out: str) -> dict:
    return {
        "Name": name,
        "LayerType": kind,
        "Inputs": [{"Name": f"{name}_in", "Dimensions": [1, 32, 64, 64], "Format/Datatype": fmt_in}],
        "Outputs": [{"Name": f"{name}_out", "Dimensions": [1, 32, 64, 64], "Format/Datatype": fmt_out}],
    }


def _engine(*layers: dict) -> str:
    return json.dumps({"Layers": list(layers), "Bindings": ["noisy", "denoised", "logits"]})


def test_precision_of_each_layer_comes_from_its_tensor_formats() -> None:
    plan = read_layers(
        _engine(
            _layer("stem", "Reformat", FLOAT, INT8),
            _layer("enc0.conv1", "CaskConvolution", INT8, INT8),
            _layer("add", "PointWiseV2", HALF, HALF),
            _layer("head", "CaskConvolution", HALF, FLOAT),
            {"Name": "fc", "LayerType": "Gemm", "Inputs": [{"DataType": "Half"}], "Outputs": [{"DataType": "Half"}]},
        )
    )
    assert [layer.precision for layer in plan.layers] == ["int8", "int8", "fp16", "fp16", "fp16"]
    assert plan.by_precision == {"int8": 2, "fp16": 3} and plan.by_device == {"gpu": 5}
    assert format_summary(plan.summary()) == "5 layers: fp16 3, int8 2; gpu 5"
    assert PlanLayers.from_dict(json.loads(json.dumps(plan.to_dict()))).layers == plan.layers
    check_layers(plan, "int8")  # holds int8 layers: accepted


def test_an_int8_plan_with_no_int8_layer_is_refused_with_its_table() -> None:
    plan = read_layers(
        _engine(_layer("conv", "CaskConvolution", FLOAT, FLOAT), _layer("add", "PointWise", FLOAT, FLOAT))
    )
    assert plan.by_precision == {"fp32": 2}
    with pytest.raises(BudgetError, match="no layer computes in int8") as e:
        check_layers(plan, "int8", label="model.int8.plan")
    assert e.value.exit_code == 3 and "conv | CaskConvolution | fp32 | gpu" in str(e.value)
    with pytest.raises(BudgetError, match="no layer computes in fp16"):
        check_layers(plan, "fp16")
    check_layers(plan, "fp32")


def test_dla_placement_comes_from_the_build_log_and_a_mostly_gpu_plan_is_refused() -> None:
    engine = _engine(
        _layer("{ForeignNode[/stem/Conv.../decoders.3/conv2/Conv]}", "DLA", HALF, HALF),
        _layer("/head/Conv", "CaskConvolution", HALF, FLOAT),
        _layer("reformat_out", "Reformat", HALF, FLOAT),
    )
    log = [
        "[  1.20s] INFO: ---------- Layers Running on DLA ----------",
        "[  1.20s] INFO: [DlaLayer] {ForeignNode[/stem/Conv.../decoders.3/conv2/Conv]}",
        "[  1.20s] INFO: ---------- Layers Running on GPU ----------",
        "[  1.20s] INFO: [GpuLayer] CONVOLUTION: /head/Conv",
        "[  1.20s] INFO: [GpuLayer] REFORMAT: reformat_out",
    ]
    plan = read_layers(engine, log, dla_core=0)
    assert [layer.device for layer in plan.layers] == ["dla", "gpu", "gpu"]
    with pytest.raises(BudgetError, match=r"2 of 3 layers \(67 %\) run on the GPU"):
        check_layers(plan, "fp16")
    check_layers(plan, "fp16", max_gpu_share=0.7)
    # The same engine built for the GPU counts nothing as DLA, whatever the log says.
    assert read_layers(engine, log).by_device == {"gpu": 3}


def test_what_is_not_a_detailed_inspector_json_is_refused() -> None:
    with pytest.raises(ArtifactError, match="no JSON"):
        read_layers("not json")
    with pytest.raises(ArtifactError, match="DETAILED"):
        read_layers(json.dumps({"Layers": []}))
    names_only = read_layers(json.dumps({"Layers": ["conv", "add"]}))
    assert names_only.by_precision == {"unknown": 2}
    with pytest.raises(BudgetError):  # types unknown: an int8 plan cannot be confirmed
        check_layers(names_only, "int8")


def test_a_dla_build_needs_a_fixed_profile() -> None:
    dynamic = BuildProfile(batch=(1, 1, 8), sizes=((32, 32), (256, 256), (1024, 1024)))
    with pytest.raises(ConfigError, match="fixed input shape"):
        validate_options("fp16", None, None, 0, False, dynamic)
    fixed = BuildProfile.parse("1", "256x256")
    validate_options("fp16", None, None, 0, False, fixed)
    validate_options("fp16", None, None, None, False, dynamic)  # the GPU takes dynamic shapes


def test_info_shows_each_layer_of_a_plan(tmp_path) -> None:
    from typer.testing import CliRunner

    from addunet_edge.artifacts import write_manifest
    from addunet_edge.cli import app
    from addunet_edge.engines.plan import PLAN_KIND

    layers = read_layers(
        _engine(_layer("enc0.conv1", "CaskConvolution", INT8, INT8), _layer("head", "Conv", HALF, FLOAT))
    )
    plan = tmp_path / "model.int8.plan"
    plan.write_bytes(b"serialized engine")  # info reads the manifest only
    write_manifest(
        plan,
        kind=PLAN_KIND,
        precision="int8",
        profile={"batch": [1, 1, 8], "sizes": [[32, 32], [256, 256], [1024, 1024]]},
        channels=1,
        num_classes=10,
        tensorrt_version="10.3.0",
        gpu={"name": "Orin", "compute_capability": "8.7"},
        layers=layers.to_dict(),
    )
    res = CliRunner().invoke(app, ["info", str(plan)])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "2 layers: fp16 1, int8 1; gpu 2" in out and "enc0.conv1" in out and "head" in out
    res = CliRunner().invoke(app, ["info", str(plan), "--json"])
    assert json.loads(res.output)["precision"] == {"int8": 1, "fp16": 1}
