"""`triton`: the model repository it writes parses against Triton's own schema and says what the artifact is.

Triton's `model_config.proto` ships compiled in tritonclient (`tritonclient.grpc.model_config_pb2`, a dev
dependency); `text_format.Parse` refuses any field or value the schema lacks, so a config that parses here is
one a Triton server reads. Fixtures: the fp32 / fp16 / int8 (both targets) ONNX of the tiny trained model,
and a plan manifest (the plan bytes are never read: Triton loads them itself).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2  # Triton's schema; tritonclient[grpc] is in the dev extra
from typer.testing import CliRunner

from addunet_edge.artifacts import manifest_path, read_manifest, write_manifest
from addunet_edge.cli import app
from addunet_edge.engines import open_engine
from addunet_edge.errors import ArtifactError, ConfigError
from addunet_edge.triton import write_triton_model

runner = CliRunner()


@pytest.fixture(scope="module")
def variants(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from addunet_edge.build import make_precision_onnx

    out = tmp_path_factory.mktemp("onnx")
    return {
        "fp32": make_precision_onnx(tiny_checkpoint, out, "fp32", progress=False),
        "fp16": make_precision_onnx(tiny_checkpoint, out, "fp16", progress=False),
        "int8-cpu": make_precision_onnx(tiny_checkpoint, out, "int8", target="cpu", progress=False),
        "int8-tensorrt": make_precision_onnx(tiny_checkpoint, out, "int8", target="tensorrt", progress=False),
    }


def _parse(path: Path):  # -> model_config_pb2.ModelConfig (a generated class: no static type)
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)  # ParseError on any field or enum value the schema lacks
    return config


def _plan(folder: Path, *, batch=(1, 2, 4), sizes=((64, 64), (256, 320), (512, 512)), **extra) -> Path:
    from addunet_edge.engines.plan import PLAN_KIND

    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "digits.fp16.plan"
    plan.write_bytes(b"serialized engine bytes")
    write_manifest(
        plan,
        kind=PLAN_KIND,
        precision="fp16",
        profile={"batch": list(batch), "sizes": [list(s) for s in sizes]},
        channels=1,
        num_classes=10,
        size_multiple=1,
        tensorrt_version="10.3.0",
        io_dtypes={"noisy": "FLOAT", "denoised": "FLOAT", "logits": "FLOAT"},
        gpu={"name": "Orin", "compute_capability": "8.7"},
        **extra,
    )
    return plan


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8-cpu", "int8-tensorrt"])
def test_onnx_config_parses_against_tritons_schema_and_matches_the_graph(variants, tmp_path, kind):
    onnx_path = variants[kind]
    model = write_triton_model(onnx_path, tmp_path / "repo", max_batch_size=6, preferred_batch_sizes=[2, 6])
    config = _parse(model.config_path)

    assert config.name == model.name == onnx_path.name.removesuffix(".onnx").replace(".", "_")
    assert config.platform == "onnxruntime_onnx" and config.backend == ""
    assert config.max_batch_size == 6
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 6]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = config.instance_group
    # A CPU-target int8 ONNX goes to CPU instances by default; everything else to the GPU.
    kinds = model_config_pb2.ModelInstanceGroup
    expected_kind = kinds.KIND_CPU if kind == "int8-cpu" else kinds.KIND_GPU
    assert group.kind == expected_kind and group.count == 1 and not group.profile

    # Names, types and dims are the graph's own, batch axis left to Triton (max_batch_size > 0).
    graph = onnx.load(str(model.model_path))
    fp32 = model_config_pb2.TYPE_FP32
    seen = {t.name: (t.data_type, list(t.dims)) for t in (*config.input, *config.output)}
    for value in (*graph.graph.input, *graph.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert seen[value.name] == (fp32, dims[1:]), value.name
    assert [t.name for t in config.input] == ["noisy"] and [t.name for t in config.output] == ["denoised", "logits"]
    assert seen == {"noisy": (fp32, [1, -1, -1]), "denoised": (fp32, [1, -1, -1]), "logits": (fp32, [10])}


def test_onnx_in_the_repository_is_the_artifact_with_its_manifest(variants, tmp_path):
    """The copied model opens through its manifest (hash checked) and computes exactly what the original does."""
    src = variants["int8-cpu"]
    model = write_triton_model(src, tmp_path / "repo", kind="cpu")
    version_dir = model.model_path.parent
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.onnx", "model.onnx.manifest.json"]
    assert manifest_path(model.model_path).read_bytes() == manifest_path(src).read_bytes()
    assert read_manifest(model.model_path)["precision"] == "int8"  # refuses a hash mismatch
    x = np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)
    with open_engine(src, threads=1) as a, open_engine(model.model_path, threads=1) as b:
        pa, pb = a(x), b(x)
    np.testing.assert_array_equal(pa.denoised, pb.denoised)
    np.testing.assert_array_equal(pa.logits, pb.logits)
    # Nothing else in the repository: no staging folder, no lock file left behind.
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [model.name]


def test_plan_config_carries_its_profile_batch_and_dims(tmp_path):
    plan = _plan(tmp_path / "engines")
    model = write_triton_model(plan, tmp_path / "repo", instances=2, queue_delay_us=500)
    config = _parse(model.config_path)

    assert config.name == "digits_fp16" and config.platform == "tensorrt_plan"
    assert config.max_batch_size == 4  # the profile's max batch
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]  # the profile's opt, and its max
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2
    assert list(group.profile) == ["0"] and not group.secondary_devices
    fp32 = model_config_pb2.TYPE_FP32
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("noisy", fp32, [1, -1, -1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("denoised", fp32, [1, -1, -1]),
        ("logits", fp32, [10]),
    ]
    text = model.config_path.read_text()
    assert (
        "min / opt / max 1x1x64x64 / 2x1x256x320 / 4x1x512x512" in text
        and "only in a Triton with TensorRT 10.3.0" in text
    )
    assert model.model_path == tmp_path / "repo" / "digits_fp16" / "1" / "model.plan"
    assert model.model_path.read_bytes() == plan.read_bytes()
    assert read_manifest(model.model_path)["tensorrt_version"] == "10.3.0"


def test_fixed_size_version_compatible_dla_plan(tmp_path):
    options = {"version_compatible": True}
    plan = _plan(tmp_path / "engines", batch=(1, 1, 1), sizes=((240, 320),) * 3, dla_core=1, options=options)
    model = write_triton_model(plan, tmp_path / "repo", name="dla")
    config = _parse(model.config_path)
    assert "--backend-config=tensorrt,version-compatible=true" in model.config_path.read_text()
    assert config.max_batch_size == 1 and list(config.dynamic_batching.preferred_batch_size) == [1]
    assert [list(t.dims) for t in (*config.input, *config.output)] == [[1, 240, 320], [1, 240, 320], [10]]
    (device,) = config.instance_group[0].secondary_devices
    assert device.kind == model_config_pb2.ModelInstanceGroup.SecondaryDevice.KIND_NVDLA and device.device_id == 1


def test_plan_limits_are_enforced(tmp_path):
    plan = _plan(tmp_path / "a")
    with pytest.raises(ConfigError, match="above the batch the plan was built for"):
        write_triton_model(plan, tmp_path / "repo", max_batch_size=8)
    with pytest.raises(ConfigError, match="between 1 and max_batch_size 4"):
        write_triton_model(plan, tmp_path / "repo", preferred_batch_sizes=[8])
    with pytest.raises(ConfigError, match="runs on the GPU"):
        write_triton_model(plan, tmp_path / "repo", kind="cpu")
    batch_from_2 = _plan(tmp_path / "b", batch=(2, 4, 8))
    with pytest.raises(ConfigError, match="batches of at least 2"):
        write_triton_model(batch_from_2, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_cpu_int8_onnx_is_refused_for_gpu_instances(variants, tmp_path):
    with pytest.raises(ConfigError, match="--kind cpu"):
        write_triton_model(variants["int8-cpu"], tmp_path / "repo", kind="gpu")
    # The TensorRT flavour runs on either (on the GPU it says a plan would be faster).
    model = write_triton_model(variants["int8-tensorrt"], tmp_path / "repo", kind="gpu")
    assert any("plan" in note for note in model.notes)


def test_artifact_without_manifest_is_refused(variants, tmp_path):
    bare = tmp_path / "bare.onnx"
    shutil.copyfile(variants["fp32"], bare)
    result = runner.invoke(app, ["triton", str(bare), "--repo", str(tmp_path / "repo")])
    assert result.exit_code == ArtifactError.exit_code, result.output
    assert "no manifest" in result.output and not (tmp_path / "repo" / "bare").exists()
    with pytest.raises(ArtifactError, match="checkpoint"):
        write_triton_model(variants["fp32"].parent, tmp_path / "repo")


def test_name_clash_versions_and_bad_names(variants, tmp_path):
    repo = tmp_path / "repo"
    first = write_triton_model(variants["fp32"], repo, name="denoiser")
    config_before = first.config_path.read_bytes()

    # Same name, another configuration: refused, nothing touched.
    with pytest.raises(ConfigError, match="another configuration"):
        write_triton_model(variants["fp32"], repo, name="denoiser", max_batch_size=4)
    with pytest.raises(ConfigError, match="--version 2"):
        write_triton_model(variants["fp32"], repo, name="denoiser")
    # Another version of the same model (same config) joins it; the config stays as it was.
    second = write_triton_model(variants["fp32"], repo, name="denoiser", version=2)
    assert not second.config_written and first.config_written
    assert first.config_path.read_bytes() == config_before
    assert sorted(p.name for p in first.model_dir.iterdir()) == ["1", "2", "config.pbtxt"]
    # A folder of the same name that is not a model of ours is not overwritten.
    (repo / "other").mkdir()
    with pytest.raises(ConfigError, match="not a model folder"):
        write_triton_model(variants["fp32"], repo, name="other")
    for bad in ("../escape", "a/b", "", ".hidden", "x" * 129):
        with pytest.raises(ConfigError, match="model name"):
            write_triton_model(variants["fp32"], repo, name=bad)
    with pytest.raises(ConfigError, match="--version"):
        write_triton_model(variants["fp32"], repo, name="v0", version=0)
    assert sorted(p.name for p in repo.iterdir()) == ["denoiser", "other"]


def test_a_failed_copy_leaves_the_repository_as_it_was(variants, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_triton_model(variants["fp32"], repo, name="kept")

    def disk_full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("addunet_edge.triton.shutil.copyfile", disk_full)
    with pytest.raises(ArtifactError, match="No space left"):
        write_triton_model(variants["fp16"], repo, name="new")
    with pytest.raises(ArtifactError, match="No space left"):
        write_triton_model(variants["fp32"], repo, name="kept", version=2)
    assert sorted(p.name for p in repo.iterdir()) == ["kept"]  # no half model, no staging folder
    assert sorted(p.name for p in (repo / "kept").iterdir()) == ["1", "config.pbtxt"]


def test_cli_writes_the_repository_and_says_how_to_serve_it(variants, tmp_path):
    repo = tmp_path / "repo"
    args = ["triton", str(variants["int8-cpu"]), "--repo", str(repo), "--name", "cam"]
    result = runner.invoke(app, [*args, "--preferred-batch", "2,4", "--max-batch-size", "4", "--instances", "3"])
    assert result.exit_code == 0, result.output
    config = _parse(repo / "cam" / "config.pbtxt")
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.instance_group[0].count == 3
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert "tritonserver --model-repository=" in result.output
    refused = runner.invoke(app, [*args, "--kind", "gpu"])
    assert refused.exit_code == ConfigError.exit_code and "--kind cpu" in refused.output
    bad = runner.invoke(app, [*args, "--preferred-batch", "two"])
    assert bad.exit_code == 2 and "comma-separated" in bad.output
