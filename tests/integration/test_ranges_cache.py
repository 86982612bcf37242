"""Calibration sets and the ranges cache: reused only for the same model, data and method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from addunet_edge.calibration import CalibrationSet, collect_ranges  # noqa: E402
from addunet_edge.errors import ArtifactError, DataError  # noqa: E402


def _tiny_onnx(path: Path, seed: int = 0, channels: int = 1) -> Path:
    """noisy -> Conv -> Relu -> Conv -> denoised = noisy - that; logits = GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, channels, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (channels, 4, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.5, (3, 4)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["noisy", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["noisy", "c2"], ["denoised"], name="out"),
        helper.make_node("GlobalAveragePool", ["r1"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", transB=1),
    ]
    shape = ["n", channels, "h", "w"]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("noisy", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info("denoised", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _images(n: int = 12, seed: int = 0, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, 16, 16), dtype=np.float32)


def test_cache_reused_when_keys_match(tmp_path: Path) -> None:
    model, cache = _tiny_onnx(tmp_path / "m.onnx"), tmp_path / "ranges.json"
    first = collect_ranges(model, CalibrationSet(_images()), "minmax", cache=cache, progress=False)
    assert not first.from_cache and cache.is_file()
    # Poison one cached value: a cache hit must return exactly what the file says.
    obj = json.loads(cache.read_text())
    obj["ranges"]["c1"] = [-123.0, 456.0]
    cache.write_text(json.dumps(obj))
    second = collect_ranges(model, CalibrationSet(_images()), "minmax", cache=cache, progress=False)
    assert second.from_cache and second.messages == []
    assert second["c1"] == (-123.0, 456.0)
    assert set(second) == set(first)


@pytest.mark.parametrize("change", ["model", "data", "method", "percentile"])
def test_cache_recomputed_with_message_when_keys_differ(tmp_path: Path, change: str) -> None:
    model, cache = _tiny_onnx(tmp_path / "m.onnx"), tmp_path / "ranges.json"
    collect_ranges(model, CalibrationSet(_images()), "percentile", 99.9, cache=cache, progress=False)
    kwargs = {"method": "percentile", "percentile": 99.9}
    data = _images()
    if change == "model":
        model = _tiny_onnx(tmp_path / "other.onnx", seed=1)
    elif change == "data":
        data = _images(seed=1)
    elif change == "method":
        kwargs = {"method": "minmax"}
    else:
        kwargs["percentile"] = 99.0
    again = collect_ranges(model, CalibrationSet(data), cache=cache, progress=False, **kwargs)
    assert not again.from_cache
    label = {"model": "model", "data": "calibration data", "method": "method", "percentile": "percentile"}[change]
    assert any(f"another {label}" in m for m in again.messages), again.messages
    # The cache now describes the new run, so a third identical call hits it.
    third = collect_ranges(model, CalibrationSet(data), cache=cache, progress=False, **kwargs)
    assert third.from_cache


def test_corrupt_cache_is_recomputed_not_fatal(tmp_path: Path) -> None:
    model, cache = _tiny_onnx(tmp_path / "m.onnx"), tmp_path / "ranges.json"
    cache.write_text("{not json")
    ranges = collect_ranges(model, CalibrationSet(_images()), "minmax", cache=cache, progress=False)
    assert not ranges.from_cache
    assert any("not valid JSON" in m for m in ranges.messages)
    assert json.loads(cache.read_text())["method"] == "minmax"


def test_ranges_include_zero_and_percentile_clips_outliers(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "m.onnx")
    data = _images(64)
    data[0, 0, 0, 0] = 1.0  # ordinary
    spiky = data.copy()
    spiky[3] = 0.0
    spiky[3, 0, 8, 8] = 50.0  # one outlier pixel among 16k values: far beyond the 0.05 % tail
    mm = collect_ranges(model, CalibrationSet(spiky), "minmax", progress=False)
    pc = collect_ranges(model, CalibrationSet(spiky), "percentile", 99.9, progress=False)
    for lo, hi in mm.values():
        assert lo <= 0.0 <= hi
    assert mm["noisy"][1] == pytest.approx(50.0)
    assert pc["noisy"][1] < 1.01  # the outlier is clipped, the bulk of [0, 1] kept
    assert pc["noisy"][1] > 0.9
    ent = collect_ranges(model, CalibrationSet(spiky), "entropy", progress=False)
    assert ent["noisy"][1] < mm["noisy"][1]


def test_calibration_set_refuses_bad_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        CalibrationSet(np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="at least 8"):
        CalibrationSet(_images(3))
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        CalibrationSet(np.zeros((8, 8, 8), np.float32))
    bad = _images()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        CalibrationSet(bad)
    model = _tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(DataError, match="channel"):
        collect_ranges(model, CalibrationSet(_images(channels=3)), "minmax", progress=False)


def test_batches_cover_the_set_and_hash_tracks_bytes() -> None:
    data = _images(13)
    cs = CalibrationSet(data, batch_size=5)
    assert [len(b) for b in cs] == [5, 5, 3]
    assert cs.data_sha256 == CalibrationSet(data.copy()).data_sha256
    changed = data.copy()
    changed[12, 0, 0, 0] += 1e-3
    assert cs.data_sha256 != CalibrationSet(changed).data_sha256
    assert len(CalibrationSet(data, size=9)) == 9


def test_corrupt_onnx_is_an_artifact_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    cache = tmp_path / "r.json"
    with pytest.raises(ArtifactError, match="not a valid ONNX"):
        collect_ranges(bad, CalibrationSet(_images()), "minmax", cache=cache, progress=False)
    assert not cache.exists()
