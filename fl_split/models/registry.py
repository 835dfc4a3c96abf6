"""Registry of splittable models: a model name and a cut give ``(client_half, server_half)``.

Every registered model is a function that returns the model's *flat* list of layers. An integer cut
``c`` gives the client ``layers[:c]`` and the server ``layers[c:]``; the two halves share the modules,
so ``server(client(x)) == nn.Sequential(*layers)(x)`` exactly. Each model also names three cuts,
``shallow``, ``medium`` and ``deep``, whose outputs are non-negative (post-ReLU, or a max-pool of a
post-ReLU map), as the sparsifying codecs expect.

Registration is timm-style, by decorator in the model's own file::

    @register_model("my_net", cuts={"shallow": 2, "medium": 4, "deep": 5})
    def _my_net(*, num_classes: int, in_channels: int, stem: str | None) -> list[nn.Module]: ...

The built-in models are registered when :mod:`fl_split.models` is imported (which importing this
module does first).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from fl_split.plugins import import_plugins

NAMED_CUTS: tuple[str, ...] = ("shallow", "medium", "deep")


class LayerBuilder(Protocol):
    """A registered model: builds fresh modules and returns its flat layer list."""

    def __call__(self, *, num_classes: int, in_channels: int, stem: str | None) -> list[nn.Module]: ...


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model (see :func:`register_model` for the fields)."""

    name: str
    builder: LayerBuilder
    cuts: Mapping[str, int]
    stems: tuple[str, ...]
    default_stem: str | None
    default_in_channels: int
    fixed_in_channels: bool


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    cuts: Mapping[str, int],
    stems: Sequence[str] = (),
    default_stem: str | None = None,
    default_in_channels: int = 3,
    fixed_in_channels: bool = False,
) -> Callable[[LayerBuilder], LayerBuilder]:
    """Decorator that registers a layer-list builder under ``name``.

    Parameters
    ----------
    name:
        Registry name, e.g. ``"resnet18"``; must not be registered yet.
    cuts:
        Named cuts to integer cuts; must define ``shallow``, ``medium`` and ``deep``, each the
        number of layers the client keeps (the layer there must end in a ReLU or a max-pool of one).
    stems:
        Input stems the model offers (e.g. ``("cifar", "imagenet")``); empty if it has none.
        Whatever the stem, the model must have the same number of layers.
    default_stem:
        The stem used when the caller passes none; required when ``stems`` is not empty.
    default_in_channels:
        Input channels used when the caller passes none.
    fixed_in_channels:
        If true the model only takes ``default_in_channels`` input channels.

    Returns
    -------
    decorator:
        Registers the builder and returns it unchanged. The builder is called with keyword
        arguments ``num_classes``, ``in_channels`` and ``stem`` (``None`` for stem-less models).

    Raises
    ------
    ValueError
        If ``name`` is already registered, or ``cuts``/``stems``/``default_stem`` are inconsistent.
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered; pick another name")
    missing = [c for c in NAMED_CUTS if c not in cuts]
    if missing:
        raise ValueError(f"model {name!r}: cuts must define {list(NAMED_CUTS)}; missing {missing}")
    bad = {k: v for k, v in cuts.items() if not _is_int(v) or v < 1}
    if bad:
        raise ValueError(f"model {name!r}: cuts must be integers >= 1, got {bad}")
    stems = tuple(stems)
    if stems and default_stem not in stems:
        raise ValueError(f"model {name!r}: default_stem must be one of {list(stems)}, got {default_stem!r}")
    if not stems and default_stem is not None:
        raise ValueError(f"model {name!r}: default_stem given but the model declares no stems")

    def decorator(builder: LayerBuilder) -> LayerBuilder:
        _REGISTRY[name] = ModelSpec(
            name=name,
            builder=builder,
            cuts=dict(cuts),
            stems=stems,
            default_stem=default_stem,
            default_in_channels=default_in_channels,
            fixed_in_channels=fixed_in_channels,
        )
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of the registered models, sorted.

    Returns
    -------
    names:
        E.g. ``["digits_cnn", "mnist1d_cnn", "resnet18", "resnet34", "vgg19"]``.
    """
    import_plugins()
    return sorted(_REGISTRY)


def _spec(name: str) -> ModelSpec:
    import_plugins()
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        from fl_split.suggest import did_you_mean

        raise ValueError(
            f"unknown model {name!r}{did_you_mean(str(name), list_models())}; "
            f"choose one of the registered models: {list_models()}"
        )
    return spec


def model_cuts(name: str) -> dict[str, int]:
    """The named cuts of model ``name``.

    Parameters
    ----------
    name:
        A registered model name (see :func:`list_models`).

    Returns
    -------
    cuts:
        Named cut (``shallow``, ``medium``, ``deep``) to the number of layers the client keeps.

    Raises
    ------
    ValueError
        If ``name`` is not registered.
    """
    return dict(_spec(name).cuts)


def num_layers(name: str) -> int:
    """Number of layers in the flat layer list of model ``name`` (the same for every stem).

    Valid integer cuts are ``1 .. num_layers(name) - 1``.

    Parameters
    ----------
    name:
        A registered model name (see :func:`list_models`).

    Returns
    -------
    n:
        The layer count.

    Raises
    ------
    ValueError
        If ``name`` is not registered.
    """
    return _num_layers(_spec(name).name)


@functools.cache
def _num_layers(name: str) -> int:
    spec = _REGISTRY[name]
    # Built on the meta device: shapes only, no memory and no random numbers drawn.
    with torch.device("meta"):
        layers = spec.builder(num_classes=2, in_channels=spec.default_in_channels, stem=spec.default_stem)
    return len(layers)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_cut(name: str, cut: str | int) -> int:
    """The integer cut (layers kept by the client) for a named or integer ``cut`` of model ``name``.

    Parameters
    ----------
    name:
        A registered model name.
    cut:
        A named cut (see :func:`model_cuts`) or an integer in ``1 .. num_layers(name) - 1``.

    Returns
    -------
    cut:
        The integer cut.

    Raises
    ------
    ValueError
        If ``name`` is unknown, or ``cut`` is neither a named cut nor an integer in range.
    """
    spec = _spec(name)
    n = num_layers(name)
    if isinstance(cut, str) and cut in spec.cuts:
        return spec.cuts[cut]
    if _is_int(cut) and 1 <= int(cut) <= n - 1:
        return int(cut)
    raise ValueError(
        f"invalid cut {cut!r} for model {name!r}: use a named cut {sorted(spec.cuts)} "
        f"(= {dict(spec.cuts)}) or an integer in 1..{n - 1} (the number of layers the client keeps, "
        f"out of {n})"
    )


def create_split_model(
    name: str,
    cut: str | int = "shallow",
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    stem: str | None = None,
    seed: int | None = None,
) -> tuple[nn.Sequential, nn.Sequential]:
    """Build a registered model and split it into ``(client_half, server_half)``.

    Parameters
    ----------
    name:
        A registered model name (see :func:`list_models`).
    cut:
        ``"shallow"`` (default), ``"medium"``, ``"deep"``, or an integer in
        ``1 .. num_layers(name) - 1``: the client keeps ``layers[:cut]``, the server ``layers[cut:]``.
    num_classes:
        Number of output logits, an integer >= 2.
    in_channels:
        Input channels; ``None`` for the model's default (1 for ``digits_cnn`` and ``mnist1d_cnn``,
        3 otherwise). ``digits_cnn`` takes 1 channel only.
    stem:
        Input stem for models that have several (``resnet18``: ``"cifar"`` by default,
        ``resnet34``: ``"imagenet"`` by default); must be ``None`` for the others.
    seed:
        If given, parameters are initialised from ``seed`` (same seed, same weights); the global
        RNG state is left as it was. If ``None``, the global RNG is used as usual.

    Returns
    -------
    client_half, server_half:
        Two ``nn.Sequential`` sharing no modules; ``server_half(client_half(x))`` is exactly the
        full model's output.

    Raises
    ------
    ValueError
        On an unknown model, cut or stem, or a bad ``num_classes``, ``in_channels`` or ``seed``.
    """
    spec = _spec(name)
    c = resolve_cut(name, cut)
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (the number of output logits), got {num_classes!r}")
    if in_channels is None:
        in_channels = spec.default_in_channels
    elif not _is_int(in_channels) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer or None for the default, got {in_channels!r}")
    elif spec.fixed_in_channels and in_channels != spec.default_in_channels:
        raise ValueError(
            f"model {name!r} takes {spec.default_in_channels} input channel(s) only, got in_channels={in_channels!r}; "
            "pass None or that value"
        )
    if spec.stems:
        if stem is None:
            stem = spec.default_stem
        elif stem not in spec.stems:
            raise ValueError(f"invalid stem {stem!r} for model {name!r}; choose one of {list(spec.stems)} or None")
    elif stem is not None:
        raise ValueError(f"model {name!r} has no stem choices; pass stem=None, got {stem!r}")
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")

    if seed is None:
        layers = spec.builder(num_classes=num_classes, in_channels=in_channels, stem=stem)
    else:
        # Only the CPU generator initialises the (CPU) modules; fork_rng restores its state after.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            layers = spec.builder(num_classes=num_classes, in_channels=in_channels, stem=stem)
    if len(layers) != num_layers(name):  # a builder whose depth depends on its arguments
        raise RuntimeError(f"model {name!r} built {len(layers)} layers, expected {num_layers(name)}")
    return nn.Sequential(*layers[:c]), nn.Sequential(*layers[c:])
