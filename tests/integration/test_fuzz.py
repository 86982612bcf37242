"""Fuzz every loader: random and mutated images, npz, configs, safetensors, ONNX, manifests, range caches.

The contract: a loader given any bytes either returns something usable or raises one of the package's own
errors (an AddUNetEdgeError subclass, with a message); never another exception, never a hang.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addunet_edge.artifacts import read_manifest, sha256_file, write_manifest
from addunet_edge.checkpoint import CONFIG, WEIGHTS, load_checkpoint, read_checkpoint_meta, save_checkpoint
from addunet_edge.errors import AddUNetEdgeError, ArtifactError, CheckpointError, ConfigError
from addunet_edge.model import ModelConfig, build_model

FUZZ = settings(
    max_examples=60,
    deadline=timedelta(seconds=10),  # a hang is a failure; 10 s leaves room for a loaded 2-core CI box
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same examples every run: a failure is reproducible, CI is not flaky
    database=None,
)
SMALL = ModelConfig(width=4, depth=1, num_classes=3)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="addunet-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def mutations(seed: bytes, max_flips: int = 8) -> st.SearchStrategy[bytes]:
    """`seed` with a few bytes overwritten, a slice dropped or bytes inserted, and maybe truncated."""
    n = len(seed)

    def apply(args: tuple[list[tuple[int, int]], int, int, bytes, int]) -> bytes:
        flips, cut_at, cut_len, insert, keep = args
        data = bytearray(seed)
        for pos, value in flips:
            data[pos % len(data)] = value
        del data[cut_at : cut_at + cut_len]
        data[cut_at:cut_at] = insert
        return bytes(data[:keep])

    return st.tuples(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), max_size=max_flips),
        st.integers(0, n),
        st.sampled_from([0, 0, 0, 1, 4, 64]),
        st.binary(max_size=8),
        st.sampled_from([n, n, n, n // 2, 64, 16, 0]),
    ).map(apply)


def only_package_errors(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a package error is an accepted refusal (None), anything else propagates and fails the test."""
    try:
        return fn()
    except AddUNetEdgeError as e:
        assert str(e), f"{type(e).__name__} without a message"
        return None


# -- images ------------------------------------------------------------------------------------------


def _image_bytes(kind: str) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    if kind == "tif":
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, (rng.random((12, 10)) * 65535).astype(np.uint16))
        return buf.getvalue()
    buf = io.BytesIO()
    img = Image.fromarray((rng.random((12, 10, 3)) * 255).astype(np.uint8))
    img.save(buf, format={"png": "PNG", "jpg": "JPEG"}[kind])
    return buf.getvalue()


SEED_IMAGES = {kind: _image_bytes(kind) for kind in ("png", "jpg", "tif")}


def _check_image(arr: Any) -> None:
    assert isinstance(arr, np.ndarray) and arr.dtype in (np.uint8, np.uint16), type(arr)
    assert arr.ndim in (2, 3) and min(arr.shape[:2]) >= 1


@pytest.mark.parametrize("kind", ["png", "jpg", "tif"])
def test_image_readers_on_mutated_files(scratch: Path, kind: str) -> None:
    from addunet_edge import data_files as data
    from addunet_edge import media

    path = scratch / f"mutated.{kind}"

    @FUZZ
    @given(mutations(SEED_IMAGES[kind]))
    def check(blob: bytes) -> None:
        path.write_bytes(blob)
        for reader in (data.read_image, media.read_image):
            arr = only_package_errors(lambda reader=reader: reader(path))
            if arr is not None:
                _check_image(arr)

    check()


def test_image_readers_on_random_bytes(scratch: Path) -> None:
    from addunet_edge import data_files as data
    from addunet_edge import media

    @FUZZ
    @given(st.binary(max_size=512), st.sampled_from(["png", "jpg", "tif", "bmp"]))
    def check(blob: bytes, suffix: str) -> None:
        path = scratch / f"random.{suffix}"
        path.write_bytes(blob)
        for reader in (data.read_image, media.read_image):
            arr = only_package_errors(lambda reader=reader: reader(path))
            if arr is not None:
                _check_image(arr)

    check()


@FUZZ
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_image_readers_refuse_huge_headers_without_decoding(width: int, height: int) -> None:
    """Any PNG header whose pixel count is over the limit is refused from the header alone."""
    from test_hostile_files import png_bomb

    from addunet_edge import data_files as data
    from addunet_edge import media

    if width * height <= media.MAX_PIXELS:
        width = media.MAX_PIXELS // height + 1
    folder = Path(tempfile.mkdtemp(prefix="addunet-bomb-"))
    try:
        path = folder / "bomb.png"
        path.write_bytes(png_bomb(min(width, 2**31 - 1), height))
        for reader in (data.read_image, media.read_image):
            with pytest.raises(AddUNetEdgeError):
                reader(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- npz ---------------------------------------------------------------------------------------------


def _npz_bytes(compressed: bool) -> bytes:
    buf = io.BytesIO()
    images = (np.random.default_rng(0).random((3, 6, 6)) * 255).astype(np.uint8)
    (np.savez_compressed if compressed else np.savez)(buf, images=images, labels=np.arange(3))
    return buf.getvalue()


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_load_npz_on_mutated_archives(scratch: Path, compressed: bool) -> None:
    from addunet_edge.data_files import load_npz

    path = scratch / "mutated.npz"

    @FUZZ
    @given(mutations(_npz_bytes(compressed)))
    def check(blob: bytes) -> None:
        path.write_bytes(blob)
        out = only_package_errors(lambda: load_npz(path))
        if out is not None:
            images, labels = out
            assert images.ndim == 4 and images.dtype == np.float32 and np.isfinite(images).all()
            assert labels is None or labels.shape == (images.shape[0],)

    check()


def test_load_npz_on_random_bytes(scratch: Path) -> None:
    from addunet_edge.data_files import load_npz

    path = scratch / "random.npz"

    @FUZZ
    @given(st.binary(max_size=600) | st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b))
    def check(blob: bytes) -> None:
        path.write_bytes(blob)
        only_package_errors(lambda: load_npz(path))

    check()


# -- configs and checkpoints -------------------------------------------------------------------------

model_dicts = st.fixed_dictionaries(
    {},
    optional={
        "arch": st.sampled_from(["addunet", "concat", "x"]) | json_values,
        "in_channels": st.sampled_from([1, 3, 2]) | json_values,
        "width": st.integers(-2, 9) | json_values,
        "depth": st.integers(-1, 3) | json_values,
        "num_classes": st.integers(-1, 4) | json_values,
        "kernel_sizes": st.lists(st.integers(-1, 5), max_size=3) | json_values,
        "resampling": st.sampled_from(["none", "stride"]) | json_values,
        "head": st.sampled_from(["limited", "full"]) | json_values,
        "norm": st.sampled_from(["none", "batch"]) | json_values,
        "bound": st.none() | st.floats(-1, 8) | json_values,
    },
)


@FUZZ
@given(model_dicts | json_objects)
def test_model_config_from_random_json(d: dict[str, Any]) -> None:
    config = only_package_errors(lambda: ModelConfig.from_dict(d))
    if config is not None:
        assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "d",
    [
        {"kernel_sizes": ["x"]},
        {"width": 2.5},
        {"in_channels": 1.0},
        {"bound": "4"},
        {"kernel_sizes": [[1]]},
        {"width": "8"},
        {"depth": None},
    ],
)
def test_model_config_refuses_values_of_the_wrong_type(d: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ModelConfig.from_dict(d)


def test_checkpoint_loading_with_random_config_json(scratch: Path) -> None:
    folder = scratch / "ck-config"
    torch.manual_seed(0)
    save_checkpoint(folder, build_model(SMALL))
    genuine = json.loads((folder / CONFIG).read_text())

    @FUZZ
    @given(
        json_objects
        | model_dicts.map(lambda m: {**genuine, "model": {**genuine["model"], **m}})
        | json_values.map(lambda v: {**genuine, "model": v})
    )
    def check(meta: dict[str, Any]) -> None:
        (folder / CONFIG).write_text(json.dumps(meta))
        only_package_errors(lambda: read_checkpoint_meta(folder))
        out = only_package_errors(lambda: load_checkpoint(folder))
        if out is not None:  # loads only when it describes exactly the saved model
            assert out[0].config == SMALL

    check()


def _safetensors_parts(path: Path) -> tuple[int, bytes, bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return n, blob[8 : 8 + n], blob[8 + n :]


def test_checkpoint_loading_with_mutated_safetensors_headers(scratch: Path) -> None:
    folder = scratch / "ck-header"
    torch.manual_seed(0)
    save_checkpoint(folder, build_model(SMALL))
    _, header, body = _safetensors_parts(folder / WEIGHTS)
    header_json = json.loads(header)

    def mutated_entries(entries: dict[str, Any]) -> dict[str, Any]:
        return {**header_json, **entries}

    @FUZZ
    @given(
        st.one_of(
            # the 8-byte little-endian header length, with the real header and body after it
            st.integers(0, 2**64 - 1).map(lambda k: struct.pack("<Q", k) + header + body),
            # a random JSON header, correctly framed
            (json_objects | json_values)
            .map(lambda h: json.dumps(h).encode())
            .map(lambda h: struct.pack("<Q", len(h)) + h + body),
            # one tensor entry of the real header replaced by random JSON (dtype, shape, offsets)
            st.tuples(st.sampled_from(sorted(k for k in header_json if k != "__metadata__")), json_values)
            .map(lambda kv: json.dumps(mutated_entries({kv[0]: kv[1]})).encode())
            .map(lambda h: struct.pack("<Q", len(h)) + h + body),
            # byte flips anywhere in the header bytes
            mutations(header).map(lambda h: struct.pack("<Q", len(h)) + h + body),
        )
    )
    def check(blob: bytes) -> None:
        (folder / WEIGHTS).write_bytes(blob)
        with pytest.raises(CheckpointError):  # the hash in config.json no longer matches
            load_checkpoint(folder)
        out = only_package_errors(lambda: load_checkpoint(folder, verify_hash=False))
        if out is not None:
            model = out[0]
            assert tuple(model.state_dict()) == tuple(build_model(SMALL).state_dict())

    check()


def test_resume_state_with_random_json(scratch: Path) -> None:
    from addunet_edge.training import TrainConfig, param_groups
    from addunet_edge.training_state import load_last, save_last, saved_state_dir

    folder = scratch / "last"
    torch.manual_seed(0)
    model = build_model(SMALL)
    opt = torch.optim.AdamW(param_groups(model, 1e-4), lr=1e-3)
    save_last(folder, model, opt, SMALL, TrainConfig(epochs=1), 0, 1, 1, 1.0, 0.1)
    state_dir = saved_state_dir(scratch)
    assert state_dir is not None
    # Both JSON files a resume reads: the slot's state.json and the pointer naming the slot.
    files = {"state": state_dir / "state.json", "pointer": folder / "current.json"}
    genuine = {which: json.loads(path.read_text()) for which, path in files.items()}

    def fuzzed(which: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
        good = genuine[which]
        mutated = st.tuples(st.sampled_from(sorted(good)), json_values).map(lambda kv: {**good, kv[0]: kv[1]})
        return st.tuples(st.just(which), json_objects | mutated)

    @FUZZ
    @given(fuzzed("state") | fuzzed("pointer"))
    def check(case: tuple[str, dict[str, Any]]) -> None:
        which, obj = case
        for name, path in files.items():
            path.write_text(json.dumps(obj if name == which else genuine[name]))
        fresh = build_model(SMALL)
        only_package_errors(
            lambda: load_last(folder, fresh, torch.optim.AdamW(param_groups(fresh, 1e-4), lr=1e-3), SMALL)
        )

    check()


# -- ONNX ----------------------------------------------------------------------------------------------


def test_open_engine_on_mutated_onnx(scratch: Path) -> None:
    pytest.importorskip("onnxruntime")
    from test_hostile_files import tiny_onnx

    from addunet_edge.engines import open_engine

    genuine = tiny_onnx(scratch / "genuine" / "m.onnx").read_bytes()
    bare, signed = scratch / "bare" / "m.onnx", scratch / "signed" / "m.onnx"
    bare.parent.mkdir(exist_ok=True)
    signed.parent.mkdir(exist_ok=True)
    signed.write_bytes(genuine)
    write_manifest(signed, kind="onnx")
    x = np.full((2, 1, 5, 5), 0.5, np.float32)

    def run(path: Path) -> Any:
        with open_engine(path) as engine:
            return engine(x)

    @FUZZ
    @given(mutations(genuine, max_flips=4) | st.binary(max_size=300))
    def check(blob: bytes) -> None:
        bare.write_bytes(blob)
        out = only_package_errors(lambda: run(bare))
        if out is not None:  # no manifest: whatever onnxruntime accepts must still speak our signature
            assert out.denoised.shape == x.shape and out.logits.shape[0] == 2
        signed.write_bytes(blob)
        if blob == genuine:
            assert run(signed) is not None
        else:  # with a manifest, any change at all is refused
            with pytest.raises(ArtifactError, match="does not match its manifest"):
                run(signed)

    check()


# -- manifests and range caches ------------------------------------------------------------------------


def test_read_manifest_on_random_json(scratch: Path) -> None:
    artifact = scratch / "artifact.bin"
    artifact.write_bytes(b"payload")
    digest = sha256_file(artifact)

    @FUZZ
    @given(
        json_values
        | json_objects
        | json_objects.map(lambda m: {**m, "schema": 1, "sha256": digest})
        | json_values.map(lambda v: {"schema": 1, "sha256": v})
    )
    def check(obj: Any) -> None:
        (scratch / "artifact.bin.manifest.json").write_text(json.dumps(obj))
        for verify in (True, False):
            manifest = only_package_errors(lambda verify=verify: read_manifest(artifact, verify_hash=verify))
            if manifest is not None:
                assert isinstance(manifest, dict) and manifest["schema"] == 1
                assert not verify or manifest["sha256"] == digest

    check()


def test_ranges_cache_with_random_json(scratch: Path) -> None:
    pytest.importorskip("onnxruntime")
    from test_ranges_cache import _images, _tiny_onnx

    from addunet_edge.calibration import CalibrationSet, collect_ranges
    from addunet_edge.calibration.ranges import _read_cache

    model = _tiny_onnx(scratch / "cal.onnx")
    cache = scratch / "ranges.json"
    calib = CalibrationSet(_images())
    fresh = collect_ranges(model, calib, "minmax", cache=cache, progress=False)
    genuine = json.loads(cache.read_text())
    keys = {k: genuine[k] for k in ("model_sha256", "data_sha256", "method", "percentile")}
    names = sorted(fresh)

    @FUZZ
    @given(
        json_values
        | json_objects
        | json_values.map(lambda v: {**genuine, "ranges": v})
        | st.dictionaries(st.sampled_from(names), json_values, max_size=len(names)).map(
            lambda r: {**genuine, "ranges": {**genuine["ranges"], **r}}
        )
    )
    def check(obj: Any) -> None:
        cache.write_text(json.dumps(obj))
        ranges, why = only_package_errors(lambda: _read_cache(cache, keys, names))
        if ranges is None:
            assert why  # every miss says why
        else:
            assert set(names) <= set(ranges)
            assert all(np.isfinite(lo) and np.isfinite(hi) and lo <= hi for lo, hi in ranges.values())

    check()
    # The public entry point on a few random caches: a hit returns the cache, a miss recomputes it.
    for text in ("[]", "{", json.dumps({**genuine, "ranges": {"c1": "12"}}), json.dumps({**genuine, "schema": 2})):
        cache.write_text(text)
        again = collect_ranges(model, calib, "minmax", cache=cache, progress=False)
        assert not again.from_cache and again.messages and dict(again) == dict(fresh)


# -- atheris (coverage-guided), where it is installed --------------------------------------------------

ATHERIS_SCRIPT = textwrap.dedent(
    """
    import sys, tempfile, pathlib
    import atheris
    with atheris.instrument_imports(include=["addunet_edge"]):
        from addunet_edge import data_files as data, media
        from addunet_edge.artifacts import read_manifest
        from addunet_edge.errors import AddUNetEdgeError
    folder = pathlib.Path(tempfile.mkdtemp())
    artifact = folder / "a.bin"
    artifact.write_bytes(b"x")

    def one(blob):
        fdp = atheris.FuzzedDataProvider(blob)
        kind = fdp.ConsumeIntInRange(0, 4)
        rest = fdp.ConsumeBytes(fdp.remaining_bytes())
        try:
            if kind == 4:
                (folder / "a.bin.manifest.json").write_bytes(rest)
                read_manifest(artifact)
            elif kind == 3:
                (folder / "x.npz").write_bytes(rest)
                data.load_npz(folder / "x.npz")
            else:
                path = folder / ("x." + ("png", "jpg", "tif")[kind])
                path.write_bytes(rest)
                data.read_image(path)
                media.read_image(path)
        except AddUNetEdgeError:
            pass

    atheris.Setup([sys.argv[0], "-runs=%d", "-max_len=2048", "-seed=1", "-rss_limit_mb=6144"], one)
    atheris.Fuzz()
    """
)


def test_atheris_fuzzes_the_file_loaders(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    script = tmp_path / "fuzz_loaders.py"
    script.write_text(ATHERIS_SCRIPT % 3000)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Done 3000 runs" in done.stderr, done.stderr[-2000:]
