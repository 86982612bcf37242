"""AddUNet (gated additive skips, subtractive residual encoder) and the concatenative U-Net baseline."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

Arch = Literal["addunet", "concat"]
Resampling = Literal["none", "stride"]
HeadCapacity = Literal["limited", "full", "conv"]
Norm = Literal["none", "batch"]
Upsampling = Literal["transposed", "bilinear"]

# softplus(GATE_INIT) == 1: every skip starts fully open, as in the paper.
GATE_INIT = math.log(math.e - 1.0)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint's config.json."""

    arch: Arch = "addunet"
    in_channels: int = 1  # 1 = gray, 3 = RGB
    width: int = 32  # fixed width at every level: the paper's "no channel growth"
    depth: int = 4  # number of encoder blocks (= number of gated skips)
    # One kernel size per level (shallow to deep); a single int repeats. 3 everywhere is the paper's choice.
    kernel_sizes: tuple[int, ...] = (3,)
    # 'none' keeps full resolution (the paper); 'stride' halves H and W per level (far cheaper on big frames).
    resampling: Resampling = "none"
    # How 'stride' goes back up: 'transposed' is a 2x2 stride-2 transposed conv (each input pixel paints one
    # 2x2 block: staircase edges on thin diagonals); 'bilinear' interpolates and lets the decoder's convs refine.
    upsampling: Upsampling = "transposed"
    # Pixel-unshuffle the input by this factor (FFDNet-style): the trunk runs at 1/f resolution on c*f*f
    # channels, and the head's c*f*f channels are shuffled back. 1 = off.
    unshuffle: int = 1
    # Predict the noise and subtract it (DnCNN-style); easier to train for denoising.
    residual_output: bool = True
    num_classes: int = 10  # 0 = denoise only
    # 'limited': GAP + linear; 'full': GAP + MLP; 'conv': two stride-2 3x3 convs + ReLU, then GAP + linear (a
    # head that learns its own features, so the trunk need not bend towards classification).
    head: HeadCapacity = "limited"
    # BatchNorm after block convs (folded into the conv at export): keeps activations int8-friendly.
    norm: Norm = "batch"
    # Clamp on residuals, decoder states and capped ReLU inside blocks; None = unbounded (paper-faithful).
    bound: float | None = 4.0
    # 1x1 projection + norm before pooling, so the classifier's loss does not inflate the trunk's scale.
    head_projection: bool = True
    # Stop-gradient: the classifier reads the deepest state but sends no gradient into the trunk, which then
    # trains for reconstruction alone (the classifier still learns; only its own layers move).
    head_detach: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "width", "depth", "num_classes", "unshuffle"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        ks = self.kernel_sizes
        if isinstance(ks, int):
            ks = (ks,)
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
            raise ConfigError(f"kernel_sizes must be integers, got {ks!r}")
        ks = tuple(ks)
        if len(ks) == 1:
            ks = ks * self.depth
        object.__setattr__(self, "kernel_sizes", ks)
        if self.arch not in ("addunet", "concat"):
            raise ConfigError(f"arch must be 'addunet' or 'concat', got {self.arch!r}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 (gray) or 3 (RGB), got {self.in_channels}")
        if not 1 <= self.width <= 1024:
            raise ConfigError(f"width must be in [1, 1024], got {self.width}")
        if not 1 <= self.depth <= 8:
            raise ConfigError(f"depth must be in [1, 8], got {self.depth}")
        if len(ks) != self.depth:
            raise ConfigError(f"kernel_sizes has {len(ks)} entries for depth {self.depth}")
        if any(k < 1 or k % 2 == 0 for k in ks):
            raise ConfigError(f"kernel sizes must be odd and positive, got {ks}")
        if self.resampling not in ("none", "stride"):
            raise ConfigError(f"resampling must be 'none' or 'stride', got {self.resampling!r}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.head not in ("limited", "full", "conv"):
            raise ConfigError(f"head must be 'limited', 'full' or 'conv', got {self.head!r}")
        if self.upsampling not in ("transposed", "bilinear"):
            raise ConfigError(f"upsampling must be 'transposed' or 'bilinear', got {self.upsampling!r}")
        if self.unshuffle not in (1, 2, 4):
            raise ConfigError(f"unshuffle must be 1, 2 or 4, got {self.unshuffle}")
        if self.norm not in ("none", "batch"):
            raise ConfigError(f"norm must be 'none' or 'batch', got {self.norm!r}")
        if not isinstance(self.head_projection, bool) or not isinstance(self.head_detach, bool):
            raise ConfigError("head_projection and head_detach must be true or false")
        if self.bound is not None and (isinstance(self.bound, bool) or not isinstance(self.bound, (int, float))):
            raise ConfigError(f"bound must be a number or None, got {self.bound!r}")
        if self.bound is not None and not self.bound > 0:
            raise ConfigError(f"bound must be positive or None, got {self.bound}")

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this (1 for full-rate models)."""
        return self.unshuffle * (2**self.depth if self.resampling == "stride" else 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kernel_sizes"] = list(self.kernel_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        kw = dict(d)
        if "kernel_sizes" in kw:
            ks = kw["kernel_sizes"]
            if not isinstance(ks, (list, tuple, int)):
                raise ConfigError(f"kernel_sizes must be a list of ints, got {ks!r}")
            kw["kernel_sizes"] = tuple(ks) if isinstance(ks, (list, tuple)) else (ks,)
        try:
            return cls(**kw)
        except TypeError as e:
            raise ConfigError(f"invalid model config: {e}") from None


class BoundedReLU(nn.Module):
    """ReLU, capped at `cap` when one is given (a ReLU6-like bound that int8 ranges like)."""

    def __init__(self, cap: float | None) -> None:
        super().__init__()
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.cap is None else torch.clamp(x, 0.0, self.cap)


def _bound(x: torch.Tensor, bound: float | None) -> torch.Tensor:
    return x if bound is None else torch.clamp(x, -bound, bound)


class ConvBlock(nn.Module):
    """conv -> [BN] -> ReLU -> conv -> [BN]: the body of every encoder and decoder block."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, norm: Norm, cap: float | None) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
        self.norm1 = nn.BatchNorm2d(out_ch) if norm == "batch" else nn.Identity()
        self.act = BoundedReLU(cap)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
        self.norm2 = nn.BatchNorm2d(out_ch) if norm == "batch" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class ClassifierHead(nn.Module):
    """Reads the deepest encoder state: [1x1 projection + BN + ReLU] -> global average pool -> linear/MLP."""

    def __init__(self, width: int, num_classes: int, capacity: HeadCapacity, projection: bool) -> None:
        super().__init__()
        self.proj = (
            nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            if projection
            else nn.Identity()
        )
        self.features: nn.Module = (
            nn.Sequential(
                nn.Conv2d(width, width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, stride=2, padding=1),
                nn.ReLU(),
            )
            if capacity == "conv"
            else nn.Identity()
        )
        if capacity == "full":
            self.fc: nn.Module = nn.Sequential(
                nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, num_classes)
            )
        else:
            self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, W, h, w) -> [features: (N, W, h/4, w/4)] -> pooled (N, W) -> (N, K)
        return self.fc(self.features(self.proj(x)).mean(dim=(2, 3)))


def _up(width: int, config: ModelConfig) -> nn.Module:
    if config.resampling != "stride":
        return nn.Identity()
    if config.upsampling == "bilinear":
        return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    return nn.ConvTranspose2d(width, width, 2, stride=2)


class _UNetBase(nn.Module):
    """Shared parts: stem, resampling, image head, classifier, padding, and the residual output."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, w = config.in_channels * config.unshuffle**2, config.width
        self.stem = nn.Conv2d(c, w, config.kernel_sizes[0], padding=config.kernel_sizes[0] // 2)
        self.head = nn.Conv2d(w, c, 1)
        stride = config.resampling == "stride"
        self.down = nn.ModuleList(
            [nn.Conv2d(w, w, 2, stride=2) if stride else nn.Identity() for _ in range(config.depth)]
        )
        self.up = nn.ModuleList([_up(w, config) for _ in range(config.depth)])
        self.classifier = (
            ClassifierHead(w, config.num_classes, config.head, config.head_projection)
            if config.num_classes > 0
            else None
        )

    def forward(self, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """noisy (N, C, H, W) in [0, 1] -> denoised (N, C, H, W), logits (N, K) (K = 0: empty)."""
        if noisy.dim() != 4 or noisy.shape[1] != self.config.in_channels:
            raise ValueError(f"expected (N, {self.config.in_channels}, H, W) input, got {tuple(noisy.shape)}")
        h, w = noisy.shape[-2:]
        m = self.config.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        x = F.pad(noisy, (0, pad_w, 0, pad_h), mode="replicate") if (pad_h or pad_w) else noisy
        f = self.config.unshuffle
        out, deepest = self._trunk(F.pixel_unshuffle(x, f) if f > 1 else x)
        out = self.head(out)
        if f > 1:
            out = F.pixel_shuffle(out, f)
        if pad_h or pad_w:
            out = out[..., :h, :w]
        denoised = noisy - out if self.config.residual_output else out
        if self.classifier is not None:
            logits = self.classifier(deepest.detach() if self.config.head_detach else deepest)
        else:
            logits = noisy.new_zeros((noisy.shape[0], 0))
        return denoised, logits

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class AddUNet(_UNetBase):
    """Additive U-Net: x_{i+1} = x_i - r_i with r_i = Enc_i(x_i); u_{j+1} = Dec_j(u_j + alpha_j r_{L-1-j})."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        w, bound = config.width, config.bound
        self.encoders = nn.ModuleList(ConvBlock(w, w, k, config.norm, bound) for k in config.kernel_sizes)
        # Decoder j mirrors encoder L-1-j, so it uses that level's kernel size.
        self.decoders = nn.ModuleList(ConvBlock(w, w, k, config.norm, bound) for k in reversed(config.kernel_sizes))
        # One gate per skip, indexed shallow (0) to deep (L-1); alpha = softplus(beta) >= 0.
        self.gate_logits = nn.Parameter(torch.full((config.depth,), GATE_INIT))
        # Set by the exporter: use the exact rewrite of the first decoder input (see _trunk), and the
        # gates as plain constants, so no live Softplus reaches TensorRT or the quantizer.
        self.export_rewrite = False
        self.frozen_gates: list[float] | None = None

    def gates(self) -> torch.Tensor:
        """alpha per skip, shallow to deep."""
        return F.softplus(self.gate_logits)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """stem output x_0 -> (x_L, residuals r_0..r_{L-1}, states x_0..x_{L-1} before downsampling)."""
        bound = self.config.bound
        residuals, states = [], []
        for enc, down in zip(self.encoders, self.down, strict=True):
            r = _bound(enc(x), bound)  # (N, W, h, w), same shape as x
            residuals.append(r)
            states.append(x)
            x = down(x - r)
        return x, residuals, states

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        x0 = _bound(self.stem(x), cfg.bound)
        deepest, residuals, states = self.encode(x0)
        alphas = self.frozen_gates if self.frozen_gates is not None else self.gates()
        u = deepest
        for j, (dec, up) in enumerate(zip(self.decoders, reversed(self.up), strict=True)):
            level = cfg.depth - 1 - j
            if j == 0 and self.export_rewrite and cfg.resampling == "none":
                # x_L + a r = (x_{L-1} - r) + a r = x_{L-1} - (1 - a) r: the same value, but without two
                # large, nearly cancelling operands that per-tensor int8 would each lose bits on.
                fused = states[level] - (1.0 - alphas[level]) * residuals[level]
            else:
                fused = up(u) + alphas[level] * residuals[level]
            u = _bound(dec(fused), cfg.bound)
        return u, deepest


class ConcatUNet(_UNetBase):
    """The classic U-Net of the same depth and width: skips concatenated, then a conv block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        w = config.width
        self.encoders = nn.ModuleList(ConvBlock(w, w, k, config.norm, None) for k in config.kernel_sizes)
        self.decoders = nn.ModuleList(ConvBlock(2 * w, w, k, config.norm, None) for k in reversed(config.kernel_sizes))

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.stem(x))
        skips = []
        for enc, down in zip(self.encoders, self.down, strict=True):
            x = F.relu(enc(x))
            skips.append(x)
            x = down(x)
        deepest = x
        u = x
        for dec, up, skip in zip(self.decoders, reversed(self.up), reversed(skips), strict=True):
            u = F.relu(dec(torch.cat([up(u), skip], dim=1)))
        return u, deepest


def build_model(config: ModelConfig) -> AddUNet | ConcatUNet:
    return AddUNet(config) if config.arch == "addunet" else ConcatUNet(config)


def gate_values(model: nn.Module) -> list[float]:
    """The learned gates alpha_j, shallow to deep; empty for models without gates."""
    if isinstance(model, AddUNet):
        with torch.no_grad():
            return [float(a) for a in model.gates()]
    return []


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class MacReport:
    macs: int
    height: int
    width: int
    per_layer: dict[str, int] = field(default_factory=dict)

    @property
    def macs_per_pixel(self) -> float:
        return self.macs / (self.height * self.width)


def count_macs(model: nn.Module, height: int = 64, width: int = 64) -> MacReport:
    """Multiply-accumulates of one forward pass at (1, C, H, W), counted with hooks on every layer."""
    per_layer: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
                per_layer[name] = per_layer.get(name, 0) + out.numel() * k
            elif isinstance(mod, nn.ConvTranspose2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.out_channels // mod.groups)
                per_layer[name] = per_layer.get(name, 0) + inp[0].numel() * k
            elif isinstance(mod, nn.Linear):
                per_layer[name] = per_layer.get(name, 0) + out.numel() * mod.in_features

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(hook(name)))
    cfg: ModelConfig = model.config  # type: ignore[assignment]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, cfg.in_channels, height, width))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return MacReport(macs=sum(per_layer.values()), height=height, width=width, per_layer=per_layer)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that follows a conv into that conv (eval-mode statistics), in place.

    The model must be in eval mode; the folded model computes the same function to float tolerance
    and exports without BatchNormalization nodes.
    """
    for module in model.modules():
        if isinstance(module, ConvBlock):
            for conv_name, bn_name in (("conv1", "norm1"), ("conv2", "norm2")):
                bn = getattr(module, bn_name)
                if isinstance(bn, nn.BatchNorm2d):
                    setattr(module, conv_name, _fold(getattr(module, conv_name), bn))
                    setattr(module, bn_name, nn.Identity())
        elif isinstance(module, ClassifierHead) and isinstance(module.proj, nn.Sequential):
            conv, bn, act = module.proj
            if isinstance(bn, nn.BatchNorm2d):
                module.proj = nn.Sequential(_fold(conv, bn), act)
    return model


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # type: ignore[operator]
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
    )
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias.detach())  # type: ignore[operator]
    return fused
