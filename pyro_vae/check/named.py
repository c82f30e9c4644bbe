"""Named per-datapoint arguments (labels, masks, conditioning inputs passed by keyword): refused,
before any step, where model or guide does not take them or where they clash with a keyword."""

from __future__ import annotations

import inspect

__all__ = ["RESERVED_NAMES", "check_named_arguments"]

RESERVED_NAMES = ("elbo", "free_bits", "batch_size", "data_plate", "bound_ks", "particle_chunk_size", "diagnostics",
                  "seed", "progress", "distributed")
"""Keywords of the checker and the estimators: not names for per-datapoint arguments."""


def check_named_arguments(model, guide, names) -> None:
    """Refuse a named per-datapoint argument (each of ``names``) that model or guide does not take,
    or that clashes with :data:`RESERVED_NAMES`.

    Raises:
        ValueError: naming the argument and the way out.
    """
    for name in names:
        if name in RESERVED_NAMES:
            raise ValueError(f"the named argument {name!r} clashes with a keyword of the checker or the estimators "
                             f"({', '.join(RESERVED_NAMES)}): rename it")
        for role, fn in (("model", model), ("guide", guide)):
            params = inspect.signature(fn).parameters
            if name not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise ValueError(f"the data set carries the named argument {name!r} but the {role} does not take "
                                 f"it: declare it, e.g. def {role}(x, {name}=None), or drop it from the data set")
