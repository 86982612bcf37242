"""User mistakes through the real `addunet-edge` app: the message says what is wrong, the exit code is README's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from addunet_edge import media
from addunet_edge.cli import app
from addunet_edge.errors import ArtifactError, DataError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained gray AddUNet: `run` needs a model that opens, not one that denoises well."""
    from addunet_edge.checkpoint import save_checkpoint
    from addunet_edge.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(in_channels=1, width=8, depth=2, num_classes=3, resampling="none")).eval()
    path = tmp_path_factory.mktemp("model") / "ckpt"
    save_checkpoint(path, model)
    return path


def _invoke(*args: str | Path):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _text(result) -> str:
    """The output as one line: rich folds long messages at the runner's terminal width."""
    return " ".join(result.output.split())


def _good_image(path: Path) -> Path:
    media.write_image(path, np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8))
    return path


def _text_file_named_png(path: Path) -> Path:
    path.write_text("this is a text file, not a PNG\n")
    return path


# -- run: the model comes first (with none, the packaged one runs: test_pretrained.py) -----------------------
def test_run_with_photo_and_model_swapped_says_which_is_the_model(tmp_path: Path, checkpoint: Path) -> None:
    photo = _good_image(tmp_path / "noisy.png")
    result = _invoke("run", photo, checkpoint, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    text = _text(result)
    assert "run takes the model first" in text and f"{str(checkpoint)!r} like the model" in text


def test_run_with_a_model_and_no_input_asks_for_an_input(tmp_path: Path, checkpoint: Path) -> None:
    result = _invoke("run", checkpoint, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    text = _text(result)
    assert "no INPUT given after the model" in text and "addunet-edge run [MODEL] INPUT..." in text


# -- run: unreadable inputs ----------------------------------------------------------------------------------
def test_run_on_a_single_unreadable_image_exits_2_naming_it(tmp_path: Path, checkpoint: Path) -> None:
    bad = _text_file_named_png(tmp_path / "photo.png")
    result = _invoke("run", checkpoint, bad, "--out", tmp_path / "out", "--threads", "1")
    assert result.exit_code == DataError.exit_code == 2, result.output
    text = _text(result)
    assert f"error: {bad}: cannot decode the image" in text


def test_run_on_only_unreadable_inputs_exits_2(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _text_file_named_png(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = _invoke("run", checkpoint, folder, tmp_path / "missing.png", "--out", tmp_path / "out", "--threads", "1")
    assert result.exit_code == 2, result.output
    text = _text(result)
    assert "none of the 3 inputs could be read" in text
    for skipped in (folder / "a.png", folder / "b.jpg", tmp_path / "missing.png"):
        assert f"skipped {skipped}:" in text


def test_run_skips_an_unreadable_image_beside_good_ones_and_succeeds(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "in"
    _good_image(folder / "good.png")
    _text_file_named_png(folder / "bad.png")
    out = tmp_path / "out"
    result = _invoke("run", checkpoint, folder, "--out", out, "--threads", "1")
    assert result.exit_code == 0, result.output
    assert media.read_image(out / "good.png").shape == (20, 30) and not (out / "bad.png").exists()
    assert f"skipped {folder / 'bad.png'}: cannot decode the image" in _text(result)


# -- bench: a corrupt artifact is reported as corrupt ----------------------------------------------------
def test_bench_on_a_corrupt_onnx_gives_the_decode_error_that_validate_gives(tmp_path: Path, checkpoint: Path) -> None:
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(np.random.default_rng(1).bytes(512))
    bench = _invoke("bench", corrupt, "--sizes", "16x16", "--iterations", "1", "--threads", "1")
    assert bench.exit_code == ArtifactError.exit_code == 2, bench.output
    text = _text(bench)
    assert f"{corrupt} cannot be loaded: not a readable ONNX file" in text
    assert "no PyTorch baseline" not in text

    validate = _invoke("validate", checkpoint, corrupt)
    assert validate.exit_code == 2, validate.output
    decode_error = next(line for line in validate.output.splitlines() if "error:" in line)
    assert " ".join(decode_error.split()) in text


# -- help: flags read as flags --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "flags"),
    [
        ((), ("--help",)),
        (("run",), ("--side-by-side", "--help")),
        (("bench",), ("--cuda-graph", "--help")),
        (("train",), ("--resume", "--no-resume", "--help")),
    ],
)
def test_help_shows_no_bool_metavar_on_flags(args: tuple[str, ...], flags: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    for flag in flags:
        assert flag in result.output
    if args:
        assert "<int>" in result.output  # options that take a value still show what they take
