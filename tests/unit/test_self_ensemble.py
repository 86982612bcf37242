"""SelfEnsemble: the eight dihedral transforms over any Engine, averaged; profiles, batching, fallback, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from addunet_edge.engines import open_engine
from addunet_edge.engines.base import Engine, EngineInfo, InputProfile
from addunet_edge.engines.ensemble import (
    DIHEDRAL,
    SHAPE_KEEPING,
    SelfEnsemble,
    symmetric_profile,
    transform,
    untransform,
)
from addunet_edge.errors import ConfigError, ShapeError


class FakeEngine(Engine):
    """A numpy engine that records the batch shapes it is called with.

    equivariant=True: a per-pixel function, and logits from the mean and max (unchanged by any turn or
    mirror). Otherwise the output depends on where a pixel lies (a ramp along the width).
    """

    backend = "fake"

    def __init__(self, profile: InputProfile | None = None, *, equivariant: bool = True) -> None:
        super().__init__("fake.model")
        self.equivariant = equivariant
        self.calls: list[tuple[int, ...]] = []
        self._info = EngineInfo("fake", "fp32", "cpu", profile or InputProfile(channels=1), 2, "fake.model", None)

    @property
    def info(self) -> EngineInfo:
        return self._info

    def _activate(self) -> None:
        return None

    def _infer(self, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(noisy.shape)
        if self.equivariant:
            denoised = np.tanh(2.0 * noisy) - 0.25 * noisy**2
        else:
            ramp = np.linspace(0.5, 1.5, noisy.shape[3], dtype=np.float32)
            denoised = noisy * ramp + 0.1 * np.roll(noisy, 1, axis=2)
        logits = np.stack([noisy.mean(axis=(1, 2, 3)), noisy.max(axis=(1, 2, 3))], axis=1)
        return denoised.astype(np.float32), logits.astype(np.float32)


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, h, w), dtype=np.float32)


def _hand_average(engine: Engine, x: np.ndarray, transforms=DIHEDRAL) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble computed by hand: one plain call per transform, each output turned back, the mean; the
    logits of the untransformed call."""
    outs, logits = [], []
    for k, flip in transforms:
        turned = np.rot90(x, k, axes=(2, 3))
        turned = turned[..., ::-1] if flip else turned
        pred = engine(np.ascontiguousarray(turned))
        back = pred.denoised[..., ::-1] if flip else pred.denoised
        outs.append(np.rot90(back, -k, axes=(2, 3)))
        logits.append(pred.logits)
    return np.mean(outs, axis=0), logits[list(transforms).index((0, False))]  # the upright pass's class


def _symmetric_checkpoint(folder: Path) -> Path:
    """An AddUNet whose every conv kernel is unchanged by the eight turns and mirrors: an equivariant model."""
    from addunet_edge.checkpoint import save_checkpoint
    from addunet_edge.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, depth=2, num_classes=3, resampling="none")).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d) and module.kernel_size[0] > 1:
                w = module.weight
                turned = [torch.rot90(w, k, dims=(2, 3)) for k in range(4)]
                turned += [torch.flip(t, dims=(3,)) for t in turned]
                w.copy_(torch.stack(turned).mean(dim=0))
    return save_checkpoint(folder / "symmetric", model)


# -- the transforms ---------------------------------------------------------------------------------------
def test_transforms_are_the_eight_symmetries_and_invert() -> None:
    x = _images(2, 5, 5)
    turned = [transform(x, k, flip) for k, flip in DIHEDRAL]
    assert len({t.tobytes() for t in map(np.ascontiguousarray, turned)}) == 8  # eight different images
    for (k, flip), t in zip(DIHEDRAL, turned, strict=True):
        np.testing.assert_array_equal(untransform(t, k, flip), x)
        tt = transform(torch.from_numpy(x), k, flip)  # the torch path (device tensors) agrees with numpy
        np.testing.assert_array_equal(tt.numpy(), t)
        np.testing.assert_array_equal(untransform(tt, k, flip).numpy(), x)
    rect = _images(1, 4, 6)
    assert all(transform(rect, k, flip).shape == rect.shape for k, flip in SHAPE_KEEPING)
    assert set(SHAPE_KEEPING) < set(DIHEDRAL)


def test_symmetric_profile() -> None:
    p = InputProfile(channels=1, min_hw=(8, 16), max_hw=(64, 32), opt_hw=(48, 24), size_multiple=4)
    s = symmetric_profile(p)
    assert s is not None and (s.min_hw, s.max_hw, s.opt_hw, s.size_multiple) == ((16, 16), (32, 32), (24, 24), 4)
    assert symmetric_profile(InputProfile(channels=1)) == InputProfile(channels=1)
    assert symmetric_profile(InputProfile(channels=1, fixed_hw=(16, 24), min_hw=(16, 24), max_hw=(16, 24))) is None
    assert symmetric_profile(InputProfile(channels=1, min_hw=(8, 40), max_hw=(32, 64))) is None


# -- equivariant engines: the ensemble changes nothing ----------------------------------------------------
def test_equivariant_per_pixel_engine_gives_the_plain_output() -> None:
    engine = FakeEngine()
    for x in (_images(3, 16, 16), _images(2, 12, 20)):
        plain, ensemble = engine(x), SelfEnsemble(engine)(x)
        np.testing.assert_allclose(ensemble.denoised, plain.denoised, atol=1e-6)
        np.testing.assert_allclose(ensemble.logits, plain.logits, atol=1e-6)


def test_equivariant_torch_model_gives_the_plain_output(tmp_path: Path) -> None:
    with open_engine(_symmetric_checkpoint(tmp_path), threads=1) as engine:
        for x in (_images(3, 16, 16), _images(2, 12, 20)):
            plain, ensemble = engine(x), SelfEnsemble(engine)(x)
            np.testing.assert_allclose(ensemble.denoised, plain.denoised, atol=1e-5)
            np.testing.assert_allclose(ensemble.logits, plain.logits, atol=1e-5)


# -- a trained model: the ensemble is the mean of the eight passes ----------------------------------------
def test_trained_model_ensemble_is_the_mean_of_eight_passes(tiny_checkpoint: Path) -> None:
    from addunet_edge.data import load_digits_images

    clean = load_digits_images(size=16)[0][:6]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
    with open_engine(tiny_checkpoint, threads=1) as engine:
        for x in (noisy, np.ascontiguousarray(noisy[:2, :, :12, :])):  # square digits, then a 12x16 cut
            pred = SelfEnsemble(engine)(x)
            denoised, logits = _hand_average(engine, x)
            assert pred.denoised.shape == x.shape and pred.denoised.dtype == np.float32
            np.testing.assert_allclose(pred.denoised, denoised, atol=1e-6)
            np.testing.assert_allclose(pred.logits, logits, atol=1e-6)
            assert np.abs(pred.denoised - engine(x).denoised).max() > 1e-3  # the model is not equivariant


def test_non_square_input_through_a_non_equivariant_engine() -> None:
    engine = FakeEngine(equivariant=False)
    x = _images(2, 7, 11)
    pred = SelfEnsemble(engine)(x)
    denoised, logits = _hand_average(engine, x)
    np.testing.assert_allclose(pred.denoised, denoised, atol=1e-6)
    np.testing.assert_allclose(pred.logits, logits, atol=1e-6)
    assert pred.denoised.flags.c_contiguous


# -- batching, profiles, fallback ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("max_batch", "batch", "n", "hw", "calls"),
    [
        (None, None, 3, (16, 16), [(24, 1, 16, 16)]),  # square: all eight in one call
        (None, None, 3, (12, 20), [(12, 1, 12, 20), (12, 1, 20, 12)]),  # one call per shape
        (4, None, 2, (16, 16), [(4, 1, 16, 16)] * 4),  # as many as the batch profile allows
        (3, None, 2, (16, 16), [(2, 1, 16, 16)] * 8),  # one call per transform
        (6, None, 2, (12, 20), [(4, 1, 12, 20), (4, 1, 12, 20), (4, 1, 20, 12), (4, 1, 20, 12)]),
        (None, 2, 2, (16, 16), [(2, 1, 16, 16)] * 8),  # the caller's cap: one call per transform
        (None, 8, 2, (12, 20), [(8, 1, 12, 20), (8, 1, 20, 12)]),
        (4, 8, 2, (16, 16), [(4, 1, 16, 16)] * 4),  # the smaller of the two caps
        (None, 1, 3, (16, 16), [(3, 1, 16, 16)] * 8),  # never less than one transform of the whole input
    ],
)
def test_transforms_of_one_shape_share_calls_within_the_batch_profile(max_batch, batch, n, hw, calls) -> None:
    engine = FakeEngine(InputProfile(channels=1, max_batch=max_batch))
    ensemble = SelfEnsemble(engine, batch=batch)
    ensemble(_images(n, *hw))
    assert engine.calls == calls
    assert ensemble.usage() == {
        "transforms": 8,
        "fallback": False,
        "images": {"8": n, "4": 0},
        "engine_calls": len(calls),
    }


def test_batch_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="batch must be >= 1"):
        SelfEnsemble(FakeEngine(), batch=0)


def test_a_shape_the_engine_cannot_take_turned_is_a_clear_error() -> None:
    engine = FakeEngine(InputProfile(channels=1, max_hw=(16, 32)))
    ensemble = SelfEnsemble(engine)
    assert ensemble.info.profile.max_hw == (16, 16)
    assert engine(_images(1, 16, 24)).denoised.shape == (1, 1, 16, 24)  # the engine itself takes it
    with pytest.raises(ShapeError, match=r"self-ensemble also runs the input turned a quarter \(24x16\)"):
        ensemble(_images(1, 16, 24))
    with pytest.raises(ShapeError, match="larger than the profile maximum 16x16") as e:
        ensemble(_images(1, 16, 40))  # the engine does not take it either: the profile's own message
    assert "turned" not in str(e.value)
    assert ensemble(_images(1, 16, 16)).denoised.shape == (1, 1, 16, 16)


def test_a_plan_for_one_non_square_size_refuses_or_falls_back_to_four() -> None:
    profile = InputProfile(channels=1, min_hw=(16, 24), max_hw=(16, 24), fixed_hw=(16, 24))
    engine = FakeEngine(profile, equivariant=False)
    with pytest.raises(ShapeError, match=r"no input shape both ways round \(only 16x24\)"):
        SelfEnsemble(engine)
    ensemble = SelfEnsemble(engine, fallback=True)
    x = _images(2, 16, 24)
    pred = ensemble(x)
    denoised, logits = _hand_average(engine, x, SHAPE_KEEPING)
    np.testing.assert_allclose(pred.denoised, denoised, atol=1e-6)
    np.testing.assert_allclose(pred.logits, logits, atol=1e-6)
    assert ensemble.usage()["images"] == {"8": 0, "4": 2}
    assert ensemble.info.extra["self_ensemble"] == {"transforms": 8, "fallback_transforms": 4}
    # With the fallback, a shape that turns still gets all eight.
    free = SelfEnsemble(FakeEngine(InputProfile(channels=1, max_hw=(16, 32))), fallback=True)
    free(_images(1, 16, 16)), free(_images(1, 16, 24))
    assert free.usage()["images"] == {"8": 1, "4": 1}


# -- the protocol: info, lifecycle, threads -------------------------------------------------------------
def test_info_lifecycle_and_threads() -> None:
    engine = FakeEngine(equivariant=False)
    with SelfEnsemble(engine) as ensemble:
        info = ensemble.info
        assert (info.backend, info.precision, info.source, info.num_classes) == ("fake", "fp32", "fake.model", 2)
        assert info.extra["self_ensemble"] == {"transforms": 8, "fallback_transforms": None}
        assert ensemble.backend == "fake" and isinstance(ensemble, Engine)
        inputs = [_images(2, 9, 13, seed=s) for s in range(6)]
        alone = [ensemble(x).denoised for x in inputs]
        results: dict[int, np.ndarray] = {}

        def work(i: int) -> None:
            for _ in range(3):
                results[i] = ensemble(inputs[i]).denoised

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, out in enumerate(alone):
            np.testing.assert_array_equal(results[i], out)
        assert engine._active
    assert not engine._active  # closing the ensemble closed the engine it wraps
