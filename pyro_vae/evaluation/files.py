"""Result files in standard JSON: no ``NaN`` or ``Infinity`` tokens, written atomically, read back
exactly.

A finished estimate may hold numbers JSON has no word for: ``-inf`` (a datapoint with every weight
zero), ``inf`` (a k-hat where the weights have no fittable tail), NaN (an ESS or k-hat that is
undefined; the standard error of one datapoint). They are written as ``null``; for the
per-datapoint columns, a ``non_finite`` map (``{column: {"inf" | "-inf": [indices]}}``) records
which ``null`` stands for an infinity (any other ``null`` is NaN), so :func:`decode_columns`
restores them. Writing
never fails on a value, and a file that cannot be written where asked is written to the temporary
folder instead (the error names it), so a finished estimate is not lost.
"""

from __future__ import annotations

import json
import math
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch

__all__ = ["decode_columns", "encode_columns", "json_safe", "read_json", "write_json"]


def json_safe(obj):
    """``obj`` with every non-finite float replaced by ``None`` (recursively through dicts, lists and
    tuples; tensors and numpy values become Python numbers or lists first)."""
    if isinstance(obj, torch.Tensor | np.ndarray | np.generic):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def encode_columns(columns: dict[str, list]) -> tuple[dict[str, list], dict[str, dict[str, list[int]]]]:
    """``(columns with non-finite floats as None, non_finite map of the infinities' indices)`` for
    per-datapoint columns."""
    non_finite: dict[str, dict[str, list[int]]] = {}
    for name, values in columns.items():
        for i, v in enumerate(values):
            if isinstance(v, float) and math.isinf(v):
                non_finite.setdefault(name, {}).setdefault("inf" if v > 0 else "-inf", []).append(i)
    return json_safe(columns), non_finite


def decode_columns(columns: dict[str, list], non_finite: dict | None) -> dict[str, list]:
    """Per-datapoint columns as floats: ``None`` becomes NaN, or the value ``non_finite`` records."""
    values = {name: [math.nan if v is None else v for v in column] for name, column in columns.items()}
    for name, kinds in (non_finite or {}).items():
        for kind, indices in kinds.items():
            for i in indices:
                values[name][i] = float(kind)
    return values


def write_json(path: str | Path, report: dict) -> Path:
    """Write ``report`` to ``path`` as standard JSON, atomically (a temporary file, then a rename).

    Raises:
        OSError: ``path`` cannot be written; the report was written to the temporary folder
            instead, at the path the message names.
    """
    path = Path(path)
    text = json.dumps(json_safe(report), indent=1, allow_nan=False)
    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        rescue = Path(tempfile.gettempdir()) / f"{path.stem}-{uuid.uuid4().hex[:8]}.json"
        rescue.write_text(text)
        raise OSError(f"could not write {path} ({e}); the result was written to {rescue} instead") from e
    return path


def _refuse_constant(token: str):
    raise ValueError(f"non-standard JSON number {token}")


def read_json(path: str | Path) -> dict:
    """A JSON file, read strictly (``NaN``/``Infinity`` tokens refused).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not standard JSON (the message names the file).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(), parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a JSON file: {e}") from None
    except ValueError as e:
        raise ValueError(f"{path} is not standard JSON: {e}") from None
