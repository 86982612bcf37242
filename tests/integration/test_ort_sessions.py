"""One ONNX Runtime session factory: the engine runs an int8 model exactly as calibration scored it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tensorrt_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-16 AddUNet (ModelOpt quantizes convs of 16 channels and more) as a tensorrt-target int8 ONNX."""
    from addunet_edge.calibration import CalibrationSet, collect_ranges, quantize_int8
    from addunet_edge.checkpoint import save_checkpoint
    from addunet_edge.export import export_onnx
    from addunet_edge.model import ModelConfig, build_model

    folder = tmp_path_factory.mktemp("ort")
    torch.manual_seed(0)
    ckpt = save_checkpoint(folder / "m", build_model(ModelConfig(width=16, depth=2, num_classes=4)).eval())
    fp32, _ = export_onnx(ckpt, folder / "m.fp32.onnx")
    noisy = np.random.default_rng(0).random((16, 1, 32, 32), dtype=np.float32)
    ranges = collect_ranges(fp32, CalibrationSet(noisy), "minmax", progress=False)
    return quantize_int8(fp32, folder / "m.int8.tensorrt.onnx", ranges, target="tensorrt")


def test_the_engine_and_calibration_run_the_same_graph(tensorrt_int8: Path) -> None:
    from addunet_edge.calibration.graph import session
    from addunet_edge.engines import open_engine
    from addunet_edge.engines.ort import DISABLED_OPTIMIZERS

    x = np.random.default_rng(1).random((2, 1, 32, 32), dtype=np.float32)
    scored = session(tensorrt_int8).run(["denoised", "logits"], {"noisy": x})
    with open_engine(tensorrt_int8, threads=1) as engine:
        served = engine(x)
    # The same optimizer settings everywhere: what validate and run see is what calibration measured.
    np.testing.assert_array_equal(served.denoised, scored[0])
    np.testing.assert_array_equal(served.logits, scored[1])
    assert "WeightBiasQuantization" in DISABLED_OPTIMIZERS


def test_a_corrupt_model_is_refused_with_the_package_error(tmp_path: Path) -> None:
    from addunet_edge.engines.ort import ort_session
    from addunet_edge.errors import ArtifactError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ArtifactError, match="cannot be loaded by onnxruntime"):
        ort_session(bad)
