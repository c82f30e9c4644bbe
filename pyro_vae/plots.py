"""Pictures: image grids (samples, reconstructions) and ELBO curves, as PNG files.

Every picture is drawn on its own :class:`matplotlib.figure.Figure` and saved from it, without
pyplot: importing or using this module never switches the user's matplotlib backend (a
notebook's inline backend stays) and leaves no figure open.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import torch
from matplotlib.figure import Figure

__all__ = ["plot_elbo_curves", "plot_log_likelihood_diagnostics", "save_image_grid"]


def _tile(images: torch.Tensor, image_shape, ncols: int) -> torch.Tensor:
    """Arrange ``(n, H * W)`` images in a grid with ``ncols`` columns and 1-pixel white gaps."""
    images = images.detach().cpu().reshape(-1, *image_shape)
    ncols = min(ncols, images.shape[0])
    nrows = math.ceil(images.shape[0] / ncols)
    h, w = image_shape
    grid = torch.ones(nrows * (h + 1) - 1, ncols * (w + 1) - 1)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return grid


def _save(fig: Figure, path: str | Path) -> Path:
    """Lay out ``fig`` and write it as a PNG at 100 dpi (the Agg renderer, whatever the backend)."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def save_image_grid(images: torch.Tensor, image_shape, path: str | Path, ncols: int = 10,
                    title: str | None = None) -> Path:
    """Save ``images`` (``(n, H * W)`` or ``(n, H, W)``, values in [0, 1]) as a grid PNG with
    ``ncols`` columns; ``image_shape`` is ``(H, W)``. Returns the path written."""
    grid = _tile(images, image_shape, ncols)
    fig = Figure(figsize=(grid.shape[1] / 28 + 0.4, grid.shape[0] / 28 + 0.6))
    ax = fig.subplots()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _legend_label(label: str, width: int = 60) -> str:
    """An objective's label for a legend: class paths cut to the class name
    (``pyro_vae.objectives.trace.Trace_ELBO(...)`` -> ``Trace_ELBO(...)``), wrapped at ``width``."""
    return textwrap.fill(re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)\(", r"\1(", label), width)


def plot_elbo_curves(results: dict, path: str | Path, batch_size: int, title: str = "") -> Path:
    """ELBO (nats per datapoint, higher is better) against training samples seen; a PNG at ``path``.

    ``results`` maps a label (e.g. the objective) to a :class:`~pyro_vae.training.TrainResult`:
    its ``curve`` (training objective, averaged over log intervals) is drawn as a line, the
    per-epoch test ELBO of its ``history`` as points with ±2 standard errors (``step *
    batch_size`` samples seen).
    """
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for i, (label, result) in enumerate(results.items()):
        color, label = f"C{i}", _legend_label(label)
        if result.curve:
            ax.plot([c["samples_seen"] for c in result.curve], [c["train_elbo"] for c in result.curve],
                    "-", color=color, alpha=0.7, label=f"{label}: train (running)")
        test = [(h["step"] * batch_size, h["test_elbo"], h["test_elbo_se"]) for h in result.history
                if h.get("test_elbo") is not None]
        if test:
            seen, mean, se = zip(*test)
            ax.errorbar(seen, mean, yerr=[2 * s for s in se], fmt="s", color=color, capsize=3,
                        label=f"{label}: test (±2 SE)")
    ax.set_xscale("log")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("ELBO (nats per datapoint)")
    lows = [c["train_elbo"] for r in results.values() for c in r.curve[len(r.curve) // 10 :]]
    if lows:
        ax.set_ylim(bottom=min(lows) - 5)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_log_likelihood_diagnostics(result, images: torch.Tensor | None, image_shape, path: str | Path,
                                    num_worst: int = 10) -> Path:
    """One figure for a :class:`~pyro_vae.evaluation.LogLikelihoodResult`, as a PNG at ``path``.

    Left: mean IWAE_k bound (nats per datapoint) against k (±2 SE), up to log p̂(x) at k = K.
    Middle: histogram of the PSIS k-hat with the 0.5 / 0.7 thresholds. Right (when ``images``,
    ``(N, H * W)`` in [0, 1] with ``image_shape`` ``(H, W)``, are given): the ``num_worst``
    datapoints with the largest k-hat, where the guide is the poorest proposal.
    """
    has_khat = result.pareto_k is not None and bool(torch.isfinite(result.pareto_k).any())
    ncols = 2 + (images is not None and has_khat)
    fig = Figure(figsize=(4.2 * ncols, 3.6))
    axes = fig.subplots(1, ncols)
    _draw_bounds(axes[0], result)
    if has_khat:
        _draw_khat(axes[1], result)
    else:
        why = "\n".join(textwrap.wrap(" ".join(result.notes()) or "no finite k-hat", 50))
        axes[1].text(0.5, 0.5, why, ha="center", va="center", fontsize=8)
        axes[1].axis("off")
    if ncols == 3:
        _draw_worst(axes[2], result, images, image_shape, num_worst)
    return _save(fig, path)


def _draw_bounds(ax, result) -> None:
    """Mean IWAE_k bound against k, ±2 SE, up to k = K."""
    ks = sorted(result.iwae_bounds) + [result.num_samples]
    stats = [result.bound(k) for k in ks]
    ax.errorbar(ks, [m for m, _ in stats], yerr=[2 * s for _, s in stats], fmt="o-", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("k (importance samples)")
    ax.set_ylabel("IWAE_k bound (nats per datapoint)")
    ax.set_title(f"bound vs k ({result.num_datapoints} points)", fontsize=9)
    ax.grid(alpha=0.3, which="both")


def _draw_khat(ax, result) -> None:
    """Histogram of the finite PSIS k-hat values, with the 0.5 / 0.7 thresholds (the counts in the
    title include the undefined and infinite ones)."""
    khat = result.pareto_k[torch.isfinite(result.pareto_k)].numpy()
    ax.hist(khat, bins=40, color="C1")
    for threshold in (0.5, 0.7):
        ax.axvline(threshold, color="k", ls="--", lw=1)
    counts = ", ".join(f"{k}: {n}" for k, n in result.pareto_k_counts().items())
    ax.set_title(f"Pareto k-hat, K={result.num_samples}\n{counts}", fontsize=8)
    ax.set_xlabel("k-hat")
    ax.set_ylabel("datapoints")


def _draw_worst(ax, result, images: torch.Tensor, image_shape, num_worst: int) -> None:
    """The ``num_worst`` images with the largest k-hat, five to a row."""
    worst = torch.argsort(torch.nan_to_num(result.pareto_k, nan=-1.0), descending=True)[:num_worst]
    grid = _tile(images[worst.to(images.device)], image_shape, ncols=5)
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    largest = ", ".join(f"{float(result.pareto_k[i]):.2f}" for i in worst[:5])
    ax.set_title(f"largest k-hat: {largest}, ...", fontsize=8)
