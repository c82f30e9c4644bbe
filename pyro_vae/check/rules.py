"""The contract's rules on one run of a pair: each function checks one rule on the traces of the
guide and of the model replayed against it, and raises :class:`ModelGuideError` naming the site.
"""

from __future__ import annotations

import torch

from .errors import ModelGuideError

__all__ = [
    "check_call_signature",
    "check_data",
    "check_data_plate",
    "check_enumeration",
    "check_finite_log_densities",
    "check_latent_site",
    "check_observations",
    "check_observed_site_exists",
    "check_same_latent_sites",
    "distribution_name",
]


def distribution_name(fn) -> str:
    """The distribution's own name, through Independent/Expanded/Masked wrappers."""
    while hasattr(fn, "base_dist") and type(fn).__name__ in ("Independent", "ExpandedDistribution",
                                                              "MaskedDistribution"):
        fn = fn.base_dist
    return type(fn).__name__


def check_data(data) -> None:
    """``data`` is a non-empty ``(num_datapoints, ...)`` tensor."""
    if not isinstance(data, torch.Tensor) or data.dim() < 2:
        got = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ModelGuideError(f"data must be a (num_datapoints, ...) tensor, got {got}")
    if data.shape[0] == 0:
        raise ModelGuideError("data is empty")


def check_call_signature(model, data: torch.Tensor) -> None:
    """Call signature: a shipped pair (a ``PairModule``) says what ``x`` it takes."""
    check_input = getattr(getattr(model, "__self__", None), "check_input", None)
    if callable(check_input):
        try:
            check_input(data)
        except ValueError as e:
            raise ModelGuideError(str(e)) from e


def check_observed_site_exists(observed: dict) -> None:
    """Observed site: the model has at least one."""
    if not observed:
        raise ModelGuideError("the model has no observed site: call pyro.sample(name, likelihood, obs=x)")


def _data_plate_size(site, data_plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            return frame.size
    return None


def check_data_plate(guide_sites: dict, model_sites: dict, data_plate: str, batch: int) -> None:
    """The data plate: every site lies inside it, and its size is the batch's."""
    # the guide first: replay copies the guide's plate sizes into the model
    for role, sites in (("guide", guide_sites), ("model", model_sites)):
        for name, site in sites.items():
            size = _data_plate_size(site, data_plate)
            if size is None:
                raise ModelGuideError(
                    f"{role} site {name!r} is not inside pyro.plate({data_plate!r}, batch): every "
                    "site of a datapoint must be, so that estimates stay per datapoint")
            if size != batch:
                raise ModelGuideError(
                    f"{role} site {name!r}: plate {data_plate!r} has size {size} but the batch has "
                    f"{batch} datapoints; declare pyro.plate({data_plate!r}, x.shape[0])")


def check_same_latent_sites(latent: dict, guide_sites: dict, observed: dict) -> None:
    """Latent sites: the guide samples exactly the model's unobserved sites."""
    for name in latent.keys() - guide_sites.keys():
        raise ModelGuideError(f"latent site {name!r} of the model has no site in the guide")
    for name in guide_sites.keys() - latent.keys():
        where = "is observed in the model" if name in observed else "is not in the model"
        raise ModelGuideError(f"guide site {name!r} {where}; the guide must sample exactly the model's "
                              "latent sites")


def check_enumeration(enumerated: list, guide_sites: dict, elbo, data_plate: str, label=None) -> None:
    """Enumeration: a guide site marked for parallel enumeration (``@config_enumerate``) is
    enumerated only by ``"enum"`` (and the estimators, ``elbo=None``); the other objectives would
    sample it as if the mark were not there (``label`` names the objective in the message). It must
    lie directly in the data plate."""
    if enumerated and elbo not in (None, "enum"):
        raise ModelGuideError(
            f"guide site {enumerated[0]!r} is marked for enumeration (config_enumerate or "
            f"infer={{'enumerate': 'parallel'}}) but elbo {label or elbo!r} would sample it as if the mark were not "
            f"there: train with elbo=\"enum\" (TraceEnum_ELBO), or remove the mark to sample the site")
    for name in enumerated:
        nested = [f.name for f in guide_sites[name]["cond_indep_stack"] if f.vectorized and f.name != data_plate]
        if nested:
            raise ModelGuideError(
                f"enumerated guide site {name!r} lies in plate(s) {nested} nested in {data_plate!r}: the "
                f"per-datapoint estimators (test ELBO, log p(x)) sum an enumerated site once per datapoint; "
                f"enumerate only sites directly in pyro.plate({data_plate!r}), or sample this one "
                f"(infer={{'enumerate': None}})")


def _innermost(fn):
    """``fn`` without its ``Independent``, ``Expanded`` and ``Masked`` wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def check_latent_site(name: str, g: dict, m: dict, elbo: str | None) -> None:
    """Latent sites: same batch and event shapes in guide ``g`` and model ``m``, guide draws in
    the model's support, and ``rsample`` under ``iwae``."""
    for what in ("batch_shape", "event_shape"):
        gs, ms = getattr(g["fn"], what), getattr(m["fn"], what)
        if tuple(gs) != tuple(ms):
            raise ModelGuideError(f"site {name!r}: the guide's {what} {tuple(gs)} differs from the "
                                  f"model's {tuple(ms)}")
    if not bool(m["fn"].support.check(g["value"]).all()):
        raise ModelGuideError(f"site {name!r}: the guide draws values outside the support of the "
                              f"model's {distribution_name(m['fn'])} distribution")
    if elbo not in (None, "vq") and getattr(_innermost(g["fn"]), "straight_through_only", False):
        raise ModelGuideError(f"guide site {name!r} ({distribution_name(g['fn'])}) is a nearest-code point mass that "
                              f"the encoder reaches only through the straight-through estimator: the {elbo} "
                              "objective would give the encoder no gradient; train with elbo=\"vq\" "
                              "(objectives.VQVAELoss), the pair's default_elbo")
    if elbo == "iwae" and not g["fn"].has_rsample:
        raise ModelGuideError(f"guide site {name!r} ({distribution_name(g['fn'])}) is not reparameterizable, "
                              "but the iwae objective and the gradient estimators (stl, dreg, ...) need rsample(): "
                              "use elbo=\"trace\" (score-function gradients) or a reparameterizable (e.g. relaxed) "
                              "latent")


def check_observations(name: str, site: dict, data: torch.Tensor, inputs: list = ()) -> None:
    """Observed site: every datapoint is finite and inside the support of the likelihood. The
    site's values are checked on every row where they are ``data`` or one of the per-datapoint
    ``inputs`` ``(N, ...)`` (labels, say: the site observed their first rows), else on the check batch."""
    # the support does not depend on parameters: check every datapoint, not only the batch
    values = data if tuple(site["value"].shape[-data.dim() + 1:]) == tuple(data.shape[1:]) else \
        next((full for full in inputs if _observes(site["value"], full)), site["value"])
    if values.is_floating_point():
        nonfinite = ~torch.isfinite(values).reshape(values.shape[0], -1).all(-1)
        if bool(nonfinite.any()):
            raise ModelGuideError(f"observed site {name!r}: {int(nonfinite.sum())} of {values.shape[0]} "
                                  "datapoints hold NaN or inf values; remove or repair them")
    inside = site["fn"].support.check(values)
    if not bool(inside.all()):
        bad = int((~inside).sum())
        raise ModelGuideError(
            f"observed site {name!r}: {bad} of {inside.numel()} datapoints lie outside the support of "
            f"{distribution_name(site['fn'])}; e.g. grey pixels under a Bernoulli "
            "likelihood: binarize the data or choose a likelihood for grey levels")


def _observes(value: torch.Tensor, full: torch.Tensor) -> bool:
    """Whether an observed value is the first rows of the per-datapoint tensor ``full``."""
    part = full[: value.shape[0]] if value.dim() else full[:0]
    return value.shape == part.shape and value.dtype == part.dtype and torch.equal(value, part)


def check_finite_log_densities(sites) -> None:
    """Every sample site of guide and model has a finite log-density on the check batch;
    ``sites`` holds ``(role, name, site)``."""
    for role, name, site in sites:
        log_prob = site["fn"].log_prob(site["value"])
        if not bool(torch.isfinite(log_prob).all()):
            raise ModelGuideError(f"{role} site {name!r}: log-density is not finite on the check batch")
