"""`validate`: every artifact of a tiny trained AddUNet against its PyTorch checkpoint, budgets, refusals, reports."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import typer  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from addunet_edge.artifacts import read_manifest, write_manifest  # noqa: E402
from addunet_edge.checkpoint import save_checkpoint  # noqa: E402
from addunet_edge.errors import ArtifactError  # noqa: E402
from addunet_edge.export import export_onnx  # noqa: E402
from addunet_edge.model import ModelConfig, build_model  # noqa: E402
from addunet_edge.validation import validate  # noqa: E402
from addunet_edge.validation_results import DEFAULT_BUDGETS, SCHEMA, Budget  # noqa: E402

ROW_KEYS = {
    "artifact",
    "backend",
    "precision",
    "sigma",
    "psnr_db",
    "ssim",
    "psnr_drift_db",
    "fidelity_psnr_db",
    "max_abs_error",
    "accuracy",
    "accuracy_change_pt",
    "agreement",
    "budget",
    "passed",
}
SIGMAS = (15.0, 50.0)
TINY = {"width": 8, "depth": 2, "num_classes": 10}  # the tiny_checkpoint's config


def _cli() -> typer.Typer:
    """The real app, as a user runs it."""
    from addunet_edge.cli import app

    return app


def _invoke(*args: str):
    # A wide terminal, so rich does not fold the table's cells.
    return CliRunner().invoke(_cli(), ["validate", *args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, digits_npz: Path) -> dict[str, Path]:
    """fp32, fp16 and int8 (cpu target) ONNX of the tiny checkpoint, plus a fp32 copy with perturbed convs."""
    from addunet_edge.calibration import collect_ranges, convert_fp16, quantize_int8
    from addunet_edge.data import load_dataset

    out = tmp_path_factory.mktemp("artifacts")
    fp32, _ = export_onnx(tiny_checkpoint, out / "tiny.fp32.onnx")
    ds = load_dataset(digits_npz, size=16)
    calib = ds.train.epoch(np.random.default_rng(1))[0][:48]
    calib = np.clip(calib + np.random.default_rng(2).normal(0, 25 / 255, calib.shape), 0, 1).astype(np.float32)
    fp16 = convert_fp16(fp32, out / "tiny.fp16.onnx", progress=False)
    ranges = collect_ranges(fp32, calib, "percentile", progress=False)
    int8 = quantize_int8(fp32, out / "tiny.int8.onnx", ranges, target="cpu")

    # A deliberately broken artifact: every conv weight perturbed, re-saved with the fp32 manifest's fields.
    model = onnx.load(str(fp32))
    rng = np.random.default_rng(0)
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    for init in model.graph.initializer:
        if init.name in conv_weights:
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((w + rng.normal(0, 0.05, w.shape)).astype(w.dtype), init.name))
    broken = out / "broken.fp32.onnx"
    onnx.save(model, str(broken))
    fields = {
        k: v
        for k, v in read_manifest(fp32).items()
        if k not in ("schema", "artifact", "sha256", "size_bytes", "created_unix", "host", "versions")
    }
    write_manifest(broken, **fields)
    return {"fp32": fp32, "fp16": fp16, "int8": int8, "broken": broken}


@pytest.fixture(scope="module")
def result(tiny_checkpoint: Path, artifacts: dict[str, Path]):
    paths = [artifacts["fp32"], artifacts["fp16"], artifacts["int8"]]
    return validate(tiny_checkpoint, paths, sigmas=SIGMAS, batch=8, progress=False)


def test_every_field_for_every_precision(result, artifacts: dict[str, Path]) -> None:
    assert len(result.rows) == 4 * len(SIGMAS)
    assert [a.precision for a in result.artifacts] == ["fp32", "fp32", "fp16", "int8"]
    assert result.artifacts[0].reference and result.artifacts[0].backend == "torch"
    assert result.dataset["images"] == 18 and result.dataset["labels"]  # 15 % of the 120 digits, held out
    ref = {r.sigma: r for r in result.rows if r.reference}
    assert all(r.psnr_drift_db == 0.0 and r.accuracy_change_pt == 0.0 and r.agreement == 1.0 for r in ref.values())
    assert ref[50.0].psnr_db < ref[15.0].psnr_db  # stronger noise, worse result: real images were denoised
    for row in result.rows:
        d = row.to_dict()
        assert set(d) >= ROW_KEYS
        assert row.images == 18
        assert 0.0 <= row.accuracy <= 1.0 and 0.0 <= row.agreement <= 1.0
        assert row.noisy_psnr_db == pytest.approx(ref[row.sigma].noisy_psnr_db)  # every engine saw the same input
        assert -1.0 <= row.ssim <= 1.0
        if not row.reference:
            # drift is exactly PSNR minus the reference's at the same sigma, accuracy change likewise in
            # points: both negative when worse
            assert row.psnr_drift_db == pytest.approx(row.psnr_db - ref[row.sigma].psnr_db, abs=1e-12)
            assert row.accuracy_change_pt == pytest.approx(100 * (row.accuracy - ref[row.sigma].accuracy))
            assert row.budget == DEFAULT_BUDGETS[row.precision]
            assert math.isfinite(row.fidelity_psnr_db) or row.max_abs_error == 0.0
    fp32 = [r for r in result.rows if r.artifact == str(artifacts["fp32"])]
    assert all(r.max_abs_error < 1e-4 and r.fidelity_psnr_db > 80 and abs(r.psnr_drift_db) < 1e-4 for r in fp32)
    int8 = [r for r in result.rows if r.precision == "int8"]
    assert all(r.max_abs_error > max(f.max_abs_error for f in fp32) for r in int8)  # int8 really differs
    assert all(r.target == "cpu" for r in int8)


def test_reports_and_json_schema(result, tmp_path: Path) -> None:
    from PIL import Image

    from addunet_edge.reports import markdown, write_reports

    written = write_reports(result, tmp_path / "report")
    assert {p.name for p in written.values()} == {"validation.json", "report.md", "crops.png", "drift.png"}
    doc = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert doc["schema"] == SCHEMA and doc["schema_version"] == 2
    assert {"checkpoint", "dataset", "rows", "budgets", "passed", "artifacts"} <= set(doc)
    assert doc["passed"] is result.passed
    assert doc["budgets"]["int8"] == {"max_psnr_drift_db": 0.3, "max_acc_drop_pt": 1.0}
    assert all(set(r) >= ROW_KEYS for r in doc["rows"])
    assert next(r for r in doc["rows"] if r["backend"] == "torch")["fidelity_psnr_db"] is None  # inf -> null
    for name, min_width in (("crops.png", 600), ("drift.png", 400)):
        with Image.open(tmp_path / "report" / name) as im:
            im.verify()
        with Image.open(tmp_path / "report" / name) as im:
            assert im.format == "PNG" and im.width >= min_width
    md = (tmp_path / "report" / "report.md").read_text()
    assert md == markdown(result)
    assert "tiny.int8.onnx" in md and "![" in md
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "report").iterdir())


def test_cli_passes_within_budget(tiny_checkpoint: Path, artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    res = _invoke(
        str(tiny_checkpoint), str(artifacts["fp32"]), "--sigma", "25", "--json", str(out), "--batch-size", "7"
    )
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and doc["sigmas"] == [25.0]
    assert len(doc["rows"]) == 2


def test_cli_broken_artifact_fails_budget(tiny_checkpoint: Path, artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    res = _invoke(
        str(tiny_checkpoint),
        str(artifacts["fp32"]),
        str(artifacts["broken"]),
        "--sigma",
        "25",
        "--json",
        str(out),
        "--report",
        str(tmp_path / "rep"),
    )
    assert res.exit_code == 3, res.output
    assert "FAIL" in res.output and "broken.fp32.onnx" in res.output
    doc = json.loads(out.read_text())
    # The error line prints the worst drift and accuracy change with the JSON's sign (negative = worse).
    rows = [r for r in doc["rows"] if Path(r["artifact"]).name == "broken.fp32.onnx"]
    worst_drift = min(r["psnr_drift_db"] for r in rows)
    assert worst_drift < 0 and f"worst drift {worst_drift:+.4f} dB" in " ".join(res.output.split())
    assert "(budget -0.01 dB / -0 pt)" in " ".join(res.output.split())
    verdict = {Path(a["artifact"]).name: a["passed"] for a in doc["artifacts"]}
    assert verdict == {"tiny": True, "tiny.fp32.onnx": True, "broken.fp32.onnx": False}
    assert doc["passed"] is False
    assert (tmp_path / "rep" / "drift.png").is_file()


def test_budget_override_decides(tiny_checkpoint: Path, artifacts: dict[str, Path]) -> None:
    generous = validate(
        tiny_checkpoint,
        [artifacts["broken"]],
        sigmas=(25,),
        budgets=Budget(max_psnr_drift_db=100.0, max_acc_drop_pt=100.0),
        progress=False,
    )
    assert generous.passed
    strict = validate(tiny_checkpoint, [artifacts["broken"]], sigmas=(25,), limit=5, progress=False)
    assert not strict.passed and strict.dataset["images"] == 5


@pytest.mark.parametrize(
    ("change", "what"),
    [({"width": 16}, "width"), ({"in_channels": 3}, "in_channels"), ({"num_classes": 4}, "num_classes")],
)
def test_mismatched_artifact_refused_before_inference(
    tiny_checkpoint: Path, tmp_path: Path, change: dict, what: str
) -> None:
    other = save_checkpoint(tmp_path / "other", build_model(ModelConfig(**{**TINY, **change})))
    onnx_path, _ = export_onnx(other, tmp_path / "other.fp32.onnx")
    # A dataset that does not exist: the refusal must come before any data is loaded or run.
    with pytest.raises(ArtifactError) as e:
        validate(tiny_checkpoint, [onnx_path], dataset=tmp_path / "missing.npz", progress=False)
    msg = str(e.value)
    assert str(onnx_path) in msg and str(tiny_checkpoint) in msg and what in msg
    res = _invoke(str(tiny_checkpoint), str(onnx_path))
    assert res.exit_code == 2 and "does not belong" in res.output


def test_mismatch_traced_through_fp16_manifest(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from addunet_edge.calibration import convert_fp16

    other = save_checkpoint(tmp_path / "wide", build_model(ModelConfig(**{**TINY, "width": 12})))
    fp32, _ = export_onnx(other, tmp_path / "wide.fp32.onnx")
    fp16 = convert_fp16(fp32, tmp_path / "wide.fp16.onnx", progress=False)
    with pytest.raises(ArtifactError, match=r"width 12 \(artifact\) vs 8"):
        validate(tiny_checkpoint, [fp16], progress=False)


def test_retrained_weights_warn_but_run(tiny_checkpoint: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())["model"]
    fresh = save_checkpoint(tmp_path / "fresh", build_model(ModelConfig.from_dict(cfg)))
    onnx_path, _ = export_onnx(fresh, tmp_path / "fresh.fp32.onnx")
    shutil.rmtree(fresh)  # the artifact outlives the checkpoint it came from; its manifest still says which
    res = validate(tiny_checkpoint, [onnx_path], sigmas=(25,), limit=6, progress=False)
    assert any("other weights" in w for w in res.warnings)
    assert not res.passed  # untrained weights are far from the trained reference


def test_denoise_only_on_photos(tmp_path: Path) -> None:
    """num_classes 0, dataset 'photos' taken from the checkpoint: accuracy fields are NaN / null, reports work."""
    from PIL import Image

    from addunet_edge.reports import write_reports

    torch.manual_seed(0)
    cfg = ModelConfig(width=8, depth=2, num_classes=0, resampling="stride")
    ckpt = save_checkpoint(tmp_path / "photo", build_model(cfg), data={"source": "photos"})
    onnx_path, _ = export_onnx(ckpt, tmp_path / "photo.fp32.onnx")
    res = validate(ckpt, [onnx_path], sigmas=(25,), limit=4, batch=3, progress=False)
    assert res.dataset["name"] == "photos" and res.dataset["image_shape"] == [1, 128, 128]
    assert res.passed
    for row in res.rows:
        assert math.isnan(row.accuracy) and math.isnan(row.agreement) and math.isnan(row.accuracy_change_pt)
        d = row.to_dict()
        assert d["accuracy"] is None and d["accuracy_change_pt"] is None and d["agreement"] is None
    written = write_reports(res, tmp_path / "rep")
    with Image.open(written["crops"]) as im:
        assert im.format == "PNG"
    assert res.samples is not None and res.samples.clean.shape == (3, 1, 96, 96)  # centre crops of 128 tiles
