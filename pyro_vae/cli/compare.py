"""``pyro-vae compare RUN_A RUN_B``: the paired difference of two evaluations on the same test points.

Reads the two ``evaluation.json`` reports that ``pyro-vae evaluate`` wrote (a run folder stands for
its ``evaluation.json``; a JSON file is read as it is), refuses them unless they are on the same
datapoints (count and data fingerprint), and prints, for log p̂(x) (or the quantity the reports
name, e.g. ``log p(x | y)``) and every IWAE_k bound both hold, the mean per-datapoint difference
A - B with its paired standard error and, beside it, the unpaired one. Nats per datapoint; a
positive difference means A is better.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation import LogLikelihoodResult

__all__ = ["add_parser", "load_report", "run", "shared_bounds"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="paired difference of two evaluations on the same test points")
    p.add_argument("run_a", type=Path, help="run folder (its evaluation.json) or an evaluation JSON file")
    p.add_argument("run_b", type=Path, help="the run or evaluation JSON to compare with (A - B is printed)")
    p.set_defaults(handler=run)
    return p


def load_report(path: Path) -> tuple[Path, LogLikelihoodResult]:
    """``(report path, result)`` for a run folder (its ``evaluation.json``) or a report file.

    Raises:
        FileNotFoundError: no such file or folder, or a run folder without ``evaluation.json``.
        ValueError: the file is not a pyro-vae evaluation report.
    """
    report = path / "evaluation.json" if path.is_dir() else path
    if path.is_dir() and not report.is_file():
        raise FileNotFoundError(f"{path} has no evaluation.json: run `pyro-vae evaluate {path}` first")
    if not report.exists():
        raise FileNotFoundError(f"no run folder or evaluation report at {path}")
    return report, LogLikelihoodResult.load(report)


def shared_bounds(a: LogLikelihoodResult, b: LogLikelihoodResult) -> list[int]:
    """The IWAE ``k`` whose per-datapoint bounds both results hold, other than the ``K`` of both."""
    ks_a = set(a.iwae_bounds) | {a.num_samples}
    ks_b = set(b.iwae_bounds) | {b.num_samples}
    return sorted(k for k in ks_a & ks_b if not k == a.num_samples == b.num_samples)


def _row(label: str, c, width: int) -> str:
    return (f"{label:<{width}}{c.mean_a:>10.3f} ± {c.stderr_a:<7.3f} {c.mean_b:>10.3f} ± {c.stderr_b:<7.3f} "
            f"{c.difference:>+10.3f} ± {c.paired_stderr:<9.3f}{c.unpaired_stderr:>11.3f}")


def run(args, parser=None) -> int:
    """Print the paired comparison of two evaluation reports, one row per quantity both hold."""
    (path_a, a), (path_b, b) = load_report(args.run_a), load_report(args.run_b)
    ks = "" if a.num_samples == b.num_samples else f"/{b.num_samples}"
    comparisons = [(f"{a.quantity} K={a.num_samples}{ks}", a.compare(b))]
    comparisons += [("IWAE_1 (ELBO)" if k == 1 else f"IWAE_{k}", a.compare(b, k=k)) for k in shared_bounds(a, b)]
    width = max(18, *(len(label) + 2 for label, _ in comparisons))
    print(f"A: {path_a} ({a.quantity}, K = {a.num_samples})\nB: {path_b} ({b.quantity}, K = {b.num_samples})")
    if a.quantity != b.quantity:
        print(f"note: A estimates {a.quantity} and B {b.quantity}: the difference is not between two estimates of "
              "one quantity")
    print(f"on the same {a.num_datapoints} datapoints (data {a.data_fingerprint[:19]}...); nats per datapoint, "
          "higher is better")
    print(f"{'':<{width}}{'A (mean ± SE)':>18}  {'B (mean ± SE)':>18}  {'A - B ± paired SE':>20}  "
          f"{'unpaired SE':>11}")
    for label, comparison in comparisons:
        print(_row(label, comparison, width))
    print("paired SE: sd over datapoints of (A - B) / sqrt(N), the standard error of the difference; "
          "unpaired SE: sqrt(SE_A^2 + SE_B^2), which counts the datapoints' shared spread")
    return 0
