"""`run` and `deepstream-config` end to end: a tiny real AddUNet exported to ONNX; images, video, Ctrl-C."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from addunet_edge import media
from addunet_edge.artifacts import read_json, write_manifest
from addunet_edge.engines.base import Engine, EngineInfo
from addunet_edge.errors import ArtifactError, DataError, ShapeError
from addunet_edge.media_runner import MediaRunner
from addunet_edge.pipeline import FrameDenoiser

cv2 = pytest.importorskip("cv2")
from video_files import video_info  # noqa: E402  (it needs cv2)

torch = pytest.importorskip("torch")

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from addunet_edge.checkpoint import save_checkpoint
    from addunet_edge.export import export_onnx
    from addunet_edge.model import ModelConfig, build_model

    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = ModelConfig(in_channels=1, width=8, depth=2, num_classes=NUM_CLASSES, resampling="none")
    model = build_model(config).eval()
    save_checkpoint(root / "ckpt", model)
    onnx_path, _parity = export_onnx(root / "ckpt", root / "model.fp32.onnx")
    return Path(onnx_path)


@pytest.fixture(scope="module")
def engine(onnx_model: Path):
    from addunet_edge.engines import open_engine

    with open_engine(onnx_model, threads=1) as e:
        yield e


def _app() -> typer.Typer:
    """The real app, as a user runs it."""
    from addunet_edge.cli import app

    return app


def _write_video(path: Path, frames: int, hw: tuple[int, int] = (48, 64)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (hw[1], hw[0]), True)
    rng = np.random.default_rng(3)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    writer.release()


@pytest.fixture()
def image_folder(tmp_path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = {
        "gray8.png": rng.integers(0, 256, (37, 53), dtype=np.uint8),
        "gray16.png": rng.integers(0, 65536, (40, 31), dtype=np.uint16),
        "rgb.png": rng.integers(0, 256, (33, 47, 3), dtype=np.uint8),
        "sub/photo.tif": rng.integers(0, 65536, (29, 35, 3), dtype=np.uint16),
    }
    folder = tmp_path / "in"
    for name, arr in images.items():
        media.write_image(folder / name, arr)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200))
    return images


# -- media ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize(
    "shape,dtype",
    [((20, 30), np.uint8), ((20, 30), np.uint16), ((20, 30, 3), np.uint8), ((20, 30, 3), np.uint16)],
)
def test_images_round_trip_exactly(tmp_path, suffix, shape, dtype):
    hi = np.iinfo(dtype).max
    arr = np.random.default_rng(1).integers(0, hi + 1, shape).astype(dtype)
    media.write_image(tmp_path / f"x{suffix}", arr)
    back = media.read_image(tmp_path / f"x{suffix}")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, arr)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims a huge size (what a decompression bomb looks like before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


def test_decompression_bomb_and_garbage_are_refused(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 60_000, 60_000)
    with pytest.raises(DataError, match="decompression bomb"):
        media.read_image(tmp_path / "bomb.png")
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"junk\.jpg"):
        media.read_image(tmp_path / "junk.jpg")


# -- run end to end ----------------------------------------------------------------------------------------
def test_run_folder_and_video_end_to_end(tmp_path, onnx_model, image_folder):
    _write_video(tmp_path / "clip.mp4", frames=7)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        _app(),
        [
            *("run", str(onnx_model), str(tmp_path / "in"), str(tmp_path / "clip.mp4"), "--out", str(out)),
            *("--tile", "32", "--overlap", "16", "--side-by-side", "--threads", "1"),
        ],
    )
    assert result.exit_code == 0, result.output
    for name, arr in image_folder.items():
        back = media.read_image(out / name)  # stems, relative paths and formats kept
        assert back.shape == arr.shape and back.dtype == arr.dtype, name
        assert not np.array_equal(back, arr)  # the model did something
        assert media.read_image(out / "side_by_side" / name).shape[1] == 2 * arr.shape[1]
    assert not (out / "corrupt.png").exists()
    assert "corrupt.png" in result.output
    summary = read_json(out / "run_summary.json")
    assert [Path(s["input"]).name for s in summary["skipped"]] == ["corrupt.png"]
    assert len(summary["processed"]) == 5 and summary["frames"] == 4 + 7
    assert video_info(out / "clip.mp4") == (7, (48, 64))
    assert video_info(out / "side_by_side" / "clip.mp4") == (7, (48, 128))
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11
    assert all(
        0 <= int(r["class_index"]) < NUM_CLASSES and 1 / NUM_CLASSES <= float(r["confidence"]) <= 1 for r in rows
    )
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob("*.partial*"))


def test_tiled_inference_matches_whole_frame_on_a_photograph(engine):
    from skimage.data import camera

    from addunet_edge.metrics import psnr

    photo = camera().astype(np.float32) / 255.0  # 512 x 512
    whole = FrameDenoiser(engine)(photo)
    tiled = FrameDenoiser(engine, tile=160, overlap=48, batch_size=4)(photo)
    assert whole.tiles == 1 and tiled.tiles == 25  # 5 x 5 tiles of 160 over 512
    # receptive-field radius of width-8 depth-2 full-rate AddUNet: 1 (stem) + 4 (encoders) + 4 (decoders) = 9
    assert float(psnr(tiled.denoised, whole.denoised)) >= 50.0
    # overlap // 4 = 12 >= 9: the blend only uses pixels whose receptive field lies inside their tile
    assert np.abs(tiled.denoised - whole.denoised).max() < 1e-5
    seams = FrameDenoiser(engine, tile=160, overlap=0)(photo).denoised  # abutting tiles: visible seams
    assert np.abs(seams - whole.denoised).max() > 1e-3
    assert tiled.class_index is not None and whole.class_index is not None


class InterruptingEngine(Engine):
    """Delegates to a real engine and raises KeyboardInterrupt on call number `stop_at` (a user's Ctrl-C)."""

    backend = "interrupting"

    def __init__(self, inner: Engine, stop_at: int) -> None:
        super().__init__(inner.path)
        self.inner, self.stop_at, self.calls = inner, stop_at, 0

    @property
    def info(self) -> EngineInfo:
        return self.inner.info

    def _activate(self) -> None:
        self.inner.activate()

    def _infer(self, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        pred = self.inner(noisy)
        return pred.denoised, pred.logits


def test_ctrl_c_keeps_completed_images(tmp_path, engine, image_folder):
    out = tmp_path / "out"
    runner = MediaRunner(FrameDenoiser(InterruptingEngine(engine, stop_at=3)), out, predictions="jsonl")
    with pytest.raises(KeyboardInterrupt):
        runner.run([str(tmp_path / "in")])
    # sorted order: corrupt.png (skipped), gray16.png, gray8.png, rgb.png (interrupted), sub/photo.tif
    assert media.read_image(out / "gray16.png").shape == image_folder["gray16.png"].shape
    assert media.read_image(out / "gray8.png").shape == image_folder["gray8.png"].shape
    assert not (out / "rgb.png").exists() and not (out / "sub").exists()
    assert not list(out.rglob(".*.tmp"))
    summary = read_json(out / "run_summary.json")
    assert summary["interrupted"] is True and len(summary["processed"]) == 2
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [Path(json.loads(line)["input"]).name for line in lines] == ["gray16.png", "gray8.png"]


def test_ctrl_c_finalizes_the_video_being_written(tmp_path, engine):
    _write_video(tmp_path / "cam.avi", frames=10)
    out = tmp_path / "out"
    denoiser = FrameDenoiser(InterruptingEngine(engine, stop_at=4), batch_size=2)  # 3 batches of 2 frames
    runner = MediaRunner(denoiser, out)
    with pytest.raises(KeyboardInterrupt):
        runner.run([str(tmp_path / "cam.avi")])
    assert video_info(out / "cam.avi") == (6, (48, 64))
    assert runner.summary.partial == [str(tmp_path / "cam.avi")]
    assert not list(out.glob(".*partial*"))


def test_broken_frame_is_skipped_not_the_video(tmp_path, engine):
    class RefusesDarkFrames(InterruptingEngine):
        """Stands for a runtime that fails on one frame: any batch holding a black frame raises."""

        def _infer(self, noisy):
            if (noisy.reshape(noisy.shape[0], -1).max(axis=1) < 0.2).any():
                raise ShapeError("simulated corrupt frame")
            return super()._infer(noisy)

    frames = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(5)]
    frames[2][:] = 0
    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48), True)
    for f in frames:
        writer.write(f)
    writer.release()
    runner = MediaRunner(FrameDenoiser(RefusesDarkFrames(engine, 0), batch_size=2), tmp_path / "out")
    summary = runner.run([str(tmp_path / "v.avi")])
    assert summary.processed == [str(tmp_path / "v.avi")]
    assert video_info(tmp_path / "out" / "v.avi") == (4, (48, 64))
    assert summary.skipped == [(f"{tmp_path / 'v.avi'} frame 2: simulated corrupt frame", "broken frame skipped")]


# -- examples ----------------------------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_opencv_loop_example_denoises_a_video(tmp_path, onnx_model):
    _write_video(tmp_path / "in.mp4", frames=5)
    done = subprocess.run(
        [
            *(sys.executable, str(EXAMPLES / "opencv_loop.py"), str(onnx_model), str(tmp_path / "in.mp4")),
            *(str(tmp_path / "out.avi"), "--max-frames", "4"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert video_info(tmp_path / "out.avi") == (4, (48, 64))
    assert "4 frames" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("gi") is not None, reason="gi is installed: the example would run")
def test_gstreamer_example_says_what_is_missing(onnx_model):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "gstreamer_appsink.py"), str(onnx_model)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "python3-gi" in done.stderr and "Traceback" not in done.stderr


# -- deepstream-config ---------------------------------------------------------------------------------
def _plan_with_manifest(tmp_path: Path, precision: str) -> Path:
    from addunet_edge.engines.plan import PLAN_KIND

    plan = tmp_path / f"model.{precision}.plan"
    plan.write_bytes(b"serialized engine bytes")  # only the manifest is read: nvinfer loads the plan itself
    write_manifest(
        plan,
        kind=PLAN_KIND,
        precision=precision,
        profile={"batch": [1, 2, 4], "sizes": [[64, 64], [256, 320], [512, 512]]},
        channels=1,
        num_classes=NUM_CLASSES,
        size_multiple=1,
        tensorrt_version="10.3.0",
        gpu={"name": "Orin", "compute_capability": "8.7"},
    )
    return plan


@pytest.mark.parametrize("precision,mode", [("fp32", 0), ("int8", 1), ("fp16", 2)])
def test_deepstream_config_from_plan_manifest(tmp_path, precision, mode):
    plan = _plan_with_manifest(tmp_path, precision)
    cfg = tmp_path / "nvinfer.txt"
    result = CliRunner().invoke(_app(), ["deepstream-config", str(plan), "--out", str(cfg)])
    assert result.exit_code == 0, result.output
    keys = dict(line.split("=", 1) for line in cfg.read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert keys["model-engine-file"] == str(plan.resolve())
    assert keys["network-mode"] == str(mode)
    assert keys["network-type"] == "100" and keys["output-tensor-meta"] == "1"
    assert keys["infer-dims"] == "1;256;320" and keys["batch-size"] == "2"
    assert keys["output-blob-names"] == "denoised;logits" and keys["model-color-format"] == "2"
    assert abs(float(keys["net-scale-factor"]) - 1 / 255) < 1e-12
    assert "NvDsInferTensorMeta" in cfg.read_text()


def test_deepstream_config_refuses_what_is_not_a_plan(tmp_path, onnx_model):
    from addunet_edge.deepstream import deepstream_config

    with pytest.raises(ArtifactError, match="not a TensorRT plan"):
        deepstream_config(onnx_model)
    bare = tmp_path / "bare.plan"
    bare.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="manifest"):
        deepstream_config(bare)
    result = CliRunner().invoke(_app(), ["deepstream-config", str(bare), "--out", str(tmp_path / "c.txt")])
    assert result.exit_code == ArtifactError.exit_code and not (tmp_path / "c.txt").exists()


def test_deepstream_config_runs_a_dla_plan_on_its_core_and_only_at_the_opt_size(tmp_path):
    from addunet_edge.artifacts import read_manifest
    from addunet_edge.deepstream import deepstream_config
    from addunet_edge.errors import ConfigError

    gpu_plan = _plan_with_manifest(tmp_path, "fp16")
    assert "enable-dla" not in deepstream_config(gpu_plan)
    dla_dir = tmp_path / "dla"
    dla_dir.mkdir()
    plan = _plan_with_manifest(dla_dir, "fp16")
    manifest = read_manifest(plan)
    manifest.pop("schema", None)
    for key in ("artifact", "sha256", "size_bytes", "created_unix", "host", "versions"):
        manifest.pop(key, None)
    write_manifest(plan, **{**manifest, "dla_core": 1})
    text = deepstream_config(plan)
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert keys["enable-dla"] == "1" and keys["use-dla-core"] == "1"
    # nvinfer allocates and runs at the profile's optimum: another size would silently not be used.
    assert "infer-dims=1;256;320" in deepstream_config(plan, size_hw=(256, 320))
    with pytest.raises(ConfigError, match="optimum input of 256x320"):
        deepstream_config(plan, size_hw=(512, 512))
