"""The packaged photo denoiser: it is a real checkpoint, `run` uses it when given no model, every command takes
it by name, and its fp32, fp16 and int8 ONNX stay within their drift budgets against the committed weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from addunet_edge import media
from addunet_edge.cli import app
from addunet_edge.errors import ArtifactError
from addunet_edge.metrics import psnr
from addunet_edge.pretrained import DEFAULT_MODEL, PRETRAINED, PRETRAINED_ROOT, pretrained_dir, resolve_model

torch = pytest.importorskip("torch")


def _invoke(*args: str | Path):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.fixture(scope="module")
def camera_crop() -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy at sigma 25) uint8 crops of scikit-image's camera, a photo the model never trained on."""
    from skimage import data

    clean = data.camera()[128:256, 192:320]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)
    return clean, noisy


def _gain_db(clean: np.ndarray, noisy: np.ndarray, out: np.ndarray) -> float:
    c, n, o = (a.astype(np.float64).squeeze() / 255 for a in (clean, noisy, out))
    return psnr(o, c) - psnr(n, c)


def test_every_packaged_model_is_a_small_checkpoint_with_its_record() -> None:
    from addunet_edge.checkpoint import load_checkpoint

    assert DEFAULT_MODEL in PRETRAINED
    for name in PRETRAINED:
        folder = pretrained_dir(name)
        model, meta = load_checkpoint(folder)  # checks the recorded weights hash
        assert meta["data"]["dataset"] == "photos", meta.get("data")
        assert model.config.in_channels == 1 and model.config.num_classes == 0
        assert (folder / "model.safetensors").stat().st_size < 8 * 2**20, "a few MB at most"
        # how it was made and how good it is, beside the weights
        assert "addunet-edge train" in (folder / "TRAINING.md").read_text()
        log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
        assert log and all({"epoch", "step", "val_psnr_db"} <= set(r) for r in log)
        assert "BM3D" in (folder / "compare.md").read_text()
        assert not (folder / "last").exists(), "the resume state stays out of the package"
    assert sorted(p.name for p in PRETRAINED_ROOT.iterdir() if p.is_dir()) == sorted(PRETRAINED)


def test_a_path_wins_over_a_name_and_unknown_names_pass_through(tmp_path: Path) -> None:
    assert resolve_model(Path("photos")) == pretrained_dir("photos")
    assert resolve_model(Path("no-such-model")) == Path("no-such-model")  # its own error comes later
    mine = tmp_path / "photos"
    mine.mkdir()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert resolve_model(Path("photos")) == Path("photos")  # the user's folder, not ours
    finally:
        os.chdir(cwd)
    with pytest.raises(ArtifactError, match="packaged models are: photos"):
        pretrained_dir("faces")


def test_run_with_no_model_denoises_a_photo_with_the_packaged_one(
    tmp_path: Path, camera_crop: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean, noisy = camera_crop
    media.write_image(tmp_path / "noisy.png", noisy)
    monkeypatch.chdir(tmp_path)
    result = _invoke("run", "noisy.png", "--threads", "1")  # no model, no --out
    assert result.exit_code == 0, result.output
    assert "no model given: using the packaged model 'photos'" in " ".join(result.output.split())
    out = media.read_image(tmp_path / "denoised" / "noisy.png")
    assert out.shape == noisy.shape and out.dtype == np.uint8
    assert _gain_db(clean, noisy, out) > 5.0


def test_fp32_fp16_int8_of_the_packaged_model_validate_within_budget(tmp_path: Path) -> None:
    """`build photos` and `validate photos ...` by name, on the held-out photos, at sigma 15, 25 and 50."""
    out = tmp_path / "engines"
    for precision in ("fp16", "int8"):
        result = _invoke(
            "build", "photos", "--precision", precision, "--backend", "onnxruntime", "--out", out,
            "--calibration-images", "64", "--max-psnr-drift", "0.25",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    onnx = sorted(out.glob("*.onnx"))
    names = {p.name for p in onnx}
    assert names == {"photos.fp32.onnx", "photos.fp16.onnx", "photos.int8.cpu.onnx"}, names
    from addunet_edge.engines import open_engine

    for path in onnx:  # a size that is no multiple of the strided graph's 16: every engine pads it
        with open_engine(path, threads=1) as engine:
            assert engine.info.profile.size_multiple == 16, path
            assert engine(np.full((1, 1, 45, 37), 0.5, np.float32)).denoised.shape == (1, 1, 45, 37)
    report = tmp_path / "validation.json"
    result = _invoke("validate", "photos", *onnx, "--json", report)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["passed"] is True
    rows = doc["rows"]
    assert {r["precision"] for r in rows} >= {"fp32", "fp16", "int8"}
    assert {r["sigma"] for r in rows} == {15.0, 25.0, 50.0}
    assert all(r["passed"] for r in rows), rows


def test_bench_and_info_take_the_name(tmp_path: Path) -> None:
    result = _invoke("info", "photos", "--json")
    assert result.exit_code == 0, result.output
    assert '"unshuffle"' in result.output or '"resampling"' in result.output
    result = _invoke("bench", "photos", "--sizes", "64x64", "--warmup", "1", "--iterations", "2", "--threads", "1")
    assert result.exit_code == 0, result.output
