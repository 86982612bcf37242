"""Quantization-aware fine-tuning: fake quantization against hand-computed references, STE gradients, and
the finetune pipeline end to end on the tiny checkpoint (checkpoint, learned ranges, int8 ONNX on ORT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from addunet_edge.fake_quant import FakeQuant, fake_quantize_int8, fake_quantize_uint8, fake_quantize_weight
from addunet_edge.qat import (
    RANGES_FILE,
    REPORT_FILE,
    QATConfig,
    finetune_qat,
    fold_for_qat,
    unfold_into,
)


def test_uint8_asymmetric_matches_hand_reference() -> None:
    # Range [-1, 3]: scale 4/255, zero point round(1 / (4/255)) = round(63.75) = 64.
    s, z = 4.0 / 255.0, 64
    x = [-2.0, -1.0, -0.3, 0.0, 0.01, 1.234, 2.99, 5.0]
    expected = [(min(max(round(v / s) + z, 0), 255) - z) * s for v in x]
    got = fake_quantize_uint8(torch.tensor(x), torch.tensor(-1.0), torch.tensor(3.0))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    # The saturated ends are the representable extremes, not the inputs.
    assert got[0] == pytest.approx((0 - z) * s) and got[-1] == pytest.approx((255 - z) * s)


def test_int8_symmetric_matches_hand_reference() -> None:
    # amax 2: scale 2/127; QuantizeLinear saturates to [-128, 127].
    s = 2.0 / 127.0
    x = [-3.0, -2.0, -0.55, 0.0, 0.016, 1.5, 2.0, 9.0]
    expected = [min(max(round(v / s), -128), 127) * s for v in x]
    got = fake_quantize_int8(torch.tensor(x), torch.tensor(2.0))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    assert got[0] == pytest.approx(-128 * s)


def test_weights_are_quantized_per_output_channel() -> None:
    w = torch.tensor([[[[0.5, -0.25], [0.1, 0.0]]], [[[-4.0, 1.0], [0.03, 2.0]]]])  # (2 out, 1 in, 2, 2)
    got = fake_quantize_weight(w, axis=0).numpy()
    for c, amax in ((0, 0.5), (1, 4.0)):
        s = amax / 127.0
        ref = np.clip(np.round(w[c].numpy() / s), -127, 127) * s
        np.testing.assert_allclose(got[c], ref, rtol=0, atol=1e-7)
    # Channel 0 keeps a fine grid (0.1 survives), which one per-tensor scale of 4/127 would lose.
    assert abs(got[0, 0, 1, 0] - 0.1) < 0.5 / 127
    # ConvTranspose2d weights hold output channels on axis 1.
    wt = w.transpose(0, 1).contiguous()
    np.testing.assert_allclose(fake_quantize_weight(wt, axis=1).numpy(), got.transpose(1, 0, 2, 3), atol=1e-7)


def test_gradients_flow_through_the_straight_through_estimator() -> None:
    w = torch.tensor([0.3, -0.7, 1.0, 0.0123], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (fake_quantize_weight(w) * upstream).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), upstream.numpy())  # identity inside the range

    x = torch.tensor([-0.4, 0.2, 0.9, 5.0], requires_grad=True)
    lo, hi = torch.tensor(-0.5, requires_grad=True), torch.tensor(1.0, requires_grad=True)
    fake_quantize_uint8(x, lo, hi).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1, 1, 1, 0])  # nothing through the saturated value
    assert hi.grad is not None and hi.grad.abs() > 0 and lo.grad is not None and torch.isfinite(lo.grad)

    amax = torch.tensor(1.0, requires_grad=True)
    fake_quantize_int8(torch.tensor([0.31, 3.0]), amax).sum().backward()
    assert amax.grad is not None and amax.grad.abs() > 0


def test_fake_quant_model_trains_weights_and_ranges(tiny_checkpoint: Path) -> None:
    from addunet_edge.checkpoint import load_checkpoint

    original, _ = load_checkpoint(tiny_checkpoint)
    model = fold_for_qat(original)
    fq = FakeQuant(model, "tensorrt")
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    fq.calibrate([x], 99.999)
    denoised, logits = model(x)
    (denoised.square().mean() + logits.square().mean()).backward()
    weights = {n: p for n, p in model.named_parameters() if n.endswith("original")}
    assert weights and all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights.values())
    assert all(p.grad is not None and p.grad != 0 for p in fq.range_parameters())
    assert model.gate_logits.grad is None  # gates are constants of the exported graph
    fq.remove()
    # Back in the original architecture (BatchNorm kept as an identity), the function is unchanged.
    restored = unfold_into(model, original)
    with torch.no_grad():
        a, b = model(x), fold_for_qat(restored)(x)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=0)


def _conv_input_scales(path: Path, every: bool = True) -> dict[str, float]:
    """Conv / Gemm node name -> scale of the DequantizeLinear that feeds its data input (with `every`, each
    Conv / Gemm must have one)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    scales = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            dq = producer.get(node.input[0])
            quantized = dq is not None and dq.op_type == "DequantizeLinear"
            assert quantized or not every, f"{node.name} input is not quantized"
            if quantized:
                scales[node.name] = float(inits[dq.input[1]])
    return scales


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_finetune_writes_checkpoint_ranges_and_int8(tiny_checkpoint: Path, tmp_path: Path, target: str) -> None:
    from addunet_edge.calibration import run_onnx
    from addunet_edge.checkpoint import load_checkpoint

    out = tmp_path / "qat"
    cfg = QATConfig(target=target, steps=3, batch_size=8, calibration_batches=2, calibration_images=16)
    result = finetune_qat(tiny_checkpoint, out, cfg, baseline=False, progress=False)

    _, meta = load_checkpoint(out)
    assert meta["qat"]["target"] == target and meta["model"]["norm"] == "batch"
    saved = json.loads((out / RANGES_FILE).read_text())
    assert saved["target"] == target and len(saved["layers"]) == 12  # stem, 4 enc, 4 dec, head, proj, fc
    assert result.int8_onnx == out / f"qat.int8.{target}.onnx"
    den, logits = run_onnx(result.int8_onnx, np.full((2, 1, 16, 16), 0.4, np.float32))
    assert den.shape == (2, 1, 16, 16) and logits.shape == (2, 10) and np.isfinite(den).all()

    # Every quantized conv / linear input carries the learned range, not a re-calibrated one. For tensorrt,
    # ModelOpt quantizes only the convs wide enough for TensorRT's int8 kernels (of this width-8 model: the
    # stem) and stores the scales in float16.
    scales = _conv_input_scales(result.int8_onnx, every=target == "cpu")
    expected = sorted(layer["scale"] for layer in saved["layers"].values())
    if target == "cpu":
        assert len(scales) == 12
        np.testing.assert_allclose(sorted(scales.values()), expected, rtol=1e-5)
    else:
        assert scales
        for scale in scales.values():
            assert min(abs(scale - e) / e for e in expected) < 1e-3, (scale, expected)
    for layer in saved["layers"].values():
        lo, hi = layer["range"]
        want = (hi - lo) / 255.0 if target == "cpu" else max(-lo, hi) / 127.0
        assert layer["scale"] == pytest.approx(want, rel=1e-9)
        assert lo <= 0.0 <= hi

    report = json.loads((out / REPORT_FILE).read_text())
    assert report["target"] == target
    drift = report["finetuned"]["int8"]["drift_db"]
    assert drift == pytest.approx(report["finetuned"]["int8"]["psnr_db"] - report["finetuned"]["fp32"]["psnr_db"])
    assert "psnr_db" in report["original"]["fp32"]


def test_finetune_cli_exits_zero(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from addunet_edge.cli import app

    out = tmp_path / "cli"
    args = ["finetune", str(tiny_checkpoint), "--qat", "--target", "tensorrt", "--out", str(out), "--steps", "2"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "int8 (tensorrt)" in result.output
    # The default --baseline calibrated the original the plain way, for the before/after comparison.
    assert "drift_db" in json.loads((out / REPORT_FILE).read_text())["original"]["int8"]
    missing_flag = CliRunner().invoke(app, ["finetune", str(tiny_checkpoint), "--out", str(tmp_path / "x")])
    assert missing_flag.exit_code != 0 and "--qat" in missing_flag.output
