"""What one TensorRT plan build is asked for, checked before TensorRT builds anything: the options, the source
ONNX and its manifest, where the plan and its build log go; and the two records written beside the plan (the
build log and the manifest). Nothing here imports tensorrt: the TensorRT side is engines/trt_build.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_text, read_manifest, sha256_file, write_manifest
from ..errors import ArtifactError, ConfigError, DeviceError
from .cuda import GpuProperties
from .plan import PLAN_KIND, BuildProfile, PlanLayers, PlanMachine, format_summary

PRECISIONS = ("fp32", "fp16", "int8")
MAX_OPTIMIZATION_LEVEL = 5


def validate_options(
    precision: str,
    workspace_mib: int | None,
    optimization_level: int | None,
    dla_core: int | None,
    hardware_compatible: bool,
    profile: BuildProfile | None = None,
) -> None:
    """Refuse option values and combinations no build can satisfy, before tensorrt is even imported."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if workspace_mib is not None and workspace_mib < 1:
        raise ConfigError(f"workspace must be at least 1 MiB, got {workspace_mib}")
    if optimization_level is not None and not 0 <= optimization_level <= MAX_OPTIMIZATION_LEVEL:
        raise ConfigError(f"optimization level must be 0..{MAX_OPTIMIZATION_LEVEL}, got {optimization_level}")
    if dla_core is not None:
        if dla_core < 0:
            raise ConfigError(f"DLA core must be >= 0, got {dla_core}")
        if precision == "fp32":
            raise ConfigError("DLA runs fp16 and int8 only: build the fp16 or int8 ONNX for a DLA core")
        if hardware_compatible:
            raise ConfigError("a DLA plan cannot be hardware-compatible: drop one of the two options")
        if profile is not None and (len(set(profile.batch)) > 1 or len(set(profile.sizes)) > 1):
            # DLA runs static shapes only: with a dynamic profile TensorRT would put every layer on the GPU.
            raise ConfigError(
                f"a DLA build needs a fixed input shape (min = opt = max), got batch {profile.batch} and sizes "
                f"{profile.sizes}: pass one value each, e.g. --profile-batch 1 --profile-sizes 256x256"
            )


def default_plan_name(onnx_path: Path) -> str:
    """'x/model.fp16.onnx' -> 'model': the plan is named '<name>.<precision>.plan'."""
    stem = onnx_path.name.removesuffix(".onnx")
    for precision in PRECISIONS:
        stem = stem.removesuffix(f".{precision}")
    return stem


@dataclass(frozen=True)
class PlanRequest:
    """One build: the source ONNX (its manifest read and checked against the request), where the plan and its
    log go, and the options as the log and the manifest record them."""

    onnx_path: Path
    precision: str
    profile: BuildProfile
    plan_path: Path
    log_path: Path
    timing_cache: Path | None
    options: dict[str, Any]
    source_manifest: dict[str, Any]
    size_multiple: int
    source_sha256: str

    @classmethod
    def check(
        cls,
        onnx_path: str | Path,
        out_dir: str | Path,
        *,
        precision: str,
        name: str | None,
        profile: BuildProfile,
        gpu: GpuProperties,
        options: dict[str, Any],
        timing_cache: Path | None,
        log_dir: Path | None,
    ) -> PlanRequest:
        """The request for a build on `gpu`, or the error that the source ONNX or the GPU gives to refuse it."""
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        if not onnx_path.is_file():
            raise ArtifactError(f"ONNX file not found: {onnx_path}")
        source_manifest = read_manifest(onnx_path, verify_hash=True, required=False) or {}
        if source_manifest.get("precision") not in (None, precision):
            raise ConfigError(
                f"{onnx_path.name} is a {source_manifest['precision']} model by its manifest; build it with "
                f"--precision {source_manifest['precision']} or pass the {precision} ONNX"
            )
        if source_manifest.get("target") == "cpu":
            raise ConfigError(
                f"{onnx_path.name} was quantized for the CPU (unsigned int8 activations), which TensorRT cannot "
                "run: calibrate again with --target tensorrt"
            )
        size_multiple = int(source_manifest.get("size_multiple", 1))
        profile.check_multiple(size_multiple)
        capability = gpu.compute_capability
        if options["hardware_compatible"] and tuple(int(v) for v in capability.split(".")) < (8, 0):
            raise DeviceError(f"hardware-compatible plans need an Ampere or newer GPU; {gpu.name} is {capability}")
        stem = f"{name or default_plan_name(onnx_path)}.{precision}"
        return cls(
            onnx_path=onnx_path,
            precision=precision,
            profile=profile,
            plan_path=out_dir / f"{stem}.plan",
            log_path=Path(log_dir or out_dir) / f"{stem}.build.log",
            timing_cache=timing_cache,
            options={**options, "timing_cache": str(timing_cache) if timing_cache else None},
            source_manifest=source_manifest,
            size_multiple=size_multiple,
            source_sha256=sha256_file(onnx_path),
        )

    def write_log(
        self, tensorrt_version: str, gpu: GpuProperties, lines: list[str], footer: str, layers: PlanLayers | None
    ) -> None:
        """`<name>.<precision>.build.log`: what was built from what, TensorRT's own lines, the outcome and, for a
        plan that was read back, its layers."""
        header = [
            f"addunet-edge build: {self.onnx_path} (sha256 {self.source_sha256}) -> {self.plan_path}",
            f"TensorRT {tensorrt_version} on {gpu.name} (compute capability {gpu.compute_capability})",
            f"precision {self.precision} (strongly typed); profile {self.profile.to_dict()}; options {self.options}",
        ]
        tail = [footer]
        if layers is not None:
            tail += [f"read back: {format_summary(layers.summary())}", *(" | ".join(r) for r in layers.table())]
        atomic_write_text(self.log_path, "\n".join([*header, *lines, *tail]) + "\n")

    def write_manifest(
        self, tensorrt_version: str, machine: PlanMachine, io: dict[str, Any], seconds: float, layers: PlanLayers
    ) -> None:
        """The plan's manifest: the machine and TensorRT it is bound to, its profile and I/O, its source."""
        num_classes = io["num_classes"] if io["num_classes"] is not None else self.source_manifest.get("num_classes")
        write_manifest(
            self.plan_path,
            kind=PLAN_KIND,
            precision=self.precision,
            strongly_typed=True,
            tensorrt_version=tensorrt_version,
            **machine.to_manifest(),
            profile=self.profile.to_dict(),
            channels=io["channels"],
            num_classes=num_classes,
            size_multiple=self.size_multiple,
            io_dtypes=io["dtypes"],
            source=self.onnx_path.name,
            source_sha256=self.source_sha256,
            options=self.options,
            build_seconds=round(seconds, 2),
            build_log=str(self.log_path),
            layers=layers.to_dict(),
        )
