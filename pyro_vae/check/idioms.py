"""Pyro idioms that the package cannot compute correctly, refused up front and by name.

* an **autoguide** (``AutoNormal``, ``AutoDelta``, ...): not amortized, one set of parameters per
  latent value of the first batch (:func:`check_not_autoguide`, before the pair runs);
* a **subsampled data plate** (``pyro.plate("data", N, subsample_size=b)``): the trainer and the
  estimators minibatch themselves (:func:`subsample_refusal`, from what :class:`SiteRecorder` saw,
  also when the run failed on Pyro's shape checks);
* a **global latent** (a latent site outside the data plate, a ``PyroSample`` weight):
  :func:`check_no_global_latents`, and :func:`missing_latent_refusal` when the model failed after
  drawing a latent the guide does not sample;
* a **point-mass guide site** (``Delta``): :func:`check_no_point_mass`;
* for importance sampling only (:func:`pyro_vae.estimate_log_likelihood`), a **discrete guide site
  that gives probability 0 to values the model's prior allows** (a deterministic, one-hot posterior
  such as a VQ-VAE's nearest code): :func:`check_proposal_covers_prior`.
"""

from __future__ import annotations

import math

import pyro.infer
import torch

from ..pyro_internals import is_deterministic, site_is_subsample
from .errors import ModelGuideError
from .objective_rules import POINT_MASS_RULES
from .rules import distribution_name

__all__ = ["SiteRecorder", "check_no_global_latents", "check_no_point_mass", "check_not_autoguide",
           "check_proposal_covers_prior", "missing_latent_refusal", "point_mass_sites", "subsample_refusal"]


def check_not_autoguide(guide, data_plate: str = "data") -> None:
    """The guide is not one of Pyro's autoguides (nor a method of one)."""
    for candidate in (guide, getattr(guide, "__self__", None)):
        if isinstance(candidate, pyro.infer.autoguide.AutoGuide):
            raise ModelGuideError(
                f"the guide is a Pyro autoguide ({type(candidate).__name__}): it is not amortized, it learns one "
                "set of parameters per latent value of the batch it first sees (one per datapoint of that batch), "
                "so it cannot follow the trainer's minibatches nor give q(z | x) for new data (and a point mass "
                "such as AutoDelta's gives neither an ELBO nor a log-likelihood); write an amortized guide: an "
                "encoder network (pyro.module) that maps x to the parameters of q(z | x), sampled inside "
                f"pyro.plate({data_plate!r}, x.shape[0])")


class SiteRecorder:
    """Records every sample message of the code it watches (``with MessageHook(recorder)``), in
    order, before Pyro handles it; the messages are the live dicts, so after the run they hold
    their final ``fn`` and ``value`` (also when the run raised). For each plate's subsample site it
    also notes the sizes the code declared, ``(name, N, b or None)``, before a replay (the model
    replayed against the guide) puts the guide's indices there."""

    def __init__(self):
        self.messages = []
        self.plates = []

    def __call__(self, msg) -> None:
        if msg["type"] != "sample":
            return
        self.messages.append(msg)
        if site_is_subsample(msg):
            sub = getattr(msg["fn"], "subsample_size", None)  # pyro.plate(name, N, subsample_size=b)
            if sub is None and msg["value"] is not None and not msg["done"]:
                sub = len(msg["value"])  # pyro.plate(name, N, subsample=indices)
            self.plates.append((msg["name"], getattr(msg["fn"], "size", None), sub))

    def sites(self):
        """``(name, msg)`` of the recorded sample sites, without plates' subsample sites and
        deterministic sites."""
        return [(m["name"], m) for m in self.messages if not site_is_subsample(m) and not is_deterministic(m)]

    def subsampled(self, data_plate: str):
        """``(N, b)`` when the code declared the plate ``data_plate`` with ``N`` datapoints
        subsampled to ``b < N``, else ``None``."""
        for name, full, sub in self.plates:
            if name == data_plate and isinstance(full, int) and isinstance(sub, int) and 0 < sub < full:
                return full, sub
        return None


def subsample_refusal(data_plate: str, full: int, sub: int) -> ModelGuideError:
    """The refusal of a data plate of ``full`` datapoints subsampled to ``sub``."""
    return ModelGuideError(
        f"plate {data_plate!r} is subsampled (pyro.plate({data_plate!r}, {full}, subsample_size={sub}) or "
        f"subsample=): the trainer and the estimators pass minibatches themselves and report numbers per "
        f"datapoint, so a subsampled data plate would multiply the loss by {full}/{sub} and draw rows that do "
        f"not match x; write pyro.plate({data_plate!r}, x.shape[0]) without subsample_size or subsample")


_GLOBAL_WHY = ("the per-datapoint ELBO and the log-likelihood estimator assume every latent belongs to one "
               "datapoint (a global latent's KL would be counted once per minibatch, and log p(x_n) does not "
               "factor over datapoints)")


def _global_way_out(data_plate: str) -> str:
    return (f"make it a parameter (pyro.param, or a network weight instead of a PyroSample), or move it inside "
            f"pyro.plate({data_plate!r}, x.shape[0]) with one value per datapoint")


def check_no_global_latents(guide_sites: dict, latent: dict, data_plate: str, batch: int) -> None:
    """Every latent site (of guide ``guide_sites`` and model ``latent``, ``{name: site}``) lies in
    the data plate; one outside it whose value has one row per datapoint of the ``batch`` is named
    as a forgotten plate, any other as a global latent."""
    for role, sites in (("guide", guide_sites), ("model", latent)):
        for name, site in sites.items():
            if any(frame.name == data_plate for frame in site["cond_indep_stack"]):
                continue
            where = f"{role} site {name!r} is not inside pyro.plate({data_plate!r}, batch)"
            value = site["value"]
            if value.dim() > 0 and value.shape[0] == batch:
                raise ModelGuideError(
                    f"{where}, but it has one row per datapoint (shape {tuple(value.shape)}): declare it inside "
                    f"pyro.plate({data_plate!r}, x.shape[0]) (every site of a datapoint must be, so that estimates "
                    f"stay per datapoint), with .to_event() for the dims right of the batch")
            raise ModelGuideError(f"{where}, so it is a global latent, shared by all datapoints: {_GLOBAL_WHY}; "
                                  f"{_global_way_out(data_plate)}")


def missing_latent_refusal(model_recorder: SiteRecorder, guide_names, data_plate: str, error: Exception):
    """When the model raised ``error``: the refusal naming the first latent it drew that the guide
    (site names ``guide_names``) does not sample, e.g. a ``PyroSample`` weight of a Bayesian layer
    broadcast over the data plate; ``None`` when there is none."""
    for name, msg in model_recorder.sites():
        if not msg["is_observed"] and name not in guide_names:
            return ModelGuideError(
                f"model site {name!r} is a latent that the guide does not sample, and the model failed after "
                f"drawing it ({error}); if it is a weight of a Bayesian layer (PyroSample) it is a global "
                f"latent: {_GLOBAL_WHY}; {_global_way_out(data_plate)}")
    return None


def check_no_point_mass(guide_sites: dict, latent: dict, elbo: str | None = None, label=None) -> None:
    """No latent guide site is a point mass (``Delta``, through Independent/Masked wrappers) unless
    the model's site is one too (a deterministic latent: the guide is then exact, and the weights
    are ``p(x)`` itself), or the objective's rule set ``elbo`` reads only the guide's draws
    (:data:`~pyro_vae.check.objective_rules.POINT_MASS_RULES`: a WAE's deterministic encoder).
    ``label`` names the objective in the message (``None``: the estimators)."""
    if elbo in POINT_MASS_RULES:
        return
    for name, site in guide_sites.items():
        prior = latent.get(name)  # a site the model lacks is named by check_same_latent_sites
        if distribution_name(site["fn"]) == "Delta" and prior is not None and distribution_name(prior["fn"]) != "Delta":
            where = (f"elbo {label!r} would train on it" if label is not None else
                     "importance sampling needs a proposal with a density")
            raise ModelGuideError(
                f"guide site {name!r} is a point mass (Delta): log q(z | x) is 0 at its point, so the "
                f"'bound' is log p(x, z*), a MAP objective, neither an ELBO nor (for the estimators) a "
                f"log-likelihood; give the site a distribution with a density (e.g. Normal(loc, scale) with "
                f"both from the encoder), or, for MAP, make z a network output instead of a latent ({where}). "
                f"A Wasserstein autoencoder's deterministic encoder trains with elbo=\"wae\" (WAELoss: "
                f"reconstruction + MMD penalty) and has neither an ELBO (KL(q || p) is infinite) nor a "
                f"log-likelihood estimate: report pyro_vae.objectives.wae.wae_metrics, or give it a "
                f"stochastic encoder")


def point_mass_sites(guide_sites: dict, latent: dict) -> list[str]:
    """The guide sites that are point masses (``Delta``) where the model's site is a continuous
    distribution: ``KL(q || p)`` is infinite there (a point has no density with respect to
    Lebesgue measure), so the ELBO of such a guide is ``-inf``."""
    return [name for name, site in guide_sites.items() if distribution_name(site["fn"]) == "Delta"
            and name in latent and distribution_name(latent[name]["fn"]) != "Delta"
            and not latent[name]["fn"].support.is_discrete]


def check_proposal_covers_prior(guide_sites: dict, latent: dict) -> None:
    """Importance sampling's condition, for the discrete latent sites the guide samples (those it
    enumerates are summed exactly, and continuous ones have densities; a ``Delta`` is refused by
    :func:`check_no_point_mass`): ``q(z | x) > 0`` wherever ``p(z) > 0``, checked value by value
    over the site's support at every datapoint and position of the batch. "Probability 0" is read
    from the parameters the distribution was built from (``probs`` of 0, logits of ``-inf``), so a
    probability that merely underflowed is not one.

    A proposal that misses part of the prior's support gives weights of that part only, and
    ``log mean w`` estimates the log-probability of ``x`` *and* that part: a lower bound, not
    ``log p(x)``, at any number of samples. A point mass (all probability on one value, as a VQ-VAE's
    nearest-code guide) gives the ELBO itself, with K identical weights, so an ESS of K and no
    k-hat warning: it would pass for a perfect estimate. (The ELBO is still valid there:
    :func:`pyro_vae.evaluate_elbo` reports it.)"""
    for name, site in guide_sites.items():
        prior = latent.get(name)
        if prior is None or site["infer"].get("enumerate") == "parallel":
            continue
        q, p = _elementwise(site["fn"]), _elementwise(prior["fn"])
        if not getattr(q, "has_enumerate_support", False) or distribution_name(q) == "Delta":
            continue
        values = q.enumerate_support(expand=False)
        missed = _impossible(q, values) & ~_impossible(p, values)
        if bool(missed.any()):
            share = float(missed.any(0).double().mean())
            raise ModelGuideError(
                f"guide site {name!r} ({distribution_name(site['fn'])}) gives probability 0 to values that the "
                f"model's prior gives positive probability (at {100 * share:.0f}% of its positions on the check "
                f"batch): importance sampling with it as the proposal never draws them, so log p̂(x) "
                f"would be a lower bound (for a point mass such as a VQ-VAE's nearest code, the ELBO itself, with K "
                f"identical weights and a perfect-looking ESS), not an estimate of log p(x). Report the ELBO "
                f"(pyro_vae.evaluate_elbo: for a VQ-VAE with a uniform prior, reconstruction - L log K), or give "
                f"the guide positive probability wherever the prior has it")


def _elementwise(fn):
    """``fn`` without its ``Independent``, ``Expanded`` and ``Masked`` wrappers: ``log_prob`` then keeps
    every position, and the support is the same."""
    while type(fn).__name__ in ("Independent", "ExpandedDistribution", "MaskedDistribution"):
        fn = fn.base_dist
    return fn


def _impossible(fn, values: torch.Tensor) -> torch.Tensor:
    """Whether ``fn`` gives probability exactly 0 to each of ``values`` (``enumerate_support(expand=False)``,
    one value per leftmost index). The categorical and Bernoulli families are read from the parameters
    they were built from: ``probs`` of 0 (which ``log_prob`` would clamp to a tiny positive number), or
    logits of ``-inf`` (``+inf`` for a Bernoulli's 0), never from probabilities that underflowed."""
    base = fn._categorical if isinstance(fn, torch.distributions.OneHotCategorical) else fn
    if isinstance(base, torch.distributions.Categorical):
        zero = base.probs == 0 if base._param is base.probs else base.logits == -math.inf
        return zero.movedim(-1, 0)
    if isinstance(fn, torch.distributions.Bernoulli):
        if fn._param is fn.probs:
            return torch.where(values == 1, fn.probs == 0, fn.probs == 1)
        return torch.where(values == 1, fn.logits == -math.inf, fn.logits == math.inf)
    return fn.log_prob(values) == -math.inf
