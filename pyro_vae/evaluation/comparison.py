r"""Paired comparisons of two estimates on the same datapoints.

Two models (or two estimators) evaluated on the same ``N`` test points give per-datapoint values
``a_n`` and ``b_n`` (nats). Their difference of means is the mean of ``d_n = a_n - b_n``, and its
standard error is the *paired* one,

.. math::
    \mathrm{SE}_{\mathrm{paired}} = \mathrm{sd}(d_n) / \sqrt{N},

which leaves out the spread of difficulty between datapoints that ``a_n`` and ``b_n`` share. The
unpaired ``sqrt(SE_a^2 + SE_b^2)`` counts that spread twice and is often ten times wider. Pairing
is only valid on the same datapoints in the same order: a result records their number and a
fingerprint of their values (:func:`data_fingerprint`), and :func:`check_same_datapoints` refuses
two results that differ in either.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import torch

__all__ = ["PairedComparison", "check_same_datapoints", "data_fingerprint", "paired_comparison"]

_ROWS_PER_CHUNK = 4096


def data_fingerprint(data: torch.Tensor) -> str:
    """``"sha256:<64 hex digits>"`` of the datapoints ``data`` ``(N, ...)``, in order.

    Hashes the shape and the values converted to float64 on the CPU (a row block at a time, so
    memory stays bounded): the same datapoints give the same fingerprint whatever the device and
    float dtype that holds them (float32 on a GPU, float64 on the CPU; ``-0.0`` counts as ``0.0``);
    any changed value, order or count gives another.
    """
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    for start in range(0, data.shape[0], _ROWS_PER_CHUNK):
        block = data[start : start + _ROWS_PER_CHUNK].detach().to("cpu", torch.float64) + 0.0
        digest.update(block.contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def check_same_datapoints(a, b, names=("A", "B")) -> None:
    """Raise ``ValueError`` unless the results ``a`` and ``b`` (with ``num_datapoints`` and
    ``data_fingerprint``) were computed on the same datapoints, in the same order."""
    na, nb = names
    if a.num_datapoints != b.num_datapoints:
        raise ValueError(f"cannot pair {na} and {nb}: {na} has {a.num_datapoints} datapoints and {nb} "
                         f"has {b.num_datapoints}; a paired comparison needs the same datapoints in each")
    for name, result in ((na, a), (nb, b)):
        if result.data_fingerprint is None:
            raise ValueError(f"cannot pair {na} and {nb}: {name} records no data fingerprint (made by hand "
                             "or by an older pyro-vae), so it cannot be checked that both are on the same "
                             "datapoints; estimate it again with estimate_log_likelihood / pyro-vae evaluate")
    if a.data_fingerprint != b.data_fingerprint:
        raise ValueError(f"cannot pair {na} and {nb}: they are on different datapoints (data fingerprints "
                         f"{a.data_fingerprint[:19]}... and {b.data_fingerprint[:19]}...; same count "
                         f"{a.num_datapoints}, but other values or another order)")


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` on the same datapoints, in nats per datapoint.

    Attributes:
        quantity: what was compared (``"log_likelihood"``, ``"iwae_5"``, ...).
        num_datapoints: ``N``.
        mean_a, mean_b: means over datapoints.
        stderr_a, stderr_b: their standard errors over datapoints.
        difference: mean of the per-datapoint differences ``a_n - b_n`` (= ``mean_a - mean_b``).
        paired_stderr: ``sd(a_n - b_n) / sqrt(N)``, the standard error of ``difference``.
        unpaired_stderr: ``sqrt(stderr_a^2 + stderr_b^2)``, what ignoring the pairing would give.
    """

    quantity: str
    num_datapoints: int
    mean_a: float
    mean_b: float
    stderr_a: float
    stderr_b: float
    difference: float
    paired_stderr: float
    unpaired_stderr: float

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    def format(self) -> str:
        """``"difference ± paired SE (unpaired SE ...)"`` in nats per datapoint."""
        return (f"{self.quantity}: {self.difference:+.3f} ± {self.paired_stderr:.3f} nats per datapoint "
                f"(paired SE; unpaired SE {self.unpaired_stderr:.3f}), N = {self.num_datapoints}")


def paired_comparison(a: torch.Tensor, b: torch.Tensor, quantity: str, names=("A", "B")) -> PairedComparison:
    """Compare per-datapoint values ``a`` and ``b`` ``(N,)`` (nats) of the same datapoints.

    Raises:
        ValueError: shapes differ, ``N < 2`` (no standard error), or a value is not finite.
    """
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"per-datapoint {quantity} of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be paired")
    if a.shape[0] < 2:
        raise ValueError("a standard error needs at least 2 datapoints")
    for name, values in zip(names, (a, b)):
        bad = (~torch.isfinite(values)).nonzero().flatten()
        if len(bad):
            raise ValueError(f"{name}'s {quantity} is not finite at {len(bad)} datapoint(s) (indices "
                             f"{bad[:5].tolist()}): their mean and its standard error are undefined")
    a, b = a.double(), b.double()
    n = a.shape[0]
    se_a, se_b = float(a.std() / math.sqrt(n)), float(b.std() / math.sqrt(n))
    d = a - b
    return PairedComparison(quantity, n, float(a.mean()), float(b.mean()), se_a, se_b, float(d.mean()),
                            float(d.std() / math.sqrt(n)), math.hypot(se_a, se_b))
