"""PyTorch -> ONNX: export-time rewrites, onnx's full checker, onnxslim, and a parity report against PyTorch."""

from __future__ import annotations

import ast
import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import atomic_path, write_manifest
from .engines.base import INPUT_NAME, OUTPUT_NAMES
from .engines.ort import ort_session
from .errors import ArtifactError, ParityError
from .model import AddUNet, fold_batchnorm, gate_values

# Opset 18: the lowest the torch.export-based exporter writes natively (its op library is opset 18; asking
# for less runs a version converter over the graph). TensorRT 10.3 (JetPack 6, opsets 9-20) and TensorRT
# 11.x (9-25) both parse it, it has per-channel Q/DQ (opset >= 13) and every onnxruntime we support runs it.
OPSET = 18
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityCase:
    batch: int
    height: int
    width: int
    denoised_max_abs_error: float
    logits_max_abs_error: float
    fidelity_psnr_db: float  # PSNR of the ONNX output against PyTorch's output

    @property
    def max_abs_error(self) -> float:
        return max(self.denoised_max_abs_error, self.logits_max_abs_error)


@dataclass(frozen=True)
class ParityReport:
    cases: tuple[ParityCase, ...]
    tolerance: float

    @property
    def max_abs_error(self) -> float:
        return max(c.max_abs_error for c in self.cases)

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance,
            "max_abs_error": self.max_abs_error,
            "passed": self.passed,
            "cases": [asdict(c) for c in self.cases],
        }


def prepare_for_export(model: Any) -> Any:
    """A copy of `model` with BatchNorm folded, gates frozen to constants and the exact decoder rewrite on."""

    export_model = copy.deepcopy(model).eval()
    fold_batchnorm(export_model)
    if isinstance(export_model, AddUNet):
        export_model.frozen_gates = gate_values(export_model)
        export_model.export_rewrite = True
    return export_model


def parity_inputs(in_channels: int, size_multiple: int, seed: int = 0) -> list[np.ndarray]:
    """Real inputs: noisy crops of a held-out photograph at two batch sizes and two image sizes."""
    from .data import add_noise, load_photo

    photo = load_photo("camera", in_channels)
    rng = np.random.default_rng(seed)
    sizes = [
        (-(-s // size_multiple) * size_multiple, -(-t // size_multiple) * size_multiple)
        for s, t in ((48, 48), (96, 80))
    ]
    batches = []
    for n, (h, w) in zip((1, 3), sizes, strict=True):
        crops = []
        for _ in range(n):
            y, x = rng.integers(0, photo.shape[1] - h), rng.integers(0, photo.shape[2] - w)
            crops.append(photo[:, y : y + h, x : x + w])
        batches.append(add_noise(np.stack(crops), 25.0, rng))
    return batches


def check_parity(
    onnx_path: str | Path, model: Any, inputs: list[np.ndarray], tolerance: float = PARITY_TOLERANCE
) -> ParityReport:
    """Run PyTorch and ONNX Runtime (CPU) on the same inputs and compare both outputs."""
    import torch

    from .metrics import max_abs_error, psnr

    sess = ort_session(onnx_path)
    cases = []
    for x in inputs:
        with torch.inference_mode():
            ref_d, ref_l = (t.numpy() for t in model(torch.from_numpy(x)))
        got_d, got_l = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        cases.append(
            ParityCase(
                batch=x.shape[0],
                height=x.shape[2],
                width=x.shape[3],
                denoised_max_abs_error=max_abs_error(got_d, ref_d),
                logits_max_abs_error=max_abs_error(got_l, ref_l),
                fidelity_psnr_db=psnr(got_d, ref_d),
            )
        )
    return ParityReport(cases=tuple(cases), tolerance=tolerance)


def torch_to_onnx(model: Any, path: str | Path, in_channels: int, size_multiple: int = 1) -> None:
    """Write `model` (any module with the package's signature: noisy -> denoised, logits) to an ONNX file
    through torch.export, the exporter PyTorch keeps: batch, height and width dynamic, weights inside the
    file, nodes named by module path. No folding, simplification or parity check: `export_onnx` adds those."""
    import onnx
    import torch

    batch = torch.export.Dim("batch")
    if size_multiple == 1:
        height, width = torch.export.Dim("height"), torch.export.Dim("width")
    else:
        # Multi-scale graphs take multiples of 2**depth (the engines pad to one). Saying so keeps torch.export
        # from refusing the shape guard of the padding branch and leaves that branch out of the graph; the
        # input's dims then read '16*height', '16*width'.
        height = size_multiple * torch.export.Dim("height")
        width = size_multiple * torch.export.Dim("width")
    # Batch 2 and a size well above the smallest: torch.export pins a dimension whose example is 1 (and a
    # deepest feature map of size 1) to that value.
    size = max(32, size_multiple * 2)
    example = torch.rand(2, in_channels, size, size)
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch, 2: height, 3: width},),  # by position: any name for the argument
            optimize=True,  # onnxscript's optimizer: constants folded, no dead nodes
            verbose=False,
        )
    if program is None:  # torch.onnx.export returns None only for the TorchScript exporter
        raise ArtifactError("torch.onnx.export returned no program")
    graph = program.model.graph
    weights = sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
    if weights > MAX_WEIGHT_BYTES:
        raise ArtifactError(
            f"the model's weights take {weights / 2**30:.2f} GiB; one ONNX file holds under 2 GiB, and the "
            "precision tools (onnxslim, fp16, int8) need the weights inside it: use a smaller width or depth"
        )
    _tidy(program.model)
    proto = program.model_proto
    # torch.export's serializer repeats each initializer's type as a value_info entry. ONNX Runtime's float16
    # converter turns that entry to float16 even where it keeps the initializer float32 (a node blocked for
    # overflow), and the model then declares one tensor with two types ("Inferred elem type differs").
    # onnxslim drops these entries; a graph that skips it must not carry them either. Initializers state
    # their own types.
    initializers = {t.name for t in proto.graph.initializer}
    value_info = [v for v in proto.graph.value_info if v.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(value_info)
    onnx.save(proto, str(path))


# An ONNX file is one protobuf message, which cannot exceed 2 GiB; keep room for the graph itself.
MAX_WEIGHT_BYTES = 2**31 - 2**26


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Mute two messages torch itself causes, which no user can act on: torch.onnx's op registry logs
    'torchvision is not installed' for each torchvision op it skips (we use none), and torch.export's
    pytree pickling warns that torch's own LeafSpec check is deprecated. Everything else gets through."""
    import logging

    def not_torchvision(record: logging.LogRecord) -> bool:
        return "torchvision is not installed" not in record.getMessage()

    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    registry.addFilter(not_torchvision)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`", category=FutureWarning)
            yield
    finally:
        registry.removeFilter(not_torchvision)


def _tidy(model: Any) -> None:
    """Names and metadata of an exported onnx_ir model, in place, as the TorchScript exporter wrote them.

    Metadata goes: torch.export's holds stack traces with this machine's paths, so two exports of one
    checkpoint on two machines would differ (and so would their hashes). Nodes are named by module path and
    op type ('/stem/Conv', '/encoders.0/act/Clip', '/Sub_1') rather than 'node_conv2d_17': these are the
    names users pass to --exclude, that int8 reports list and that TensorRT prints per layer. Tensors are
    named after their node ('/stem/Conv_output_0'), as range caches and calibration messages show them.
    """
    taken: set[str] = set()
    repeats: dict[str, int] = {}
    for node in model.graph:
        base = "/".join(["", *_module_path(node.metadata_props.get("pkg.torch.onnx.name_scopes")), node.op_type])
        name = base
        while name in taken:  # '/Clip', '/Clip_1', ... in graph order
            repeats[base] = repeats.get(base, 0) + 1
            name = f"{base}_{repeats[base]}"
        taken.add(name)
        node.name = name
        node.metadata_props.clear()
        for i, value in enumerate(node.outputs):
            value.metadata_props.clear()
            if not value.is_graph_output():
                value.name = f"{name}_output_{i}"
    for value in (*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()):
        value.metadata_props.clear()
    model.graph.metadata_props.clear()
    model.metadata_props.clear()


def _module_path(scopes: str | None) -> list[str]:
    """torch.onnx's name scopes of a node ("['', 'classifier', 'classifier.fc', 'classifier.fc.0', 'linear']":
    qualified module names, then the node) -> the TorchScript exporter's path ['classifier', 'fc', 'fc.0']."""
    if not scopes:
        return []
    try:
        names = ast.literal_eval(scopes)
    except (ValueError, SyntaxError):
        return []
    path: list[str] = []
    parent = ""
    for qualified in names[1:-1]:
        part = qualified.removeprefix(f"{parent}.") if parent else qualified
        if part.isdigit() and path:  # a Sequential's child: 'fc.0', as TorchScript scoped it
            part = f"{path[-1]}.{part}"
        path.append(part)
        parent = qualified
    return path


def simplify(path: Path) -> None:
    """onnxslim in place (constant folding, dead nodes, fused patterns), then onnx's full checker."""
    import onnx
    import onnxslim

    model = onnx.load(str(path))
    slim = onnxslim.slim(model)
    if slim is None:  # onnxslim returns None when asked to write in place; we never do
        raise ArtifactError("onnxslim returned no model")
    onnx.save(slim, str(path))
    check_onnx(path)


def check_onnx(path: str | Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ArtifactError(f"{path} fails onnx's checker: {e}") from None


def export_onnx(
    checkpoint: str | Path,
    out_path: str | Path,
    *,
    tolerance: float = PARITY_TOLERANCE,
    simplify_graph: bool = True,
) -> tuple[Path, ParityReport]:
    """Export a checkpoint folder to a float32 ONNX; written (with its manifest) only if parity holds."""
    from .artifacts import sha256_file
    from .checkpoint import WEIGHTS, load_checkpoint

    checkpoint, out_path = Path(checkpoint), Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise ArtifactError(f"output must end in .onnx, got {out_path.name}")
    model, meta = load_checkpoint(checkpoint)
    cfg = model.config
    export_model = prepare_for_export(model)
    with atomic_path(out_path) as tmp:
        torch_to_onnx(export_model, tmp, cfg.in_channels, cfg.size_multiple)
        if simplify_graph:
            simplify(tmp)
        else:
            check_onnx(tmp)
        # Parity is measured against the original model (BatchNorm unfolded, live gates, no rewrite).
        report = check_parity(tmp, model, parity_inputs(cfg.in_channels, cfg.size_multiple), tolerance)
        if not report.passed:
            worst = max(report.cases, key=lambda c: c.max_abs_error)
            raise ParityError(
                f"ONNX export of {checkpoint} differs from PyTorch by {report.max_abs_error:.2e} "
                f"(tolerance {tolerance:.0e}) at batch {worst.batch}, {worst.height}x{worst.width}; "
                "nothing was written"
            )
    write_manifest(
        out_path,
        kind="onnx",
        precision="fp32",
        target=None,
        opset=OPSET,
        source={"checkpoint": str(checkpoint), "weights_sha256": sha256_file(checkpoint / WEIGHTS)},
        model=cfg.to_dict(),
        in_channels=cfg.in_channels,
        num_classes=cfg.num_classes,
        size_multiple=cfg.size_multiple,
        gates=gate_values(model),
        input_profile={"batch": "dynamic", "height": "dynamic", "width": "dynamic"},
        parity=report.to_dict(),
        data=meta.get("data", {}),
    )
    return out_path, report
