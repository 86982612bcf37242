"""Quantization-aware fine-tuning: fine-tune a checkpoint under fake quantization, then write the checkpoint,
its learned ranges, the int8 ONNX they make and a report against the original.

The model is fine-tuned in the form it is exported in (BatchNorm folded, gates frozen, the exact decoder
rewrite on), so the weights that see fake quantization are the very tensors that reach the ONNX. Activation
fake quantization (`fake_quant`) sits on the input of every Conv2d / ConvTranspose2d / Linear, weight fake
quantization on their weights; rounding passes gradients straight through and the activation ranges are
learned (LSQ): calibrated first (percentile), then trained with the weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, ConfigError
from .fake_quant import TARGETS, FakeQuant, quantized_layers
from .progress import progress_bar
from .qat_ranges import layer_inputs_in_onnx, learned_tensor_ranges, merge_ranges
from .qat_report import qat_report

RANGES_FILE = "qat_ranges.json"
REPORT_FILE = "qat_report.json"
RANGES_SCHEMA = 1


@dataclass(frozen=True)
class QATConfig:
    """Settings of one quantization-aware fine-tune; stored in the checkpoint it writes."""

    target: str = "cpu"
    steps: int = 150
    # Peak AdamW learning rate of the weights, 1 % of training's: a fresh Adam moves every weight by about
    # lr per step whatever its gradient, and 2e-4 cost 2.3 dB of fp32 PSNR in 5 steps on the digits model.
    lr: float = 2e-5
    # Range endpoints are in activation units (about 1 to 4 here): Adam moves them by ~range_lr per step.
    range_lr: float = 5e-4
    batch_size: int = 32
    sigma: float = 25.0  # noise of the fine-tuning batches, the calibration set and the evaluation
    percentile: float = 99.999  # initial ranges, and the ranges of tensors that are not conv inputs
    calibration_batches: int = 4  # batches that set the initial ranges
    calibration_images: int = 256  # images of the percentile calibration of the fine-tuned ONNX
    cls_weight: float | None = None  # None: the checkpoint's own training setting
    weight_decay: float = 0.0  # a short fine-tune should not pull weights anywhere but the loss
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if not self.lr > 0 or not self.range_lr >= 0:
            raise ConfigError(f"learning rates must be positive, got lr={self.lr}, range_lr={self.range_lr}")
        if self.batch_size < 1 or self.calibration_batches < 1:
            raise ConfigError("batch size and calibration batches must be >= 1")
        if self.sigma < 0:
            raise ConfigError(f"--sigma must be >= 0, got {self.sigma}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.cls_weight is not None and self.cls_weight < 0:
            raise ConfigError(f"cls_weight must be >= 0, got {self.cls_weight}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- folded model <-> checkpoint architecture -------------------------------------------------------


def fold_for_qat(model: nn.Module) -> nn.Module:
    """The export form of `model` (a copy): BatchNorm folded, gates frozen, the exact rewrite on.

    Folding first (rather than keeping BatchNorm frozen) puts fake quantization on the folded weights,
    the tensors the int8 ONNX carries, and leaves no batch statistics that could drift while training.
    """
    from .export import prepare_for_export

    folded = prepare_for_export(model)
    for name, p in folded.named_parameters():
        p.requires_grad_(name != "gate_logits")  # gates are constants in the exported graph
    return folded


@torch.no_grad()
def unfold_into(folded: nn.Module, original: nn.Module) -> nn.Module:
    """A copy of `original` (its architecture, BatchNorm included) computing exactly what `folded` computes.

    A folded model does not fit its own config with norm='none' (the classifier's projection keeps its
    BatchNorm whatever `norm` says), so the fine-tuned weights go back into the original architecture: each
    folded conv's weight into the conv, its bias into an identity BatchNorm (weight 1, running mean 0,
    running var 1 - eps, so that 1 / sqrt(var + eps) is exactly 1 and re-folding at export is exact).
    """
    from .model import ClassifierHead, ConvBlock

    out = copy.deepcopy(original).eval()
    folded_modules = dict(folded.named_modules())
    handled: set[str] = set()

    def put(conv: nn.Module, bn: nn.Module, src: nn.Module) -> None:
        conv.weight.copy_(src.weight)
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.fill_(1.0)
            bn.bias.copy_(src.bias if src.bias is not None else torch.zeros_like(bn.bias))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0).sub_(bn.eps)
        elif conv.bias is not None:
            conv.bias.copy_(src.bias)

    for name, module in out.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, ConvBlock):
            twin = folded_modules[name]
            for conv_name, bn_name in (("conv1", "norm1"), ("conv2", "norm2")):
                put(getattr(module, conv_name), getattr(module, bn_name), getattr(twin, conv_name))
                handled.add(prefix + conv_name)
        elif isinstance(module, ClassifierHead) and isinstance(module.proj, nn.Sequential):
            put(module.proj[0], module.proj[1], folded_modules[name].proj[0])
            handled.add(prefix + "proj.0")
    for name, layer in quantized_layers(out).items():
        if name in handled:
            continue
        twin = folded_modules.get(name)
        if twin is None or twin.weight.shape != layer.weight.shape:
            raise CheckpointError(f"fine-tuned model has no layer {name!r} shaped like the checkpoint's")
        layer.weight.copy_(twin.weight)
        if layer.bias is not None:
            layer.bias.copy_(twin.bias)
    return out


# --- the fine-tune ---------------------------------------------------------------------------------


@dataclass
class QATResult:
    checkpoint: Path
    ranges: Path
    fp32_onnx: Path
    int8_onnx: Path
    report_path: Path
    report: dict[str, Any] = field(default_factory=dict)


def _batches(clean_source: Any, batch_size: int, sigma: float, rng: np.random.Generator):
    """Endless (noisy, clean, labels) batches: shuffled passes over the training split, fresh noise each."""
    from .data import add_noise

    while True:
        clean, labels = clean_source.epoch(rng)
        for i in range(0, len(clean) - batch_size + 1, batch_size):
            c = clean[i : i + batch_size]
            yield add_noise(c, sigma, rng), c, None if labels is None else labels[i : i + batch_size]


def finetune_qat(
    checkpoint: str | Path,
    out_dir: str | Path,
    config: QATConfig = QATConfig(),
    *,
    dataset: str | None = None,
    baseline: bool = True,
    progress: bool = True,
) -> QATResult:
    """Fine-tune `checkpoint` with fake quantization for `config.target` and write into `out_dir`: the
    checkpoint, qat_ranges.json, <name>.fp32.onnx, <name>.int8.<target>.onnx and qat_report.json.

    With `baseline`, the original checkpoint is also calibrated the plain way (percentile, same images)
    so that the report shows what the fine-tune bought.
    """
    from .artifacts import output_lock

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if checkpoint.resolve() == out_dir.resolve():
        raise ConfigError("--out must differ from the checkpoint folder: the fine-tune writes a new checkpoint")
    with output_lock(out_dir):
        return _finetune(checkpoint, out_dir, config, dataset, baseline, progress)


@dataclass
class _Source:
    """The checkpoint being fine-tuned and what its metadata says about the data and the loss."""

    model: nn.Module
    data_meta: dict[str, Any]
    source: str
    size: int
    dataset: Any
    trained: dict[str, Any]
    cls_weight: float
    use_cls: bool


def _load_source(checkpoint: Path, cfg: QATConfig, dataset: str | None) -> _Source:
    """The checkpoint's model and its training data (or `dataset`), and the classification weight to use."""
    from .checkpoint import load_checkpoint
    from .data import load_dataset

    original, meta = load_checkpoint(checkpoint)
    mc = original.config
    data_meta = meta.get("data", {})
    source = dataset or data_meta.get("source") or data_meta.get("dataset") or "digits"
    size = int(data_meta.get("size", 32))
    ds = load_dataset(source, size=size, in_channels=mc.in_channels, seed=int(data_meta.get("seed", 0)))
    if mc.num_classes and ds.num_classes and mc.num_classes != ds.num_classes:
        raise ConfigError(f"checkpoint has {mc.num_classes} classes, dataset {ds.name} has {ds.num_classes}")
    trained = meta.get("training", {})
    cls_weight = cfg.cls_weight if cfg.cls_weight is not None else float(trained.get("cls_weight", 0.05))
    use_cls = mc.num_classes > 0 and ds.num_classes > 0 and cls_weight > 0
    return _Source(original, data_meta, source, size, ds, trained, cls_weight, use_cls)


def _finetune(
    checkpoint: Path, out_dir: Path, cfg: QATConfig, dataset: str | None, baseline: bool, progress: bool
) -> QATResult:
    from .artifacts import atomic_write_json

    src = _load_source(checkpoint, cfg, dataset)
    model, fq, losses = _train_fake_quantized(src, cfg, progress)
    qat_info = _save_finetuned(src, model, cfg, checkpoint, out_dir, bool(dataset), losses)
    fp32, int8, ranges_path, images = _int8_onnx(src, model, fq, cfg, out_dir, progress)
    base = _original_onnx(checkpoint, out_dir / "baseline", cfg, src.source, images, baseline, progress)
    report = qat_report(cfg, src.dataset.val, base, fp32, int8, qat_info)
    report_path = out_dir / REPORT_FILE
    atomic_write_json(report_path, report)
    return QATResult(out_dir, ranges_path, fp32, int8, report_path, report)


def _train_fake_quantized(src: _Source, cfg: QATConfig, progress: bool) -> tuple[nn.Module, FakeQuant, list[float]]:
    """Fold the model, calibrate the initial ranges, fine-tune weights and ranges; fake quantization removed."""
    from .training import TrainConfig, lr_at

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 10])
    stream = _batches(src.dataset.train, min(cfg.batch_size, len(src.dataset.train)), cfg.sigma, rng)
    model = fold_for_qat(src.model)
    fq = FakeQuant(model, cfg.target)
    fq.calibrate([torch.from_numpy(next(stream)[0]) for _ in range(cfg.calibration_batches)], cfg.percentile)

    # The schedule of training (warm-up, cosine) at the fine-tune's scale; ranges follow the same curve.
    schedule = TrainConfig(lr=cfg.lr, warmup_steps=max(1, cfg.steps // 10), min_lr_ratio=0.1)
    opt, weight_params = _optimizer(model, fq, cfg)
    losses: list[float] = []
    with progress_bar(progress, status=True) as bar:
        task = bar.add_task(f"[bold]qat[/] fine-tune ({cfg.target})", total=cfg.steps, status="")
        for step in range(cfg.steps):
            noisy, clean, labels = next(stream)
            lr = lr_at(step, cfg.steps, schedule)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            denoised, logits = model(torch.from_numpy(noisy))
            loss = F.mse_loss(denoised, torch.from_numpy(clean))
            if src.use_cls and labels is not None:
                loss = loss + src.cls_weight * F.cross_entropy(logits, torch.from_numpy(labels).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # Clip the weights' gradient only: an LSQ range gradient sums over a whole tensor and would
            # dominate a global norm, shrinking every weight update with it.
            nn.utils.clip_grad_norm_(weight_params, 1.0)
            opt.step()
            fq.project_()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, status=f"loss {np.mean(losses[-20:]):.5f}")
    if not all(math.isfinite(v) for v in losses):
        raise ConfigError(f"the fine-tune diverged (loss {losses[-1]}); lower --lr and retry")
    fq.remove()
    return model, fq, losses


def _optimizer(model: nn.Module, fq: FakeQuant, cfg: QATConfig) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """AdamW over the trainable weights (training's decay groups) and the ranges (at range_lr); the weights."""
    from .training import param_groups

    groups = param_groups(model, cfg.weight_decay)
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
        g["lr_scale"] = 1.0
    weight_params = [p for g in groups for p in g["params"]]
    groups.append({"params": fq.range_parameters(), "weight_decay": 0.0, "lr_scale": cfg.range_lr / cfg.lr})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr), weight_params


def _save_finetuned(
    src: _Source,
    model: nn.Module,
    cfg: QATConfig,
    checkpoint: Path,
    out_dir: Path,
    dataset_given: bool,
    losses: list[float],
) -> dict[str, Any]:
    """The checkpoint: the original architecture, computing exactly the fine-tuned folded model; returns its
    `qat` section."""
    from .artifacts import sha256_file
    from .checkpoint import WEIGHTS, load_checkpoint, save_checkpoint

    result_model = unfold_into(model, src.model)
    qat_info = {
        **cfg.to_dict(),
        "cls_weight": src.cls_weight,
        "source_checkpoint": str(checkpoint),
        "source_weights_sha256": sha256_file(checkpoint / WEIGHTS),
        "final_loss": float(np.mean(losses[-20:])),
    }
    save_checkpoint(
        out_dir,
        result_model,
        training=src.trained,
        data={**src.data_meta, "source": str(src.source)} if dataset_given else src.data_meta,
        qat=qat_info,
    )
    reloaded, _ = load_checkpoint(out_dir)
    _check_same_function(fold_for_qat(reloaded), model, src.model.config.in_channels)
    return qat_info


def _int8_onnx(
    src: _Source, model: nn.Module, fq: FakeQuant, cfg: QATConfig, out_dir: Path, progress: bool
) -> tuple[Path, Path, Path, int]:
    """Export the fine-tuned checkpoint, lay the learned ranges over a percentile calibration and quantize;
    returns (fp32 ONNX, int8 ONNX, qat_ranges.json, calibration images)."""
    from .build import artifact_name, onnx_path_for
    from .calibration import CalibrationSet, collect_ranges, quantize_int8
    from .calibration.graph import prepare_model
    from .calibration.int8 import DEFAULT_CALIBRATION_IMAGES, DataSpec
    from .calibration.ranges import Ranges
    from .export import export_onnx

    name = artifact_name(out_dir)
    fp32, _ = export_onnx(out_dir, onnx_path_for(out_dir, name, "fp32"))
    prepared = prepare_model(fp32)
    layers = {n: m.weight.detach().numpy() for n, m in quantized_layers(model).items()}
    tensor_of = layer_inputs_in_onnx(prepared, layers)
    learned = learned_tensor_ranges(fq, tensor_of)

    images = DEFAULT_CALIBRATION_IMAGES if cfg.calibration_images <= 0 else cfg.calibration_images
    # The fine-tune's seed draws the calibration images (as it drew the training batches).
    in_channels = src.model.config.in_channels
    calib_noisy, _, _ = DataSpec(str(src.source), in_channels, src.size, cfg.seed).calibration_arrays(images, cfg.sigma)
    calib = CalibrationSet(calib_noisy, name=str(src.source))
    calibrated = collect_ranges(fp32, calib, "percentile", cfg.percentile, cache=None, progress=progress)
    merged = Ranges(
        merge_ranges(calibrated, learned, prepared),
        method="qat+percentile",
        percentile=cfg.percentile,
        set_size=len(calib),
        data_sha256=calibrated.data_sha256,
        model_sha256=calibrated.model_sha256,
    )
    ranges_path = _write_ranges(out_dir / RANGES_FILE, cfg, fp32, fq, tensor_of, learned)
    int8 = quantize_int8(
        fp32,
        onnx_path_for(out_dir, name, "int8", cfg.target),
        merged,
        target=cfg.target,
        manifest_extra={"qat": {"ranges": RANGES_FILE, "checkpoint": ".", "steps": cfg.steps}},
    )
    return fp32, int8, ranges_path, images


def _write_ranges(
    path: Path,
    cfg: QATConfig,
    fp32: Path,
    fq: FakeQuant,
    tensor_of: dict[str, str],
    learned: dict[str, tuple[float, float]],
) -> Path:
    """qat_ranges.json: each layer's learned input range and quantization parameters, and the ONNX tensors'."""
    from .artifacts import atomic_write_json

    atomic_write_json(
        path,
        {
            "schema": RANGES_SCHEMA,
            "target": cfg.target,
            "activations": "uint8 asymmetric" if cfg.target == "cpu" else "int8 symmetric",
            "onnx": fp32.name,
            "layers": {
                layer: {
                    "onnx_tensor": tensor_of[layer],
                    "range": list(q.range()),
                    "scale": q.quant_params()[0],
                    "zero_point": q.quant_params()[1],
                    "calibrated": [float(v) for v in q.calibrated],
                }
                for layer, q in fq.ranges().items()
            },
            "tensors": {t: list(r) for t, r in learned.items()},
        },
    )
    return path


def _original_onnx(
    checkpoint: Path, base_dir: Path, cfg: QATConfig, source: str, images: int, baseline: bool, progress: bool
) -> dict[str, Path]:
    """The original checkpoint's fp32 ONNX (the "before" scores) and, with `baseline`, its plain int8."""
    from .build import make_precision_onnx

    base = {"fp32": make_precision_onnx(checkpoint, base_dir, "fp32", progress=progress)}
    if baseline:
        base["int8"] = make_precision_onnx(
            checkpoint,
            base_dir,
            "int8",
            target=cfg.target,
            dataset=str(source),
            calibration_images=images,
            sigma=cfg.sigma,
            progress=progress,
        )
    return base


@torch.no_grad()
def _check_same_function(a: nn.Module, b: nn.Module, channels: int) -> None:
    x = torch.rand(2, channels, 24, 24, generator=torch.Generator().manual_seed(0))
    (da, la), (db, lb) = a(x), b(x)
    err = max(float((da - db).abs().max()), float((la - lb).abs().max()) if la.numel() else 0.0)
    if err > 1e-4:
        raise CheckpointError(f"the saved fine-tuned checkpoint differs from the fine-tuned model by {err:.2e}")
