"""TensorRT contract that holds without a GPU: profiles, manifest checks, refusals, doctor, lazy imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from addunet_edge._lazy import available
from addunet_edge.artifacts import manifest_path, write_manifest
from addunet_edge.engines.plan import (
    PLAN_KIND,
    BuildProfile,
    PlanMachine,
    check_plan_compatibility,
    input_profile_from_manifest,
    read_plan_manifest,
)
from addunet_edge.engines.tensorrt import TensorRTEngine
from addunet_edge.engines.trt_build import build_plan
from addunet_edge.errors import ArtifactError, ConfigError, MissingDependencyError, ShapeError

REPO = Path(__file__).resolve().parents[2]
HAS_TRT = available("tensorrt")
HAS_CUDA_BINDINGS = available("cuda.bindings.runtime") or available("cuda.cudart") or available("pycuda.driver")

TRT = "10.3.0.30"
ORIN = {"name": "Orin", "compute_capability": "8.7"}


def plan_manifest(**overrides: object) -> dict:
    manifest = {
        "schema": 1,
        "kind": PLAN_KIND,
        "artifact": "model.fp16.plan",
        "sha256": "ab" * 32,
        "tensorrt_version": TRT,
        "gpu": dict(ORIN),
        "precision": "fp16",
        "profile": BuildProfile.parse("1,2,4", "64x64,256x256,512x512").to_dict(),
        "channels": 1,
        "num_classes": 10,
        "size_multiple": 4,
        "options": {"version_compatible": False, "hardware_compatible": False},
    }
    manifest.update(overrides)
    return manifest


# -- BuildProfile -------------------------------------------------------------------------------------
def test_profile_parses_min_opt_max() -> None:
    p = BuildProfile.parse("1,4,8", "64x64,256x256,1024x768")
    assert p.batch == (1, 4, 8)
    assert p.sizes == ((64, 64), (256, 256), (1024, 768))
    assert p.shapes(3) == ((1, 3, 64, 64), (4, 3, 256, 256), (8, 3, 1024, 768))


def test_profile_single_values_mean_fixed() -> None:
    p = BuildProfile.parse("2", "128x96")
    assert p.batch == (2, 2, 2)
    assert p.sizes == ((128, 96),) * 3
    ip = p.to_input_profile(channels=1)
    assert ip.fixed_hw == (128, 96)
    assert (ip.min_batch, ip.max_batch) == (2, 2)


def test_profile_round_trips_through_manifest_dict() -> None:
    p = BuildProfile.parse("1,2,4", "32x32,64x64,128x128")
    assert BuildProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize(
    ("batch", "sizes", "expected"),
    [
        ("8,4,1", "64x64", "min <= opt <= max"),
        ("0,1,2", "64x64", "at least 1"),
        ("1,2", "64x64", "1 or 3 values"),
        ("one", "64x64", "1,4,8"),
        ("1", "512x512,256x256,128x128", "min <= opt <= max"),
        ("1", "64x64,32x32,128x128", "min <= opt <= max"),
        ("1", "64x256,128x128,256x256", "width"),
        ("1", "64x", "256x256"),
        ("1", "0x64", "at least 1"),
        ("1", "64x64,128x128", "1 or 3 sizes"),
    ],
)
def test_profile_refuses_nonsense(batch: str, sizes: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        BuildProfile.parse(batch, sizes)


def test_profile_refuses_non_integers_and_non_multiples() -> None:
    with pytest.raises(ConfigError, match="integers"):
        BuildProfile(batch=(1, 2.5, 4), sizes=((8, 8),) * 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="multiples of 8"):
        BuildProfile.parse("1", "60x64").check_multiple(8)
    BuildProfile.parse("1", "64x64").check_multiple(8)


def test_input_profile_from_manifest_bounds_the_engine() -> None:
    profile = input_profile_from_manifest(plan_manifest())
    assert profile.size_multiple == 4
    profile.check((4, 1, 512, 512))
    with pytest.raises(ShapeError, match="outside the engine's profile"):
        profile.check((5, 1, 256, 256))
    with pytest.raises(ShapeError, match="larger than the profile maximum"):
        profile.check((1, 1, 1024, 256))
    with pytest.raises(ShapeError, match="channel"):
        profile.check((1, 3, 256, 256))


# -- manifest checks ----------------------------------------------------------------------------------
def test_compatible_plan_is_accepted() -> None:
    check_plan_compatibility(plan_manifest(), TRT, PlanMachine("Orin", "8.7"), plan_sha256="ab" * 32)


def test_other_tensorrt_version_is_refused() -> None:
    with pytest.raises(ArtifactError, match=r"TensorRT 10\.3\.0\.30.*10\.7\.0\.23.*addunet-edge build"):
        check_plan_compatibility(plan_manifest(), "10.7.0.23", PlanMachine("Orin", "8.7"))


def test_version_compatible_plan_runs_on_later_tensorrt_only() -> None:
    manifest = plan_manifest(options={"version_compatible": True, "hardware_compatible": False})
    check_plan_compatibility(manifest, "10.7.0.23", PlanMachine("Orin", "8.7"))
    with pytest.raises(ArtifactError, match=r"TensorRT 10\.3\.0\.30"):
        check_plan_compatibility(manifest, "10.2.0.19", PlanMachine("Orin", "8.7"))


@pytest.mark.parametrize(("name", "cc"), [("NVIDIA GeForce RTX 4090", "8.9"), ("Orin", "8.6"), ("Xavier", "8.7")])
def test_other_gpu_is_refused(name: str, cc: str) -> None:
    with pytest.raises(ArtifactError, match=r"built for Orin \(compute capability 8\.7\).*addunet-edge build"):
        check_plan_compatibility(plan_manifest(), TRT, PlanMachine(name, cc))


def test_hardware_compatible_plan_needs_ampere_or_newer() -> None:
    manifest = plan_manifest(
        gpu={"name": "NVIDIA A100", "compute_capability": "8.0"},
        options={"version_compatible": False, "hardware_compatible": True},
    )
    check_plan_compatibility(manifest, TRT, PlanMachine("NVIDIA H100", "9.0"))
    with pytest.raises(ArtifactError, match="Ampere"):
        check_plan_compatibility(manifest, TRT, PlanMachine("Tesla T4", "7.5"))


def test_a_jetson_module_is_told_apart_by_its_sm_count() -> None:
    """AGX Orin and Orin Nano both say "Orin", compute capability 8.7: the SM count tells them apart."""
    agx = plan_manifest(gpu={**ORIN, "sm_count": 16, "dla_cores": 2})
    check_plan_compatibility(agx, TRT, PlanMachine("Orin", "8.7", sm_count=16))
    with pytest.raises(ArtifactError, match=r"built for Orin \(compute capability 8\.7, 16 SMs\).*8 SMs"):
        check_plan_compatibility(agx, TRT, PlanMachine("Orin", "8.7", sm_count=8))
    # a manifest from before the SM count was recorded is still accepted on the same GPU model
    check_plan_compatibility(plan_manifest(), TRT, PlanMachine("Orin", "8.7", sm_count=8))


def test_a_plan_from_another_cpu_architecture_or_os_is_refused() -> None:
    built_on = {"cpu_arch": "aarch64", "os": "Linux"}
    manifest = plan_manifest(host=built_on)
    check_plan_compatibility(manifest, TRT, PlanMachine("Orin", "8.7", cpu_arch="aarch64", os="Linux"))
    with pytest.raises(ArtifactError, match=r"CPU architecture aarch64; this machine is x86_64"):
        check_plan_compatibility(manifest, TRT, PlanMachine("Orin", "8.7", cpu_arch="x86_64", os="Linux"))
    with pytest.raises(ArtifactError, match=r"OS Linux; this machine is Windows"):
        check_plan_compatibility(manifest, TRT, PlanMachine("Orin", "8.7", cpu_arch="aarch64", os="Windows"))
    hardware_compatible = plan_manifest(host=built_on, options={"hardware_compatible": True})
    with pytest.raises(ArtifactError, match="CPU architecture"):  # hardware compatibility spans GPUs, not hosts
        check_plan_compatibility(hardware_compatible, TRT, PlanMachine("Orin", "8.7", cpu_arch="x86_64", os="Linux"))


@pytest.mark.parametrize(
    ("dla_core", "cores", "refused"), [(1, 2, False), (1, 1, True), (0, 0, True), (None, 0, False)]
)
def test_a_dla_plan_needs_its_core_here(dla_core: int | None, cores: int, refused: bool) -> None:
    manifest = plan_manifest(options={"dla_core": dla_core, "version_compatible": False})
    here = PlanMachine("Orin", "8.7", dla_cores=cores)
    if not refused:
        check_plan_compatibility(manifest, TRT, here)
        return
    has = "no DLA" if cores == 0 else f"{cores} DLA cores"
    with pytest.raises(ArtifactError, match=rf"DLA core {dla_core}, and this machine has {has}"):
        check_plan_compatibility(manifest, TRT, here)
    # before a TensorRT runtime has said how many cores there are (None), nothing is assumed
    check_plan_compatibility(manifest, TRT, PlanMachine("Orin", "8.7"))


def test_the_machine_round_trips_through_the_manifest() -> None:
    here = PlanMachine("NVIDIA H100", "9.0", sm_count=132, dla_cores=0, cpu_arch="x86_64", os="Linux")
    assert PlanMachine.from_manifest(here.to_manifest()) == here
    assert here.to_manifest()["gpu"] == {
        "name": "NVIDIA H100",
        "compute_capability": "9.0",
        "sm_count": 132,
        "dla_cores": 0,
    }


def test_hash_mismatch_and_malformed_manifests_are_refused() -> None:
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        check_plan_compatibility(plan_manifest(), TRT, PlanMachine("Orin", "8.7"), plan_sha256="cd" * 32)
    with pytest.raises(ArtifactError, match="not a TensorRT plan"):
        check_plan_compatibility(plan_manifest(kind="onnx"), TRT, PlanMachine("Orin", "8.7"))
    incomplete = plan_manifest()
    del incomplete["gpu"]
    with pytest.raises(ArtifactError, match="lacks 'gpu'"):
        check_plan_compatibility(incomplete, TRT, PlanMachine("Orin", "8.7"))


def test_plan_file_needs_its_manifest_and_matching_bytes(tmp_path: Path) -> None:
    plan = tmp_path / "model.fp16.plan"
    plan.write_bytes(b"serialized engine bytes")
    with pytest.raises(ArtifactError, match=r"no manifest.*addunet-edge build"):
        read_plan_manifest(plan)
    fields = {k: v for k, v in plan_manifest().items() if k not in ("schema", "artifact", "sha256")}
    write_manifest(plan, **fields)
    assert read_plan_manifest(plan)["tensorrt_version"] == TRT
    plan.write_bytes(b"serialized engine bytes, truncated or tampered")
    with pytest.raises(ArtifactError, match=r"does not match its manifest.*addunet-edge build"):
        read_plan_manifest(plan)
    with pytest.raises(ArtifactError, match="not found"):
        read_plan_manifest(tmp_path / "absent.plan")


# -- without tensorrt: one clear error, nothing written ----------------------------------------------
@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; this checks the refusal where it is not")
def test_engine_without_tensorrt_names_it_and_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match=r"'tensorrt'.*addunet-edge\[tensorrt-cu12\]") as info:
        TensorRTEngine(tmp_path / "model.fp16.plan")
    assert info.value.exit_code == 4


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; this checks the refusal where it is not")
def test_build_without_tensorrt_names_it_and_writes_nothing(tmp_path: Path) -> None:
    onnx = tmp_path / "model.fp16.onnx"
    onnx.write_bytes(b"placeholder: never read, tensorrt is checked first")
    out = tmp_path / "plans"
    out.mkdir()
    with pytest.raises(MissingDependencyError, match=r"'tensorrt'.*addunet-edge\[tensorrt-cu12\]"):
        build_plan(
            onnx,
            out,
            precision="fp16",
            profile=BuildProfile(),
            timing_cache=out / "timing.cache",
            log_dir=out / "logs",
        )
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.onnx", "plans"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"precision": "int4"}, "precision must be one of"),
        ({"precision": "fp32", "dla_core": 0}, "DLA runs fp16 and int8 only"),
        ({"precision": "fp16", "dla_core": 0, "hardware_compatible": True}, "cannot be hardware-compatible"),
        ({"precision": "fp16", "optimization_level": 9}, "optimization level"),
        ({"precision": "fp16", "workspace_mib": 0}, "workspace"),
    ],
)
def test_build_refuses_bad_options_before_anything_else(tmp_path: Path, kwargs: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build_plan(tmp_path / "m.onnx", tmp_path / "out", profile=BuildProfile(), **kwargs)
    assert not (tmp_path / "out").exists()
    assert not manifest_path(tmp_path / "out" / "m.fp16.plan").exists()


# -- doctor -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report() -> dict:
    from addunet_edge.doctor import collect_report

    return collect_report()


def test_doctor_tells_the_truth_about_tensorrt_and_the_gpu(report: dict) -> None:
    import torch

    assert report["tensorrt"]["importable"] is HAS_TRT
    assert report["torch"]["cuda_available"] is torch.cuda.is_available()
    no_gpu_anywhere = not torch.cuda.is_available() and shutil.which("nvidia-smi") is None and not HAS_CUDA_BINDINGS
    if no_gpu_anywhere:
        assert report["gpu"] == {"present": False, "source": None, "devices": []}
    trt_rows = [r for r in report["commands"] if r["variant"].endswith("--backend tensorrt")]
    assert [r["variant"].split()[0] for r in trt_rows] == ["fp32", "fp16", "int8"]
    for row in trt_rows:
        assert row["ok"] is (HAS_TRT and HAS_CUDA_BINDINGS and report["gpu"]["present"])
        if not HAS_TRT:
            assert "tensorrt" in row["missing"]
            assert any("tensorrt" in how for how in row["install"])
    train = next(r for r in report["commands"] if r["command"] == "train")
    assert train["ok"] is True
    json.dumps(report)  # JSON-ready as it is


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_doctor_command_reports_tensorrt_missing(tmp_path: Path) -> None:
    from addunet_edge.cli import app

    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["doctor", "--json", str(out)])
    assert result.exit_code == 0, result.output
    trt_line = next(line for line in result.output.splitlines() if "TensorRT" in line)
    assert "missing" in trt_line
    saved = json.loads(out.read_text())
    assert saved["tensorrt"]["importable"] is False
    assert {r["command"] for r in saved["commands"]} >= {"train", "export", "calibrate", "build", "run"}


# -- lazy imports ---------------------------------------------------------------------------------------
def test_trt_modules_import_no_heavy_packages() -> None:
    code = (
        "import sys\n"
        "import addunet_edge.engines.trt_build, addunet_edge.engines.tensorrt\n"
        "import addunet_edge.doctor\n"
        "heavy = ('tensorrt', 'cuda', 'pycuda', 'torch', 'onnxruntime', 'cv2')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize(
    "jetson,driver,expected",
    [
        ({"is_jetson": True, "jetpack_major": "6"}, None, "addunet-edge[jetson]"),
        ({"is_jetson": True, "jetpack_major": "7"}, None, "cuda-python>=13,<14"),
        ({"is_jetson": False}, "12.4", "addunet-edge[tensorrt-cu12]"),
        ({"is_jetson": False}, "13.0", "addunet-edge[tensorrt-cu13]"),
        ({"is_jetson": False}, "11.8", None),
        ({"is_jetson": False}, None, None),
    ],
)
def test_doctor_names_the_tensorrt_install_that_fits_the_machine(jetson, driver, expected) -> None:
    from addunet_edge.doctor import tensorrt_extra_for

    command, why = tensorrt_extra_for(jetson, driver)
    assert why
    if expected is None:
        assert command is None
    else:
        assert command is not None and expected in command
        assert ("system-site-packages" in command) == jetson["is_jetson"]


def test_the_extras_bound_tensorrt_and_cuda_python_per_platform() -> None:
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(r.startswith("tensorrt-cu12>=10.3,<") for r in extras["tensorrt-cu12"])
    assert "cuda-python>=12.3,<13" in extras["tensorrt-cu12"] and "cuda-python>=13,<14" in extras["tensorrt-cu13"]
    assert extras["jetson"] == ["cuda-python>=12.6,<13"]  # JetPack 6's CUDA; its TensorRT comes from JetPack


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_self_test_names_everything_missing_and_runs_nothing(tmp_path: Path) -> None:
    from addunet_edge.cli import app

    result = CliRunner().invoke(app, ["doctor", "--self-test", "--out", str(tmp_path / "st")])
    assert result.exit_code == MissingDependencyError.exit_code == 4, result.output
    text = " ".join(result.output.split())
    assert "the self-test needs" in text and "TensorRT" in text
    assert not (tmp_path / "st" / "report.json").exists()


def test_self_test_lists_each_missing_piece() -> None:
    from addunet_edge.selftest import missing_for_self_test

    ready = {
        "gpu": {"present": True},
        "tensorrt": {"importable": True, "error": None},
        "cuda_bindings": {"cuda-python": False, "pycuda": True},
        "tensorrt_install": {"command": "x", "why": "y"},
    }
    assert missing_for_self_test(ready) == []
    bare = {
        "gpu": {"present": False},
        "tensorrt": {"importable": False, "error": "ModuleNotFoundError"},
        "cuda_bindings": {"cuda-python": False, "pycuda": False},
        "tensorrt_install": {"command": None, "why": "no driver"},
    }
    assert len(missing_for_self_test(bare)) == 3


# -- the timing cache: only a speed-up, so a bad one never fails a build ------------------------------------
class _CacheConfig:
    """Stands in for IBuilderConfig's two timing-cache calls, to drive `_load_timing_cache`'s own branches
    (what TensorRT does with a corrupt cache is tested for real in tests/gpu/test_tensorrt_plans.py)."""

    def __init__(self, on_blob: str) -> None:
        self.on_blob, self.set_with = on_blob, []

    def create_timing_cache(self, data: bytes) -> object | None:
        if data and self.on_blob == "raise":
            raise RuntimeError("Deserialization failed")
        if data and self.on_blob == "none":
            return None
        return ("cache", data)

    def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> bool:
        self.set_with.append(cache)
        return not (self.on_blob == "mismatch" and cache != ("cache", b""))


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, severity: str, msg: str) -> None:
        self.lines.append(f"{severity}: {msg}")


@pytest.mark.parametrize(
    ("on_blob", "why"),
    [("raise", "is corrupt (RuntimeError"), ("none", "is corrupt"), ("mismatch", "another GPU or TensorRT")],
)
def test_a_bad_timing_cache_is_replaced_by_a_new_one(tmp_path: Path, on_blob: str, why: str) -> None:
    from addunet_edge.engines.trt_build import _load_timing_cache

    path = tmp_path / "timing.cache"
    path.write_bytes(b"\x00garbage")
    config, log = _CacheConfig(on_blob), _Log()
    assert _load_timing_cache(config, path, log) == ("cache", b"")
    assert config.set_with[-1] == ("cache", b"")
    assert len(log.lines) == 1 and why in log.lines[0] and "starting a new one" in log.lines[0]


def test_a_good_or_absent_timing_cache_is_used_quietly(tmp_path: Path) -> None:
    from addunet_edge.engines.trt_build import _load_timing_cache

    path = tmp_path / "timing.cache"
    config, log = _CacheConfig("ok"), _Log()
    assert _load_timing_cache(config, path, log) == ("cache", b"")  # none yet: a new one, no warning
    path.write_bytes(b"entries")
    assert _load_timing_cache(config, path, log) == ("cache", b"entries")
    assert log.lines == [] and _load_timing_cache(config, None, log) is None
    path.unlink()
    path.mkdir()  # not a file: treated as absent
    assert _load_timing_cache(config, path, log) == ("cache", b"")
