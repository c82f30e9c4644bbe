"""The pictures of a finished run (``elbo.png``, ``samples.png``, ``reconstructions.png``), drawn
from whatever the model observes.

The observed site need not be ``x``: Pyro's conditional VAE example observes the bottom half of
a digit given its top half. Samples and reconstructions show the observed site's values, as
images of the data set's width when they fill whole rows of it (a ``14 x 28`` bottom half of a
``28 x 28`` digit), and are skipped with one line saying why otherwise. Training has finished
and been checkpointed when they are drawn: a picture that cannot be drawn is skipped with its
reason, never an error.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import Dataset
from ..generate import observation
from ..plots import plot_elbo_curves, save_image_grid

__all__ = ["picture_shape", "write_pictures"]


def picture_shape(values: int, image_shape) -> tuple[int, int] | None:
    """``(H, W)`` for ``values`` pixels of data whose images are ``image_shape``: the image itself,
    or ``values / W`` rows of it; ``None`` when they fill no whole rows."""
    height, width = image_shape
    if values == height * width:
        return height, width
    return (values // width, width) if values % width == 0 else None


def write_pictures(path: Path, model, guide, data: Dataset, result, label: str, batch_size: int,
                   labels: bool) -> list[str]:
    """Write the run's pictures into ``path``; returns one line per picture skipped, with why.

    ``elbo.png``: the training curve and the test ELBOs. For image data, ``samples.png``: the
    observed site's mean for ``z ~ p(z)``; ``reconstructions.png``: observed values (left) beside
    their means for one ``z ~ q(z | x)`` (right).
    """
    skipped = []
    try:
        plot_elbo_curves({label: result}, path / "elbo.png", batch_size, title=data.name)
    except Exception as e:  # noqa: BLE001 (training is over and saved: report, do not fail)
        skipped.append(f"elbo.png skipped: {type(e).__name__}: {e}")
    if data.image_shape is None:
        return skipped
    try:
        skipped += _samples_and_reconstructions(path, model, guide, data, labels)
    except Exception as e:  # noqa: BLE001
        skipped.append(f"samples.png and reconstructions.png skipped: {type(e).__name__}: {e}")
    return skipped


def _samples_and_reconstructions(path: Path, model, guide, data: Dataset, labels: bool) -> list[str]:
    x = (data.test if data.test is not None else data.train)[:50]
    args = ((data.test_labels if data.test is not None else data.train_labels)[:50],) if labels else ()
    named = data.named("test" if data.test is not None else "train", slice(50))
    if data.test is None and data.binarize:
        x = torch.bernoulli(x)
    name, _, samples = observation(model, x, *args, **named)
    shape = picture_shape(samples.shape[1], data.image_shape)
    if shape is None:
        why = (f"the observed site {name!r} holds {samples.shape[1]} values per datapoint, which fill no whole "
               f"rows of the {data.image_shape[1]}-pixel-wide images")
        return [f"samples.png and reconstructions.png skipped: {why}"]
    whole = samples.shape[1] == x[0].numel()
    what = "" if whole else f" ({name!r}, {shape[0]} x {shape[1]})"
    save_image_grid(samples, shape, path / "samples.png",
                    title=f"samples{what}: decoder mean for z ~ p(z)" + (" (labels of the test images)" if labels else ""))
    n = min(30, len(x))
    _, observed, means = observation(model, x[:n], *(a[:n] for a in args), guide=guide,
                                     **{k: v[:n] for k, v in named.items()})
    pairs = torch.stack([observed, means], dim=1).reshape(2 * n, -1)
    left = "test images" if whole else f"observed {name!r}"
    save_image_grid(pairs, shape, path / "reconstructions.png", ncols=10,
                    title=f"{left} (left) and reconstructions (right), z ~ q(z|x)")
    return []
