r"""The semi-supervised objective of Kingma et al. (2014, eq. 9): the ELBO with the class summed out
where it is unknown, plus a classification term on the labelled rows.

.. math::
    \mathcal{J}^\alpha = \sum_{(x, y) \text{ labelled}} \mathcal{L}(x, y)
        + \sum_{x \text{ unlabelled}} \mathcal{U}(x)
        + \alpha \sum_{(x, y) \text{ labelled}} \log q(y \mid x)

The first two sums are what :class:`~pyro_vae.objectives.TraceEnum_ELBO` computes for a pair that
observes the labelled rows' class and enumerates the others' (e.g.
:class:`~pyro_vae.models.SemiSupervisedVAE`); without the third, ``q(y | x)`` learns only from the
unlabelled rows (the paper's section 3.1.2). ``alpha`` weights each labelled row's term; the paper
uses ``alpha = 0.1 N`` for the sum over its ``N_l`` labelled points averaged, i.e. ``0.1 N / N_l``
per labelled row.
"""

from __future__ import annotations

import torch

from .enum import TraceEnum_ELBO

__all__ = ["SemiSupervisedELBO"]


class SemiSupervisedELBO(TraceEnum_ELBO):
    r"""``TraceEnum_ELBO`` plus ``alpha * log q(y | x)`` summed over the labelled rows.

    Args:
        alpha: weight of each labelled row's ``log q(y | x)`` (nats; 0 gives ``TraceEnum_ELBO``).
        classifier_site: the guide's site whose distribution is ``q(y | x)``, with batch shape
            ``(batch,)`` (it may be masked to the unlabelled rows: its distribution still covers
            every row).
        labels: the keyword argument holding the labels, ``(batch,)`` int64, ``-1`` for none.
        num_particles, max_plate_nesting, ...: as for ``TraceEnum_ELBO``.

    The loss is :math:`-\mathcal{J}^\alpha` in nats, summed over the batch, averaged over the
    particles. A batch without labels (``labels`` absent, ``None`` or all ``-1``) adds nothing.
    The checker treats it as ``enum``.
    """

    def __init__(self, alpha: float, classifier_site: str = "y_unobserved", labels: str = "y", **kwargs):
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        kwargs.setdefault("vectorize_particles", True)
        super().__init__(**kwargs)
        self.alpha, self.classifier_site, self.labels = float(alpha), classifier_site, labels

    def particle_elbo(self, model_trace, guide_trace, kwargs: dict):
        """``TraceEnum_ELBO``'s Dice ELBO of the particle plus ``alpha`` times its classifier term (nats)."""
        return super().particle_elbo(model_trace, guide_trace, kwargs) + self.alpha * self._classifier_term(
            guide_trace, kwargs.get(self.labels))

    def _classifier_term(self, guide_trace, y: torch.Tensor | None):
        """``sum over labelled rows of log q(y_n | x_n)`` (nats), read from the classifier site's
        distribution; 0 without labels. Vectorized particles count once each (the loss divides by
        their number), whether or not the site's distribution was expanded over them."""
        if y is None or self.alpha == 0:
            return 0.0
        if self.classifier_site not in guide_trace.nodes:
            raise ValueError(f"SemiSupervisedELBO: the guide has no site {self.classifier_site!r} for q(y | x) "
                             f"(sites: {', '.join(n for n, s in guide_trace.nodes.items() if s['type'] == 'sample')})")
        log_q = guide_trace.nodes[self.classifier_site]["fn"].log_prob(y.clamp(min=0))
        labelled = (y >= 0).to(log_q.dtype)
        copies = self.num_particles if self.vectorize_particles else 1
        return (log_q * labelled).sum() * (copies * labelled.numel() / log_q.numel())
