"""A TensorRT plan's description and checks, all pure (no TensorRT, no GPU; tested on the CPU): its
optimization profile, its manifest and whether it can run here, and what it really holds.

What a built plan holds: each layer's precision and device, read back after the build.

A strongly typed plan computes in the types of its ONNX, and a DLA build with GPU fallback may put any
layer on the GPU without an error. Neither shows in the build flags, so after every build the engine
inspector's per-layer JSON (precision, from each layer's tensor formats) and the builder's log (which
lists the layers running on DLA and on the GPU) are read back, recorded in the manifest and checked
against what was asked for. This module is pure parsing and checking: it runs, and is tested, without
TensorRT.
"""

from __future__ import annotations

import json
import platform
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import read_manifest
from ..errors import ArtifactError, BudgetError, ConfigError
from .base import InputProfile

PLAN_KIND = "tensorrt-plan"
REBUILD_HINT = "rebuild it on this machine with `addunet-edge build`"
# Hardware-compatible plans (HardwareCompatibilityLevel.AMPERE_PLUS) run on any GPU of compute capability 8.0+
_AMPERE = (8, 0)
Size = tuple[int, int]

# A DLA plan may leave a few layers on the GPU (reformats at its edges, an unsupported op); past this
# share of its layers it is a GPU plan that happens to touch the DLA, and `build` refuses it.
MAX_GPU_SHARE_FOR_DLA = 0.25
PRECISIONS = ("int8", "fp16", "fp32")

# Engine inspector formats name the element type first ("Int8 NC/32HW32", "Channel major FP16 format
# where channel % 8 == 0", "Row major linear FP32"); TensorRT 11 also gives a bare "DataType" ("Half").
_TYPE_WORDS: tuple[tuple[str, str], ...] = (
    (r"\bint8\b", "int8"),
    (r"\bfp16\b|\bhalf\b", "fp16"),
    (r"\bfp32\b|\bfloat\b", "fp32"),
    (r"\bbfloat16\b|\bbf16\b", "bf16"),
    (r"\bfp8\b", "fp8"),
    (r"\bint32\b|\bint64\b|\bbool\b|\buint8\b", "int/bool"),
)
# The builder logs where each layer went ("[DlaLayer] {ForeignNode[...]}" / "[GpuLayer] CONVOLUTION: x")
# under "Layers Running on DLA" / "Layers Running on GPU" when a DLA core is set.
_PLACEMENT = re.compile(r"\[(Dla|Gpu)Layer\]\s*(.+?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # LayerType (or ParameterType) as the inspector names it
    precision: str  # int8 | fp16 | fp32 | bf16 | fp8 | int/bool | unknown: the widest type it computes with
    device: str  # dla | gpu


@dataclass
class PlanLayers:
    """Per-layer read-back of a plan and its summary (what the manifest, the build report and `info` show)."""

    layers: list[LayerInfo]
    dla_core: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def by_precision(self) -> dict[str, int]:
        return dict(Counter(layer.precision for layer in self.layers))

    @property
    def by_device(self) -> dict[str, int]:
        return dict(Counter(layer.device for layer in self.layers))

    @property
    def gpu_share(self) -> float:
        return self.by_device.get("gpu", 0) / max(1, len(self.layers))

    def summary(self) -> dict[str, Any]:
        return {
            "layers": len(self.layers),
            "precision": self.by_precision,
            "device": self.by_device,
            "dla_core": self.dla_core,
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "per_layer": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanLayers:
        try:
            layers = [LayerInfo(**layer) for layer in d.get("per_layer", [])]
        except TypeError as e:
            raise ArtifactError(f"malformed layer read-back in a plan manifest: {e}") from None
        return cls(layers=layers, dla_core=d.get("dla_core"), notes=list(d.get("notes", [])))

    def table(self) -> list[tuple[str, str, str, str]]:
        """(layer, kind, precision, device) rows, in engine order."""
        return [(layer.name, layer.kind, layer.precision, layer.device) for layer in self.layers]


def _tensor_type(tensor: Any) -> str | None:
    if not isinstance(tensor, dict):
        return None
    text = " ".join(str(tensor.get(k, "")) for k in ("Format/Datatype", "DataType", "Format")).lower()
    for pattern, name in _TYPE_WORDS:
        if re.search(pattern, text):
            return name
    return None


def _layer_precision(layer: dict[str, Any]) -> str:
    """int8 when any tensor of the layer is int8 (a quantized conv reads and writes int8), else the first
    float type among its inputs and outputs, in the order fp16, fp32."""
    types = {_tensor_type(t) for t in [*layer.get("Inputs", []), *layer.get("Outputs", [])]} - {None}
    for precision in ("int8", "fp8", "fp16", "bf16", "fp32", "int/bool"):
        if precision in types:
            return precision
    return "unknown"


def _placements(log_lines: Iterable[str]) -> dict[str, str]:
    placed: dict[str, str] = {}
    for line in log_lines:
        match = _PLACEMENT.search(line)
        if match:
            where, what = match.group(1).lower(), match.group(2)
            placed[what.split(": ", 1)[-1].strip()] = where
    return placed


def read_layers(engine_json: str, log_lines: Sequence[str] = (), dla_core: int | None = None) -> PlanLayers:
    """Parse the engine inspector's JSON (ProfilingVerbosity.DETAILED) and the build log into PlanLayers."""
    try:
        doc = json.loads(engine_json)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"the engine inspector returned no JSON ({e})") from None
    raw = doc.get("Layers") if isinstance(doc, dict) else None
    if not isinstance(raw, list) or not raw:
        raise ArtifactError(
            "the engine inspector listed no layers: was the plan built with ProfilingVerbosity.DETAILED?"
        )
    placed = _placements(log_lines)
    notes: list[str] = []
    if dla_core is not None and not placed:
        notes.append("the build log names no layer placement: every layer is counted as running on the GPU")
    layers = []
    for entry in raw:
        if isinstance(entry, str):  # LAYER_NAMES_ONLY verbosity: names without types
            entry = {"Name": entry}
        name = str(entry.get("Name", "?"))
        kind = str(entry.get("LayerType") or entry.get("ParameterType") or "?")
        on_dla = dla_core is not None and (
            placed.get(name) == "dla" or kind.lower() in ("dla", "foreignnode") or "foreignnode" in name.lower()
        )
        layers.append(LayerInfo(name, kind, _layer_precision(entry), "dla" if on_dla else "gpu"))
    return PlanLayers(layers=layers, dla_core=dla_core, notes=notes)


def check_layers(
    layers: PlanLayers, precision: str, *, max_gpu_share: float = MAX_GPU_SHARE_FOR_DLA, label: str = "the plan"
) -> None:
    """Refuse (BudgetError, exit code 3) a plan that does not hold what was asked for: an int8 plan with no
    int8 layer, an fp16 plan with neither fp16 nor int8 layers, a DLA plan running more than
    `max_gpu_share` of its layers on the GPU."""
    counts = layers.by_precision
    problems = []
    if precision == "int8" and not counts.get("int8"):
        problems.append("int8 was asked for, and no layer computes in int8")
    if precision == "fp16" and not (counts.get("fp16") or counts.get("int8")):
        problems.append("fp16 was asked for, and no layer computes in fp16")
    if layers.dla_core is not None and layers.gpu_share > max_gpu_share:
        problems.append(
            f"DLA core {layers.dla_core} was asked for, and {layers.by_device.get('gpu', 0)} of "
            f"{len(layers.layers)} layers ({100 * layers.gpu_share:.0f} %) run on the GPU (at most "
            f"{100 * max_gpu_share:.0f} % allowed)"
        )
    if problems:
        rows = "\n".join(f"  {n} | {k} | {p} | {d}" for n, k, p, d in layers.table())
        raise BudgetError(f"{label}: " + "; ".join(problems) + f". Layers (name | type | precision | device):\n{rows}")


def format_summary(summary: dict[str, Any]) -> str:
    """'24 layers: int8 19, fp16 5; gpu 24' for the build line and `info`."""
    precision = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("precision", {}).items()))
    device = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("device", {}).items()))
    return f"{summary.get('layers', 0)} layers: {precision}; {device}"


# --------------------------------------------------------------------------------------------------------
# The optimization profile
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildProfile:
    """min / opt / max of the batch and of (height, width) for input 'noisy'; TensorRT tunes for opt."""

    batch: tuple[int, int, int] = (1, 1, 8)
    sizes: tuple[Size, Size, Size] = ((64, 64), (256, 256), (1024, 1024))

    def __post_init__(self) -> None:
        if len(self.batch) != 3 or len(self.sizes) != 3 or any(len(s) != 2 for s in self.sizes):
            raise ConfigError(f"a profile needs min, opt and max of batch and HxW, got {self.batch} {self.sizes}")
        values = [*self.batch, *(d for s in self.sizes for d in s)]
        if any(not isinstance(v, int) or isinstance(v, bool) for v in values):
            raise ConfigError(f"profile values must be integers, got batch {self.batch}, sizes {self.sizes}")
        if min(values) < 1:
            raise ConfigError(f"profile values must be at least 1, got batch {self.batch}, sizes {self.sizes}")
        axes = {
            "batch": self.batch,
            "height": tuple(s[0] for s in self.sizes),
            "width": tuple(s[1] for s in self.sizes),
        }
        for axis, (lo, opt, hi) in axes.items():
            if not lo <= opt <= hi:
                raise ConfigError(f"profile {axis} must satisfy min <= opt <= max, got {lo}, {opt}, {hi}")

    @classmethod
    def parse(cls, batch: str, sizes: str) -> BuildProfile:
        """From CLI text: batch '1,4,8' (or '4': fixed), sizes '64x64,256x256,1024x1024' (or '256x256')."""
        try:
            b = tuple(int(v) for v in batch.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"batch profile must look like 1,4,8 (min,opt,max), got {batch!r}") from None
        s = tuple(_parse_size(part) for part in sizes.split(",") if part.strip())
        if len(b) == 1:
            b = b * 3
        if len(s) == 1:
            s = s * 3
        if len(b) != 3:
            raise ConfigError(f"batch profile needs 1 or 3 values (min,opt,max), got {batch!r}")
        if len(s) != 3:
            raise ConfigError(f"size profile needs 1 or 3 sizes (min,opt,max), got {sizes!r}")
        return cls(batch=b, sizes=s)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildProfile:
        try:
            return cls(batch=tuple(d["batch"]), sizes=tuple(tuple(s) for s in d["sizes"]))  # type: ignore[arg-type]
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"malformed profile in manifest: {d!r} ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"batch": list(self.batch), "sizes": [list(s) for s in self.sizes]}

    def shapes(self, channels: int) -> tuple[tuple[int, int, int, int], ...]:
        """(min, opt, max) NCHW shapes of 'noisy'."""
        return tuple((n, channels, h, w) for n, (h, w) in zip(self.batch, self.sizes, strict=True))

    def check_multiple(self, multiple: int) -> None:
        if multiple > 1 and any(d % multiple for s in self.sizes for d in s):
            raise ConfigError(
                f"this model needs height and width multiples of {multiple}; profile sizes are {self.sizes}"
            )

    def to_input_profile(self, channels: int, size_multiple: int = 1) -> InputProfile:
        (lo_b, opt_b, hi_b), (lo_s, opt_s, hi_s) = self.batch, self.sizes
        return InputProfile(
            channels=channels,
            min_batch=lo_b,
            max_batch=hi_b,
            min_hw=tuple(lo_s),  # type: ignore[arg-type]
            max_hw=tuple(hi_s),  # type: ignore[arg-type]
            fixed_hw=tuple(lo_s) if lo_s == hi_s else None,  # type: ignore[arg-type]
            size_multiple=size_multiple,
            opt_batch=opt_b,
            opt_hw=tuple(opt_s),  # type: ignore[arg-type]
        )


def _parse_size(text: str) -> Size:
    try:
        h, w = (int(v) for v in text.strip().lower().split("x"))
    except ValueError:
        raise ConfigError(f"size must look like 256x256 (height x width), got {text.strip()!r}") from None
    return (h, w)


# --------------------------------------------------------------------------------------------------------
# The manifest: can this plan run here?
# --------------------------------------------------------------------------------------------------------
def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _cc_tuple(cc: str) -> tuple[int, ...]:
    return _version_tuple(cc)


@dataclass(frozen=True)
class PlanMachine:
    """What a plan is bound to besides TensorRT's version: the GPU model and its SM count, the DLA cores, the
    CPU architecture and the operating system.

    The name alone cannot tell Jetsons apart: an AGX Orin (16 SMs, 2 DLA cores) and an Orin Nano (8 or 4 SMs,
    no DLA) both report "Orin", compute capability 8.7, and a plan tuned on one is not valid on the other.
    `sm_count` and `dla_cores` are None where they were not read (a manifest from before they were recorded,
    or a check made before a TensorRT runtime exists); a None is not compared.
    """

    gpu_name: str
    compute_capability: str
    sm_count: int | None = None
    dla_cores: int | None = None
    cpu_arch: str = field(default_factory=platform.machine)
    os: str = field(default_factory=platform.system)

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's `gpu` and `host` entries."""
        gpu = {"name": self.gpu_name, "compute_capability": self.compute_capability, "sm_count": self.sm_count}
        return {"gpu": {**gpu, "dla_cores": self.dla_cores}, "host": {"cpu_arch": self.cpu_arch, "os": self.os}}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> PlanMachine:
        gpu, host = manifest.get("gpu") or {}, manifest.get("host") or {}
        return cls(
            gpu_name=str(gpu.get("name")),
            compute_capability=str(gpu.get("compute_capability")),
            sm_count=gpu.get("sm_count"),
            dla_cores=gpu.get("dla_cores"),
            cpu_arch=str(host.get("cpu_arch", "")),
            os=str(host.get("os", "")),
        )

    def describe(self) -> str:
        sms = f", {self.sm_count} SMs" if self.sm_count is not None else ""
        return f"{self.gpu_name} (compute capability {self.compute_capability}{sms})"


def check_plan_compatibility(
    manifest: dict[str, Any],
    trt_version: str,
    here: PlanMachine,
    *,
    plan_sha256: str | None = None,
) -> None:
    """Refuse (ArtifactError) a plan whose manifest says it cannot run with this TensorRT on this machine.

    `here` is this machine. `plan_sha256`, when given, is compared with the manifest's hash.
    """
    name = manifest.get("artifact", "the plan")
    if manifest.get("kind") != PLAN_KIND:
        raise ArtifactError(
            f"{name}: manifest describes a {manifest.get('kind')!r}, not a TensorRT plan; {REBUILD_HINT}"
        )
    for key in ("tensorrt_version", "gpu", "precision", "profile", "channels", "num_classes"):
        if key not in manifest:
            raise ArtifactError(f"{name}: manifest lacks {key!r}; {REBUILD_HINT}")
    if plan_sha256 is not None and plan_sha256 != manifest.get("sha256"):
        raise ArtifactError(
            f"{name} does not match its manifest (sha256 {plan_sha256[:12]}… != "
            f"{str(manifest.get('sha256'))[:12]}…): "
            f"the plan was modified or truncated; {REBUILD_HINT}"
        )
    options = manifest.get("options", {})
    built_version = str(manifest["tensorrt_version"])
    if built_version != trt_version:
        # A version-compatible plan runs on the TensorRT that built it and later ones ("Engine Compatibility",
        # TensorRT 11 docs); any other plan only on the exact version that built it.
        later = _version_tuple(trt_version) >= _version_tuple(built_version)
        if not (options.get("version_compatible") and later):
            raise ArtifactError(
                f"{name} was built with TensorRT {built_version}, this machine has TensorRT {trt_version}; "
                f"a plan only runs on the TensorRT version that built it: {REBUILD_HINT}"
            )
    built = PlanMachine.from_manifest(manifest)
    _check_host(name, built, here)
    _check_dla(name, options.get("dla_core"), here)
    if options.get("hardware_compatible"):
        if _cc_tuple(here.compute_capability) < _AMPERE:
            raise ArtifactError(
                f"{name} is hardware-compatible (Ampere and newer) but this GPU, {here.gpu_name}, has compute "
                f"capability {here.compute_capability}: {REBUILD_HINT}"
            )
        return
    same_sms = None in (built.sm_count, here.sm_count) or built.sm_count == here.sm_count
    if (built.compute_capability, built.gpu_name) != (here.compute_capability, here.gpu_name) or not same_sms:
        raise ArtifactError(
            f"{name} was built for {built.describe()}; this GPU is {here.describe()}. TensorRT plans are "
            f"specific to the GPU model (on a Jetson, the module: AGX Orin and Orin Nano share a name): "
            f"{REBUILD_HINT}"
        )


def _check_host(name: str, built: PlanMachine, here: PlanMachine) -> None:
    """A plan is native code for one CPU architecture and operating system (a manifest without them: not checked)."""
    for what, was, now in (("CPU architecture", built.cpu_arch, here.cpu_arch), ("OS", built.os, here.os)):
        if was and now and was != now:
            raise ArtifactError(f"{name} was built on {what} {was}; this machine is {now}: {REBUILD_HINT}")


def _check_dla(name: str, dla_core: Any, here: PlanMachine) -> None:
    """A DLA plan needs its DLA core here; otherwise TensorRT only says it could not deserialize the plan."""
    if dla_core is None or here.dla_cores is None or int(dla_core) < here.dla_cores:
        return
    has = f"{here.dla_cores} DLA cores" if here.dla_cores else "no DLA"
    raise ArtifactError(
        f"{name} runs on DLA core {dla_core}, and this machine has {has}: build it here (without --dla-core "
        "where there is no DLA) with `addunet-edge build`"
    )


def read_plan_manifest(plan_path: str | Path) -> dict[str, Any]:
    """The plan's manifest, required and hash-checked (ArtifactError with what to do otherwise)."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise ArtifactError(f"TensorRT plan not found: {plan_path}")
    try:
        manifest = read_manifest(plan_path, verify_hash=True, required=True)
    except ArtifactError as e:
        raise ArtifactError(f"{e}. A plan is only loaded with its manifest: {REBUILD_HINT}") from None
    if manifest is None:  # unreachable with required=True; keeps the type honest
        raise ArtifactError(f"{plan_path} has no manifest; {REBUILD_HINT}")
    return manifest


def input_profile_from_manifest(manifest: dict[str, Any]) -> InputProfile:
    profile = BuildProfile.from_dict(manifest["profile"])
    return profile.to_input_profile(int(manifest["channels"]), int(manifest.get("size_multiple", 1)))
