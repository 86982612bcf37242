"""Quantization-aware fine-tuning: fake quantization that mirrors each int8 target, LSQ ranges, Q/DQ export.

The model is fine-tuned in the form it is exported in (BatchNorm folded, gates frozen, the exact decoder
rewrite on), so the weights that see fake quantization are the very tensors that reach the ONNX. Activation
fake quantization sits on the input of every Conv2d / ConvTranspose2d / Linear, weight fake quantization on
their weights; rounding passes gradients straight through and the activation ranges are learned (LSQ):
calibrated first (percentile), then trained with the weights.

Schemes, matching `calibration.quantize_int8`:
- cpu: activations uint8 asymmetric from (lo, hi) as ONNX Runtime computes them (0 always representable);
- tensorrt: activations int8 symmetric, scale = amax / 127, QuantizeLinear saturating to [-128, 127];
- both: weights int8 symmetric per output channel, scale = max|w| / 127, values in [-127, 127].
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .errors import ArtifactError, CheckpointError, ConfigError
from .progress import progress_bar

TARGETS = ("cpu", "tensorrt")
RANGES_FILE = "qat_ranges.json"
REPORT_FILE = "qat_report.json"
RANGES_SCHEMA = 1
QUANTIZED_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_INT8_MAX = 127.0  # weights (both targets) and the tensorrt activation scale use [-127, 127] / 127
_MIN_AMAX = 1e-6  # the same floor as calibration.qdq: an all-zero tensor still gets a positive scale
# ONNX ops that only move values around: a range learned on their output holds for their input too (ORT's
# cpu quantizer gives a Reshape's output the quantization parameters of its input).
_VALUE_PRESERVING_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose")


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


# --- fake quantization ------------------------------------------------------------------------------


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize_weight(weight: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Per-channel symmetric int8 quantize-dequantize along `axis` (the output channels)."""
    axis = axis % weight.dim()
    reduce = [d for d in range(weight.dim()) if d != axis]
    amax = weight.detach().abs().amax(dim=reduce, keepdim=True) if reduce else weight.detach().abs()
    scale = amax.clamp_min(_MIN_AMAX) / _INT8_MAX
    return torch.clamp(_round_ste(weight / scale), -_INT8_MAX, _INT8_MAX) * scale


def uint8_params(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of an asymmetric uint8 range, as ONNX Runtime derives them from (lo, hi)."""
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp(hi - lo, min=_MIN_AMAX) / 255.0
    zero_point = torch.clamp(_round_ste(-lo / scale), 0.0, 255.0)
    return scale, zero_point


def fake_quantize_uint8(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """uint8 asymmetric quantize-dequantize: q = clamp(round(x / s) + z, 0, 255), x' = (q - z) * s."""
    scale, zero_point = uint8_params(lo, hi)
    q = torch.clamp(_round_ste(x / scale) + zero_point, 0.0, 255.0)
    return (q - zero_point) * scale


def fake_quantize_int8(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """int8 symmetric quantize-dequantize with scale amax / 127; QuantizeLinear saturates to [-128, 127]."""
    scale = torch.clamp(amax, min=_MIN_AMAX) / _INT8_MAX
    return torch.clamp(_round_ste(x / scale), -128.0, 127.0) * scale


class ActivationQuantizer(nn.Module):
    """Learned activation range of one layer input: (lo, hi) for cpu, amax for tensorrt (LSQ gradients)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.lo = nn.Parameter(torch.tensor(0.0))
        self.hi = nn.Parameter(torch.tensor(1.0))  # tensorrt: amax
        # Observed data bounds: a learned range never grows past them (a wider range only wastes levels, and
        # ORT's cpu quantizer removes a Clip in front of a conv input on the strength of the range).
        self.register_buffer("observed", torch.tensor([0.0, 1.0]))
        self.register_buffer("calibrated", torch.tensor([0.0, 1.0]))
        self.observing = False
        self.enabled = True
        self._samples: list[torch.Tensor] = []

    @property
    def one_sided(self) -> bool:
        """True for inputs that are never negative (after a ReLU): lo stays at 0 for cpu."""
        return bool(self.observed[0] >= 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._samples.append(x.detach().flatten().cpu())
            return x
        if not self.enabled:
            return x
        if self.target == "cpu":
            return fake_quantize_uint8(x, self.lo, self.hi)
        return fake_quantize_int8(x, self.hi)

    def finish_observing(self, percentile: float) -> None:
        """Initial range from the observed values: the percentile range, clipped evenly on both sides."""
        if not self._samples:
            raise ConfigError("no activations were observed: the layer never ran during calibration")
        values = torch.cat(self._samples).numpy()
        self._samples = []
        self.observing = False
        tail = (100.0 - percentile) / 2.0
        p_lo, p_hi = (float(v) for v in np.percentile(values, [tail, 100.0 - tail]))
        v_min, v_max = float(values.min()), float(values.max())
        with torch.no_grad():
            self.observed.copy_(torch.tensor([v_min, v_max]))
            self.calibrated.copy_(torch.tensor([p_lo, p_hi]))
            if self.target == "cpu":
                self.lo.fill_(0.0 if v_min >= 0 else min(p_lo, 0.0))
                self.hi.fill_(max(p_hi, _MIN_AMAX))
                self.lo.requires_grad_(v_min < 0)
            else:
                self.lo.fill_(0.0)
                self.lo.requires_grad_(False)
                self.hi.fill_(max(abs(p_lo), abs(p_hi), _MIN_AMAX))
        self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        """Keep the range inside the observed data bounds and non-degenerate (after every optimizer step)."""
        v_min, v_max = float(self.observed[0]), float(self.observed[1])
        if self.target == "cpu":
            self.lo.clamp_(min(v_min, 0.0), 0.0)
            floor = max(_MIN_AMAX, 1e-3 * max(v_max, 0.0))
            self.hi.clamp_(floor, max(v_max, floor))
        else:
            amax = max(abs(v_min), abs(v_max), _MIN_AMAX)
            self.hi.clamp_(min(_MIN_AMAX * 10, amax), amax)

    def range(self) -> tuple[float, float]:
        """The (lo, hi) handed to the quantizer: lo <= 0 <= hi; symmetric for tensorrt."""
        if self.target == "cpu":
            return min(float(self.lo.detach()), 0.0), max(float(self.hi.detach()), 0.0)
        amax = float(self.hi.detach())
        return -amax, amax

    def quant_params(self) -> tuple[float, int]:
        """(scale, zero point) that the int8 ONNX should carry for this input."""
        lo, hi = self.range()
        if self.target == "cpu":
            scale = (hi - lo) / 255.0
            return scale, round(-lo / scale) if scale > 0 else 0
        return hi / _INT8_MAX, 0


class WeightQuantizer(nn.Module):
    """A parametrization: the layer sees its weight quantize-dequantized per output channel."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(weight, self.axis)


def weight_axis(layer: nn.Module) -> int:
    """The output-channel axis of a layer's weight (ConvTranspose2d stores (in, out, kh, kw))."""
    return 1 if isinstance(layer, nn.ConvTranspose2d) else 0


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d / ConvTranspose2d / Linear of `model`, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZED_LAYERS)}


class FakeQuant:
    """Fake quantization attached to a model (pre-hooks on inputs, parametrizations on weights)."""

    def __init__(self, model: nn.Module, target: str) -> None:
        if target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.model, self.target = model, target
        self.layers = quantized_layers(model)
        if not self.layers:
            raise ConfigError("the model has no Conv2d, ConvTranspose2d or Linear layer to quantize")
        self.quantizers = nn.ModuleDict({_key(n): ActivationQuantizer(target) for n in self.layers})
        self._hooks = []
        for name, layer in self.layers.items():
            quantizer = self.quantizers[_key(name)]
            self._hooks.append(layer.register_forward_pre_hook(_input_hook(quantizer)))
            parametrize.register_parametrization(layer, "weight", WeightQuantizer(weight_axis(layer)))

    def range_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.quantizers.parameters() if p.requires_grad]

    @torch.no_grad()
    def calibrate(self, batches: Iterator[torch.Tensor] | list[torch.Tensor], percentile: float) -> None:
        """Initial ranges: run `batches` through the float model (weights fake-quantized) and observe."""
        for q in self.quantizers.values():
            q.observing = True
        try:
            for x in batches:
                self.model(x)
        finally:
            for q in self.quantizers.values():
                q.observing = False
        for q in self.quantizers.values():
            q.finish_observing(percentile)  # type: ignore[operator]

    def project_(self) -> None:
        for q in self.quantizers.values():
            q.project_()  # type: ignore[operator]

    def ranges(self) -> dict[str, ActivationQuantizer]:
        """Layer name -> its input's quantizer."""
        return {name: self.quantizers[_key(name)] for name in self.layers}  # type: ignore[misc]

    def remove(self) -> None:
        """Detach everything; the layers keep their float (not quantized) fine-tuned weights."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for layer in self.layers.values():
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)


def _key(name: str) -> str:
    return name.replace(".", "/")  # ModuleDict keys may not contain dots


def _input_hook(quantizer: ActivationQuantizer):
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (quantizer(args[0]), *args[1:])

    return hook


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


# --- ONNX side: learned ranges -> tensor names -> Q/DQ ---------------------------------------------


def layer_inputs_in_onnx(model: Any, layers: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Layer name -> the data input tensor of its Conv / ConvTranspose / Gemm node in `model` (a prepared
    ONNX graph), found by weight values, so no assumption is made about the exporter's names."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    candidates = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
                w = w.T  # torch's Linear stores (out, in); a Gemm without transB holds (in, out)
            candidates.append((node, w))
    found: dict[str, str] = {}
    for name, weight in layers.items():
        hits = [n for n, w in candidates if w.shape == weight.shape and np.allclose(w, weight, rtol=1e-5, atol=1e-6)]
        if len(hits) != 1:
            raise ArtifactError(
                f"layer {name} matches {len(hits)} weighted node(s) of the exported ONNX, expected exactly one; "
                "the export changed the weights (re-export and retry)"
            )
        found[name] = hits[0].input[0]
    return found


def _upstream_aliases(model: Any, tensor: str) -> list[str]:
    """`tensor` and the tensors it is a pure reshape of (walking up single-consumer shape-only ops)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names = [tensor]
    node = producer.get(tensor)
    while node is not None and node.op_type in _VALUE_PRESERVING_OPS:
        names.append(node.input[0])
        node = producer.get(node.input[0])
    return names


def merge_ranges(
    calibrated: Mapping[str, tuple[float, float]], learned: Mapping[str, tuple[float, float]], model: Any
) -> dict[str, tuple[float, float]]:
    """Calibrated ranges with the learned ones laid over them (and over their pure-reshape sources)."""
    merged = dict(calibrated)
    for tensor, rng in learned.items():
        for alias in _upstream_aliases(model, tensor):
            merged[alias] = (float(rng[0]), float(rng[1]))
    return merged


def learned_tensor_ranges(fq: FakeQuant, tensor_of: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """ONNX tensor -> learned range; a tensor feeding several layers gets the union of their ranges."""
    out: dict[str, tuple[float, float]] = {}
    for name, q in fq.ranges().items():
        lo, hi = q.range()
        tensor = tensor_of[name]
        if tensor in out:
            lo, hi = min(lo, out[tensor][0]), max(hi, out[tensor][1])
        out[tensor] = (lo, hi)
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


def _finetune(
    checkpoint: Path, out_dir: Path, cfg: QATConfig, dataset: str | None, baseline: bool, progress: bool
) -> QATResult:
    from .artifacts import atomic_write_json, sha256_file
    from .build import artifact_name, make_precision_onnx, onnx_path_for
    from .calibration import CalibrationSet, collect_ranges, quantize_int8
    from .calibration.int8 import DEFAULT_CALIBRATION_IMAGES, DataSpec
    from .calibration.ranges import Ranges, prepare_model
    from .checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
    from .data import load_dataset
    from .export import export_onnx
    from .training import TrainConfig, lr_at, param_groups

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

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 10])
    stream = _batches(ds.train, min(cfg.batch_size, len(ds.train)), cfg.sigma, rng)
    model = fold_for_qat(original)
    fq = FakeQuant(model, cfg.target)
    fq.calibrate([torch.from_numpy(next(stream)[0]) for _ in range(cfg.calibration_batches)], cfg.percentile)

    # The schedule of training (warm-up, cosine) at the fine-tune's scale; ranges follow the same curve.
    schedule = TrainConfig(lr=cfg.lr, warmup_steps=max(1, cfg.steps // 10), min_lr_ratio=0.1)
    groups = param_groups(model, cfg.weight_decay)
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
        g["lr_scale"] = 1.0
    weight_params = [p for g in groups for p in g["params"]]
    groups.append({"params": fq.range_parameters(), "weight_decay": 0.0, "lr_scale": cfg.range_lr / cfg.lr})
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
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
            if use_cls and labels is not None:
                loss = loss + cls_weight * F.cross_entropy(logits, torch.from_numpy(labels).long())
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

    # The checkpoint: the original architecture, computing exactly the fine-tuned folded model.
    result_model = unfold_into(model, original)
    qat_info = {
        **cfg.to_dict(),
        "cls_weight": cls_weight,
        "source_checkpoint": str(checkpoint),
        "source_weights_sha256": sha256_file(checkpoint / WEIGHTS),
        "final_loss": float(np.mean(losses[-20:])),
    }
    save_checkpoint(
        out_dir,
        result_model,
        training=trained,
        data={**data_meta, "source": str(source)} if dataset else data_meta,
        qat=qat_info,
    )
    reloaded, _ = load_checkpoint(out_dir)
    _check_same_function(fold_for_qat(reloaded), model, mc.in_channels)

    name = artifact_name(out_dir)
    fp32, _ = export_onnx(out_dir, onnx_path_for(out_dir, name, "fp32"))
    prepared = prepare_model(fp32)
    layers = {n: m.weight.detach().numpy() for n, m in quantized_layers(model).items()}
    tensor_of = layer_inputs_in_onnx(prepared, layers)
    learned = learned_tensor_ranges(fq, tensor_of)

    images = DEFAULT_CALIBRATION_IMAGES if cfg.calibration_images <= 0 else cfg.calibration_images
    # The fine-tune's seed draws the calibration images (as it drew the training batches).
    calib_noisy, _, _ = DataSpec(str(source), mc.in_channels, size, cfg.seed).calibration_arrays(images, cfg.sigma)
    calib = CalibrationSet(calib_noisy, name=str(source))
    calibrated = collect_ranges(fp32, calib, "percentile", cfg.percentile, cache=None, progress=progress)
    merged = Ranges(
        merge_ranges(calibrated, learned, prepared),
        method="qat+percentile",
        percentile=cfg.percentile,
        set_size=len(calib),
        data_sha256=calibrated.data_sha256,
        model_sha256=calibrated.model_sha256,
    )
    ranges_path = out_dir / RANGES_FILE
    atomic_write_json(
        ranges_path,
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
    int8 = quantize_int8(
        fp32,
        onnx_path_for(out_dir, name, "int8", cfg.target),
        merged,
        target=cfg.target,
        manifest_extra={"qat": {"ranges": RANGES_FILE, "checkpoint": ".", "steps": cfg.steps}},
    )

    # The original checkpoint's fp32 ONNX (the "before" scores) and, with `baseline`, its plain int8.
    base_dir = out_dir / "baseline"
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
    report = _report(cfg, ds.val, base, fp32, int8, qat_info)
    report_path = out_dir / REPORT_FILE
    atomic_write_json(report_path, report)
    return QATResult(out_dir, ranges_path, fp32, int8, report_path, report)


@torch.no_grad()
def _check_same_function(a: nn.Module, b: nn.Module, channels: int) -> None:
    x = torch.rand(2, channels, 24, 24, generator=torch.Generator().manual_seed(0))
    (da, la), (db, lb) = a(x), b(x)
    err = max(float((da - db).abs().max()), float((la - lb).abs().max()) if la.numel() else 0.0)
    if err > 1e-4:
        raise CheckpointError(f"the saved fine-tuned checkpoint differs from the fine-tuned model by {err:.2e}")


def _scores(path: Path, noisy: np.ndarray, clean: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    from .calibration import run_onnx
    from .metrics import accuracy, psnr

    den, logits = run_onnx(path, noisy)
    out = {"psnr_db": psnr(np.clip(den, 0.0, 1.0), clean)}
    if labels is not None and logits.shape[1] > 0:
        out["accuracy"] = accuracy(logits, labels)
    return out


def _report(
    cfg: QATConfig, val: Any, base: dict[str, Path], fp32: Path, int8: Path, qat_info: dict[str, Any]
) -> dict[str, Any]:
    """fp32 and int8 scores on the held-out val split (ORT, CPU); drift is signed: int8 minus fp32."""
    noisy, clean, labels = val.noisy(cfg.sigma, cfg.seed), val.clean, val.labels
    qat_fp32, qat_int8 = _scores(fp32, noisy, clean, labels), _scores(int8, noisy, clean, labels)
    qat_int8["drift_db"] = qat_int8["psnr_db"] - qat_fp32["psnr_db"]
    report: dict[str, Any] = {
        "target": cfg.target,
        "sigma": cfg.sigma,
        "eval_images": len(clean),
        "qat": qat_info,
        "finetuned": {"fp32": qat_fp32, "int8": qat_int8, "onnx": {"fp32": fp32.name, "int8": int8.name}},
    }
    orig_fp32 = _scores(base["fp32"], noisy, clean, labels)
    qat_int8["drift_vs_original_db"] = qat_int8["psnr_db"] - orig_fp32["psnr_db"]
    report["original"] = {"fp32": orig_fp32}
    if "int8" in base:
        orig_int8 = _scores(base["int8"], noisy, clean, labels)
        orig_int8["drift_db"] = orig_int8["psnr_db"] - orig_fp32["psnr_db"]
        report["original"]["int8"] = orig_int8
    return json.loads(json.dumps(report, allow_nan=True))
