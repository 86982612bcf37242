"""PyTorch -> ONNX: export-time rewrites, onnx's full checker, onnxslim, and a parity report against PyTorch."""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import atomic_path, write_manifest
from .engines.base import INPUT_NAME, OUTPUT_NAMES
from .errors import ArtifactError, ParityError
from .model import AddUNet, fold_batchnorm, gate_values

# Opset 17: parsed by TensorRT 10.3 (JetPack 6, opsets 9-20) and TensorRT 11.x (9-25), has per-channel
# Q/DQ (opset >= 13) and runs on every onnxruntime we support.
OPSET = 17
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
    import onnxruntime as ort
    import torch

    from .metrics import max_abs_error, psnr

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
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


def _torch_export(model: Any, path: Path, in_channels: int, size: int) -> None:
    import torch

    dummy = torch.rand(1, in_channels, size, size)
    axes = {"batch": 0, "height": 2, "width": 3}
    dynamic = {
        INPUT_NAME: {i: n for n, i in axes.items()},
        OUTPUT_NAMES[0]: {i: n for n, i in axes.items()},
        OUTPUT_NAMES[1]: {0: "batch"},
    }
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, but it handles our dynamic H x W
        # in one pass and produces a plain graph; dynamo gives the same graph after onnxslim.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )


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
        trace_size = max(32, cfg.size_multiple * 2)
        _torch_export(export_model, tmp, cfg.in_channels, trace_size)
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
