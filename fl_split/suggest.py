""" "Did you mean ...?" for names a user types: config keys, codecs, models, datasets, config files."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, choices: Iterable[object], n: int = 3) -> list[str]:
    """The choices closest to ``word``, best first: dotted keys ending in ``word`` (``lr`` →
    ``optimizer.lr``), then spelling neighbours (:func:`difflib.get_close_matches`, case-insensitive).

    Parameters
    ----------
    word:
        What the user typed.
    choices:
        The valid names (anything with a ``str()``).
    n:
        At most this many.
    """
    names = [str(c) for c in choices]
    low = word.lower()
    by_lower = {name.lower(): name for name in names}
    found = [name for name in names if name.lower().endswith("." + low)]
    found += [by_lower[m] for m in difflib.get_close_matches(low, list(by_lower), n=n, cutoff=0.6)]
    tails = {name.lower().rsplit(".", 1)[-1]: name for name in names if "." in name}
    found += [tails[m] for m in difflib.get_close_matches(low, list(tails), n=n, cutoff=0.75)]
    return list(dict.fromkeys(name for name in found if name.lower() != low))[:n]


def did_you_mean(word: str, choices: Iterable[object]) -> str:
    """``" (did you mean 'optimizer.lr'?)"`` (alternatives joined by ``or``), or ``""`` when nothing is close."""
    found = close_matches(word, choices)
    if not found:
        return ""
    return " (did you mean " + " or ".join(repr(f) for f in found) + "?)"
