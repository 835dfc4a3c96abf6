"""User modules that register a model, dataset or codec (``fl-split COMMAND --import MODULE``).

:func:`add_plugins` imports them in this process and records them in the environment variable
:data:`ENV`, which every process started later inherits: Ray's actors (the simulated ClientApps),
``ddp`` and ``gossip`` ranks, ``compare --jobs`` workers. Each registry calls :func:`import_plugins`
before it looks a name up, so such a process imports the same modules before it needs their names.
A plugin is a module name on ``sys.path`` (``my_pkg.codecs``) or a path to a ``.py`` file.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

#: Comma-separated modules or ``.py`` paths to import before a registry lookup (set by ``--import``).
ENV = "FL_SPLIT_IMPORT"

_imported: set[str] = set()


def add_import_option(parser: argparse.ArgumentParser) -> None:
    """Add the ``--import MODULE`` option (repeatable; ``args.imports``) that :func:`add_plugins` takes."""
    parser.add_argument(
        "--import",
        dest="imports",
        metavar="MODULE",
        action="append",
        default=[],
        help="import a module or a .py file first, to register your own model, dataset or codec (repeatable)",
    )


def plugin_names() -> list[str]:
    """The plugins :data:`ENV` names, in order."""
    return [name for name in os.environ.get(ENV, "").split(",") if name.strip()]


def add_plugins(names: list[str]) -> None:
    """Import ``names`` now and for every process this one starts from here on.

    A module name is imported as is (the working directory is searched too, in this process and its
    children); a ``.py`` path is imported from that file (recorded as an absolute path).

    Raises
    ------
    ImportError
        A module that cannot be found or fails to import; the message says which and why.
    """
    if not names:
        return
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if cwd not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *paths])
    resolved = [str(Path(n).resolve()) if n.endswith(".py") else n for n in names]
    os.environ[ENV] = ",".join(dict.fromkeys([*plugin_names(), *resolved]))
    import_plugins()


def import_plugins() -> None:
    """Import each plugin :data:`ENV` names that this process has not imported yet (cheap when none)."""
    for name in plugin_names():
        if name in _imported:
            continue
        _imported.add(name)  # first: a plugin that looks a name up while it loads must not recurse
        try:
            _import(name)
        except Exception as exc:
            _imported.discard(name)
            raise ImportError(
                f"--import {name}: {type(exc).__name__}: {exc} (a module on the Python path, e.g. my_codecs, "
                "or a .py file; it registers with register_codec, register_model or register_dataset)"
            ) from exc


def _import(name: str) -> None:
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no file {path}")
        module_name = f"fl_split_plugin_{path.stem}"
        if module_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return
    importlib.import_module(name)
