"""fp16 and int8 variants of a tiny AddUNet on ONNX Runtime: layout, drift, reports and refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import numpy_helper  # noqa: E402

from addunet_edge.artifacts import read_manifest  # noqa: E402
from addunet_edge.calibration import (  # noqa: E402
    CalibrationSet,
    EvalImages,
    FallbackReport,
    calibrate,
    collect_ranges,
    convert_fp16,
    fallback_to_budget,
    quantizable_nodes,
    quantize_int8,
    run_onnx,
)
from addunet_edge.calibration.graph import prepare_model  # noqa: E402
from addunet_edge.errors import ArtifactError, BudgetError, ConfigError, DataError  # noqa: E402
from addunet_edge.export import torch_to_onnx  # noqa: E402
from addunet_edge.metrics import fmt_signed, psnr  # noqa: E402
from addunet_edge.model import ModelConfig, build_model, fold_batchnorm  # noqa: E402

SIZE = 24


def _export(model: torch.nn.Module, path: Path, channels: int = 1) -> Path:
    """The package's torch.export path for any module with our signature (no folding, onnxslim or parity)."""
    torch_to_onnx(model.eval(), path, channels)
    return path


def _folded_model(width: int, path: Path) -> Path:
    """AddUNet depth 2, 4 classes, unbounded states, BN folded, exported to `path`."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=width, depth=2, num_classes=4, bound=None)).eval()
    with torch.no_grad():  # non-trivial BN statistics so the folded biases differ per conv
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    fold_batchnorm(model)
    return _export(model, path)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AddUNet width 8, depth 2, 4 classes, unbounded states (the int8-hard case), BN folded."""
    return _folded_model(8, tmp_path_factory.mktemp("fp32") / "model.fp32.onnx")


@pytest.fixture(scope="module")
def fp32_w16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model at width 16: ModelOpt leaves the width-8 convs float (too narrow for TensorRT's int8
    kernels), so the tensorrt target is tested where it quantizes every conv."""
    return _folded_model(16, tmp_path_factory.mktemp("fp32w16") / "model.fp32.onnx")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(noisy, clean, labels): smooth random images plus sigma-25 noise."""
    rng = np.random.default_rng(0)
    base = rng.random((20, 1, SIZE // 4, SIZE // 4), dtype=np.float32)
    clean = np.kron(base, np.ones((1, 1, 4, 4), np.float32))
    noisy = np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
    return noisy, clean, rng.integers(0, 4, 20)


def _check_runs(path: Path) -> None:
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    den, logits = sess.run(None, {"noisy": np.full((3, 1, 20, 28), 0.5, np.float32)})
    assert den.shape == (3, 1, 20, 28) and den.dtype == np.float32
    assert logits.shape == (3, 4) and np.all(np.isfinite(logits))


def _inits(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


# --- fp16 ---------------------------------------------------------------------------------------------


def test_fp16_is_float16_inside_float32_outside_and_drift_small(fp32: Path, data, tmp_path: Path) -> None:
    noisy, clean, _ = data
    out = convert_fp16(fp32, tmp_path / "model.fp16.onnx", calib=CalibrationSet(noisy), progress=False)
    _check_runs(out)
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    inits = _inits(out)
    assert conv_weights and all(inits[w].dtype == np.float16 for w in conv_weights)
    assert Counter(n.op_type for n in model.graph.node)["Cast"] >= 3  # input and both outputs
    p32 = psnr(np.clip(run_onnx(fp32, noisy)[0], 0, 1), clean)
    p16 = psnr(np.clip(run_onnx(out, noisy)[0], 0, 1), clean)
    assert abs(p32 - p16) <= 0.05
    manifest = read_manifest(out, required=True)
    assert manifest["precision"] == "fp16" and "Softplus" in manifest["blocked_op_types"]
    assert manifest["measured"]["overflow_nodes"] == []


def test_fp16_blocks_nodes_measured_beyond_float16_range(tmp_path: Path, data) -> None:
    class Loud(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            big = torch.relu(self.conv(x)) * 1e6  # up to ~1e6: float16 overflows to inf here
            small = torch.sqrt(big) * 1e-3  # the sqrt stops constant folding from cancelling the scales
            return x - small[:, :1], self.fc(small.mean(dim=(2, 3)))

    torch.manual_seed(0)
    src = _export(Loud(), tmp_path / "loud.onnx")
    noisy = data[0]
    out = convert_fp16(src, tmp_path / "loud.fp16.onnx", calib=CalibrationSet(noisy), progress=False)
    manifest = read_manifest(out, required=True)
    assert manifest["measured"]["overflow_nodes"], manifest["measured"]
    ref, got = run_onnx(src, noisy), run_onnx(out, noisy)
    assert np.all(np.isfinite(got[0])) and np.allclose(ref[0], got[0], atol=1e-2)

    # The blocked node keeps its float32 constant (1e6 has no float16 value); unmeasured, it is clamped.
    # (ORT's CPU provider runs many float16 ops in float32, so the overflow itself cannot be shown here.)
    def scale_of(path: Path, node_names: list[str]) -> np.ndarray:
        model, inits = onnx.load(str(path)), _inits(path)
        node = next(n for n in model.graph.node if n.name in node_names and n.op_type == "Mul")
        return next(inits[i] for i in node.input if i in inits)

    blocked = scale_of(out, manifest["measured"]["overflow_nodes"])
    assert blocked.dtype == np.float32 and blocked == 1e6
    plain = convert_fp16(src, tmp_path / "loud.plain.onnx", progress=False)
    assert scale_of(plain, manifest["measured"]["overflow_nodes"]).dtype == np.float16


# --- int8 ---------------------------------------------------------------------------------------------


def test_cpu_int8_fuses_to_integer_kernels(fp32: Path, data, tmp_path: Path) -> None:
    noisy = data[0]
    ranges = collect_ranges(fp32, CalibrationSet(noisy), "percentile", progress=False)
    out = quantize_int8(fp32, tmp_path / "model.int8.onnx", ranges, target="cpu")
    _check_runs(out)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] >= 5 and ops["Conv"] == 0, ops
    q = onnx.load(str(out))
    act_zp = [n.input[2] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert all(_inits(out)[z].dtype == np.uint8 for z in act_zp)
    manifest = read_manifest(out, required=True)
    assert manifest["precision"] == "int8" and manifest["target"] == "cpu"
    assert manifest["calibration"]["method"] == "percentile"
    assert manifest["calibration"]["percentile"] == 99.999
    assert manifest["calibration"]["set_size"] == len(noisy)
    assert manifest["calibration"]["data_sha256"] == CalibrationSet(noisy).data_sha256


def _compute_dtypes(model: onnx.ModelProto) -> Counter:
    """Element types of what the nodes outside Q/DQ, casts and constants compute, by name ('FLOAT16', ...)."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    skip = {"QuantizeLinear", "DequantizeLinear", "Cast", "Constant"}
    return Counter(onnx.TensorProto.DataType.Name(types[n.output[0]]) for n in graph.node if n.op_type not in skip)


def test_tensorrt_int8_is_modelopt_symmetric_per_channel_fp16_outside(fp32_w16: Path, data, tmp_path: Path) -> None:
    ranges = collect_ranges(fp32_w16, CalibrationSet(data[0]), "minmax", progress=False)
    out = quantize_int8(fp32_w16, tmp_path / "model.int8.onnx", ranges, target="tensorrt")
    _check_runs(out)
    q = onnx.load(str(out))
    inits = _inits(out)
    producer = {o: n for n in q.graph.node for o in n.output}
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 19
    for node in q.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), node.name
            assert inits[node.input[1]].dtype == np.float16, node.name  # scales in the high precision
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == 11  # stem, 2 x 2 encoder, 2 x 2 decoder, projection, head
    for conv in convs:
        x, w = producer[conv.input[0]], producer[conv.input[1]]
        assert x.op_type == "DequantizeLinear" and w.op_type == "DequantizeLinear", conv.name
        assert inits[w.input[0]].dtype == np.int8  # weights stored int8, behind a DequantizeLinear only
        out_channels = inits[w.input[0]].shape[0]
        assert inits[w.input[1]].shape == (out_channels,)  # one scale per output channel
        assert next(a.i for a in w.attribute if a.name == "axis") == 0
        # Biases stay float: TensorRT folds them itself.
        assert len(conv.input) < 3 or inits[conv.input[2]].dtype == np.float16
    # Activation scales are our ranges (amax / 127), to float16's precision.
    noisy_q = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and producer[n.input[0]].op_type == "Cast")
    lo, hi = ranges["noisy"]
    assert float(inits[noisy_q.input[1]]) == pytest.approx(max(-lo, hi) / 127, rel=1e-3)
    # The residual Subs / Adds take the operand that does not fuse into the preceding conv through Q/DQ.
    tails = ("denoised", "denoised_pre_cast")  # the output's float tail (ModelOpt casts it to float32 after)
    residual = [n for n in q.graph.node if n.op_type in ("Add", "Sub") and n.output[0] not in tails]
    assert len(residual) == 4
    for node in residual:
        assert any(i in producer and producer[i].op_type == "DequantizeLinear" for i in node.input), node.name
    # Everything outside the int8 ops computes in float16; the graph's inputs and outputs stay float32.
    assert set(_compute_dtypes(q)) == {"FLOAT16"}
    assert q.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in q.graph.output)
    manifest = read_manifest(out, required=True)
    assert manifest["target"] == "tensorrt" and manifest["high_precision"] == "fp16" and manifest["opset"] == 19
    assert manifest["quantizer"].startswith("modelopt ") and manifest["weights"] == "int8 symmetric per-channel"
    # Run as written, the int8 model stays close to fp32 (ORT's own optimiser is kept from rewriting biases).
    ref, got = run_onnx(fp32_w16, data[0]), run_onnx(out, data[0])
    assert np.max(np.abs(ref[0] - got[0])) < 0.05


def test_a_tensorrt_int8_leaves_onnx_runtimes_quantizer_as_it_found_it(fp32: Path, data, tmp_path: Path) -> None:
    """ModelOpt removes ops from ONNX Runtime's module-level quantizer registries; a cpu int8 made after a
    tensorrt one in the same process (quickstart makes both) must come out as it does alone."""
    from onnxruntime.quantization import registry

    def tables() -> dict[str, dict]:
        return {n: dict(t) for n, t in vars(registry).items() if n.endswith("Registry") and isinstance(t, dict)}

    def ops(path: Path) -> list[tuple[str, tuple[str, ...]]]:
        return [(n.op_type, tuple(n.input)) for n in onnx.load(str(path)).graph.node]

    ranges = collect_ranges(fp32, CalibrationSet(data[0]), "minmax", progress=False)
    before = tables()
    alone = quantize_int8(fp32, tmp_path / "alone.int8.cpu.onnx", ranges, target="cpu")
    quantize_int8(fp32, tmp_path / "model.int8.tensorrt.onnx", ranges, target="tensorrt")
    assert tables() == before
    after = quantize_int8(fp32, tmp_path / "after.int8.cpu.onnx", ranges, target="cpu")
    assert ops(after) == ops(alone)
    assert all(np.array_equal(a, _inits(after)[k]) for k, a in _inits(alone).items())


def test_tensorrt_int8_in_fp32_when_asked(fp32_w16: Path, data, tmp_path: Path) -> None:
    ranges = collect_ranges(fp32_w16, CalibrationSet(data[0]), "minmax", progress=False)
    out = quantize_int8(fp32_w16, tmp_path / "m.onnx", ranges, target="tensorrt", high_precision="fp32")
    _check_runs(out)
    q = onnx.load(str(out))
    assert set(_compute_dtypes(q)) == {"FLOAT"}
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in q.graph.initializer)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}
    assert read_manifest(out, required=True)["high_precision"] == "fp32"
    with pytest.raises(ConfigError, match="target tensorrt"):
        quantize_int8(fp32_w16, tmp_path / "c.onnx", ranges, target="cpu", high_precision="fp16")
    with pytest.raises(ConfigError, match="high_precision"):
        quantize_int8(fp32_w16, tmp_path / "c.onnx", ranges, target="tensorrt", high_precision="bf16")  # type: ignore[arg-type]
    assert not (tmp_path / "c.onnx").exists()


def test_tensorrt_int8_without_modelopt_names_the_package(fp32_w16: Path, data, tmp_path: Path, monkeypatch) -> None:
    from addunet_edge.errors import MissingDependencyError

    ranges = collect_ranges(fp32_w16, CalibrationSet(data[0]), "minmax", progress=False)
    monkeypatch.setitem(sys.modules, "modelopt.onnx.quantization", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match="nvidia-modelopt"):
        quantize_int8(fp32_w16, tmp_path / "m.onnx", ranges, target="tensorrt")
    assert not (tmp_path / "m.onnx").exists()


def test_tensorrt_quantizable_nodes_follow_modelopt(fp32: Path, fp32_w16: Path) -> None:
    """What the fallback may keep float is what ModelOpt puts in int8: narrow convs and small classifiers
    are never int8 for TensorRT, so they are no candidates."""
    wide = quantizable_nodes(prepare_model(fp32_w16), "tensorrt")
    assert "/classifier/fc/Gemm" not in wide  # 4 outputs: under TensorRT's int8 GEMM minimum
    assert {"/stem/Conv", "/encoders.0/conv1/Conv", "/head/Conv", "/Sub", "/Add"} <= set(wide)
    narrow = quantizable_nodes(prepare_model(fp32), "tensorrt")
    assert "/stem/Conv" in narrow and "/encoders.0/conv1/Conv" not in narrow


def test_excluded_nodes_stay_float(fp32_w16: Path, data, tmp_path: Path) -> None:
    ranges = collect_ranges(fp32_w16, CalibrationSet(data[0]), "minmax", progress=False)
    nodes = onnx.load(str(fp32_w16)).graph.node
    stem = next(n.name for n in nodes if n.op_type == "Conv")
    out = quantize_int8(fp32_w16, tmp_path / "m.onnx", ranges, target="tensorrt", exclude_nodes=[stem, "/Add"])
    _check_runs(out)
    q = onnx.load(str(out))
    inits = _inits(out)
    producer = {o: n for n in q.graph.node for o in n.output}
    node = next(n for n in q.graph.node if n.name == stem)
    assert node.input[1] in inits and inits[node.input[1]].dtype == np.float16  # a float weight, not int8
    assert node.input[0] not in producer or producer[node.input[0]].op_type != "DequantizeLinear"
    add = next(n for n in q.graph.node if n.name == "/Add")
    assert not any(i in producer and producer[i].op_type == "DequantizeLinear" for i in add.input)
    # The other convs are still int8.
    assert producer[next(n for n in q.graph.node if n.name == "/encoders.0/conv1/Conv").input[0]].op_type == (
        "DequantizeLinear"
    )
    assert read_manifest(out)["excluded_nodes"] == [stem, "/Add"]


def test_calibrate_auto_reports_every_method_and_keeps_the_best(fp32: Path, data, tmp_path: Path) -> None:
    noisy, clean, _ = data
    out = tmp_path / "model.int8.onnx"
    report = calibrate(
        fp32, out, noisy, clean, target="cpu", method="auto", cache_dir=tmp_path / "cache", progress=False
    )
    assert set(report.scores) == {"minmax", "percentile", "entropy"}
    # Drift is negative when worse, as everywhere: the best method has the highest drift.
    best = max(report.scores, key=lambda m: report.scores[m].psnr_drift_db)
    assert report.method == best
    assert report.scored_on == 5 and report.set_size == 15
    assert all(0.0 <= s.agreement <= 1.0 for s in report.scores.values())
    assert read_manifest(out, required=True)["calibration"]["method"] == best
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3
    again = calibrate(
        fp32, out, noisy, clean, target="cpu", method="auto", cache_dir=tmp_path / "cache", progress=False
    )
    assert [s.psnr_drift_db for s in again.scores.values()] == [s.psnr_drift_db for s in report.scores.values()]


def test_bad_inputs_write_nothing(fp32: Path, data, tmp_path: Path) -> None:
    noisy = data[0]
    out = tmp_path / "never.onnx"
    with pytest.raises(DataError, match="empty"):
        calibrate(fp32, out, noisy[:0], progress=False)
    with pytest.raises(DataError, match="at least 8"):
        calibrate(fp32, out, noisy[:4], progress=False)
    with pytest.raises(DataError, match="channel"):
        calibrate(fp32, out, np.repeat(noisy, 3, axis=1), progress=False)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(fp32.read_bytes()[:200])
    with pytest.raises(ArtifactError):
        calibrate(corrupt, out, noisy, progress=False)
    with pytest.raises(ArtifactError):
        convert_fp16(corrupt, out, progress=False)
    assert list(tmp_path.iterdir()) == [corrupt]


def test_fallback_keeps_the_fewest_sensitive_nodes_float(fp32_w16: Path, data, tmp_path: Path) -> None:
    fp32 = fp32_w16  # the tensorrt target quantizes its convs (see fp32_w16)
    noisy = data[0]
    reference = run_onnx(fp32, noisy)[0]
    # Targets close to the fp32 output make int8's own error dominate the drift, so the budget bites.
    clean = np.clip(reference + np.random.default_rng(1).normal(0, 0.002, reference.shape), 0, 1).astype(np.float32)

    def fallback(name: str, drift_db: float, **kw) -> FallbackReport:
        return fallback_to_budget(
            fp32,
            tmp_path / name,
            noisy,
            [EvalImages("all", noisy, clean)],
            target="tensorrt",
            max_psnr_drift_db=drift_db,
            max_acc_drop_pt=100.0,
            progress=False,
            **kw,
        )

    with pytest.raises(BudgetError):
        fallback("x.onnx", 0.0, max_float_nodes=1)
    assert not (tmp_path / "x.onnx").exists()
    probe = fallback("probe.onnx", 100.0)
    assert probe.float_nodes == [] and probe.before.psnr_drift_db < -0.3
    budget = -probe.before.psnr_drift_db / 2
    report = fallback("fb.onnx", budget, max_float_fraction=1.0)
    assert report.met_budget and report.after.psnr_drift_db >= -budget
    assert 1 <= len(report.float_nodes) < len(report.sensitivity)
    ranked = sorted(report.sensitivity, key=report.sensitivity.get, reverse=True)
    assert report.float_nodes == ranked[: len(report.float_nodes)]
    assert read_manifest(tmp_path / "fb.onnx")["excluded_nodes"] == report.float_nodes
    # A budget only an all-float graph meets is refused at the default cap, not met by a float model.
    with pytest.raises(BudgetError, match="finetune --qat"):
        fallback("all.onnx", 0.0)
    assert not (tmp_path / "all.onnx").exists()
    # ... or, when asked, the least harmful model within the cap is written and said to miss the budget.
    kept = fallback("best.onnx", 0.0, on_miss="keep_best")
    assert not kept.met_budget and (tmp_path / "best.onnx").exists()
    assert 0 < len(kept.float_nodes) <= len(kept.sensitivity) // 4
    assert kept.after.psnr_drift_db > kept.before.psnr_drift_db
    assert "NOT met" in kept.summary() and any("not met" in m for m in kept.messages)
    # The printed line carries the signed drift before and after (negative = worse).
    assert kept.before.psnr_drift_db < 0
    assert (
        f"drift {fmt_signed(kept.before.psnr_drift_db)} -> {fmt_signed(kept.after.psnr_drift_db)} dB" in kept.summary()
    )
    assert read_manifest(tmp_path / "best.onnx")["excluded_nodes"] == kept.float_nodes


def test_fallback_budget_holds_at_the_worst_group(fp32_w16: Path, data, tmp_path: Path) -> None:
    """Scored per group (noise level): a budget the mild group meets but the hard one breaks is broken."""
    fp32 = fp32_w16  # the tensorrt target quantizes its convs (see fp32_w16)
    noisy = data[0]
    reference = run_onnx(fp32, noisy)[0]
    rng = np.random.default_rng(2)
    # Targets close to the fp32 output: int8's error costs many dB there; targets far off hide it.
    near = np.clip(reference + rng.normal(0, 0.002, reference.shape), 0, 1).astype(np.float32)
    far = np.clip(reference + rng.normal(0, 0.2, reference.shape), 0, 1).astype(np.float32)
    groups = [EvalImages("far", noisy, far), EvalImages("near", noisy, near)]
    common = {"target": "tensorrt", "max_acc_drop_pt": 100.0, "progress": False}
    far_only = fallback_to_budget(fp32, tmp_path / "a.onnx", noisy, groups[:1], max_psnr_drift_db=100.0, **common)
    both = fallback_to_budget(fp32, tmp_path / "b.onnx", noisy, groups, max_psnr_drift_db=100.0, **common)
    near_only = fallback_to_budget(fp32, tmp_path / "c.onnx", noisy, groups[1:], max_psnr_drift_db=100.0, **common)
    assert both.groups == ["far", "near"]
    assert both.before.psnr_drift_db == near_only.before.psnr_drift_db < far_only.before.psnr_drift_db
    # The budget set between the two groups' drifts: met by the far group alone, broken by both.
    budget = -(far_only.before.psnr_drift_db + near_only.before.psnr_drift_db) / 2
    assert (
        fallback_to_budget(fp32, tmp_path / "d.onnx", noisy, groups[:1], max_psnr_drift_db=budget, **common).float_nodes
        == []
    )
    held = fallback_to_budget(
        fp32, tmp_path / "e.onnx", noisy, groups, max_psnr_drift_db=budget, max_float_fraction=1.0, **common
    )
    assert held.float_nodes and held.after.psnr_drift_db >= -budget


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("polygraphy") is None, reason="polygraphy is not installed")
def test_polygraphy_runs_the_variants(fp32: Path, data, tmp_path: Path) -> None:
    ranges = collect_ranges(fp32, CalibrationSet(data[0]), "minmax", progress=False)
    paths = [
        quantize_int8(fp32, tmp_path / "t.onnx", ranges, target="tensorrt"),
        quantize_int8(fp32, tmp_path / "c.onnx", ranges, target="cpu"),
        convert_fp16(fp32, tmp_path / "h.onnx", progress=False),
    ]
    for path in paths:
        result = subprocess.run(
            ["polygraphy", "run", str(path), "--onnxrt", "--input-shapes", "noisy:[1,1,32,32]"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_fallback_and_plain_calibration_keep_separate_range_caches(fp32: Path, data, tmp_path: Path) -> None:
    noisy, clean, _ = data
    cache = tmp_path / "cache"
    fallback_to_budget(
        fp32,
        tmp_path / "fb.onnx",
        noisy,
        [EvalImages("all", noisy, clean)],
        target="cpu",
        max_psnr_drift_db=100.0,
        max_acc_drop_pt=100.0,
        cache_dir=cache,
        progress=False,
    )
    calibrate(fp32, tmp_path / "plain.onnx", noisy, clean, target="cpu", cache_dir=cache, progress=False)
    files = sorted(p.name for p in cache.glob("*.json"))
    # Different calibration sets (all images vs a held-out split): two files, neither replacing the other.
    assert len(files) == 2 and all(".ranges-percentile-" in f for f in files)


def _untrained_checkpoint(folder: Path, data: dict | None) -> Path:
    from addunet_edge.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, depth=2, num_classes=0)).eval()
    sections = {} if data is None else {"data": data}
    return save_checkpoint(folder, model, **sections)


def test_calibrate_reads_the_data_the_checkpoint_was_trained_on(tmp_path: Path, caplog) -> None:
    """A photos checkpoint is calibrated on photos (64x64 patches), not on the 32x32 digits."""
    from typer.testing import CliRunner

    from addunet_edge.calibration.int8 import DataSpec
    from addunet_edge.cli import app

    ckpt = _untrained_checkpoint(tmp_path / "photos-model", {"dataset": "photos", "source": "photos", "seed": 0})
    spec = DataSpec.of(ckpt)
    assert spec.source == "photos" and spec.in_channels == 1
    noisy, _, _ = spec.calibration_arrays(8)
    assert noisy.shape == (8, 1, 64, 64)
    res = CliRunner().invoke(
        app, ["calibrate", str(ckpt), "--target", "cpu", "--calibration-images", "8", "--out", str(tmp_path / "q.onnx")]
    )
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "q.onnx", required=True)["calibration"]["data"] == "photos"
    # Other data than the training data is the user's explicit choice, and it is said out loud.
    with caplog.at_level("WARNING", logger="addunet_edge.calibration"):
        assert DataSpec.of(ckpt, "digits").source == "digits"
    assert "trained on photos" in caplog.text


def test_calibrate_without_a_data_record_needs_dataset(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from addunet_edge.cli import app

    ckpt = _untrained_checkpoint(tmp_path / "bare", None)
    res = CliRunner().invoke(app, ["calibrate", str(ckpt), "--out", str(tmp_path / "q.onnx")])
    assert res.exit_code == 2 and "--dataset" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare"]  # nothing exported, nothing written
