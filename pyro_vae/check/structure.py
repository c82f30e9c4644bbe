r"""Which latent sites' analytic KL is a term of the ELBO, decided from the dependency structure of
the model and guide programs (not from site names or their order).

**Derivation.** Write ``pa_p(i)`` for the latent sites that the model's distribution at ``z_i``
reads, and ``pa_q(i)`` for those the guide's reads (the data ``x`` is fixed throughout). The ELBO is
a sum of per-site terms,

.. math::
    \mathcal{L}(x) = \mathbb{E}_q[\log p(x \mid \cdot)]
        + \sum_i \mathbb{E}_q\big[\log p(z_i \mid pa_p(i)) - \log q(z_i \mid pa_q(i))\big].

With ``A = pa_p(i) ∪ pa_q(i)`` the ``i``-th term is ``E_{q(A)} E_{q(z_i | A)}[log p - log q]``.
The mean-field objective replaces it by ``-E_{q(A)} KL(q(z_i | pa_q(i)) || p(z_i | pa_p(i)))``,
which integrates ``z_i`` against ``q(z_i | pa_q(i))``. The two are equal for every value of the
parameters (so their gradients are equal too) when ``q(z_i | A) = q(z_i | pa_q(i))``, i.e. when
``z_i`` is independent of ``pa_p(i)`` given ``pa_q(i)`` under the guide. By the local Markov
property of the guide's graph this holds whenever **no model parent of** ``z_i`` **is a guide
descendant of** ``z_i``: then every site in ``A`` is a non-descendant of ``z_i``. When a model
parent is a guide descendant, ``q(z_i | A)`` depends on it in general and the "KL" is taken
against ``p(z_i | z_j)`` at a ``z_j`` drawn *given* ``z_i``: another objective, not a noisier
estimate of the same one. The shipped :class:`~pyro_vae.models.HierarchicalVAE` (model
``z2 -> z1 -> x``, guide ``x -> z1 -> z2``) is the canonical case: the KL of ``z1`` is not a
term of its ELBO, the KL of ``z2`` (no model parent) is. Orders do not matter: a guide that
draws ``z1`` and ``z2`` independently from ``x``, in any order, passes for both sites.

Three further conditions are not structural and are checked where the traces are at hand (see
:mod:`pyro_vae.objectives.meanfield`): torch has the closed form for the pair of distributions;
model and guide put the same scale and mask on the site (the KL carries one, the sampled term each
side's own); and, for guide sites that are not reparameterizable, the score-function terms use as
their cost the terms the objective actually sums (analytic KLs included).

The dependencies are read with Pyro's provenance tracking (``pyro.infer.inspect.get_dependencies``:
which sample sites each site's log-density depends on), run on the guide and on the model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from pyro import poutine
from pyro.infer.inspect import get_dependencies

__all__ = ["PairStructure", "StructureCache", "pair_structure"]


@dataclass(frozen=True)
class PairStructure:
    """Direct dependencies between the latent sites of a pair.

    Attributes:
        model_parents: ``{latent site: latent sites its model distribution reads}``.
        guide_parents: ``{latent site: latent sites its guide distribution reads}``.
    """

    model_parents: Mapping[str, frozenset]
    guide_parents: Mapping[str, frozenset]

    def guide_descendants(self, site: str) -> frozenset:
        """The latent sites that the guide draws, directly or not, from ``site``'s value."""
        found, frontier = set(), {site}
        while frontier:
            frontier = {child for child, parents in self.guide_parents.items()
                        if parents & frontier and child not in found}
            found |= frontier
        return frozenset(found)

    def kl_blockers(self, site: str) -> frozenset:
        """Model parents of ``site`` that are guide descendants of it: empty exactly when its
        analytic KL is a term of the ELBO (module docstring)."""
        return self.model_parents.get(site, frozenset()) & self.guide_descendants(site)

    @property
    def analytic_kl_sites(self) -> frozenset:
        """The latent sites whose analytic KL may replace the sampled ``log p - log q``."""
        return frozenset(site for site in self.guide_parents if not self.kl_blockers(site))

    def refusal(self, site: str, objective: str) -> str:
        """Why ``objective`` cannot use the analytic KL of ``site``, and the way out."""
        blockers = ", ".join(repr(b) for b in sorted(self.kl_blockers(site)))
        return (f"latent site {site!r}: {objective} needs the analytic KL(q({site} | ...) || p({site} | ...)) "
                f"per datapoint, but the model's distribution of {site!r} depends on {blockers}, which the "
                f"guide draws after and from {site!r}; that KL is then not a term of the ELBO (a different "
                f"objective, see pyro_vae.check.structure). Train with elbo=\"trace\" (no free bits), or write "
                f"the guide so that it draws {blockers} before {site!r} and not from it (top-down, as the model)")


def pair_structure(model, guide, *args, **kwargs) -> PairStructure:
    """The :class:`PairStructure` of ``model`` and ``guide`` called as ``fn(*args, **kwargs)``.

    Runs each program once with provenance tracking, without gradients, blocked from any outer
    effect handler, and with the RNG state restored (``get_dependencies`` forks it).
    """
    with poutine.block():
        guide_deps = get_dependencies(guide, args, kwargs)["prior_dependencies"]
        model_deps = get_dependencies(model, args, kwargs)["prior_dependencies"]
    latent = frozenset(guide_deps)
    return PairStructure(
        model_parents={site: frozenset(model_deps.get(site, ())) & latent - {site} for site in latent},
        guide_parents={site: frozenset(deps) & latent - {site} for site, deps in guide_deps.items()},
    )


class StructureCache:
    """:func:`pair_structure` per pair, computed at the pair's first call and then reused: how the
    objectives learn, before their first step, which sites' KLs they may take in closed form.

    Keyed by ``(model, guide, number of positional arguments, keyword names)``; keeps the ``size``
    most recent pairs.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, model, guide, args: tuple, kwargs: dict) -> PairStructure:
        """The pair's structure, computed now if this pair has not been seen."""
        key = (model, guide, len(args), tuple(sorted(kwargs)))
        if key not in self._entries:
            self._entries[key] = pair_structure(model, guide, *args, **kwargs)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return self._entries[key]
