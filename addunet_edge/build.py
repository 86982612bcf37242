"""`build`: checkpoint or ONNX -> the precision ONNX (made on demand) -> a TensorRT plan or ONNX Runtime artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._lazy import available
from .artifacts import read_manifest
from .benchmarking.system import has_nvidia_gpu
from .calibration.int8 import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CALIBRATION_SIGMA,
    DataSpec,
    Int8Budget,
    make_int8,
)
from .calibration.ranges import DEFAULT_PERCENTILE
from .calibration.sensitivity import DEFAULT_METHOD, CalibrationReport, FallbackReport
from .engines.plan_request import PRECISIONS
from .errors import ConfigError, DeviceError, MissingDependencyError

BACKENDS = ("auto", "tensorrt", "onnxruntime")
# The TensorRT profile when none is given: batch min,opt,max and HxW min,opt,max. 32x32 is the digits'
# size, so validate can run the test split through the plan; nvinfer runs the optimum.
DEFAULT_PROFILE_BATCH = "1,1,8"
DEFAULT_PROFILE_SIZES = "32x32,256x256,1024x1024"


def artifact_name(source: Path) -> str:
    """'runs/q/model' -> 'model'; 'x/model.fp32.onnx' -> 'model'."""
    name = source.name
    if source.suffix.lower() == ".onnx":
        name = source.stem
        for tag in (".fp32", ".fp16", ".int8"):
            name = name.split(tag)[0]
    return name


def onnx_path_for(out_dir: Path, name: str, precision: str, target: str | None = None) -> Path:
    """The file name of each precision variant: <name>.fp32.onnx, <name>.fp16.onnx, <name>.int8.<target>.onnx."""
    if precision == "int8":
        return out_dir / f"{name}.int8.{target or 'tensorrt'}.onnx"
    return out_dir / f"{name}.{precision}.onnx"


def resolve_backend(backend: str) -> tuple[str, str | None]:
    """('tensorrt' | 'onnxruntime', a one-line note when auto fell back)."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    has_trt = available("tensorrt")
    has_gpu = has_nvidia_gpu()
    if backend == "tensorrt":
        if not has_trt:
            raise MissingDependencyError(
                "--backend tensorrt needs the tensorrt package: pip install 'addunet-edge[tensorrt]' "
                "(on a Jetson it comes with JetPack)"
            )
        if not has_gpu:
            raise DeviceError("--backend tensorrt needs an NVIDIA GPU, and none is visible here")
        return "tensorrt", None
    if backend == "auto":
        if has_trt and has_gpu:
            return "tensorrt", None
        why = "tensorrt is not installed" if not has_trt else "no NVIDIA GPU is visible"
        return "onnxruntime", f"{why}: building ONNX Runtime artifacts instead of TensorRT plans"
    return "onnxruntime", None


@dataclass
class BuildResult:
    backend: str
    precision: str
    onnx: dict[str, Path] = field(default_factory=dict)  # precision tag -> ONNX path
    plan: Path | None = None
    notes: list[str] = field(default_factory=list)
    calibration: Any = None

    @property
    def artifact(self) -> Path:
        """What to run: the plan, else the precision ONNX."""
        return self.plan if self.plan is not None else self.onnx[self.precision]


@dataclass(frozen=True)
class Int8Settings:
    """How `build` and `calibrate` make an int8 ONNX: make_int8's choices (its defaults where not given), with
    the ranges cache beside the int8 ONNX unless `cache_dir` names another folder. `make` is the one call both
    verbs make."""

    target: str = "cpu"
    method: str = DEFAULT_METHOD
    percentile: float = DEFAULT_PERCENTILE
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    sigma: float = DEFAULT_CALIBRATION_SIGMA
    budget: Int8Budget | None = None
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    cache_dir: Path | None = None
    batch_size: int = 8
    high_precision: str | None = None
    dla: bool = False

    def make(
        self, fp32: Path, out: Path, data: DataSpec, *, progress: bool = True
    ) -> CalibrationReport | FallbackReport:
        """Calibrate `fp32` on `data` and write the int8 ONNX (with its manifest) to `out`."""
        return make_int8(
            fp32,
            out,
            data,
            target=self.target,  # type: ignore[arg-type]  # checked by quantize_int8
            method=self.method,
            percentile=self.percentile,
            calibration_images=self.calibration_images,
            sigma=self.sigma,
            budget=self.budget,
            exclude_nodes=self.exclude_nodes,
            exclude_op_types=self.exclude_op_types,
            cache_dir=self.cache_dir if self.cache_dir is not None else out.parent / ".calibration-cache",
            batch_size=self.batch_size,
            high_precision=self.high_precision,  # type: ignore[arg-type]  # checked by quantize_int8
            dla=self.dla,
            progress=progress,
        )


def make_precision_onnx(
    source: Path,
    out_dir: Path,
    precision: str,
    *,
    target: str = "cpu",
    dataset: str | None = None,
    method: str = "percentile",
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    sigma: float = DEFAULT_CALIBRATION_SIGMA,
    exclude_nodes: tuple[str, ...] = (),
    budget: Int8Budget | None = None,
    dla: bool = False,
    progress: bool = True,
    result: BuildResult | None = None,
) -> Path:
    """Make (or reuse, when it is in place and matches its manifest) the ONNX of one precision."""
    from .calibration import convert_fp16
    from .checkpoint import is_checkpoint
    from .export import export_onnx

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = artifact_name(source)
    if is_checkpoint(source):
        fp32 = onnx_path_for(out_dir, name, "fp32")
        if not _fresh(fp32, source):
            fp32, _ = export_onnx(source, fp32)
    else:
        fp32 = source
    if result is not None:
        result.onnx["fp32"] = fp32
    if precision == "fp32":
        return fp32
    manifest = read_manifest(fp32, verify_hash=True) or {}
    data = DataSpec.of(source, dataset, in_channels=int(manifest.get("in_channels", 1)))
    out = onnx_path_for(out_dir, name, precision, target)
    if precision == "fp16":
        noisy, _, _ = data.calibration_arrays(calibration_images, sigma)
        convert_fp16(fp32, out, calib=noisy[:32], progress=progress)
    else:
        settings = Int8Settings(
            target=target,
            method=method,
            calibration_images=calibration_images,
            sigma=sigma,
            budget=budget,
            exclude_nodes=tuple(exclude_nodes),
            dla=dla,
        )
        report = settings.make(fp32, out, data, progress=progress)
        if result is not None:
            result.calibration = report
    if result is not None:
        result.onnx[precision] = out
    return out


def _fresh(fp32: Path, checkpoint: Path) -> bool:
    """True when `fp32` exists, matches its manifest and was exported from this checkpoint's weights."""
    from .artifacts import sha256_file
    from .checkpoint import WEIGHTS
    from .errors import ArtifactError

    if not fp32.exists():
        return False
    try:
        manifest = read_manifest(fp32, verify_hash=True) or {}
    except ArtifactError:
        return False
    return manifest.get("source", {}).get("weights_sha256") == sha256_file(checkpoint / WEIGHTS)


def build(
    source: str | Path,
    out_dir: str | Path,
    *,
    precision: str = "fp16",
    backend: str = "auto",
    target: str | None = None,
    dataset: str | None = None,
    method: str = "percentile",
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    sigma: float = DEFAULT_CALIBRATION_SIGMA,
    budget: Int8Budget | None = None,
    trt_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> BuildResult:
    """The whole `build` verb; TensorRT options (profile, workspace, ...) pass through to build_plan."""
    source, out_dir = Path(source), Path(out_dir)
    chosen, note = resolve_backend(backend)
    result = BuildResult(backend=chosen, precision=precision)
    if note:
        result.notes.append(note)
    # int8 for a TensorRT plan must be the symmetric flavour; for ONNX Runtime on the CPU, the fast one.
    target = target or ("tensorrt" if chosen == "tensorrt" else "cpu")
    if chosen == "tensorrt" and precision == "int8" and target != "tensorrt":
        raise ConfigError("a TensorRT plan needs --target tensorrt int8 (symmetric Q/DQ)")
    onnx = make_precision_onnx(
        source,
        out_dir,
        precision,
        target=target,
        dataset=dataset,
        method=method,
        calibration_images=calibration_images,
        sigma=sigma,
        budget=budget,
        # A DLA plan gets ModelOpt's DLA placement (the int8 ONNX is made for the DLA, not the GPU).
        dla=(trt_options or {}).get("dla_core") is not None and chosen == "tensorrt",
        progress=progress,
        result=result,
    )
    if chosen == "tensorrt":
        from .engines.plan import BuildProfile
        from .engines.trt_build import build_plan

        opts = dict(trt_options or {})
        profile = opts.pop("profile", None) or BuildProfile.parse(DEFAULT_PROFILE_BATCH, DEFAULT_PROFILE_SIZES)
        result.plan = build_plan(
            onnx, out_dir, precision=precision, name=artifact_name(source), profile=profile, **opts
        )
    return result
