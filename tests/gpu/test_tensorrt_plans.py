"""TensorRT plans on a real GPU: fp32 / fp16 / int8 builds, drift against PyTorch, zero-copy, CUDA graphs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from addunet_edge._lazy import available
from addunet_edge.errors import AddUNetEdgeError


def _skip_reason() -> str | None:
    if not available("tensorrt"):
        return "tensorrt is not installed (pip install 'addunet-edge[tensorrt]'; JetPack ships it)"
    try:
        from addunet_edge.engines.cuda import gpu_identity

        gpu_identity()
    except AddUNetEdgeError as e:
        return f"no usable CUDA GPU or CUDA bindings here: {e}"
    return None


REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

CHANNELS, CLASSES = 1, 4
BATCH, SIZES = "1,2,4", "32x32,64x64,128x128"
# Drift budgets of the denoised image against PyTorch (float32 on the CPU). fp32 may use TF32 tensor cores.
MAX_ABS = {"fp32": 5e-3, "fp16": 2e-2}
MIN_PSNR_DB = {"fp32": 50.0, "fp16": 40.0, "int8": 25.0}


def _psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clean = rng.random((n, CHANNELS, 1, 1), dtype=np.float32) * np.ones((1, 1, size, size), np.float32)
    return np.clip(clean + rng.normal(0, 0.1, clean.shape).astype(np.float32), 0, 1)


def _calibration_functions() -> tuple[Any, Any, Any]:
    try:
        from addunet_edge.calibration import collect_ranges, convert_fp16, quantize_int8
    except ImportError:
        from addunet_edge.calibration.fp16 import convert_fp16
        from addunet_edge.calibration.qdq import quantize_int8
        from addunet_edge.calibration.ranges import collect_ranges
    return convert_fp16, quantize_int8, collect_ranges


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny model, its fp32 / fp16 / int8 ONNX, and a plan of each (built once for the module)."""
    import torch

    from addunet_edge.checkpoint import save_checkpoint
    from addunet_edge.engines.plan import BuildProfile
    from addunet_edge.engines.trt_build import build_plan
    from addunet_edge.export import export_onnx
    from addunet_edge.model import ModelConfig, build_model

    convert_fp16, quantize_int8, collect_ranges = _calibration_functions()
    root = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_channels=CHANNELS, width=8, depth=2, num_classes=CLASSES)).eval()
    checkpoint = save_checkpoint(root / "checkpoint", model)
    fp32, _ = export_onnx(checkpoint, root / "model.fp32.onnx")
    calib = _images(16, 64, seed=1)
    onnx = {
        "fp32": fp32,
        "fp16": convert_fp16(fp32, root / "model.fp16.onnx", progress=False),
        "int8": quantize_int8(
            fp32,
            root / "model.int8.onnx",
            collect_ranges(fp32, calib, method="percentile", progress=False),
            target="tensorrt",
        ),
    }
    profile = BuildProfile.parse(BATCH, SIZES)
    cache = root / "timing.cache"
    plans = {
        p: build_plan(path, root / "plans", precision=p, profile=profile, workspace_mib=256, timing_cache=cache)
        for p, path in onnx.items()
    }
    return {"model": model, "onnx": onnx, "plans": plans, "root": root, "cache": cache}


def _reference(model: Any, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        denoised, logits = model(torch.from_numpy(noisy))
    return denoised.numpy(), logits.numpy()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_plan_matches_pytorch(artifacts: dict[str, Any], precision: str) -> None:
    from addunet_edge.engines.tensorrt import TensorRTEngine

    plan = artifacts["plans"][precision]
    assert plan.name == f"model.{precision}.plan"
    manifest = json.loads((plan.parent / f"{plan.name}.manifest.json").read_text())
    assert manifest["precision"] == precision and manifest["strongly_typed"] is True
    assert (plan.parent / f"model.{precision}.build.log").read_text().strip().endswith("s")
    noisy = _images(3, 96, seed=2)  # inside the profile, not at its opt point
    ref_denoised, ref_logits = _reference(artifacts["model"], noisy)
    with TensorRTEngine(plan) as engine:
        assert engine.info.precision == precision and engine.info.num_classes == CLASSES
        out = engine(noisy)
    assert out.denoised.shape == ref_denoised.shape and out.logits.shape == ref_logits.shape
    assert np.isfinite(out.denoised).all() and np.isfinite(out.logits).all()
    assert _psnr_db(out.denoised, ref_denoised) >= MIN_PSNR_DB[precision]
    if precision in MAX_ABS:
        assert np.abs(out.denoised - ref_denoised).max() <= MAX_ABS[precision]
        assert np.abs(out.logits - ref_logits).max() <= 10 * MAX_ABS[precision]


def test_timing_cache_is_written_and_reused(artifacts: dict[str, Any]) -> None:
    from addunet_edge.engines.plan import BuildProfile
    from addunet_edge.engines.trt_build import build_plan

    cache: Path = artifacts["cache"]
    assert cache.stat().st_size > 0
    again = build_plan(
        artifacts["onnx"]["fp32"],
        artifacts["root"] / "again",
        precision="fp32",
        name="cached",
        profile=BuildProfile.parse(BATCH, SIZES),
        timing_cache=cache,
        optimization_level=1,
    )
    assert again.name == "cached.fp32.plan"


def test_a_corrupt_timing_cache_starts_afresh_instead_of_failing_the_build(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    from addunet_edge.engines.plan import BuildProfile
    from addunet_edge.engines.trt_build import build_plan

    cache = tmp_path / "timing.cache"
    garbage = b"not a timing cache" * 64
    cache.write_bytes(garbage)
    plan = build_plan(
        artifacts["onnx"]["fp32"],
        tmp_path,
        precision="fp32",
        profile=BuildProfile.parse(BATCH, SIZES),
        timing_cache=cache,
        optimization_level=1,
    )
    assert plan.is_file()
    assert cache.stat().st_size > 0 and cache.read_bytes() != garbage  # replaced by the build's own cache
    assert "starting a new one" in (tmp_path / "model.fp32.build.log").read_text()


def test_the_manifest_records_the_machine_and_a_missing_dla_core_is_named(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    import platform

    from addunet_edge.engines.cuda import gpu_identity
    from addunet_edge.engines.tensorrt import TensorRTEngine
    from addunet_edge.errors import ArtifactError

    plan = artifacts["plans"]["fp16"]
    manifest = json.loads((plan.parent / f"{plan.name}.manifest.json").read_text())
    gpu = gpu_identity()
    assert manifest["gpu"]["sm_count"] == gpu.sm_count > 0
    assert isinstance(manifest["gpu"]["dla_cores"], int)
    assert manifest["host"] == {"cpu_arch": platform.machine(), "os": platform.system()}
    copy = tmp_path / plan.name
    shutil.copy(plan, copy)
    manifest["options"]["dla_core"] = manifest["gpu"]["dla_cores"]  # one core past the last this machine has
    (tmp_path / f"{plan.name}.manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"DLA core \d+, and this machine has"), TensorRTEngine(copy) as engine:
        engine(_images(1, 32, seed=9))


def test_wrong_precision_and_tampered_manifest_are_refused(artifacts: dict[str, Any], tmp_path: Path) -> None:
    from addunet_edge.engines.plan import BuildProfile
    from addunet_edge.engines.tensorrt import TensorRTEngine
    from addunet_edge.engines.trt_build import build_plan
    from addunet_edge.errors import ArtifactError, ConfigError

    with pytest.raises(ConfigError, match="int8"):
        build_plan(artifacts["onnx"]["int8"], tmp_path, precision="fp16", profile=BuildProfile.parse(BATCH, SIZES))
    plan = artifacts["plans"]["fp16"]
    copy = tmp_path / plan.name
    shutil.copy(plan, copy)
    manifest = json.loads((plan.parent / f"{plan.name}.manifest.json").read_text())
    manifest["gpu"]["name"] = "Some Other GPU"
    (tmp_path / f"{plan.name}.manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="addunet-edge build"):
        TensorRTEngine(copy)


def test_outside_profile_is_a_shape_error(artifacts: dict[str, Any]) -> None:
    from addunet_edge.engines.tensorrt import TensorRTEngine
    from addunet_edge.errors import ShapeError

    with TensorRTEngine(artifacts["plans"]["fp32"]) as engine, pytest.raises(ShapeError):
        engine(_images(8, 64, seed=3))


def test_buffers_grow_and_shrink_across_shapes(artifacts: dict[str, Any]) -> None:
    from addunet_edge.engines.tensorrt import TensorRTEngine

    small, large = _images(1, 32, seed=4), _images(4, 128, seed=5)
    with TensorRTEngine(artifacts["plans"]["fp32"]) as engine:
        first = engine(small).denoised
        engine(large)
        again = engine(small).denoised
    np.testing.assert_array_equal(first, again)


def test_torch_cuda_tensors_are_served_without_host_copies(artifacts: dict[str, Any]) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA: install a CUDA build of torch to test zero-copy input")
    from addunet_edge.engines.tensorrt import TensorRTEngine

    noisy = _images(2, 64, seed=6)
    with TensorRTEngine(artifacts["plans"]["fp16"]) as engine:
        expected = engine(noisy)
        out = engine(torch.from_numpy(noisy).cuda())
    assert isinstance(out.denoised, torch.Tensor) and out.denoised.is_cuda
    assert isinstance(out.logits, torch.Tensor) and out.logits.is_cuda
    np.testing.assert_allclose(out.denoised.cpu().numpy(), expected.denoised, atol=1e-5)
    np.testing.assert_allclose(out.logits.cpu().numpy(), expected.logits, atol=1e-5)


def test_a_plan_runs_as_a_self_ensemble_within_its_batch_profile(artifacts: dict[str, Any]) -> None:
    """Batch 1..4: two 64x64 images make four calls of two transforms each; numpy and CUDA tensors agree."""
    import torch

    from addunet_edge.engines.ensemble import DIHEDRAL, SelfEnsemble, transform, untransform
    from addunet_edge.engines.tensorrt import TensorRTEngine

    noisy = _images(2, 64, seed=9)
    with TensorRTEngine(artifacts["plans"]["fp32"]) as engine:
        ensemble = SelfEnsemble(engine)
        out = ensemble(noisy)
        by_hand = [
            untransform(engine(np.ascontiguousarray(transform(noisy, k, f))).denoised, k, f) for k, f in DIHEDRAL
        ]
        wide = ensemble(np.ascontiguousarray(np.concatenate([noisy, noisy], axis=3)[:, :, :32]))  # 32x128
        on_gpu = ensemble(torch.from_numpy(noisy).cuda()) if torch.cuda.is_available() else None
    assert ensemble.usage()["engine_calls"] == 4 + 4 + (4 if on_gpu is not None else 0)
    assert ensemble.info.profile.max_hw == (128, 128) and ensemble.info.backend == "tensorrt"
    np.testing.assert_allclose(out.denoised, np.mean(by_hand, axis=0), atol=1e-5)
    assert wide.denoised.shape == (2, 1, 32, 128)
    if on_gpu is not None:
        assert isinstance(on_gpu.denoised, torch.Tensor) and on_gpu.denoised.is_cuda
        np.testing.assert_allclose(on_gpu.denoised.cpu().numpy(), out.denoised, atol=1e-5)
        np.testing.assert_allclose(on_gpu.logits.cpu().numpy(), out.logits, atol=1e-5)


def test_cuda_graph_replays_the_same_result(artifacts: dict[str, Any]) -> None:
    from addunet_edge.engines.tensorrt import TensorRTEngine

    if not (available("cuda.bindings.runtime") or available("cuda.cudart")):
        pytest.skip("CUDA graphs need cuda-python; only pycuda is installed here")
    a, b = _images(2, 64, seed=7), _images(1, 128, seed=8)
    plan = artifacts["plans"]["fp16"]
    with TensorRTEngine(plan) as plain:
        expected_a, expected_b = plain(a).denoised, plain(b).denoised
    with TensorRTEngine(plan, cuda_graph=True) as graphed:
        for _ in range(2):  # capture, then replay; another shape in between recaptures
            np.testing.assert_allclose(graphed(a).denoised, expected_a, atol=1e-5)
            np.testing.assert_allclose(graphed(b).denoised, expected_b, atol=1e-5)
        latencies = graphed.time_inference((2, 1, 64, 64), 5, 2, include_copies=True, use_cuda_graph=True)
    assert len(latencies) == 5 and all(0 < ms < 10_000 for ms in latencies)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_every_plan_is_read_back_layer_by_layer(artifacts: dict[str, Any], precision: str) -> None:
    """The manifest records what each layer computes in, and it is what was asked for."""
    from addunet_edge.artifacts import read_manifest
    from addunet_edge.engines.plan import PlanLayers

    layers = PlanLayers.from_dict(read_manifest(artifacts["plans"][precision])["layers"])
    assert layers.layers and layers.by_device == {"gpu": len(layers.layers)}
    assert layers.by_precision.get(precision, 0) > 0
    if precision == "int8":  # the strongly typed int8 plan keeps the ONNX's float types outside Q/DQ
        assert set(layers.by_precision) <= {"int8", "fp16", "fp32", "int/bool"}


def test_doctor_self_test_builds_validates_and_benches_on_this_gpu(tmp_path: Path) -> None:
    """The command a Jetson user runs first, end to end on real TensorRT."""
    from rich.console import Console

    from addunet_edge.doctor import collect_report
    from addunet_edge.selftest import self_test

    result = self_test(tmp_path / "st", collect_report(), Console(quiet=True))
    assert result["passed"], (tmp_path / "st" / "report.md").read_text()
    assert result["layers"]["int8"]["precision"].get("int8", 0) > 0
    assert (tmp_path / "st" / "report.md").read_text().startswith("# addunet-edge self-test")
