"""Triton Inference Server: a model repository entry (config.pbtxt + versioned model file) for any artifact.

Triton loads a TensorRT plan with `platform: "tensorrt_plan"` and an ONNX with `platform: "onnxruntime_onnx"`
from `<repo>/<model>/<version>/model.plan|model.onnx`, configured by `<repo>/<model>/config.pbtxt` (text
format of Triton's `inference.ModelConfig`, model_config.proto). Everything in the config comes from the
artifact and its manifest: the one signature (`noisy` in; `denoised`, `logits` out), channel and class
counts, the plan's optimization profile (batch and spatial bounds), its DLA core. The package writes the
text itself: no tritonclient or protobuf is needed to make a repository, and the tests parse what it writes
with Triton's own schema.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .artifacts import atomic_path, atomic_write_bytes, atomic_write_text, manifest_path, output_lock
from .engines import PLAN_SUFFIXES
from .engines.base import INPUT_NAME, OUTPUT_NAMES
from .errors import ConfigError
from .triton_source import PLATFORM_ONNX, PLATFORM_PLAN, TritonSource, read_source

KINDS = ("auto", "gpu", "cpu")
# An ONNX has a dynamic batch axis, so any bound is the server's choice: 8 fills a GPU with our small
# convolutional model without making the first request of a burst wait long for company.
DEFAULT_ONNX_MAX_BATCH = 8
# Triton's own default is 0 (no waiting); 100 µs lets requests that arrive together share one execution at
# a cost far below one inference of even the smallest frame.
DEFAULT_QUEUE_DELAY_US = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton sees it: dims without the batch axis, -1 where a size is free."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonModel:
    """What was written: paths and the choices that went into config.pbtxt."""

    name: str
    version: int
    platform: str
    kind: Literal["gpu", "cpu"]
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    queue_delay_us: int
    instances: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    model_dir: Path
    config_path: Path
    model_path: Path
    config_written: bool  # False when a further version joined a model whose (identical) config was kept
    notes: tuple[str, ...] = field(default=())


def default_model_name(artifact: str | Path) -> str:
    """'engines/digits.int8.cpu.onnx' -> 'digits_int8_cpu': the file name, in the characters every
    filesystem, URL path and Kubernetes volume accepts (Triton uses the folder name as the model's name)."""
    stem = Path(artifact).name
    for suffix in (".onnx", *PLAN_SUFFIXES):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-") or "model"
    return name[:128]


def write_triton_model(
    artifact: str | Path,
    repo: str | Path,
    *,
    name: str | None = None,
    version: int = 1,
    max_batch_size: int | None = None,
    preferred_batch_sizes: tuple[int, ...] | list[int] | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    kind: str = "auto",
) -> TritonModel:
    """Add `artifact` (a .plan or .onnx with its manifest) to the Triton model repository `repo`.

    Writes `<repo>/<name>/config.pbtxt` and `<repo>/<name>/<version>/model.plan|model.onnx` with the
    artifact's manifest beside it (`model.plan.manifest.json`: the same bytes, so its hash still proves the
    file). A new model folder is assembled out of sight and renamed into place, so a Triton server polling
    the repository never sees half a model. A further version of a model already there is accepted only when
    its config is the same (a config is shared by every version); anything else under that name is a clash.

    `kind` 'auto' runs plans on the GPU, a CPU-target int8 ONNX on the CPU and any other ONNX on the GPU
    (ONNX Runtime's CUDA provider in Triton). A CPU-target int8 ONNX is refused for GPU instances: its
    unsigned, asymmetric activations are made for ONNX Runtime's x86 int8 kernels; TensorRT takes only
    symmetric int8, and the CUDA provider would run it as float plus the quantize / dequantize work: more than
    the fp32 model it came from costs. On CPU instances it is the fastest artifact we make.
    """
    artifact = Path(artifact)
    repo = Path(repo)
    src = read_source(artifact)
    kind_ = _resolve_kind(kind, src, artifact)
    name = name if name is not None else default_model_name(artifact)
    _check_numbers(name, version, instances, queue_delay_us)
    max_batch = _max_batch(src, max_batch_size, artifact)
    preferred = _preferred(src, max_batch, preferred_batch_sizes)

    hw = (src.channels, src.height, src.width)
    inputs = (TensorSpec(INPUT_NAME, src.dtypes[INPUT_NAME], hw),)
    outputs = (
        TensorSpec(OUTPUT_NAMES[0], src.dtypes[OUTPUT_NAMES[0]], hw),
        TensorSpec(OUTPUT_NAMES[1], src.dtypes[OUTPUT_NAMES[1]], (src.num_classes,)),
    )
    notes = _notes(src, kind_)
    model_file = "model.plan" if src.platform == PLATFORM_PLAN else "model.onnx"
    text = _config_text(artifact, name, src, kind_, max_batch, preferred, queue_delay_us, instances, inputs, outputs)

    model_dir = repo / name
    with output_lock(repo):
        _check_clash(model_dir, version, text)
        config_written = not model_dir.exists()
        if not config_written:
            # Same config: only the new version folder is staged and renamed in.
            _stage_and_rename(model_dir, str(version), lambda d: _write_version(d, artifact, model_file, src))
        else:
            _stage_and_rename(repo, name, lambda d: _write_model(d, version, artifact, model_file, src, text))
    return TritonModel(
        name=name,
        version=version,
        platform=src.platform,
        kind=kind_,
        max_batch_size=max_batch,
        preferred_batch_sizes=preferred,
        queue_delay_us=queue_delay_us,
        instances=instances,
        inputs=inputs,
        outputs=outputs,
        model_dir=model_dir,
        config_path=model_dir / "config.pbtxt",
        model_path=model_dir / str(version) / model_file,
        config_written=config_written,
        notes=notes,
    )


# -- choices ----------------------------------------------------------------------------------------------


def _check_numbers(name: str, version: int, instances: int, queue_delay_us: int) -> None:
    """The model's name and the counts a user passes, each refused with the option that gave it."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"model name {name!r}: use 1-128 letters, digits, '_' or '-', starting with a letter or digit "
            "(Triton uses it as a folder name and in URLs)"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"--version must be a positive integer (Triton's version folders), got {version!r}")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise ConfigError(f"--instances must be at least 1, got {instances!r}")
    if isinstance(queue_delay_us, bool) or not isinstance(queue_delay_us, int) or queue_delay_us < 0:
        raise ConfigError(f"--queue-delay-us must be 0 or more microseconds, got {queue_delay_us!r}")


def _resolve_kind(kind: str, src: TritonSource, artifact: Path) -> Literal["gpu", "cpu"]:
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cpu_int8 = src.platform == PLATFORM_ONNX and src.precision == "int8" and src.target == "cpu"
    if kind == "auto":
        return "cpu" if cpu_int8 else "gpu"
    if src.platform == PLATFORM_PLAN and kind == "cpu":
        raise ConfigError(f"{artifact} is a TensorRT plan: it runs on the GPU it was built for (--kind gpu)")
    if cpu_int8 and kind == "gpu":
        raise ConfigError(
            f"{artifact} is an int8 ONNX made for the CPU (unsigned activations for ONNX Runtime's x86 int8 "
            "kernels): TensorRT takes only symmetric int8, and ONNX Runtime's CUDA provider would run it as float "
            "plus quantize / dequantize work, more than fp32 costs. Serve it with --kind cpu, or make the GPU "
            "flavour (`build --precision int8 --target tensorrt`)"
        )
    return kind  # type: ignore[return-value]  # one of the two concrete kinds, checked above


def _max_batch(src: TritonSource, requested: int | None, artifact: Path) -> int:
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 1):
        raise ConfigError(f"--max-batch-size must be at least 1, got {requested!r}")
    if src.batch is None:
        return requested if requested is not None else DEFAULT_ONNX_MAX_BATCH
    lo, _, hi = src.batch
    if lo > 1:
        # Triton's dynamic batcher sends whatever it has gathered, down to one request: a plan that refuses
        # batches below `lo` would fail those requests at run time.
        raise ConfigError(
            f"{artifact} was built for batches of at least {lo}; Triton sends batches from 1 up, which it "
            f"would refuse. Rebuild it with a profile from batch 1 (`build --profile-batch 1,{lo},{hi}`)"
        )
    if requested is None:
        return hi
    if requested > hi:
        raise ConfigError(f"--max-batch-size {requested} is above the batch the plan was built for ({hi})")
    return requested


def _preferred(src: TritonSource, max_batch: int, requested: tuple[int, ...] | list[int] | None) -> tuple[int, ...]:
    if requested is not None and len(requested) > 0:
        bad = [b for b in requested if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= max_batch]
        if bad:
            raise ConfigError(f"--preferred-batch {bad}: each must lie between 1 and max_batch_size {max_batch}")
        return tuple(sorted(set(requested)))
    # The batch TensorRT tuned the plan for, and the largest the server may form; batch 1 needs no waiting.
    opt = src.batch[1] if src.batch is not None else max_batch
    chosen = sorted({b for b in (min(opt, max_batch), max_batch) if b > 1})
    return tuple(chosen) or (max_batch,)


def _notes(src: TritonSource, kind: str) -> tuple[str, ...]:
    notes = []
    if src.platform == PLATFORM_PLAN:
        built_with = f"TensorRT {src.tensorrt_version}" if src.tensorrt_version else "the TensorRT that built it"
        if src.version_compatible:
            notes.append(
                f"version-compatible plan ({built_with}): a Triton with that TensorRT or a later one loads it, "
                "started with --backend-config=tensorrt,version-compatible=true"
            )
        else:
            notes.append(
                f"the plan loads only in a Triton with {built_with} (and on the GPU model it was built on): "
                "pick the tritonserver container release that ships it"
            )
    elif src.precision == "int8" and src.target == "tensorrt" and kind == "gpu":
        notes.append("an int8 ONNX for TensorRT runs fastest as a plan: `addunet-edge build` it and serve the plan")
    if src.precision == "fp16" and kind == "cpu":
        notes.append("an fp16 ONNX is no faster than the fp32 one on x86 CPU instances (ONNX Runtime, measured)")
    if src.size_multiple > 1:
        notes.append(f"height and width must be multiples of {src.size_multiple}: Triton does not pad")
    return tuple(notes)


# -- the text ---------------------------------------------------------------------------------------------


def _config_text(
    artifact: Path,
    name: str,
    src: TritonSource,
    kind: str,
    max_batch: int,
    preferred: tuple[int, ...],
    queue_delay_us: int,
    instances: int,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
) -> str:
    header = [
        f"# Triton model configuration for {_comment(artifact.name)}, written by addunet-edge.",
        f"# precision {src.precision}" + (f", int8 target {src.target}" if src.target else ""),
        f"# '{INPUT_NAME}' (C, H, W) in [0, 1]; '{OUTPUT_NAMES[0]}' (C, H, W) in [0, 1]; '{OUTPUT_NAMES[1]}' (K):",
        "# the batch axis is Triton's (max_batch_size); -1 is any size.",
    ]
    if src.profile_text:
        header.append(f"# TensorRT optimization profile 0 (the plan's only one): {src.profile_text}")
    header += [f"# {_comment(n)}" for n in _notes(src, kind)]

    def tensor(t: TensorSpec) -> str:
        dims = ", ".join(str(d) for d in t.dims)
        return f"  {{\n    name: {json.dumps(t.name)}\n    data_type: {t.data_type}\n    dims: [ {dims} ]\n  }}"

    group = [f"    count: {instances}", f"    kind: KIND_{kind.upper()}"]
    if src.platform == PLATFORM_PLAN:
        # Triton picks among the listed TensorRT optimization profiles by input shape; ours have one.
        group.append('    profile: [ "0" ]')
    if src.dla_core is not None:
        # Without this Triton runs a DLA plan's context on the GPU it was loaded on.
        dla = ["    secondary_devices [", "      {", "        kind: KIND_NVDLA", f"        device_id: {src.dla_core}"]
        group += [*dla, "      }", "    ]"]
    body = [
        f"name: {json.dumps(name)}",
        f"platform: {json.dumps(src.platform)}",
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(tensor(t) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(tensor(t) for t in outputs) + "\n]",
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        "}",
        "instance_group [\n  {\n" + "\n".join(group) + "\n  }\n]",
    ]
    return "\n".join(header) + "\n" + "\n".join(body) + "\n"


def _comment(text: str) -> str:
    """One comment line whatever a file name holds (a newline in it would end the comment)."""
    return " ".join(str(text).split())


def _config_body(text: str) -> str:
    """The config without comments: what must match for a new version of an existing model."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


# -- writing ----------------------------------------------------------------------------------------------


def _check_clash(model_dir: Path, version: int, text: str) -> None:
    if not model_dir.exists():
        return
    config = model_dir / "config.pbtxt"
    if not model_dir.is_dir() or not config.is_file():
        raise ConfigError(
            f"{model_dir} exists and is not a model folder written by addunet-edge: choose another --name"
        )
    if _config_body(config.read_text(encoding="utf-8", errors="replace")) != _config_body(text):
        raise ConfigError(
            f"model {model_dir.name!r} already exists in {model_dir.parent} with another configuration; choose "
            "another --name (a model's versions share one config.pbtxt)"
        )
    if (model_dir / str(version)).exists():
        raise ConfigError(
            f"version {version} of model {model_dir.name!r} already exists in {model_dir.parent}: pass "
            f"--version {_next_version(model_dir)} to add one, or another --name"
        )


def _next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _write_version(version_dir: Path, artifact: Path, model_file: str, src: TritonSource) -> None:
    _copy(artifact, version_dir / model_file)
    # The manifest's bytes unchanged: its sha256 is the artifact's, and read_manifest finds it by this name.
    atomic_write_bytes(manifest_path(version_dir / model_file), manifest_path(artifact).read_bytes())
    for location in src.extra_files:
        _copy(artifact.parent / location, version_dir / location)


def _write_model(model_dir: Path, version: int, artifact: Path, model_file: str, src: TritonSource, text: str) -> None:
    version_dir = model_dir / str(version)
    version_dir.mkdir()
    _write_version(version_dir, artifact, model_file, src)
    atomic_write_text(model_dir / "config.pbtxt", text)


def _stage_and_rename(parent: Path, final_name: str, fill: Any) -> None:
    """Build `parent/final_name` in a hidden folder beside it, then rename it into place (atomic on POSIX)."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_name}.", suffix=".tmp", dir=parent))
    try:
        # mkdtemp makes a private folder (0700); a Triton service usually runs as another user.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        fill(staging)
        os.rename(staging, parent / final_name)  # fails rather than merge if a racing writer got there first
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        raise
