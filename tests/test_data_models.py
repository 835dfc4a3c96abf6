"""Offline datasets, the splittable DigitsCNN and the real feature maps built from them."""

from __future__ import annotations

import pytest
import torch

from fl_split.data import (
    KNOWN_DATASETS,
    load_digits_tensors,
    load_mnist1d_tensors,
    load_torchvision_dataset,
    real_feature_maps,
)
from fl_split.data.feature_maps import train_digits_cnn
from fl_split.models import DigitsCNN, build_digits_cnn, valid_cuts

# Measured: seed 0, 100 Adam steps -> 0.983 test accuracy (seeds 1-3: 0.967, 0.983, 0.969).
MIN_TEST_ACCURACY = 0.95


def test_digits_shapes_dtypes_and_split_sizes() -> None:
    x_tr, y_tr = load_digits_tensors("train")
    x_te, y_te = load_digits_tensors("test")
    assert x_tr.shape == (1437, 1, 16, 16) and x_te.shape == (360, 1, 16, 16)
    assert len(y_tr) + len(y_te) == 1797
    assert x_tr.dtype == x_te.dtype == torch.float32
    assert y_tr.dtype == y_te.dtype == torch.int64
    assert set(y_tr.tolist()) == set(range(10)) == set(y_te.tolist())
    # Stratified: every class is within one image of 20 % of its count in the test split.
    counts = torch.bincount(torch.cat([y_tr, y_te]), minlength=10)
    assert (torch.bincount(y_te, minlength=10) - 0.2 * counts).abs().max() <= 1.0


def test_digits_normalised_with_train_statistics_and_deterministic() -> None:
    x_tr, _ = load_digits_tensors("train")
    assert abs(x_tr.mean().item()) < 1e-5
    assert abs(x_tr.std().item() - 1.0) < 1e-5
    x_te, _ = load_digits_tensors("test")
    assert abs(x_te.mean().item()) < 0.1 and abs(x_te.std().item() - 1.0) < 0.1
    again, _ = load_digits_tensors("train")
    assert torch.equal(x_tr, again)
    other, _ = load_digits_tensors("train", seed=1)
    assert not torch.equal(x_tr, other)
    native, _ = load_digits_tensors("train", upscale=8)
    assert native.shape == (1437, 1, 8, 8)


def test_digits_rejects_bad_split() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_digits_tensors("validation")


def test_mnist1d_generated_locally() -> None:
    x_tr, y_tr = load_mnist1d_tensors("train", seed=42)
    x_te, y_te = load_mnist1d_tensors("test", seed=42)
    assert x_tr.shape == (4000, 1, 40) and x_te.shape == (1000, 1, 40)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert set(y_te.tolist()) == set(range(10))
    assert torch.isfinite(x_tr).all()


def test_torchvision_missing_directory_names_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_torchvision_dataset("cifar10", tmp_path, "train")
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "download=True" in message


def test_torchvision_incomplete_directory_is_file_not_found(tmp_path) -> None:
    (tmp_path / "MNIST").mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete or corrupted"):
        load_torchvision_dataset("mnist", tmp_path, "test")


def test_torchvision_unknown_name_lists_known(tmp_path) -> None:
    with pytest.raises(ValueError) as info:
        load_torchvision_dataset("imagenet", tmp_path)
    assert all(name in str(info.value) for name in KNOWN_DATASETS)


def test_split_composes_to_full_model_exactly() -> None:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        full = model(x)
        for cut in valid_cuts():
            client, server = build_digits_cnn(cut, model=model)
            assert isinstance(client, torch.nn.Sequential) and isinstance(server, torch.nn.Sequential)
            assert torch.equal(server(client(x)), full)
    assert full.shape == (8, 10)
    client, _ = build_digits_cnn(model=model)
    with torch.no_grad():
        assert client(x).shape == (8, 64, 16, 16)


@pytest.mark.parametrize("cut", [0, 7, -1, 2.0, True])
def test_invalid_cut_lists_valid_cuts(cut) -> None:
    with pytest.raises(ValueError, match=r"cut must be one of \[1, 2, 3, 4, 5, 6\]"):
        build_digits_cnn(cut)


def test_trained_net_accuracy() -> None:
    model = train_digits_cnn(train_steps=100, seed=0)
    x_te, y_te = load_digits_tensors("test")
    with torch.no_grad():
        accuracy = (model(x_te).argmax(1) == y_te).float().mean().item()
    assert accuracy > MIN_TEST_ACCURACY


def test_real_feature_maps_are_post_relu() -> None:
    maps = real_feature_maps(256)
    assert maps.shape == (256, 64, 16, 16) and maps.dtype == torch.float32
    assert maps.min().item() == 0.0
    # Measured: 48.6 % exact zeros (seed 0, 100 steps); a realistic ReLU map is neither dense nor empty.
    zero_fraction = (maps == 0).float().mean().item()
    assert 0.3 < zero_fraction < 0.7
    assert torch.equal(maps, real_feature_maps(256))  # deterministic and cached
    maps.zero_()  # callers get a copy: the cache is not affected
    assert real_feature_maps(256).max().item() > 0


def test_real_feature_maps_repeat_the_dataset() -> None:
    maps = real_feature_maps(1437 + 3)
    assert maps.shape == (1440, 64, 16, 16)
    assert torch.equal(maps[1437:], maps[:3])
