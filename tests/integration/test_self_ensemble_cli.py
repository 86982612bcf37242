"""--self-ensemble end to end: `validate`, `compare` and `run` on a tiny trained checkpoint and its ONNX."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from addunet_edge import media  # noqa: E402
from addunet_edge.artifacts import read_json  # noqa: E402
from addunet_edge.engines import SelfEnsemble, open_engine  # noqa: E402
from addunet_edge.engines.ensemble import DIHEDRAL, transform, untransform  # noqa: E402
from addunet_edge.errors import ShapeError  # noqa: E402


def _app() -> typer.Typer:
    """The real app, as a user runs it."""
    from addunet_edge.cli import app

    return app


def _invoke(*args: str):
    return CliRunner().invoke(_app(), list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    from addunet_edge.export import export_onnx

    path, _ = export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("ensemble") / "tiny.fp32.onnx")
    return Path(path)


@pytest.fixture(scope="module")
def fixed_onnx(tmp_path_factory: pytest.TempPathFactory, onnx_model: Path) -> Path:
    """The same model with its input fixed at 16x24 (as a plan for one camera size would be); no manifest."""
    model = onnx.load(str(onnx_model))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in ((dims[2], 16), (dims[3], 24)):
        dim.Clear()
        dim.dim_value = value
    path = tmp_path_factory.mktemp("fixed") / "tiny16x24.onnx"
    onnx.save(model, str(path))
    return path


def test_every_backend_runs_as_a_self_ensemble(tiny_checkpoint: Path, onnx_model: Path, tmp_path: Path) -> None:
    """The one wrapper over PyTorch, ONNX Runtime fp32 and fp16: the mean of the eight passes, the protocol kept."""
    from addunet_edge.calibration import convert_fp16

    fp16 = convert_fp16(onnx_model, tmp_path / "tiny.fp16.onnx", progress=False)
    x = np.random.default_rng(0).random((3, 1, 12, 20), dtype=np.float32)
    for path in (tiny_checkpoint, onnx_model, fp16):
        with open_engine(path, threads=1) as engine, SelfEnsemble(engine) as ensemble:
            pred = ensemble(x)
            outs, logits = [], []
            for k, flip in DIHEDRAL:
                one = engine(np.ascontiguousarray(transform(x, k, flip)))
                outs.append(untransform(one.denoised, k, flip))
                logits.append(one.logits)
            assert ensemble.info.precision == engine.info.precision and ensemble.info.backend == engine.info.backend
            assert pred.denoised.shape == x.shape and pred.logits.shape == (3, 10)
            np.testing.assert_allclose(pred.denoised, np.mean(outs, axis=0), atol=1e-6, err_msg=str(path))
            upright = logits[list(DIHEDRAL).index((0, False))]
            np.testing.assert_allclose(pred.logits, upright, atol=1e-5, err_msg=str(path))
            assert ensemble(x[0]).denoised.shape == (1, 1, 12, 20)  # (C, H, W) is promoted, as by every engine
            with pytest.raises(ShapeError, match="channel"):
                ensemble(np.zeros((1, 3, 8, 8), np.float32))
            with pytest.raises(ShapeError, match="dtype"):
                ensemble(np.zeros((1, 1, 8, 8), np.int32))


def test_validate_self_ensemble_end_to_end(tiny_checkpoint: Path, onnx_model: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "v.json", tmp_path / "report"
    res = _invoke(
        *("validate", str(tiny_checkpoint), str(onnx_model), "--sigma", "15,25,50", "--self-ensemble"),
        *("--json", str(out), "--report", str(report)),
    )
    assert res.exit_code == 0, res.output
    assert "tiny.fp32.onnx +x8" in res.output and "tiny (PyTorch) +x8" in res.output
    assert "self-ensemble: σ=25: PyTorch +x8" in res.output
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and all(r["self_ensemble"] for r in doc["rows"])
    assert all(a["self_ensemble"] for a in doc["artifacts"])
    ensemble = doc["self_ensemble"]
    assert ensemble["transforms"] == 8 and ensemble["label"] == "+x8"
    assert set(ensemble["reference"]) == {"15", "25", "50"}
    reference_rows = {f"{r['sigma']:g}": r for r in doc["rows"] if r["reference"]}
    for sigma, r in ensemble["reference"].items():
        assert r["psnr_db"] == pytest.approx(reference_rows[sigma]["psnr_db"])
        assert r["gain_db"] == pytest.approx(r["psnr_db"] - r["psnr_db_without"])
        # Measured on the noisy digits: the ensemble is not worse than one pass (+0.16 to +0.34 dB here).
        assert r["gain_db"] >= 0.0, (sigma, r)
        assert r["seconds"] > 0 and r["seconds_without"] > 0 and math.isfinite(r["time_ratio"])
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["accuracy_without"] <= 1.0
    md = (report / "report.md").read_text()
    assert "## Self-ensemble" in md and "| tiny.fp32.onnx +x8 |" in md
    # Without the option nothing changes: no label, no block.
    plain = _invoke("validate", str(tiny_checkpoint), str(onnx_model), "--sigma", "25", "--json", str(out))
    assert plain.exit_code == 0 and "+x8" not in plain.output
    doc = json.loads(out.read_text())
    assert doc["self_ensemble"] is None and not any(r["self_ensemble"] for r in doc["rows"])


def test_validate_refuses_a_plan_that_cannot_turn(tiny_checkpoint: Path, fixed_onnx: Path) -> None:
    res = _invoke("validate", str(tiny_checkpoint), str(fixed_onnx), "--sigma", "25", "--self-ensemble")
    assert res.exit_code == 2, res.output
    assert "no input shape both ways round (only 16x24)" in " ".join(res.output.split())


def test_compare_self_ensemble_end_to_end(tiny_checkpoint: Path, onnx_model: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "c.json", tmp_path / "report"
    res = _invoke(
        *("compare", str(tiny_checkpoint), str(onnx_model), "--images", "camera,coins", "--crop", "40"),
        *("--sigma", "25", "--baselines", "none", "--self-ensemble", "--json", str(out), "--report", str(report)),
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    names = [m["name"] for m in doc["methods"]]
    assert names == [
        "noisy input",
        "tiny (torch fp32)",
        "tiny (torch fp32) +x8",
        "tiny.fp32.onnx (onnxruntime fp32)",
        "tiny.fp32.onnx (onnxruntime fp32) +x8",
    ]
    assert doc["self_ensemble"] is True and doc["skipped"] == {}
    ensembled = doc["methods"][2]["details"]["engine"]["extra"]["self_ensemble"]
    assert ensembled == {"transforms": 8, "fallback_transforms": None}
    summary = {name: doc["summary"][name]["25"] for name in names}
    for name in names[1:]:
        assert summary[name]["seconds"] > 0, name  # every method is timed, the ensemble too
    assert summary["tiny.fp32.onnx (onnxruntime fp32) +x8"]["psnr_db"] == pytest.approx(
        summary["tiny (torch fp32) +x8"]["psnr_db"], abs=0.01
    )
    assert "+x8" in res.output and "s/img" in res.output
    md = (report / "compare.md").read_text()
    assert "| tiny (torch fp32) +x8 |" in md and "test-time self-ensemble" in md


def test_run_self_ensemble_end_to_end(tiny_checkpoint: Path, onnx_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    media.write_image(folder / "wide.png", rng.integers(0, 256, (20, 28), dtype=np.uint8))
    media.write_image(folder / "rgb.png", rng.integers(0, 256, (18, 18, 3), dtype=np.uint8))
    outputs = {}
    for model in (tiny_checkpoint, onnx_model):
        for flag in ((), ("--self-ensemble",)):
            out = tmp_path / f"out_{model.name}_{len(flag)}"
            res = _invoke("run", str(model), str(folder), "--out", str(out), "--threads", "1", *flag)
            assert res.exit_code == 0, res.output
            summary = read_json(out / "run_summary.json")
            if flag:
                assert "self-ensemble" in res.output and "x8 on 2 frames or tiles" in res.output
                assert summary["self_ensemble"]["images"] == {"8": 2, "4": 0}
            else:
                assert summary["self_ensemble"] is None and "self-ensemble" not in res.output
            outputs[(model.name, bool(flag))] = media.read_image(out / "wide.png")
    assert outputs[("tiny", True)].shape == (20, 28)
    assert not np.array_equal(outputs[("tiny", True)], outputs[("tiny", False)])
    # PyTorch and ONNX Runtime agree with the ensemble too (8-bit output: at most one step apart).
    diff = outputs[("tiny", True)].astype(int) - outputs[("tiny.fp32.onnx", True)].astype(int)
    assert np.abs(diff).max() <= 1


def test_run_falls_back_to_four_on_a_fixed_non_square_model(fixed_onnx: Path, tmp_path: Path) -> None:
    with open_engine(fixed_onnx) as engine, pytest.raises(ShapeError, match="both ways round"):
        SelfEnsemble(engine)
    media.write_image(tmp_path / "in" / "frame.png", np.random.default_rng(1).integers(0, 256, (16, 24), np.uint8))
    out = tmp_path / "out"
    res = _invoke("run", str(fixed_onnx), str(tmp_path / "in"), "--out", str(out), "--self-ensemble", "--overlap", "4")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "Running the 4 shape-keeping transforms instead (x4)" in text
    assert "x4 on 1 (no quarter turns" in text and "x8 on" not in text
    usage = read_json(out / "run_summary.json")["self_ensemble"]
    assert usage["fallback"] is True and usage["images"] == {"8": 0, "4": 1}
