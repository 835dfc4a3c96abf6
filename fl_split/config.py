"""Run configurations: a frozen dataclass per command, YAML files in ``conf/``, ``--set`` overrides.

A command's config is a frozen dataclass deriving from :class:`Config` (``SLConfig``, ``FLConfig``,
``DDPConfig``, ``GossipConfig``), composed from the shared blocks of :mod:`fl_split.config_blocks`.
Each field is declared with :func:`key` (default, one line of help, choices, a check); its type
annotation is the accepted type. The dataclass yields a schema of :class:`Field` s, against which
every source (schema defaults ← YAML file ← values ← ``--set``) is resolved and validated once, in
:meth:`Config.load`; the command's cross-key checks (:meth:`Config.check`) run in the same step.
Keys are addressed with dots (``optimizer.lr``); the same keys, with ``-`` for ``_``, are a Flower
app's run-config keys (``out_dir`` ↔ ``out-dir``). Every error names the bad key or value and lists
the valid keys or choices.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml

#: Where an installed wheel puts ``conf/`` (``[tool.setuptools.data-files]`` in ``pyproject.toml``),
#: relative to the installation's data prefix.
INSTALLED_CONF = Path("share") / "fl-split" / "conf"


def find_conf_dir() -> Path:
    """The folder of the named configs: ``conf/`` next to ``fl_split/`` in a source tree (a checkout,
    an editable install), else the copy a wheel installed under its data prefix (a venv, ``--user``)."""
    source = Path(__file__).resolve().parent.parent / "conf"
    if (source / "sl.yaml").is_file():
        return source
    import site
    import sys
    import sysconfig

    prefixes = [sysconfig.get_path("data"), sys.prefix, site.getuserbase()]
    for prefix in prefixes:
        if (Path(prefix) / INSTALLED_CONF / "sl.yaml").is_file():
            return Path(prefix) / INSTALLED_CONF
    return source  # neither: the error naming a missing config says where it looked


CONF_DIR = find_conf_dir()

Check = Callable[[Any], str | None]


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message says which and what is allowed."""


@dataclass(frozen=True)
class Field:
    """One configuration key.

    Parameters
    ----------
    default:
        Value when neither the file nor an override sets it.
    types:
        Accepted Python types (``int`` values are accepted where ``float`` is).
    help:
        One line for ``--help``-style listings and error messages.
    choices:
        If set, the value must be one of these, or a callable returning them (registries).
    check:
        Extra validation: returns an error message (without the key name) or ``None``.
    """

    default: Any
    types: tuple[type, ...]
    help: str
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None
    check: Check | None = field(default=None, compare=False)

    def allowed(self) -> list[Any] | None:
        """The choices as a list (calling the registry when ``choices`` is callable)."""
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)


Schema = Mapping[str, "Field | Schema"]


def flat_fields(schema: Schema, prefix: str = "") -> dict[str, Field]:
    """Dotted key → :class:`Field` for every leaf of ``schema``."""
    out: dict[str, Field] = {}
    for key, value in schema.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Field):
            out[dotted] = value
        else:
            out.update(flat_fields(value, dotted + "."))
    return out


def defaults(schema: Schema) -> dict[str, Any]:
    """The nested config holding every default."""
    return {k: (copy.deepcopy(v.default) if isinstance(v, Field) else defaults(v)) for k, v in schema.items()}


def get_dotted(config: Mapping[str, Any], key: str) -> Any:
    """``config["a"]["b"]`` for ``key = "a.b"``."""
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys (``{"optimizer.lr": 0.02, ...}``)."""
    return _flatten(data, prefix)


def flatten_filled(stored: Mapping[str, Any], schema: Schema | None) -> dict[str, Any]:
    """A stored config (a checkpoint's, a finished run's) flattened, every key it lacks (added to ``schema``
    since it was written) at its default: what it meant under today's schema."""
    return {**(flatten(defaults(schema)) if schema is not None else {}), **flatten(stored)}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _unknown_key(key: str, fields: Mapping[str, Field], where: str, command: str = "") -> ConfigError:
    """An unknown key: the closest valid keys, and where to list them all (not all 40 of them on one line)."""
    from fl_split.suggest import did_you_mean

    listing = f"`fl-split {command} --list-keys` lists every key" if command else f"valid keys: {', '.join(fields)}"
    return ConfigError(f"unknown config key {key!r}{did_you_mean(key, fields)} {where}; {listing}")


class _Typed(str):
    """An override's value as typed on the command line (``--set out_dir=42``): a string key takes it
    as written, where YAML would have made it the int 42 (or ``on`` a bool)."""

    __slots__ = ("parsed",)
    parsed: Any


def _as_typed(raw: str, parsed: Any) -> _Typed:
    typed = _Typed(raw)
    typed.parsed = parsed
    return typed


def _accepts(value: Any, types: tuple[type, ...]) -> bool:
    """Whether ``value`` is of one of ``types`` (a bool is not an int here; an int is a float)."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _coerce(key: str, value: Any, spec: Field) -> Any:
    """Check ``value`` against ``spec``; ints are accepted (and converted) where floats are."""
    types = spec.types
    if isinstance(value, _Typed):  # from --set: its YAML value, or the text as typed where only a string fits
        text, value = str(value), value.parsed
        if not _accepts(value, types) and str in types:
            value = text
    ok = _accepts(value, types)
    if ok and isinstance(value, int) and not isinstance(value, bool) and float in types and int not in types:
        value = float(value)
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ConfigError(f"config key {key!r} must be {names}, got {value!r} ({type(value).__name__}): {spec.help}")
    allowed = spec.allowed()
    if allowed is not None and value not in allowed:
        from fl_split.suggest import did_you_mean

        raise ConfigError(
            f"config key {key!r} must be one of {', '.join(map(str, allowed))}; got {value!r}"
            f"{did_you_mean(str(value), allowed)}"
        )
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(f"config key {key!r} = {value!r}: {problem}")
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=0.1"`` → ``("optimizer.lr", 0.1)``.

    The key may use the Flower run-config spelling (``local-epochs=2`` is ``local_epochs=2``). The
    value is parsed as YAML (numbers, ``true``, ``null``, lists) but remembers its text: a key that
    takes a string gets the text as typed (``out_dir=42`` is the folder ``"42"``, ``stream.host=on``
    the host ``"on"``).
    """
    key, eq, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not eq or not key:
        raise ConfigError(f"--set expects key=value (e.g. --set rounds=5), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, _as_typed(raw.strip(), value)


def resolve_config_path(name_or_path: str | Path, command: str) -> Path:
    """A path as given, or ``conf/NAME.yaml`` / ``conf/<command>/NAME.yaml`` for a bare name."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    named = command_configs(command)
    if str(name_or_path) in named:
        return named[str(name_or_path)]
    from fl_split.suggest import did_you_mean

    raise ConfigError(
        f"no {command} config named {str(name_or_path)!r}{did_you_mean(str(name_or_path), named)}; "
        f"{command} configs in {CONF_DIR}: {', '.join(named) or '(none)'} (or give a path to a YAML file)"
    )


def command_configs(command: str) -> dict[str, Path]:
    """A command's named configs: ``conf/<command>.yaml`` (its default) and ``conf/<command>/*.yaml``."""
    found = {p.stem: p for p in sorted((CONF_DIR / command).glob("*.yaml"))}
    default = CONF_DIR / f"{command}.yaml"
    return {command: default, **found} if default.is_file() else found


def build_config(
    schema: Schema,
    *,
    file: str | Path | None = None,
    values: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
    command: str = "sl",
    validate: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Resolve a config: schema defaults ← YAML file ← ``values`` (dotted or nested) ← ``--set`` overrides.

    Parameters
    ----------
    schema:
        The command's schema.
    file:
        A config name in ``conf/`` or a path to a YAML file.
    values:
        Extra settings (nested or dotted keys), applied after the file.
    overrides:
        ``key=value`` strings (``--set``), applied last.
    command:
        Used to find ``conf/<command>/NAME.yaml``.
    validate:
        Cross-key checks on the resolved config (raise :class:`ConfigError`).

    Raises
    ------
    ConfigError
        Unknown key (with the valid keys), wrong type or value (with the choices).
    """
    fields = flat_fields(schema)
    config = defaults(schema)
    layers: list[tuple[str, dict[str, Any]]] = []
    if file is not None:
        path = resolve_config_path(file, command)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        layers.append((f"in {path}", _flatten(data)))
    if values:
        layers.append(("in the given values", _flatten(values)))
    if overrides:
        layers.append(("in --set", dict(parse_override(o) for o in overrides)))
    for where, flat in layers:
        for key, value in flat.items():
            if key not in fields:
                raise _unknown_key(key, fields, where, command)
            _set_dotted(config, key, _coerce(key, value, fields[key]))
    for key, spec in fields.items():  # defaults are validated too (registries may have changed)
        _coerce(key, get_dotted(config, key), spec)
    if validate is not None:
        validate(config)
    return config


# ------------------------------------------------------------------ Flower run config
def to_run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten to Flower run-config keys (``out_dir`` → ``out-dir``); ``None`` becomes ``""``."""
    return {k.replace("_", "-"): ("" if v is None else v) for k, v in _flatten(config).items()}


def from_run_config(
    schema: Schema, run_config: Mapping[str, Any], *, ignore: Collection[str] = (), **kwargs: Any
) -> dict[str, Any]:
    """Inverse of :func:`to_run_config`, validated; unknown run-config keys are errors.

    ``ignore``: dotted keys (``optimizer.lr`` form) that belong to another command sharing the
    run config (the app's one run config serves ``sl`` and ``fl``); they are skipped.
    """
    fields = flat_fields(schema)
    values: dict[str, Any] = {}
    for key, value in run_config.items():
        dotted = key.replace("-", "_")
        if dotted in ignore and dotted not in fields:
            continue
        if dotted not in fields:
            hyphenated = {k.replace("_", "-"): f for k, f in fields.items()}
            raise _unknown_key(key, hyphenated, "in the Flower run config", kwargs.get("command", ""))
        if value == "" and type(None) in fields[dotted].types:
            value = None
        values[dotted] = value
    return build_config(schema, values=values, **kwargs)


def config_digest(config: Mapping[str, Any]) -> str:
    """Canonical JSON of a config (sorted keys): its identity in logs and message headers."""
    return json.dumps(plain(config), sort_keys=True, separators=(",", ":"))


def plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config (a :class:`Config` or a mapping) as nested plain ``dict`` s, for JSON and Flower records."""
    return {k: (plain(v) if isinstance(v, Mapping) else copy.deepcopy(v)) for k, v in config.items()}


# ---------------------------------------------------------------- typed configs (frozen dataclasses)
def key(default: Any, help: str, choices: Any = None, *, check: Check | None = None) -> Any:
    """Declare one key of a :class:`Config` dataclass (its annotation gives the accepted types).

    Parameters
    ----------
    default:
        Value when no source sets it.
    help:
        One line for listings and error messages.
    choices:
        Allowed values, or a callable returning them (a registry).
    check:
        Extra validation: returns an error message (without the key name) or ``None``.
    """
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


def block(cls: type[Any]) -> Any:
    """Declare a nested block (``optimizer``, ``flower``, ``stream``) of a :class:`Config` dataclass."""
    return field(default_factory=cls)


def _accepted_types(annotation: Any) -> tuple[type, ...]:
    """``float`` → ``(float,)``, ``str | None`` → ``(str, NoneType)``, ``list[int] | None`` → ``(list, NoneType)``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _accepted_types(arg))
    if annotation is None or annotation is type(None):
        return (type(None),)
    origin = typing.get_origin(annotation)
    return (origin if origin is not None else annotation,)


class Config(Mapping[str, Any]):
    """Base of a frozen dataclass config: typed attributes, and read-only ``config["key"]`` access.

    Subclasses are ``@dataclass(frozen=True)`` with every field declared by :func:`key` or
    :func:`block`, and set :attr:`command` (where named configs live: ``conf/<command>/``). Build
    one with :meth:`load` (or :meth:`from_dict`, :meth:`from_run_config`, :meth:`replace`): the
    values are checked key by key and then by :meth:`check`, once, before anything runs. (Calling
    the class directly takes its arguments unchecked; the defaults alone are a valid config.) The
    mapping view serves serialization (:func:`plain`, :func:`to_run_config`, checkpoints) and code
    that takes any mapping.
    """

    command: ClassVar[str] = ""

    # ---- the mapping view
    def __getitem__(self, name: str) -> Any:
        if name not in _field_names(type(self)):
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(_field_names(type(self)))

    def __len__(self) -> int:
        return len(_field_names(type(self)))

    # ---- building
    @classmethod
    def schema(cls) -> Schema:
        """The :class:`Field` schema the dataclass declares (nested for blocks)."""
        return _schema(cls)

    @classmethod
    def load(
        cls,
        file: str | Path | None = None,
        overrides: Iterable[str] = (),
        values: Mapping[str, Any] | None = None,
    ) -> Self:
        """Resolve defaults ← ``file`` (a name in ``conf/`` or a path) ← ``values`` ← ``--set`` ``overrides``.

        Raises
        ------
        ConfigError
            An unknown key (with the valid keys), a wrong type or value (with the choices), or a
            failed cross-key check.
        """
        resolved = build_config(cls.schema(), file=file, values=values, overrides=overrides, command=cls.command)
        return cls._checked(resolved)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """A validated config from nested or dotted keys (missing keys take their defaults)."""
        return cls.load(values=data)

    @classmethod
    def project(cls, config: Mapping[str, Any]) -> Self:
        """The keys of a larger config that this one declares, checked: what a client is sent of a run's
        config (``SLClientTask.project(sl_config)``)."""
        return cls.from_dict({name: config[name] for name in _field_names(cls)})

    @classmethod
    def from_json(cls, text: str, what: str = "config") -> Self:
        """A validated config from JSON text (:func:`config_digest`), e.g. the task a client was sent.

        Raises
        ------
        ConfigError
            ``text`` is not a JSON object, or holds an unknown key or a bad value (named, with ``what``).
        """
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the {what} is not JSON ({exc}): {str(text)[:80]!r}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"the {what} must be a JSON object of keys, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"the {what}: {exc}") from None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], *, ignore: Collection[str] = ()) -> Self:
        """A validated config from Flower run-config keys (see :func:`from_run_config`)."""
        return cls._checked(from_run_config(cls.schema(), run_config, ignore=ignore, command=cls.command))

    @classmethod
    def _checked(cls, resolved: Mapping[str, Any]) -> Self:
        config = _construct(cls, resolved)
        config.check()
        return config

    def check(self) -> None:
        """Cross-key checks a single key's schema cannot express (raise :class:`ConfigError`)."""

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes``: keys (``rounds=3``), a block's keys as a mapping
        (``optimizer={"lr": 0.1}``: the block's other keys keep their values), or dotted keys
        (``**{"optimizer.lr": 0.1}``)."""
        return type(self).from_dict({**_flatten(plain(self)), **_flatten(plain(changes))})

    def to_dict(self) -> dict[str, Any]:
        """Nested plain ``dict`` s (JSON, YAML, Flower records)."""
        return plain(self)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def _schema(cls: type) -> Schema:
    hints = typing.get_type_hints(cls)
    out: dict[str, Field | Schema] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if isinstance(kind, type) and issubclass(kind, Config):
            out[f.name] = _schema(kind)
            continue
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare config keys with fl_split.config.key(...)")
        meta = f.metadata
        out[f.name] = Field(f.default, _accepted_types(kind), meta["help"], meta["choices"], meta["check"])
    return out


def _construct(cls: type[Any], resolved: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind, value = hints[f.name], resolved[f.name]
        kwargs[f.name] = _construct(kind, value) if isinstance(kind, type) and issubclass(kind, Config) else value
    return cls(**kwargs)


# ---------------------------------------------------------------- checks shared by every schema


def codec_spec_check(value: str) -> str | None:
    """A codec spec that does not parse or build: the reason."""
    from fl_split.codecs import codec_from_spec

    try:
        codec_from_spec(value)
    except ValueError as exc:
        return str(exc)
    return None


def signed_codec_check(what: str) -> Check:
    """The check of a codec spec for signed values (``what``: an update, a gradient, a model difference):
    the spec must build, and MS must be ``signed=true`` (unsigned MS codes from 0 upward: it is for
    post-ReLU activations, and would turn every negative entry into 0)."""

    def check(value: str) -> str | None:
        problem = codec_spec_check(value)
        if problem:
            return problem
        from fl_split.codecs import codec_from_spec

        codec = codec_from_spec(value)
        if codec.name == "ms" and not getattr(codec, "signed", True):
            return (
                f"unsigned MS keeps the largest values and codes the rest from 0 upward, so every negative entry of "
                f"{what} becomes 0; {what} is signed: add signed=true (e.g. ms:keep=0.01,bits=2,signed=true)"
            )
        return None

    return check


def check_data_source(config: Mapping[str, Any]) -> None:
    """Cross-key check of every command that trains: a dataset read from disk needs ``data_dir``.

    Raises
    ------
    ConfigError
        Saying which key to set, or which offline datasets need none.
    """
    from fl_split.data import dataset_info

    if dataset_info(str(config["dataset"])).on_disk and not config.get("data_dir"):
        offline = ", ".join(n for n in dataset_choices() if not dataset_info(n).on_disk)
        raise ConfigError(
            f"dataset {config['dataset']!r} is read from disk: set data_dir to the folder holding it "
            f"(e.g. --set data_dir=~/data), or use an offline dataset: {offline}"
        )


def model_choices() -> list[str]:
    """Model names a config may use (``auto``: the dataset's default)."""
    from fl_split.models import list_models

    return ["auto", *list_models()]


def dataset_choices() -> list[str]:
    """Dataset names a config may use."""
    from fl_split.data import list_datasets

    return list_datasets()


def is_device_name(value: str) -> bool:
    """Whether ``value`` names a torch device fl-split places work on: ``cpu``, ``cuda`` or ``cuda:N``."""
    return value in ("cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())


def client_device_check(value: str) -> str | None:
    """A client's torch device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`fl_split.training.client_device`)."""
    return None if value == "auto" or is_device_name(value) else "auto, cpu, cuda or cuda:N"


def positive(value: float) -> str | None:
    """``> 0``."""
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    """``>= 0``."""
    return None if value >= 0 else "must be >= 0"


def at_least_one(value: int) -> str | None:
    """``>= 1``."""
    return None if value >= 1 else "must be >= 1"


def fraction(value: float) -> str | None:
    """In ``(0, 1]``."""
    return None if 0 < value <= 1 else "must be in (0, 1]"
