"""AddUNet and ConcatUNet: shapes, gradients, gates, the subtractive identity, padding, MACs."""

from __future__ import annotations

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
    ],
)
def test_invalid_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ModelConfig(**{"depth": 2, **kwargs})


def test_config_round_trips_through_dict() -> None:
    cfg = ModelConfig(width=16, depth=3, kernel_sizes=(5, 3, 3), resampling="stride", bound=None)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
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
