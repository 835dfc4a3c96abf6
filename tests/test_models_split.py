"""The model registry: named and integer cuts, feature-map shapes, exact splits, seeds and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fl_split.models import create_split_model, list_models, model_cuts, num_layers
from fl_split.models.registry import register_model
from fl_split.models.resnet import Stem

CIFAR = (3, 32, 32)
IMAGENET = (3, 224, 224)

# (model, stem, per-sample input shape, batch, {named cut: per-sample client output shape}).
SHAPE_CASES: list[tuple[str, str | None, tuple[int, ...], int, dict[str, tuple[int, ...]]]] = [
    ("digits_cnn", None, (1, 16, 16), 2, {"shallow": (64, 16, 16), "medium": (64, 8, 8), "deep": (64, 4, 4)}),
    ("mnist1d_cnn", None, (1, 40), 2, {"shallow": (64, 40), "medium": (64, 20), "deep": (64, 10)}),
    ("vgg19", None, CIFAR, 2, {"shallow": (64, 16, 16), "medium": (256, 4, 4), "deep": (512, 2, 2)}),
    ("resnet18", "cifar", CIFAR, 2, {"shallow": (64, 32, 32), "medium": (128, 16, 16), "deep": (256, 8, 8)}),
    ("resnet18", "imagenet", IMAGENET, 1, {"shallow": (64, 56, 56), "medium": (128, 28, 28), "deep": (256, 14, 14)}),
    ("resnet34", "imagenet", IMAGENET, 1, {"shallow": (64, 56, 56), "medium": (128, 28, 28), "deep": (256, 14, 14)}),
    ("resnet34", "cifar", CIFAR, 2, {"shallow": (64, 32, 32), "medium": (128, 16, 16), "deep": (256, 8, 8)}),
]


def test_registered_models_and_cuts() -> None:
    assert list_models() == ["digits_cnn", "mnist1d_cnn", "resnet18", "resnet34", "vgg19"]
    assert model_cuts("vgg19") == {"shallow": 2, "medium": 8, "deep": 15}
    assert model_cuts("resnet18") == {"shallow": 1, "medium": 5, "deep": 7}
    assert model_cuts("resnet34") == {"shallow": 1, "medium": 8, "deep": 14}
    assert model_cuts("digits_cnn") == {"shallow": 2, "medium": 4, "deep": 5}
    assert [num_layers(m) for m in list_models()] == [7, 7, 12, 20, 19]
    model_cuts("vgg19")["shallow"] = 99  # a copy: the registry is unchanged
    assert model_cuts("vgg19")["shallow"] == 2


@pytest.mark.parametrize(
    ("name", "stem", "in_shape", "batch", "expected"), SHAPE_CASES, ids=[f"{c[0]}-{c[1]}" for c in SHAPE_CASES]
)
def test_named_cuts_shapes_nonnegative_and_exact_split(
    name: str, stem: str | None, in_shape: tuple[int, ...], batch: int, expected: dict[str, tuple[int, ...]]
) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, *in_shape)
    client, server = create_split_model(name, "shallow", stem=stem, seed=0)
    full = nn.Sequential(*client, *server).eval()
    assert len(full) == num_layers(name)
    with torch.no_grad():
        reference = full(x)
        assert reference.shape == (batch, 10)
        for cut_name, shape in expected.items():
            cut = model_cuts(name)[cut_name]
            # Same modules, split at this cut: the halves of ``full``.
            head, tail = full[:cut], full[cut:]
            h = head(x)
            assert h.shape == (batch, *shape), cut_name
            assert h.min() >= 0, f"{cut_name} output has negative entries"
            assert torch.equal(tail(h), reference)
            # create_split_model at this cut, same seed: same weights, same split.
            c2, s2 = create_split_model(name, cut_name, stem=stem, seed=0)
            c2.eval(), s2.eval()
            assert len(c2) == cut and len(s2) == num_layers(name) - cut
            h2 = c2(x)
            assert torch.equal(h2, h)
            assert torch.equal(s2(h2), reference)


@pytest.mark.parametrize("name", ["digits_cnn", "mnist1d_cnn", "vgg19", "resnet18"])
def test_every_integer_cut_splits_exactly(name: str) -> None:
    in_shape = {"digits_cnn": (1, 16, 16), "mnist1d_cnn": (1, 40)}.get(name, CIFAR)
    x = torch.randn(2, *in_shape)
    with torch.no_grad():
        reference = None
        for cut in range(1, num_layers(name)):
            client, server = create_split_model(name, cut, seed=1)
            client.eval(), server.eval()
            assert len(client) == cut and len(server) == num_layers(name) - cut
            out = server(client(x))
            reference = out if reference is None else reference
            assert torch.equal(out, reference), cut


@pytest.mark.parametrize("name", ["digits_cnn", "resnet34"])
@pytest.mark.parametrize("cut", [0, -1, "last", True, 1.5, None])
def test_out_of_range_or_unknown_cut_names_the_valid_ones(name: str, cut: object) -> None:
    n = num_layers(name)
    with pytest.raises(ValueError, match=rf"1\.\.{n - 1}") as info:
        create_split_model(name, cut)  # type: ignore[arg-type]
    for named in ("shallow", "medium", "deep"):
        assert named in str(info.value)
    with pytest.raises(ValueError, match=rf"1\.\.{n - 1}"):
        create_split_model(name, n)


def test_unknown_model_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg16'") as info:
        create_split_model("vgg16")
    for name in list_models():
        assert name in str(info.value)
    with pytest.raises(ValueError, match="resnet18"):
        model_cuts("resnet50")


def test_stem_choices() -> None:
    with pytest.raises(ValueError, match=r"invalid stem 'tiny'.*\['cifar', 'imagenet'\]"):
        create_split_model("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="has no stem choices; pass stem=None"):
        create_split_model("vgg19", stem="cifar")
    # Defaults: resnet18 -> cifar (3x3 conv, no max-pool), resnet34 -> imagenet (7x7 conv).
    stem18 = create_split_model("resnet18")[0][0]
    stem34 = create_split_model("resnet34")[0][0]
    assert isinstance(stem18, Stem) and isinstance(stem34, Stem)
    assert stem18.conv1.kernel_size == (3, 3) and isinstance(stem18.maxpool, nn.Identity)
    assert stem34.conv1.kernel_size == (7, 7) and isinstance(stem34.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("num_classes", [1, 0, 2.0, True, "10"])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        create_split_model("digits_cnn", num_classes=num_classes)  # type: ignore[arg-type]


def test_in_channels() -> None:
    with pytest.raises(ValueError, match="takes 1 input channel"):
        create_split_model("digits_cnn", in_channels=3)
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        create_split_model("vgg19", in_channels=0)
    client, server = create_split_model("resnet18", "medium", in_channels=1, num_classes=3)
    with torch.no_grad():
        assert server(client(torch.randn(2, 1, 32, 32))).shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "in_shape"), [("digits_cnn", (1, 16, 16)), ("mnist1d_cnn", (1, 40)), ("vgg19", CIFAR), ("resnet18", CIFAR)]
)
@pytest.mark.parametrize("num_classes", [2, 100])
def test_num_classes_sets_output_width(name: str, in_shape: tuple[int, ...], num_classes: int) -> None:
    client, server = create_split_model(name, "deep", num_classes=num_classes, stem=None)
    with torch.no_grad():
        assert server(client(torch.randn(2, *in_shape))).shape == (2, num_classes)


@pytest.mark.parametrize("name", ["mnist1d_cnn", "vgg19", "resnet18"])
def test_seed_reproducible_and_leaves_global_rng_alone(name: str) -> None:
    def params(seed: int | None) -> list[torch.Tensor]:
        client, server = create_split_model(name, "medium", seed=seed)
        return [p.detach() for p in (*client.parameters(), *server.parameters())]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = params(5), params(5), params(6)
    assert torch.equal(torch.get_rng_state(), state), "a seeded build must not move the global RNG"
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))
    # Without a seed the global RNG is used (and advanced).
    params(None)
    assert not torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="seed must be an integer"):
        create_split_model(name, seed=1.5)  # type: ignore[arg-type]


def test_resnet_matches_torchvision() -> None:
    """Same weights as torchvision's resnet18 (ImageNet stem) give the same logits."""
    from torchvision.models import resnet18

    client, server = create_split_model("resnet18", "deep", stem="imagenet", seed=0)
    ours = nn.Sequential(*client, *server).eval()
    torch.manual_seed(1)
    reference = resnet18(num_classes=10).eval()
    ref_state = reference.state_dict()
    our_state = ours.state_dict()
    assert len(ref_state) == len(our_state)
    assert [v.shape for v in ref_state.values()] == [v.shape for v in our_state.values()]
    ours.load_state_dict(dict(zip(our_state, ref_state.values(), strict=True)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)


def test_register_model_validation() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("vgg19", cuts={"shallow": 1, "medium": 2, "deep": 3})
    with pytest.raises(ValueError, match=r"missing \['deep'\]"):
        register_model("tmp_model", cuts={"shallow": 1, "medium": 2})
    with pytest.raises(ValueError, match="default_stem must be one of"):
        register_model("tmp_model", cuts={"shallow": 1, "medium": 2, "deep": 3}, stems=("a",))
    assert "tmp_model" not in list_models()
