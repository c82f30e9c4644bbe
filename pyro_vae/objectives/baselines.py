r"""The Monte Carlo ELBO with Pyro's *baselines* on its score-function terms.

Pyro attaches a baseline to a non-reparameterizable guide site through the site's ``infer`` dict
(``pyro.sample("z", dist.Bernoulli(logits=...), infer={"baseline": {...}})``, Pyro's SVI tutorial,
part III). Only Pyro's ``TraceGraph_ELBO`` reads it, and that class has no ``differentiable_loss``,
which pyro-vae's trainer steps with; ``Trace_ELBO`` (Pyro's and ours) and ``TraceEnum_ELBO``
ignore it without a word. :class:`TraceBaseline_ELBO` is pyro-vae's ``Trace_ELBO`` (same value,
same Rao-Blackwellization of each site's learning signal over the plates it is not in) with the
baseline subtracted from that signal.

Pyro's keys, and the baseline ``b`` each gives the site here:

* ``nn_baseline`` and ``nn_baseline_input``: ``nn_baseline(nn_baseline_input.detach())``, a net
  of the inputs, e.g. of ``x`` (NVIL's input-dependent baseline, Mnih & Gregor 2014); register
  the net with ``pyro.module`` so that it is optimized;
* ``baseline_value``: a tensor the program computed, e.g. a learned scalar (``pyro.param``, or an
  ``nn.Parameter`` of a registered module);
* ``use_decaying_avg_baseline`` (with ``baseline_beta``, default 0.9): the running average of the
  signal over earlier steps, weight ``baseline_beta`` on the old average, one number per site.

``nn_baseline`` and ``baseline_value`` are trained by the squared error ``(signal - b)^2``
summed over the site's elements, added to the loss's gradient (not to its value), as in Pyro.
Their output must broadcast to the shape of the signal (the site's batch shape, particles
included); ``TraceGraph_ELBO`` asks for the exact shape, here a ``(batch,)`` baseline serves every
vectorized particle.

Differences from Pyro's ``TraceGraph_ELBO``, on purpose:

* the signal of a site is :class:`~pyro_vae.objectives.Trace_ELBO`'s (every term of the sites in
  the same plates), not the provenance-tracked downstream cost of ``TraceGraph_ELBO``, so that the
  baseline is the only difference between ``trace`` and this objective;
* the decaying average is one number per site, the mean over its elements (Pyro keeps one per
  element of the site's batch shape, i.e. per *position* in a minibatch, in the param store,
  which breaks when the batch size changes), kept on the objective: it is not in checkpoints (a
  resumed run starts it again) and Python state that a recorded step cannot update: train it with
  ``step="eager"``. A learned ``baseline_value`` has neither limit.

Why the gradient stays unbiased: ``b`` does not depend on the site's draw (it is a function of the
inputs, a parameter, or earlier steps only), so ``E_q[b \nabla \log q(z)] = b \nabla E_q[1] = 0``.
"""

from __future__ import annotations

import torch

from .trace import Trace_ELBO

__all__ = ["BASELINE_KEYS", "TraceBaseline_ELBO"]

BASELINE_KEYS = ("nn_baseline", "nn_baseline_input", "use_decaying_avg_baseline", "baseline_beta", "baseline_value")
"""The keys of ``infer={"baseline": {...}}`` that Pyro defines, all read here."""


class TraceBaseline_ELBO(Trace_ELBO):
    r"""``Trace_ELBO`` (value and Rao-Blackwellization) whose score-function terms subtract the
    baseline that each guide site declares in ``infer={"baseline": {...}}`` (Pyro's keys, see the
    module docstring).

    The gradient is that of the surrogate

    .. math::
        -\Big[\log p(x, z) - \log q_{\text{rep}}(z \mid x)
            + \sum_{s} \overline{(\log r_s - b_s)}\, \log q_{\text{sf}}(z_s \mid x)\Big]
        + \sum_{s} (\overline{\log r_s} - b_s)^2,

    the last sum over the sites whose baseline is a net or a value (it trains them); the value
    returned is the ELBO estimate's negative, as for ``Trace_ELBO`` (nats, summed over the batch,
    averaged over the particles). Sites without a baseline get ``Trace_ELBO``'s term.

    References:
        Williams (1992), REINFORCE; Mnih & Gregor (2014), *Neural Variational Inference and
        Learning in Belief Networks* (https://arxiv.org/abs/1402.0030); Schulman et al. (2015),
        *Gradient Estimation Using Stochastic Computation Graphs*.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     with pyro.plate("data", len(x)):
        ...         z = pyro.sample("z", dist.Bernoulli(0.5))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     b = pyro.param("b", torch.tensor(-1.0))   # a learned constant baseline
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("z", dist.Bernoulli(logits=pyro.param("a", torch.zeros(()))),
        ...                     infer={"baseline": {"baseline_value": b}})
        >>> loss = TraceBaseline_ELBO().differentiable_loss(model, guide, torch.zeros(4))
        >>> loss.backward()                                 # gradients for "a" and for "b"
        >>> pyro.param("b").grad is not None
        True
    """

    checker_rules = "trace"
    """The checker's rules: those of ``trace`` (enumerated sites are refused, as they would be sampled)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.averages: dict[str, torch.Tensor] = {}
        """Decaying averages of the learning signal, by site name (``use_decaying_avg_baseline``)."""

    def learning_signal(self, name: str, site: dict, log_r: torch.Tensor):
        """``Trace_ELBO``'s signal of score-function site ``name`` minus its baseline (detached),
        and the baseline's squared error, which ``differentiable_loss`` adds to the gradient only."""
        baseline, squared_error = self.baseline(name, site, log_r)
        return (log_r - baseline).detach(), squared_error

    def baseline(self, name: str, site: dict, signal: torch.Tensor):
        """``(b, squared error)`` of guide site ``name`` for its learning ``signal`` (nats, the shape
        of the site's batch): ``b`` is ``0.0`` without a baseline; the squared error, which trains a
        net or a value, is ``0.0`` for the decaying average and without a baseline.

        Raises:
            ValueError: an unknown key, ``nn_baseline`` together with ``baseline_value``, or a
                baseline that does not broadcast to the signal's shape, naming the site.
        """
        options = dict(site["infer"].get("baseline") or {})
        unknown = sorted(set(options) - set(BASELINE_KEYS))
        if unknown:
            raise ValueError(f"guide site {name!r}: unknown baseline option(s) {unknown}; Pyro's are "
                             f"{list(BASELINE_KEYS)}")
        net, value = options.get("nn_baseline"), options.get("baseline_value")
        if net is not None and value is not None:
            raise ValueError(f"guide site {name!r}: give nn_baseline or baseline_value, not both")
        baseline, squared_error = 0.0, 0.0
        if options.get("use_decaying_avg_baseline", False):
            baseline = self._decaying_average(name, signal, options.get("baseline_beta", 0.9))
        if net is not None:
            value = net(options["nn_baseline_input"].detach())
        if value is not None:
            value = torch.as_tensor(value, dtype=signal.dtype, device=signal.device)
            if not _broadcasts_to(value.shape, signal.shape):
                raise ValueError(f"guide site {name!r}: the baseline has shape {tuple(value.shape)}, which does not "
                                 f"broadcast to the learning signal's {tuple(signal.shape)} (the site's batch shape)")
            baseline = baseline + value
            squared_error = ((signal - baseline) ** 2).sum()
        return baseline, squared_error

    def _decaying_average(self, name: str, signal: torch.Tensor, beta: float):
        """The average of earlier steps' mean signal (0.0 at the first step), then updated with this one."""
        old = self.averages.get(name)
        mean = signal.detach().mean()
        self.averages[name] = mean if old is None else beta * old + (1.0 - beta) * mean
        return 0.0 if old is None else old


def _broadcasts_to(shape, target) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without growing it."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False
