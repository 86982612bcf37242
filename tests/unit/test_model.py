"""AddUNet and ConcatUNet: shapes, gradients, gates, the subtractive identity, padding, MACs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from addunet_edge.errors import ConfigError
from addunet_edge.model import (
    AddUNet,
    ModelConfig,
    build_model,
    count_macs,
    fold_batchnorm,
    gate_values,
    parameter_count,
)

VARIANTS = [
    dict(arch=a, resampling=r, norm=n, bound=b)
    for a in ("addunet", "concat")
    for r in ("none", "stride")
    for n, b in (("batch", 4.0), ("none", None))
] + [
    # issue 20's photo options: bilinear up-sampling, and the trunk on a pixel-unshuffled input
    dict(arch="addunet", resampling="stride", upsampling="bilinear", norm="none", bound=None),
    dict(arch="addunet", resampling="stride", unshuffle=2, norm="batch", bound=4.0),
    dict(arch="concat", resampling="none", unshuffle=2, norm="batch", bound=4.0),
]


def _ids(v: dict) -> str:
    return "-".join(str(x) for x in v.values())


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_every_parameter_gets_a_gradient_and_no_nan(variant: dict) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, depth=2, num_classes=5, head="full", **variant))
    denoised, logits = model(torch.rand(3, 1, 20, 20))
    assert denoised.shape == (3, 1, 20, 20) and logits.shape == (3, 5)
    (denoised.square().mean() + logits.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_odd_sizes_round_trip(variant: dict) -> None:
    model = build_model(ModelConfig(width=8, depth=3, num_classes=0, **variant)).eval()
    for h, w in ((17, 29), (8, 8), (33, 5)):
        d, lg = model(torch.rand(2, 1, h, w))
        assert d.shape == (2, 1, h, w)
        assert lg.shape == (2, 0)


def test_stride_padding_equals_explicit_padding() -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(width=8, depth=2, resampling="stride", num_classes=0)).eval()
    x = torch.rand(1, 1, 13, 10)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="replicate")
    with torch.no_grad():
        out, _ = model(x)
        ref, _ = model(padded)
    # residual output: denoised = noisy - noise estimate; compare the noise estimates on the crop
    torch.testing.assert_close(x - out, (padded - ref)[..., :13, :10])


def test_unshuffle_runs_the_trunk_at_half_resolution_on_four_channels() -> None:
    """Pixel-unshuffle by 2: the stem sees 4 channels at H/2 x W/2, the output is back at H x W, and sizes
    pad to 2 x 2**depth (a shift by one pixel is not a shift of the trunk's grid)."""
    config = ModelConfig(width=8, depth=2, resampling="stride", unshuffle=2, num_classes=0)
    model = build_model(config).eval()
    assert config.size_multiple == 8 and model.stem.in_channels == 4 and model.head.out_channels == 4
    seen = []
    model.stem.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    with torch.no_grad():
        out, _ = model(torch.rand(1, 1, 13, 21))
    assert seen == [(1, 4, 8, 12)] and out.shape == (1, 1, 13, 21)
    full = build_model(dataclasses.replace(config, unshuffle=1))
    assert count_macs(model).macs_per_pixel < count_macs(full).macs_per_pixel / 3


def test_bilinear_up_sampling_has_no_staircase() -> None:
    """A transposed 2x2 stride-2 conv paints each deep pixel as one flat 2x2 block; bilinear does not."""
    deep = torch.arange(16.0).reshape(1, 1, 4, 4)
    bilinear = build_model(ModelConfig(width=1, depth=1, resampling="stride", upsampling="bilinear"))
    assert not any(p.numel() for p in bilinear.up.parameters())
    up = bilinear.up[0](deep)
    assert up.shape == (1, 1, 8, 8)
    assert (up[..., 0::2, :] != up[..., 1::2, :]).any()  # neighbouring rows differ: no 2x2 blocks


def test_subtractive_encoder_identity() -> None:
    torch.manual_seed(2)
    model = build_model(ModelConfig(width=8, depth=4, num_classes=0, bound=None, norm="none"))
    assert isinstance(model, AddUNet)
    x0 = torch.randn(2, 8, 12, 12)
    deepest, residuals, _ = model.encode(x0)
    torch.testing.assert_close(x0, deepest + sum(residuals), rtol=0, atol=1e-5)


def test_gates_start_at_one_and_stay_positive() -> None:
    torch.manual_seed(3)
    model = build_model(ModelConfig(width=4, depth=3, num_classes=0))
    assert gate_values(model) == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    opt = torch.optim.SGD([model.gate_logits], lr=50.0)
    for _ in range(20):  # drive the gates down as hard as possible
        opt.zero_grad()
        model.gates().sum().backward()
        opt.step()
    gates = gate_values(model)
    assert all(g > 0 for g in gates), gates
    assert max(gates) < 0.5


def test_concat_has_more_parameters_than_addunet_at_equal_depth_and_width() -> None:
    add = build_model(ModelConfig(arch="addunet", width=32, depth=4))
    cat = build_model(ModelConfig(arch="concat", width=32, depth=4))
    assert parameter_count(add) < parameter_count(cat)
    assert gate_values(cat) == []


def test_macs_are_counted_by_hooks() -> None:
    cfg = ModelConfig(width=8, depth=1, kernel_sizes=(3,), num_classes=0, norm="none", bound=None)
    model = build_model(cfg)
    rep = count_macs(model, 16, 16)
    # stem 1->8 3x3, enc 2x (8->8 3x3), dec 2x (8->8 3x3), head 8->1 1x1, per pixel
    expected = 9 * 1 * 8 + 4 * (9 * 8 * 8) + 8 * 1
    assert rep.macs_per_pixel == pytest.approx(expected)
    strided = build_model(ModelConfig(width=8, depth=3, resampling="stride", num_classes=0))
    full = build_model(ModelConfig(width=8, depth=3, resampling="none", num_classes=0))
    assert count_macs(strided).macs_per_pixel < 0.5 * count_macs(full).macs_per_pixel


def test_fold_batchnorm_is_exact() -> None:
    torch.manual_seed(4)
    model = build_model(ModelConfig(width=8, depth=2, num_classes=3))
    model.train()
    for _ in range(3):
        model(torch.rand(8, 1, 16, 16) * 3)  # non-trivial running statistics
    model.eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        ref = model(x)
        fold_batchnorm(model)
        got = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)


def test_export_rewrite_is_exact() -> None:
    torch.manual_seed(5)
    model = build_model(ModelConfig(width=8, depth=3, num_classes=4, bound=None, norm="none")).eval()
    with torch.no_grad():
        model.gate_logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
        x = torch.rand(2, 1, 16, 16)
        ref = model(x)
        model.export_rewrite = True
        model.frozen_gates = gate_values(model)
        got = model(x)
    torch.testing.assert_close(got[0], ref[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=2),
        dict(width=0),
        dict(depth=0),
        dict(kernel_sizes=(3, 4)),
        dict(depth=3, kernel_sizes=(3, 3)),
        dict(resampling="bilinear"),
        dict(num_classes=-1),
        dict(head="huge"),
        dict(norm="layer"),
        dict(bound=-1.0),
        dict(arch="resnet"),
        dict(upsampling="nearest"),
        dict(unshuffle=3),
        dict(unshuffle=0),
    ],
)
def test_invalid_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ModelConfig(**{"depth": 2, **kwargs})


def test_config_round_trips_through_dict() -> None:
    cfg = ModelConfig(width=16, depth=3, kernel_sizes=(5, 3, 3), resampling="stride", bound=None)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    photo = ModelConfig(depth=3, resampling="stride", upsampling="bilinear", unshuffle=2)
    assert ModelConfig.from_dict(photo.to_dict()) == photo
    # a config written before these options existed still loads, as the old model
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("upsampling", "unshuffle")}
    assert ModelConfig.from_dict(old) == cfg and cfg.upsampling == "transposed" and cfg.unshuffle == 1
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({**cfg.to_dict(), "mystery": 1})


@pytest.mark.parametrize("head", ["limited", "full", "conv"])
def test_head_detach_stops_the_classifier_gradient_at_the_trunk(head: str) -> None:
    x = torch.rand(4, 1, 16, 16)
    grads = {}
    for detach in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig(width=8, depth=2, num_classes=10, head=head, head_detach=detach))
        _, logits = model(x)
        logits.logsumexp(dim=1).sum().backward()
        trunk = [p.grad for n, p in model.named_parameters() if not n.startswith("classifier.")]
        grads[detach] = sum(0.0 if g is None else float(g.abs().sum()) for g in trunk)
        # The classifier's own layers learn either way.
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.classifier.parameters())
    assert grads[False] > 0 and grads[True] == 0
    # Same function in the forward pass: detach only changes training.
    torch.manual_seed(0)
    a = build_model(ModelConfig(width=8, depth=2, num_classes=10, head=head)).eval()
    b = build_model(ModelConfig(width=8, depth=2, num_classes=10, head=head, head_detach=True)).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.equal(a(x)[1], b(x)[1])


def test_conv_head_pools_strided_features() -> None:
    model = build_model(ModelConfig(width=8, depth=2, num_classes=3, head="conv")).eval()
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in model.classifier.modules()) == 2
    _, logits = model(torch.rand(2, 1, 13, 19))  # odd sizes: the strided convs pad
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
