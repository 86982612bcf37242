"""What a Triton config is written from: a plan's or an ONNX's manifest (and, for an ONNX, its graph) read into a
TritonSource, refused with a clear ArtifactError when it is not an addunet-edge artifact Triton can serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import read_manifest, trace_provenance
from .engines import PLAN_SUFFIXES
from .engines.base import INPUT_NAME, OUTPUT_NAMES
from .errors import ArtifactError

PLATFORM_PLAN = "tensorrt_plan"
PLATFORM_ONNX = "onnxruntime_onnx"
# TensorRT DataType names (as the plan manifest records them) and ONNX elem types -> Triton's DataType.
_TRT_TYPES = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "BF16": "TYPE_BF16", "INT8": "TYPE_INT8"}
_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 3: "TYPE_INT8"}


@dataclass(frozen=True)
class TritonSource:
    """What the artifact is, read from its manifest (and, for an ONNX, its graph)."""

    platform: str
    precision: str
    target: str | None
    channels: int
    num_classes: int
    dtypes: dict[str, str]
    height: int  # -1: any
    width: int
    batch: tuple[int, int, int] | None  # a plan's profile (min, opt, max); None for an ONNX
    profile_text: str | None
    dla_core: int | None
    tensorrt_version: str | None
    size_multiple: int
    extra_files: tuple[str, ...]  # external tensor data an ONNX reads from beside it
    version_compatible: bool


def read_source(artifact: Path) -> TritonSource:
    """What `artifact` is, from its verified manifest; a folder, a missing file, another kind of file or a
    manifest that is missing or does not match the file is refused."""
    if artifact.is_dir():
        raise ArtifactError(
            f"{artifact} is a folder (a checkpoint?): Triton serves files. Export it first "
            "(`addunet-edge export` or `build`) and pass the .onnx or .plan"
        )
    if not artifact.is_file():
        raise ArtifactError(f"{artifact}: no such file")
    suffix = artifact.suffix.lower()
    if suffix not in (".onnx", *PLAN_SUFFIXES):
        raise ArtifactError(f"{artifact}: Triton serves a TensorRT plan (.plan) or an .onnx, not {suffix or 'this'}")
    try:
        manifest = read_manifest(artifact, verify_hash=True, required=True)
    except ArtifactError as e:
        raise ArtifactError(
            f"{e}. The Triton config is written from the manifest (profile, channels, classes, precision)"
        ) from None
    assert manifest is not None  # required=True raises instead
    if suffix == ".onnx":
        return _onnx_source(artifact, manifest)
    return _plan_source(artifact, manifest)


def _plan_source(artifact: Path, manifest: dict[str, Any]) -> TritonSource:
    from .engines.plan import PLAN_KIND, BuildProfile

    if manifest.get("kind") != PLAN_KIND:
        raise ArtifactError(f"{artifact}: its manifest describes a {manifest.get('kind')!r}, not a TensorRT plan")
    if not isinstance(manifest.get("profile"), dict):
        raise ArtifactError(f"{artifact}: its manifest has no input profile; rebuild it with `addunet-edge build`")
    profile = BuildProfile.from_dict(manifest["profile"])  # ArtifactError / ConfigError when malformed
    channels = _positive_int(manifest.get("channels"), "channels", artifact)
    num_classes = _count(manifest.get("num_classes"), "num_classes", artifact)
    dtypes = {}
    recorded = manifest.get("io_dtypes") if isinstance(manifest.get("io_dtypes"), dict) else {}
    for tensor in (INPUT_NAME, *OUTPUT_NAMES):
        # Plans built before io_dtypes was recorded are float32 at their I/O (the one signature).
        trt_name = str(recorded.get(tensor, "FLOAT")).upper()
        if trt_name not in _TRT_TYPES:
            raise ArtifactError(f"{artifact}: tensor {tensor!r} has type {trt_name}, which this config cannot state")
        dtypes[tensor] = _TRT_TYPES[trt_name]
    (h_lo, w_lo), _, (h_hi, w_hi) = profile.sizes
    dla = manifest.get("dla_core")
    if dla is not None and (isinstance(dla, bool) or not isinstance(dla, int) or dla < 0):
        raise ArtifactError(f"{artifact}: its manifest names DLA core {dla!r}, which is not a core number")
    options = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    shapes = " / ".join(f"{n}x{channels}x{h}x{w}" for n, (h, w) in zip(profile.batch, profile.sizes, strict=True))
    return TritonSource(
        platform=PLATFORM_PLAN,
        precision=str(manifest.get("precision", "?")),
        target=None,
        channels=channels,
        num_classes=num_classes,
        dtypes=dtypes,
        height=h_lo if h_lo == h_hi else -1,
        width=w_lo if w_lo == w_hi else -1,
        batch=profile.batch,
        profile_text=f"min / opt / max {shapes}",
        dla_core=dla,
        tensorrt_version=str(manifest["tensorrt_version"]) if manifest.get("tensorrt_version") else None,
        size_multiple=_positive_int(manifest.get("size_multiple", 1), "size_multiple", artifact),
        extra_files=(),
        version_compatible=bool(options.get("version_compatible")),
    )


def _onnx_source(artifact: Path, manifest: dict[str, Any]) -> TritonSource:
    from ._lazy import require

    if manifest.get("kind") not in (None, "onnx"):
        raise ArtifactError(f"{artifact}: its manifest describes a {manifest.get('kind')!r}, not an ONNX model")
    # fp16 and int8 manifests name the fp32 ONNX they were made from; channels and classes live in that one.
    prov = trace_provenance(artifact, manifest, verify=False)
    onnx = require("onnx", "reading the ONNX graph for its Triton config")
    try:
        model = onnx.load(str(artifact), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValueError, ... on a damaged file
        raise ArtifactError(f"{artifact} is not a readable ONNX model: {e}") from None
    graph_io = {v.name: v for v in (*model.graph.input, *model.graph.output)}
    missing = [t for t in (INPUT_NAME, *OUTPUT_NAMES) if t not in graph_io]
    if missing:
        raise ArtifactError(f"{artifact} has no tensor(s) {missing}: not an addunet-edge model")
    shape = {
        t: [d.dim_value if d.HasField("dim_value") else -1 for d in graph_io[t].type.tensor_type.shape.dim]
        for t in (INPUT_NAME, *OUTPUT_NAMES)
    }
    channels = prov.in_channels if prov.in_channels is not None else _dim(shape[INPUT_NAME], 1)
    num_classes = prov.num_classes if prov.num_classes is not None else _dim(shape[OUTPUT_NAMES[1]], 1)
    if channels is None or num_classes is None:
        raise ArtifactError(
            f"{artifact}: neither its manifest chain ({prov.broken or 'no channel count'}) nor its graph gives "
            "the channel and class counts"
        )
    graph_channels = _dim(shape[INPUT_NAME], 1)
    if graph_channels not in (None, channels):
        raise ArtifactError(f"{artifact}: the graph takes {graph_channels} channel(s), its manifest says {channels}")
    dtypes = {}
    for tensor, value in graph_io.items():
        if tensor in (INPUT_NAME, *OUTPUT_NAMES):
            elem = value.type.tensor_type.elem_type
            if elem not in _ONNX_TYPES:
                raise ArtifactError(f"{artifact}: tensor {tensor!r} has ONNX type {elem}, not a float type")
            dtypes[tensor] = _ONNX_TYPES[elem]
    return TritonSource(
        platform=PLATFORM_ONNX,
        precision=str(manifest.get("precision", "?")),
        target=manifest.get("target") if isinstance(manifest.get("target"), str) else None,
        channels=channels,
        num_classes=num_classes,
        dtypes=dtypes,
        height=_dim(shape[INPUT_NAME], 2) or -1,
        width=_dim(shape[INPUT_NAME], 3) or -1,
        batch=None,
        profile_text=None,
        dla_core=None,
        tensorrt_version=None,
        size_multiple=_size_multiple(manifest, prov.model),
        extra_files=_external_files(artifact, model),
        version_compatible=False,
    )


def _dim(dims: list[int], axis: int) -> int | None:
    return dims[axis] if len(dims) > axis and dims[axis] > 0 else None


def _size_multiple(manifest: dict[str, Any], model: dict[str, Any] | None) -> int:
    """The exported ONNX records it; fp16 / int8 ones do not, so read it off the model config in the chain
    (as ModelConfig.size_multiple does, without importing torch for it)."""
    value = manifest.get("size_multiple")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if model and model.get("resampling") == "stride" and isinstance(model.get("depth"), int):
        return int(2 ** model["depth"])
    return 1


def _external_files(artifact: Path, model: Any) -> tuple[str, ...]:
    """Files an ONNX keeps tensor data in (relative to it); they must travel into the version folder."""
    from .engines.ort import check_external_data

    check_external_data(artifact)  # refuses data that lies outside the ONNX's folder
    found: list[str] = []

    def walk(graph: Any) -> None:
        for tensor in [*graph.initializer, *(a.t for n in graph.node for a in n.attribute if a.HasField("t"))]:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in found:
                    found.append(entry.value)
        for node in graph.node:
            for attr in node.attribute:
                for sub in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
                    walk(sub)

    walk(model.graph)
    for location in found:
        if not (artifact.parent / location).is_file():
            raise ArtifactError(f"{artifact} keeps tensor data in {location}, which is not beside it")
    return tuple(found)


def _positive_int(value: Any, what: str, artifact: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArtifactError(f"{artifact}: its manifest's {what} is {value!r}, not a positive integer")
    return value


def _count(value: Any, what: str, artifact: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ArtifactError(f"{artifact}: its manifest's {what} is {value!r}, not a count")
    return value
