"""Export parity, the engine contract over every backend available here, build, and what import pulls in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from addunet_edge._lazy import available
from addunet_edge.artifacts import manifest_path
from addunet_edge.cli import app
from addunet_edge.engines import open_engine
from addunet_edge.errors import ArtifactError, ShapeError
from addunet_edge.export import OPSET, export_onnx

runner = CliRunner()


@pytest.fixture(scope="module")
def fp32(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, report = export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.fp32.onnx")
    assert report.passed and report.max_abs_error <= 1e-4
    return path


@pytest.fixture(scope="module")
def variants(tiny_checkpoint: Path, fp32: Path) -> dict[str, Path]:
    from addunet_edge.build import make_precision_onnx

    out = fp32.parent
    return {
        "fp32": fp32,
        "fp16": make_precision_onnx(tiny_checkpoint, out, "fp16", progress=False),
        "int8-cpu": make_precision_onnx(tiny_checkpoint, out, "int8", target="cpu", progress=False),
        "int8-tensorrt": make_precision_onnx(tiny_checkpoint, out, "int8", target="tensorrt", progress=False),
    }


def test_export_graph_io_opset_and_manifest(fp32: Path) -> None:
    model = onnx.load(str(fp32))
    assert [i.name for i in model.graph.input] == ["noisy"]
    assert [o.name for o in model.graph.output] == ["denoised", "logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"] and dims[1].dim_value == 1
    out_dims = [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert out_dims == [["batch", 1, "height", "width"], ["batch", 10]]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == OPSET
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Softplus", "BatchNormalization"}, ops  # gates and norms folded at export
    assert not [i for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert sorted(p.name for p in fp32.parent.iterdir() if p.name.startswith(fp32.name)) == [
        fp32.name,
        manifest_path(fp32).name,
    ]  # weights inside the file: no external data beside it
    manifest = json.loads(manifest_path(fp32).read_text())
    assert manifest["precision"] == "fp32" and manifest["parity"]["passed"] and manifest["opset"] == OPSET
    assert {(c["batch"], c["height"]) for c in manifest["parity"]["cases"]} == {(1, 48), (3, 96)}


def test_export_names_nodes_by_module_and_carries_no_paths(fp32: Path) -> None:
    """Node names are the ones --exclude takes and TensorRT prints ('/head/Conv'), not torch.export's
    'node_conv2d_7'; no node keeps torch.export's metadata (stack traces with this machine's paths)."""
    model = onnx.load(str(fp32))
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names)
    assert {"/stem/Conv", "/head/Conv", "/encoders.0/conv1/Conv", "/decoders.1/act/Clip", "/classifier/fc/Gemm"} <= set(
        names
    ), names
    assert "/classifier/proj/proj.0/Conv" in names  # a Sequential's child, scoped as TorchScript did
    assert not any(n.startswith("node_") for n in names), names
    assert model.graph.node[0].output[0] == "/stem/Conv_output_0"
    assert not any(n.metadata_props for n in model.graph.node) and not model.metadata_props
    assert b"addunet_edge" not in fp32.read_bytes()  # no stack trace, no source path


def test_export_uses_torch_export_and_no_deprecated_exporter(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TorchScript exporter is never asked for, none of its deprecation warnings is raised, and the
    same checkpoint exports to the same bytes twice (nothing of the machine or the moment gets in)."""
    import warnings

    import torch

    calls: list[dict[str, object]] = []
    real = torch.onnx.export

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, _ = export_onnx(tiny_checkpoint, tmp_path / "a.fp32.onnx")
    assert calls and all(c.get("dynamo") is True for c in calls), calls
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "TorchScript" in m or "legacy" in m.lower()], messages
    second, _ = export_onnx(tiny_checkpoint, tmp_path / "b.fp32.onnx")
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 64), (256, 256)])
def test_exported_graph_runs_any_batch_and_size(fp32: Path, height: int, width: int) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(0).random((batch, 1, height, width), dtype=np.float32)
        denoised, logits = sess.run(None, {"noisy": x})
        assert denoised.shape == x.shape and logits.shape == (batch, 10)


def test_multiscale_export_takes_multiples_and_engines_pad(tmp_path: Path) -> None:
    """A strided model's graph takes multiples of 2**depth (its dims say so); the engine pads the rest."""
    import torch

    from addunet_edge.checkpoint import save_checkpoint
    from addunet_edge.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, depth=2, num_classes=10, resampling="stride")).eval()
    save_checkpoint(tmp_path / "ck", model)
    path, report = export_onnx(tmp_path / "ck", tmp_path / "ms.fp32.onnx")
    assert report.passed and report.max_abs_error <= 1e-4
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "4*height", "4*width"]
    x = np.random.default_rng(0).random((2, 1, 30, 21), dtype=np.float32)
    with open_engine(path) as engine:
        out = engine(x)
    with torch.no_grad():
        ref, _ = model(torch.from_numpy(x))
    np.testing.assert_allclose(out.denoised, ref.numpy(), atol=1e-4)


def test_a_model_too_large_for_one_file_is_refused(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import addunet_edge.export as export_module

    monkeypatch.setattr(export_module, "MAX_WEIGHT_BYTES", 1024)
    with pytest.raises(ArtifactError, match="2 GiB"):
        export_onnx(tiny_checkpoint, tmp_path / "big.fp32.onnx")
    assert not list(tmp_path.iterdir())


def test_engine_contract_over_every_backend(variants: dict[str, Path], tiny_checkpoint: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 24, 20), dtype=np.float32)
    with open_engine(tiny_checkpoint) as ref:
        ref_out = ref(x)
    # TensorRT plans join this contract in tests/gpu, where a GPU builds them.
    for name, path in {"torch": tiny_checkpoint, **variants}.items():
        with open_engine(path) as engine:
            info = engine.info
            assert info.profile.channels == 1 and info.num_classes == 10, name
            out = engine(x)
            assert out.denoised.shape == x.shape and out.denoised.dtype == np.float32, name
            assert out.logits.shape == (2, 10), name
            single = engine(x[0])  # (C, H, W) is promoted to a batch of one
            assert single.denoised.shape == (1, 1, 24, 20)
            tol = {"torch": 1e-6, "fp32": 1e-4, "fp16": 2e-2}.get(name, 0.2)
            assert np.max(np.abs(out.denoised - ref_out.denoised)) < tol, name
            with pytest.raises(ShapeError, match="channel"):
                engine(np.zeros((1, 3, 8, 8), np.float32))
            with pytest.raises(ShapeError):
                engine(np.zeros((8, 8), np.float32))
            with pytest.raises(ShapeError, match="dtype"):
                engine(np.zeros((1, 1, 8, 8), np.int32))


def test_precision_is_explicit_in_each_graph(variants: dict[str, Path]) -> None:
    fp16 = onnx.load(str(variants["fp16"]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for key in ("int8-cpu", "int8-tensorrt"):
        ops = {n.op_type for n in onnx.load(str(variants[key])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, key
        manifest = json.loads(manifest_path(variants[key]).read_text())
        assert manifest["precision"] == "int8" and manifest["target"] == key.split("-")[1]


def test_tampered_and_corrupt_onnx_are_refused(fp32: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "tampered.fp32.onnx"
    shutil.copy(fp32, bad)
    shutil.copy(manifest_path(fp32), manifest_path(bad))
    with open(bad, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        open_engine(bad)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x01garbage")
    with pytest.raises(ArtifactError, match="cannot be loaded"), open_engine(corrupt) as engine:
        engine(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ArtifactError, match="cannot tell which backend"):
        open_engine(manifest_path(fp32))


def test_cli_export_and_build_as_a_user_runs_them(tiny_checkpoint: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "m.fp32.onnx")])
    assert res.exit_code == 0, res.output
    assert "parity" in res.output and (tmp_path / "m.fp32.onnx").exists()
    res = runner.invoke(app, ["build", str(tiny_checkpoint), "--precision", "fp16", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "tiny.fp16.onnx").exists()
    if not available("tensorrt"):
        assert "tensorrt is not installed" in res.output
        res = runner.invoke(app, ["build", str(tiny_checkpoint), "--backend", "tensorrt", "--out", str(tmp_path / "t")])
        assert res.exit_code != 0 and "tensorrt" in res.output
        leftovers = list((tmp_path / "t").iterdir()) if (tmp_path / "t").exists() else []
        assert leftovers == []


def test_importing_the_package_pulls_in_no_backend() -> None:
    code = (
        "import sys, addunet_edge, addunet_edge.engines, addunet_edge.engines.base;"
        "bad = [m for m in ('onnxruntime', 'tensorrt', 'cuda', 'pycuda', 'cv2', 'torch') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_parity_failure_writes_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from addunet_edge.errors import ParityError

    out = tmp_path / "strict.fp32.onnx"
    with pytest.raises(ParityError, match="nothing was written"):
        export_onnx(tiny_checkpoint, out, tolerance=0.0 - 1.0)
    assert not out.exists() and not manifest_path(out).exists()
    assert not list(tmp_path.iterdir())


def test_conv_head_with_stop_gradient_exports_with_parity(tmp_path: Path) -> None:
    import torch

    from addunet_edge.checkpoint import save_checkpoint
    from addunet_edge.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, depth=2, num_classes=10, head="conv", head_detach=True)).eval()
    save_checkpoint(tmp_path / "ck", model)
    path, report = export_onnx(tmp_path / "ck", tmp_path / "conv.fp32.onnx")
    assert report.passed and report.max_abs_error <= 1e-4
    with open_engine(path) as engine:
        out = engine(np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32))
    with torch.no_grad():
        _, logits = model(torch.from_numpy(np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32)))
    np.testing.assert_allclose(out.logits, logits.numpy(), atol=1e-4)
