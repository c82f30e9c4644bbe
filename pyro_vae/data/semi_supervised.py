"""A semi-supervised split of a labelled data set: a few labelled images, the rest unlabelled, the
labels passed to the pair as the named argument ``y`` (``-1`` where a row has none).

Kingma et al. (2014) keep ``N_l`` labels, balanced over the classes, and train on every image.
A random minibatch of 100 from 60000 images would hold one of 100 labelled images every sixth
step; like the paper's code and Pyro's ``ss_vae_M2`` example, which cycle the labelled set through
the epoch, :func:`semi_supervised` repeats the labelled rows so that about ``labelled_fraction``
of each epoch is labelled. This weights the labelled rows' terms up by the repeat factor, which
:func:`semi_supervised` returns.
"""

from __future__ import annotations

import torch

from .datasets import Dataset

__all__ = ["labelled_indices", "semi_supervised"]


def labelled_indices(labels: torch.Tensor, num_labels: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """``(num_labels,)`` int64 row indices, ``num_labels / num_classes`` of each class drawn at
    random with ``seed`` (sorted), for ``labels`` ``(N,)`` int64 in ``[0, num_classes)``.

    Raises:
        ValueError: ``num_labels`` not a positive multiple of ``num_classes``, or a class with fewer rows.
    """
    if num_labels < num_classes or num_labels % num_classes:
        raise ValueError(f"num_labels must be a positive multiple of the {num_classes} classes (balanced labels), "
                         f"got {num_labels}")
    per_class = num_labels // num_classes
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        rows = (labels.cpu() == c).nonzero().flatten()
        if len(rows) < per_class:
            raise ValueError(f"class {c} has {len(rows)} training rows, fewer than the {per_class} asked for")
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def semi_supervised(data: Dataset, num_labels: int, *, labelled_fraction: float = 0.1, num_classes: int = 10,
                    seed: int = 0) -> tuple[Dataset, int]:
    """The data set with only ``num_labels`` training labels kept, passed as the named argument ``y``.

    Args:
        data: a data set with ``train_labels`` (MNIST, Fashion-MNIST).
        num_labels: labelled training images, balanced over the classes (Kingma et al.: 100 to 3000).
        labelled_fraction: about this share of each epoch's rows is labelled: the labelled rows are
            repeated ``repeat = max(1, round(f * N_u / ((1 - f) * N_l)))`` times after the
            ``N_u`` unlabelled ones (each epoch visits every unlabelled image once).
        num_classes: number of classes.
        seed: draws the labelled images.

    Returns:
        ``(dataset, repeat)``: ``train`` is ``(N_u + repeat * N_l, D)``; ``train_named["y"]`` is
        ``-1`` on the unlabelled rows and the class on the labelled ones; the test and validation
        splits carry ``y = -1`` everywhere (their ELBO bounds ``log p(x)``), while ``test_labels``
        and ``valid_labels`` stay for the classification error; ``train_labels`` is dropped
        (the pair must not see the unlabelled rows' classes).
    """
    if data.train_labels is None:
        raise ValueError(f"the data set {data.name!r} has no training labels to keep a few of")
    if not 0 < labelled_fraction < 1:
        raise ValueError(f"labelled_fraction must be in (0, 1), got {labelled_fraction}")
    chosen = labelled_indices(data.train_labels, num_labels, num_classes, seed).to(data.device)
    unlabelled = torch.ones(len(data.train), dtype=torch.bool, device=data.device)
    unlabelled[chosen] = False
    num_unlabelled = int(unlabelled.sum())
    repeat = max(1, round(labelled_fraction * num_unlabelled / ((1 - labelled_fraction) * num_labels)))
    rows = torch.cat([unlabelled.nonzero().flatten(), chosen.repeat(repeat)])
    y = torch.full((len(rows),), -1, dtype=torch.long, device=data.device)
    y[num_unlabelled:] = data.train_labels[chosen].repeat(repeat)
    no_labels = {split: {"y": torch.full((len(x),), -1, dtype=torch.long, device=data.device)}
                 for split in ("test", "valid") if (x := getattr(data, split)) is not None}
    ds = Dataset(**{**vars(data), "train": data.train[rows], "train_labels": None, "train_named": {"y": y},
                    "test_named": no_labels.get("test", {}), "valid_named": no_labels.get("valid", {})})
    return ds, repeat

