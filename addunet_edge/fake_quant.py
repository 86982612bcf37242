"""Fake quantization that mirrors each int8 target: straight-through rounding, per-channel weights and learned
(LSQ) activation ranges, attached to a model by input pre-hooks and weight parametrizations.

Schemes, matching `calibration.quantize_int8`:
- cpu: activations uint8 asymmetric from (lo, hi) as ONNX Runtime computes them (0 always representable);
- tensorrt: activations int8 symmetric, scale = amax / 127, QuantizeLinear saturating to [-128, 127];
- both: weights int8 symmetric per output channel, scale = max|w| / 127, values in [-127, 127].
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import ConfigError

TARGETS = ("cpu", "tensorrt")
QUANTIZED_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_INT8_MAX = 127.0  # weights (both targets) and the tensorrt activation scale use [-127, 127] / 127
_MIN_AMAX = 1e-6  # the same floor as calibration.qdq: an all-zero tensor still gets a positive scale


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
