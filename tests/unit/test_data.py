"""Datasets, noise, splits and every bad input named in the foundation issue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from addunet_edge.data import (
    PHOTO_SPLITS,
    EvalSet,
    load_dataset,
    load_digits_images,
    parse_sigma,
    split_indices,
)
from addunet_edge.data_files import load_image_folder, load_npz
from addunet_edge.errors import DataError


def test_digits_are_real_and_resized() -> None:
    images, labels = load_digits_images(size=32)
    assert images.shape == (1797, 1, 32, 32) and images.dtype == np.float32
    assert set(labels.tolist()) == set(range(10))
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_digits_splits_are_deterministic_and_disjoint() -> None:
    a = split_indices(100, seed=3)
    b = split_indices(100, seed=3)
    c = split_indices(100, seed=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert len(set(a[0]) | set(a[1]) | set(a[2])) == 100


def test_photo_test_images_never_reach_training() -> None:
    assert "camera" in PHOTO_SPLITS["test"] and len(PHOTO_SPLITS["test"]) >= 2
    train = set(PHOTO_SPLITS["train"])
    assert not train & set(PHOTO_SPLITS["test"]) and not train & set(PHOTO_SPLITS["val"])
    ds = load_dataset("photos", patch_size=32, patches_per_epoch=8)
    clean, labels = ds.train.epoch(np.random.default_rng(0))
    assert clean.shape == (8, 1, 32, 32) and labels is None
    assert ds.num_classes == 0 and len(ds.test) > 10


def test_seeded_noise_repeats_and_has_the_right_sigma() -> None:
    clean = np.full((4, 1, 64, 64), 0.5, np.float32)
    ev = EvalSet(clean, None)
    n1, n2 = ev.noisy(25, seed=1), ev.noisy(25, seed=1)
    np.testing.assert_array_equal(n1, n2)
    assert not np.array_equal(n1, ev.noisy(25, seed=2))
    assert np.std(n1 - clean) * 255 == pytest.approx(25, rel=0.03)


def test_parse_sigma() -> None:
    assert parse_sigma("25") == (25, 25)
    assert parse_sigma("5-55") == (5, 55)
    for bad in ("x", "55-5", "-3"):
        with pytest.raises(DataError):
            parse_sigma(bad)


def _write_class_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            arr = (rng.random((20, 24)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
        # a 16-bit one too
        Image.fromarray((rng.random((20, 24)) * 65535).astype(np.uint16)).save(root / name / f"w{k}.tif")
    return root


def test_image_folder_with_classes(tmp_path: Path) -> None:
    root = _write_class_folder(tmp_path / "set")
    images, labels, classes = load_image_folder(root, size=16)
    assert isinstance(images, np.ndarray) and images.shape == (10, 1, 16, 16)
    assert classes == ["cats", "dogs"] and labels.tolist() == [0] * 5 + [1] * 5
    ds = load_dataset(root, size=16)
    assert ds.num_classes == 2 and len(ds.train) + len(ds.val) + len(ds.test) == 10


def test_empty_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_image_folder(tmp_path / "empty", size=16)


def test_truncated_image_is_named(tmp_path: Path) -> None:
    root = _write_class_folder(tmp_path / "set")
    bad = root / "cats" / "broken.png"
    data = (root / "cats" / "0.png").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"broken\.png"):
        load_image_folder(root, size=16)


def test_mixed_channels_are_named(tmp_path: Path) -> None:
    root = _write_class_folder(tmp_path / "set")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "dogs" / "rgb.png")
    with pytest.raises(DataError, match="mixes channel counts"):
        load_image_folder(root, size=16)
    images, _, _ = load_image_folder(root, size=16, channels=3)
    assert images.shape[1] == 3


def test_npz_loading_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((5, 8, 8), np.uint8), labels=np.arange(5))
    images, labels = load_npz(good)
    assert images.shape == (5, 1, 8, 8) and labels.tolist() == [0, 1, 2, 3, 4]
    no_images = tmp_path / "noimg.npz"
    np.savez(no_images, pictures=np.zeros((5, 8, 8)))
    with pytest.raises(DataError, match=r"noimg\.npz.*'images'"):
        load_npz(no_images)
    bad_labels = tmp_path / "badlab.npz"
    np.savez(bad_labels, images=np.zeros((5, 8, 8), np.uint8), labels=np.array([0, 1, 2, 3, 12]))
    with pytest.raises(DataError, match=r"badlab\.npz.*labels"):
        load_dataset(bad_labels, size=8, num_classes=10)
    negative = tmp_path / "neg.npz"
    np.savez(negative, images=np.zeros((5, 8, 8), np.uint8), labels=np.array([0, 1, -2, 3, 1]))
    with pytest.raises(DataError, match=r"neg\.npz"):
        load_npz(negative)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"garbage\.npz"):
        load_npz(garbage)
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, images=np.array([object()] * 3, dtype=object))
    with pytest.raises(DataError, match=r"obj\.npz"):
        load_npz(pickled)


def test_unknown_dataset_name() -> None:
    with pytest.raises(DataError, match="neither"):
        load_dataset("imagenet-please")
