"""DeepStream: a Gst-nvinfer configuration for a TensorRT plan, from the plan's manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .engines.base import INPUT_NAME, OUTPUT_NAMES
from .errors import ArtifactError, ConfigError

_NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}


def deepstream_config(
    plan_path: str | Path,
    *,
    batch_size: int | None = None,
    size_hw: tuple[int, int] | None = None,
    gpu_id: int = 0,
) -> str:
    """Text of a Gst-nvinfer configuration that runs `plan_path` and attaches its raw outputs as tensor meta.

    Needs the plan's manifest (written by `addunet-edge build`): precision and input profile come from it.
    nvinfer allocates its buffers at the profile's optimum shape and runs every batch at that size, so the
    network input size is the profile's fixed or optimum size; `size_hw` may only name it (a dynamic profile
    with no optimum needs it). A plan built for a DLA core gets nvinfer's DLA keys, so DeepStream runs it on
    that core instead of the GPU.
    """
    from .engines.plan import PLAN_KIND, input_profile_from_manifest, read_plan_manifest

    plan = Path(plan_path)
    if plan.suffix.lower() not in (".plan", ".engine"):
        raise ArtifactError(f"{plan} is not a TensorRT plan (.plan); build one with `addunet-edge build` first")
    if not plan.is_file():
        raise ArtifactError(f"{plan}: no such file")
    manifest = read_plan_manifest(plan)
    if manifest.get("kind") != PLAN_KIND:
        raise ArtifactError(f"{plan}: its manifest describes a {manifest.get('kind')!r}, not a TensorRT plan")
    precision = str(manifest.get("precision"))
    if precision not in _NETWORK_MODE:
        raise ArtifactError(f"{plan}: manifest precision {precision!r} is not one of {sorted(_NETWORK_MODE)}")
    profile = input_profile_from_manifest(manifest)
    opt_hw = profile.fixed_hw or profile.opt_hw
    if size_hw is not None and opt_hw is not None and tuple(size_hw) != tuple(opt_hw):
        raise ConfigError(
            f"{plan} was built with an optimum input of {opt_hw[0]}x{opt_hw[1]}, which is the size nvinfer "
            f"allocates and runs: --input-size {size_hw[0]}x{size_hw[1]} would not be used. Rebuild the plan with "
            f"that size as the profile's optimum (build --profile-sizes), or leave --input-size out"
        )
    if size_hw is None:
        size_hw = opt_hw or profile.max_hw
        if size_hw is None:
            raise ConfigError(f"{plan} has an unbounded spatial profile: pass --input-size HxW for nvinfer's input")
    if batch_size is None:
        batch_size = profile.opt_batch or profile.max_batch or profile.min_batch
    profile.check((batch_size, profile.channels, *size_hw))  # ShapeError names what is outside the profile
    h, w = size_hw
    colour = 2 if profile.channels == 1 else 0
    lines = [
        f"# Gst-nvinfer configuration for {plan.name}, written by addunet-edge.",
        f"# precision {precision}, input '{INPUT_NAME}' ({profile.channels}, H, W) float32 in [0, 1],",
        f"# outputs '{OUTPUT_NAMES[0]}' (N, {profile.channels}, H, W) and '{OUTPUT_NAMES[1]}' "
        f"(N, {manifest.get('num_classes')}).",
        "#",
        "# network-type=100 (other): nvinfer does no post-processing; with output-tensor-meta=1 it attaches",
        "# NvDsInferTensorMeta to each frame's user meta (meta_type NVDSINFER_TENSOR_OUTPUT_META). Read the",
        f"# denoised image in a pad probe: find the layer named '{OUTPUT_NAMES[0]}' in output_layers_info,",
        "# take out_buf_ptrs_host[i] (or out_buf_ptrs_dev[i] on the GPU) as float32 (C, H, W) at the network",
        "# size above, values in [0, 1]: multiply by 255 and resize to the frame to draw or encode it.",
        f"# '{OUTPUT_NAMES[1]}' holds the class logits: softmax them for a confidence.",
        "# net-scale-factor=1/255 maps the 8-bit frames DeepStream carries to the model's [0, 1] range.",
        "",
        "[property]",
        f"gpu-id={gpu_id}",
        f"model-engine-file={plan.resolve()}",
        f"batch-size={batch_size}",
        "# 0 = fp32, 1 = int8, 2 = fp16 (the plan is strongly typed; this only tells nvinfer what it holds)",
        f"network-mode={_NETWORK_MODE[precision]}",
        "network-type=100",
        "output-tensor-meta=1",
        "process-mode=1",
        f"infer-dims={profile.channels};{h};{w}",
        *_dla_keys(manifest),
        f"net-scale-factor={1 / 255!r}",
        "offsets=" + ";".join(["0"] * profile.channels),
        f"# 0 = RGB, 2 = gray; the input layer is '{INPUT_NAME}'",
        f"model-color-format={colour}",
        f"output-blob-names={OUTPUT_NAMES[0]};{OUTPUT_NAMES[1]}",
        "maintain-aspect-ratio=0",
        "gie-unique-id=1",
        "",
    ]
    return "\n".join(lines)


def _dla_keys(manifest: dict[str, Any]) -> list[str]:
    """nvinfer's DLA keys for a plan built for a DLA core: without them DeepStream would load it on the GPU."""
    core = manifest.get("dla_core")
    if core is None:
        return []
    if not isinstance(core, int) or isinstance(core, bool) or core < 0:
        raise ArtifactError(f"the plan's manifest names DLA core {core!r}, which is not a core number")
    return [
        "# built for a DLA core: nvinfer runs it there (layers the DLA lacks fall back to the GPU)",
        "enable-dla=1",
        f"use-dla-core={core}",
    ]
