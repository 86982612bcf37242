"""Hostile and broken files: tampered artifacts and manifests, escaping external data, foreign checkpoints, bombs.

A plan manifest made for another GPU or TensorRT version is refused by the pure function
engines.tensorrt.check_plan_compatibility; that contract is tested in tests/unit/test_trt_contract.py.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from addunet_edge.artifacts import manifest_path, read_manifest, write_manifest
from addunet_edge.checkpoint import CONFIG, WEIGHTS, load_checkpoint, save_checkpoint
from addunet_edge.errors import ArtifactError, CheckpointError, DataError
from addunet_edge.model import ModelConfig, build_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from addunet_edge.engines import open_engine  # noqa: E402

SMALL = ModelConfig(width=4, depth=1, num_classes=3)


def tiny_onnx(path: Path, *, external: str | None = None) -> Path:
    """noisy -> 1x1 Conv (weight 2) -> denoised; GAP -> Flatten -> logits (1 class). Weight kept at `external`."""
    weight = numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["noisy", "w"], ["denoised"]),
        helper.make_node("GlobalAveragePool", ["noisy"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("noisy", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [
            helper.make_tensor_value_info("denoised", TensorProto.FLOAT, ["n", 1, "h", "w"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1]),
        ],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external is not None:
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", "4")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _run(path: Path) -> np.ndarray:
    with open_engine(path) as engine:
        return engine(np.full((1, 1, 4, 4), 0.25, np.float32)).denoised


# -- tampered artifacts and manifests --------------------------------------------------------------


def test_an_artifact_changed_after_its_manifest_is_refused(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "m.onnx")
    write_manifest(path, kind="onnx", precision="fp32")
    assert np.allclose(_run(path), 0.5)  # the genuine file loads and is right
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        open_engine(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: {**m, "sha256": "0" * 64}, "does not match its manifest"),
        (lambda m: {k: v for k, v in m.items() if k != "sha256"}, "carries no sha256"),
        (lambda m: {**m, "sha256": 12345}, "carries no sha256"),
        (lambda m: {**m, "schema": 99}, "schema"),
        (lambda m: [m], "must hold a JSON object"),
    ],
    ids=["other-hash", "no-hash", "hash-not-text", "future-schema", "not-an-object"],
)
def test_a_tampered_manifest_is_refused(tmp_path: Path, edit, message: str) -> None:
    path = tiny_onnx(tmp_path / "m.onnx")
    write_manifest(path, kind="onnx")
    mpath = manifest_path(path)
    mpath.write_text(json.dumps(edit(json.loads(mpath.read_text()))))
    with pytest.raises(ArtifactError, match=message):
        read_manifest(path)
    with pytest.raises(ArtifactError, match=message):
        open_engine(path)


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe\x00", b"null"], ids=["empty", "torn", "binary", "null"])
def test_a_broken_manifest_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tiny_onnx(tmp_path / "m.onnx")
    manifest_path(path).write_bytes(content)
    with pytest.raises(ArtifactError, match="manifest"):
        open_engine(path)


def test_an_oversized_manifest_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "m.onnx")
    with open(manifest_path(path), "wb") as f:
        f.truncate(17 << 20)  # sparse: 17 MiB of zeros, over read_json's 16 MiB limit
    with pytest.raises(ArtifactError, match="larger than"):
        read_manifest(path)


# -- ONNX external data ----------------------------------------------------------------------------


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(np.float32(3.0).tobytes())
    path = tiny_onnx(tmp_path / "m" / "model.onnx", external="weights.bin")
    assert np.allclose(_run(path), 0.75)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "dotdot-inside"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, where: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.float32(7.0).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    location = {
        "parent": "../secret.bin",
        "absolute": str(secret),
        "symlink": "link.bin",
        "dotdot-inside": "sub/../../secret.bin",
    }[where]
    if where == "symlink":
        os.symlink(secret, folder / "link.bin")
    path = tiny_onnx(folder / "model.onnx", external=location)
    with pytest.raises(ArtifactError, match="outside the model's folder"):
        open_engine(path)
    # The calibration loader (onnx's checker) refuses it too.
    from addunet_edge.calibration.graph import load_onnx

    with pytest.raises(ArtifactError):
        load_onnx(path)


# -- checkpoints that do not fit ---------------------------------------------------------------------


def _checkpoint(folder: Path, config: ModelConfig = SMALL) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(folder, build_model(config))


def _edit_config(folder: Path, **model_fields) -> None:
    meta = json.loads((folder / CONFIG).read_text())
    meta["model"].update(model_fields)
    (folder / CONFIG).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"arch": "concat"}, "does not fit the concat"),
        ({"width": 8}, "has shape"),
        ({"depth": 2}, "does not fit"),
        ({"num_classes": 10}, "has shape"),
        ({"arch": "transformer"}, "arch must be"),
        ({"width": 2.5}, "width must be an integer"),
        ({"kernel_sizes": ["x"]}, "invalid model config"),
        ({"secret_option": 1}, "unknown model config keys"),
    ],
)
def test_a_checkpoint_whose_config_describes_another_model_is_refused(tmp_path: Path, fields, message) -> None:
    folder = _checkpoint(tmp_path / "ck")
    load_checkpoint(folder)  # genuine: loads
    _edit_config(folder, **fields)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_checkpoint_weights_swapped_for_another_models_are_refused(tmp_path: Path) -> None:
    a, b = _checkpoint(tmp_path / "a"), _checkpoint(tmp_path / "b", ModelConfig(width=8, depth=2, num_classes=3))
    (a / WEIGHTS).write_bytes((b / WEIGHTS).read_bytes())
    with pytest.raises(CheckpointError, match="torn or tampered"):
        load_checkpoint(a)
    # Even with the hash check off, the shapes do not fit the config.
    with pytest.raises(CheckpointError, match=r"does not fit|has shape"):
        load_checkpoint(a, verify_hash=False)


def test_a_pickle_renamed_to_safetensors_is_refused_and_never_run(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "ck")
    sentinel = tmp_path / "pwned"
    # A pickle whose loading would create `sentinel` (protocol 2: os.system-free, just open()).
    payload = (
        b"\x80\x02cbuiltins\nopen\nq\x00X"
        + struct.pack("<I", len(str(sentinel)))
        + str(sentinel).encode()
        + b"X\x01\x00\x00\x00w\x86q\x01Rq\x02."
    )
    (folder / WEIGHTS).write_bytes(payload)
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(folder, verify_hash=False)
    assert not sentinel.exists()


def test_an_npz_holding_pickled_objects_is_refused_and_never_run(tmp_path: Path) -> None:
    from addunet_edge.data_files import load_npz

    sentinel = tmp_path / "pwned"

    class Trap:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    path = tmp_path / "evil.npz"
    np.savez(path, images=np.array([Trap()], dtype=object))
    with pytest.raises(DataError, match="not a readable"):
        load_npz(path)
    assert not sentinel.exists()


# -- decompression bombs -----------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header claiming width x height 8-bit gray pixels (2.5 GB decoded), with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)  # a few rows' worth at most: only the header is a bomb
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def tiff_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A classic little-endian TIFF whose single strip claims width x height 8-bit gray pixels."""
    entries = [  # (tag, type (3 SHORT, 4 LONG), value)
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8 + 2 + 9 * 12 + 4),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, width * height),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value)
    return b"II" + struct.pack("<HI", 42, 8) + ifd + struct.pack("<I", 0) + b"\x00" * 4096


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_a_decompression_bomb_image_is_refused_before_decoding(tmp_path: Path, kind: str) -> None:
    from addunet_edge import data_files as data
    from addunet_edge import media

    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(png_bomb() if kind == "png" else tiff_bomb())
    before = _max_rss_mib()
    for reader in (data.read_image, media.read_image):
        with pytest.raises(DataError, match=r"50000x50000|decompression bomb|pixels"):
            reader(path)
    # 2.5 GB would have been allocated had either reader started decoding.
    assert _max_rss_mib() - before < 256


def test_an_npz_zip_bomb_is_refused_before_inflating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    from addunet_edge import data_files as data

    # The same check at a 1 MiB limit: a real 8 GiB bomb takes a minute just to compress.
    monkeypatch.setattr(data, "MAX_NPZ_BYTES", 1 << 20)
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images.npy", b"\x00" * (4 << 20))
    assert path.stat().st_size < 64 << 10
    with pytest.raises(DataError, match="zip bomb"):
        data.load_npz(path)
    # A genuine npz under the limit still loads.
    small = tmp_path / "ok.npz"
    np.savez_compressed(small, images=np.zeros((4, 8, 8), np.uint8))
    assert data.load_npz(small)[0].shape == (4, 1, 8, 8)
