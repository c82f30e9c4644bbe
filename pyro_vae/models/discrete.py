r"""Discrete latent variables, three ways: relaxed (Concrete / Gumbel-softmax), sampled with
score-function gradients (with or without baselines), or summed out exactly by enumeration.

* :class:`ConcreteVAE` (Jang et al. 2017; Maddison et al. 2017): ``latent_dim`` categorical
  variables of ``num_categories`` values each, relaxed to the simplex at a temperature ``tau``
  (a tensor input of the pair, annealed by :class:`TemperatureSchedule`). Reparameterized:
  pathwise gradients, ``iwae`` allowed.
* :class:`BernoulliVAE`: ``latent_dim`` binary latents, one Bernoulli site per bit. Sampled
  (``elbo="trace"``: score-function gradients; with ``baseline="constant"|"neural"`` and
  :class:`~pyro_vae.objectives.baselines.TraceBaseline_ELBO`, with Pyro's baselines) or, with
  ``enumerate=True`` and ``elbo="enum"``, summed over all ``2^latent_dim`` states exactly.

**Which bound each trains.** With ``z`` the discrete latents and ``s`` their relaxation:

=============================  =====================================================================
pair                           objective (nats per datapoint)
=============================  =====================================================================
``ConcreteVAE``                the *relaxed* ELBO ``E_q[log p(x | s) + log p_tau(s) - log q_tau(s | x)]``,
                               a bound on ``log p_tau(x)`` of the relaxed model (decoder fed ``s``),
                               not on the discrete model's ``log p(x)``; Concrete densities for prior
                               and guide, as Maddison et al. (2017) advise for the relaxed objective
``ConcreteVAE``, straight-     the same densities, the decoder fed the one-hot ``argmax(s)``: a bound
through                        on the *discrete* ``log p(x) = log sum_z p(z) p(x | z)``, because
                               ``argmax(s)`` of the relaxed prior is distributed as the discrete prior
                               at every temperature (the Gumbel-max trick); its gradient is biased
``BernoulliVAE``               the discrete ELBO ``E_q[log p(x, z) - log q(z | x)]``; with ``enum``
                               the expectation is exact
=============================  =====================================================================

:meth:`ConcreteVAE.discrete_model` / :meth:`ConcreteVAE.discrete_guide` are the discrete pair with
the same nets (one-hot categorical latents): their ELBO and ``log p̂(x)`` are the discrete model's,
whatever the pair was trained with. For a small state space, ``exact_log_likelihood`` of each
pair sums the discrete ``log p(x)`` over every state.

**Why one Bernoulli site per bit.** Pyro enumerates a site through ``enumerate_support``, which a
``Bernoulli(...).to_event(1)`` site does not have (``TraceEnum_ELBO`` raises "Enumeration over
cartesian product is not implemented"). One site per bit, each of event shape ``()``, is enumerated in its own
dim left of the plates, so the decoder sees the ``2^d`` states as a ``(2, ..., 2, 1, d)`` tensor
without a batch dim: it decodes each state once per step, not once per datapoint. A single
``Categorical`` over ``2^d`` states would enumerate the same way, but it cannot be sampled
factor by factor for a larger ``d`` (its ``2^d`` logits), and its guide would not be the
mean-field Bernoulli guide of the score-function runs.

References:
    Jang, Gu & Poole (2017), *Categorical Reparameterization with Gumbel-Softmax*,
    https://arxiv.org/abs/1611.01144. Maddison, Mnih & Teh (2017), *The Concrete Distribution*,
    https://arxiv.org/abs/1611.00712. Mnih & Gregor (2014), *Neural Variational Inference and
    Learning in Belief Networks*, https://arxiv.org/abs/1402.0030.

The pairs live in :mod:`pyro_vae.models.concrete` and :mod:`pyro_vae.models.bernoulli`; this
module holds what they share: the state-space limit, the exact sum over states, the nets' widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..nets import mlp

__all__ = ["MAX_ENUMERATED_STATES", "check_states", "exact_log_likelihood", "layer_widths", "mlp_head"]

MAX_ENUMERATED_STATES = 2 ** 10
"""The most states a pair enumerates (``enumerate=True``) or :meth:`exact_log_likelihood` sums: each
state's pixels meet each datapoint's, ``states x batch x D`` numbers per step."""



def layer_widths(hidden_dim: int | Sequence[int]) -> list[int]:
    """The hidden widths as a list (one int: one layer)."""
    return [hidden_dim] if isinstance(hidden_dim, int) else list(hidden_dim)


def mlp_head(in_dim: int, widths: list[int], out_dim: int) -> nn.Sequential:
    """``in_dim -> widths (tanh) -> out_dim`` (linear): ``(..., in_dim) -> (..., out_dim)``."""
    return nn.Sequential(mlp([in_dim, *widths]), nn.Linear(widths[-1], out_dim))


def exact_log_likelihood(likelihood, decoder, states: torch.Tensor, log_prior: torch.Tensor,
                          x: torch.Tensor) -> torch.Tensor:
    """``log sum_z p(z) p(x | z)`` per row of ``x`` ``(batch, D)`` over the ``(S, ...)`` decoder
    inputs ``states`` of prior log-probabilities ``log_prior`` ``(S,)``; ``(batch,)`` nats."""
    chunk = max(1, 2 ** 24 // max(1, x.numel()))  # states per pass: about 16M numbers at once
    terms = []
    for start in range(0, states.shape[0], chunk):
        out = decoder(states[start:start + chunk]).unsqueeze(-2)  # (s, 1, D * params): one state, every row
        terms.append(likelihood(out).log_prob(x) + log_prior[start:start + chunk, None])
    return torch.logsumexp(torch.cat(terms), 0)


def check_states(num_states: int, what: str) -> None:
    if num_states > MAX_ENUMERATED_STATES:
        raise ValueError(f"{what} has {num_states} states, more than MAX_ENUMERATED_STATES = {MAX_ENUMERATED_STATES}; "
                         "estimate log p(x) by importance sampling instead (pyro_vae.estimate_log_likelihood)")


