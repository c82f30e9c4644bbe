"""Errors for names that are not among the choices (data sets, models, ELBOs, ...)."""

from __future__ import annotations

import difflib

__all__ = ["unknown_name"]


def unknown_name(kind: str, name, choices) -> ValueError:
    """``ValueError`` saying that ``name`` is not a known ``kind``, listing the ``choices`` and the
    closest one (``unknown data set 'mnsit'; did you mean 'mnist'? choose one of ...``).

    Returns the error for the caller to raise; ``choices`` is any iterable of names (``str``).
    """
    choices = list(choices)
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ValueError(f"unknown {kind} {name!r}; {hint}choose one of {', '.join(choices)}")
