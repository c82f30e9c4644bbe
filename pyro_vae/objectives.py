"""Training objectives by name: ``trace``, ``meanfield``, ``iwae``.

Sign convention, everywhere in pyro-vae: an *ELBO* or *bound* is a lower bound on
``log p(x)`` in nats per datapoint (higher is better, typically negative, e.g. -100 on MNIST);
a *loss* is its negative, as Pyro's ELBO classes return it.

=========  ============================  ==============================================
name       class                         estimator of the per-datapoint bound
=========  ============================  ==============================================
trace      :class:`Trace_ELBO`           Monte Carlo KL: log p(x,z) - log q(z|x), z ~ q
meanfield  :class:`TraceMeanField_ELBO`  analytic KL(q || p) where it exists
iwae       :class:`IWAE_ELBO`            log (1/K) sum_k w_k  (Burda et al. 2015)
=========  ============================  ==============================================

``Trace_ELBO`` and ``TraceMeanField_ELBO`` here are Pyro's classes (subclasses, same estimators,
same gradients) whose loss stays a device tensor: Pyro's read every site's log-density to the
host with ``.item()`` and check the loss for NaN in the forward and backward pass, up to seven
host syncs per step on a GPU.

Two modifications of the KL term for any pair, outside the table:

* **KL warm-up / annealing** (Bowman et al. 2016, Sønderby et al. 2016): :func:`scale_latents`
  multiplies the log-densities of every *latent* site, in model and guide alike, by a factor
  ``beta`` (the trainer raises it linearly from ``1/N`` to 1 over ``N`` steps). Both functions
  must be scaled: ``TraceMeanField_ELBO`` reads the guide's scale for the analytic KL.
* **Free bits** (Kingma et al. 2016): :class:`FreeBitsELBO` replaces the KL of each latent
  dimension, averaged over the minibatch, by ``max(lambda, KL_j)``.
"""

from __future__ import annotations

import functools
import math
import warnings

import pyro.distributions as dist
import pyro.infer
import pyro.ops.jit
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence

from .importance import sample_sites, guess_max_plate_nesting, log_importance_weights
from .names import unknown_name

__all__ = ["ELBO_NAMES", "FreeBitsELBO", "IWAE_ELBO", "JitELBO", "TraceMeanField_ELBO", "Trace_ELBO", "get_elbo",
           "scale_latents"]

ELBO_NAMES = ("trace", "meanfield", "iwae")


class _ValueFromDifferentiableLoss:
    """Pyro's ``loss``/``loss_and_grads`` (numbers, for ``pyro.infer.SVI``) from
    ``differentiable_loss`` (a device tensor, what :func:`pyro_vae.train` calls)."""

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)


class _LossFromDifferentiableLoss(_ValueFromDifferentiableLoss, ELBO):
    """An ELBO that defines only ``differentiable_loss``."""

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(f"{type(self).__name__} computes its loss in differentiable_loss")


class Trace_ELBO(_ValueFromDifferentiableLoss, pyro.infer.Trace_ELBO):
    """Pyro's ``Trace_ELBO`` (the same estimator and gradients, score-function terms included)
    with the loss kept on the device: ``differentiable_loss`` reads nothing to the host.

    Its value is ``-(log p(x, z) - log q(z | x))`` summed over the batch (scaled as the sites
    are), averaged over the particles; its gradient is that of Pyro's surrogate loss.
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        """``(loss, surrogate loss)`` of one particle, both tensors (Pyro's reads the first with
        ``.item()``, one host sync per site)."""
        elbo, surrogate, log_r = 0.0, 0.0, None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            _, score_function_term, entropy_term = site["score_parts"]
            elbo = elbo - site["log_prob_sum"]
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                surrogate = surrogate + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()
        return -torch.as_tensor(elbo).detach(), -surrogate

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss (value) with the surrogate's gradient, as a device tensor, no host sync."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            value, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
            # the surrogate's value differs from the loss where score-function terms enter
            loss = loss + (value + (surrogate - surrogate.detach())) / self.num_particles
        return loss


class TraceMeanField_ELBO(Trace_ELBO, pyro.infer.TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO`` (the analytic KL(q || p) of each latent site where torch
    has it, the one-sample estimate otherwise; guides fully reparameterized) with the loss kept
    on the device, as :class:`Trace_ELBO`."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        """``(loss, surrogate loss)`` of one particle: the same tensor, detached and not."""
        elbo = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            try:
                kl = scale_and_mask(kl_divergence(guide_site["fn"], model_site["fn"]),
                                    scale=guide_site["scale"], mask=guide_site["mask"])
                elbo = elbo - (kl.sum() if torch.is_tensor(kl) else kl * guide_site["fn"].batch_shape.numel())
            except NotImplementedError:
                elbo = elbo + model_site["log_prob_sum"] - guide_site["score_parts"].entropy_term.sum()
        for name, guide_site in guide_trace.nodes.items():  # auxiliary sites of the guide
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                if is_validation_enabled():
                    check_fully_reparametrized(guide_site)
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
        elbo = torch.as_tensor(elbo)
        return -elbo.detach(), -elbo


class IWAE_ELBO(_LossFromDifferentiableLoss):
    r"""The importance-weighted bound of Burda et al. (2015), per datapoint.

    .. math::
        \mathcal{L}_K(x_n) = \mathbb{E}\Big[\log \frac{1}{K} \sum_{k=1}^K
            \frac{p(x_n, z_k)}{q(z_k \mid x_n)}\Big],\quad z_k \sim q(z \mid x_n)

    The loss is ``-sum_n s * L_K(x_n)`` over the batch, where ``s`` is the common scale of the
    datapoint's sites (``N / B`` under a subsampled ``pyro.plate("data", N, subsample_size=B)``),
    applied *after* the logsumexp. Pyro's ``RenyiELBO(alpha=0)`` instead takes the logsumexp of
    already-scaled log-densities, which is a different (wrong) number whenever ``s != 1``.

    Requires a reparameterizable guide, and every site of a datapoint to carry the same scale
    (a ``poutine.scale`` on the latent only, as in beta-VAEs, has no consistent IWAE analogue
    and is refused). ``num_particles`` is ``K``; particles are vectorized.
    """

    def __init__(self, num_particles: int = 5, data_plate: str = "data", max_plate_nesting: int | None = None):
        super().__init__(num_particles=num_particles, vectorize_particles=True)
        self.data_plate = data_plate
        self._nesting = max_plate_nesting

    def _log_weights(self, model, guide, args, kwargs):
        if self._nesting is None:
            self._nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
        w = log_importance_weights(
            model, guide, *args, num_particles=self.num_particles, max_plate_nesting=self._nesting,
            data_plate=self.data_plate, require_reparam=True, **kwargs,
        )
        if w.scale is None:
            raise ValueError(
                "IWAE: the sites of a datapoint carry different scales (poutine.scale on some "
                "sites only); the importance-weighted bound is defined for a common scale"
            )
        return w

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-sum_n scale * [logsumexp_k log w_kn - log K]``, differentiable."""
        w = self._log_weights(model, guide, args, kwargs)
        bound = torch.logsumexp(w.log_weights, dim=0) - math.log(self.num_particles)
        return -(w.scale * bound).sum()


class _LatentScale(Messenger):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.factor


def scale_latents(fn, factor):
    """``fn`` with the log-density of every unobserved sample site multiplied by ``factor``.

    ``factor`` is a number, or a zero-argument callable read at each call (for a schedule).
    Wrap model *and* guide. A factor of 0 is refused by ``TraceMeanField_ELBO``: start warm-up
    schedules above 0.
    """

    def scaled(*args, **kwargs):
        value = factor() if callable(factor) else factor
        with _LatentScale(value):
            return fn(*args, **kwargs)

    return scaled


def _kl_terms(guide_site, model_site) -> torch.Tensor:
    """KL(q || p) per latent dimension ``(batch, d)`` where both are diagonal and analytic, else
    the one-sample estimate per site ``(batch, 1)``, in nats."""
    q, p = guide_site["fn"], model_site["fn"]
    if isinstance(q, dist.Independent) and isinstance(p, dist.Independent) and \
            q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims == 1:
        try:
            return kl_divergence(q.base_dist, p.base_dist)
        except NotImplementedError:
            pass
    value = guide_site["value"]
    return (q.log_prob(value) - p.log_prob(value)).unsqueeze(-1)


class FreeBitsELBO(_LossFromDifferentiableLoss):
    r"""The ELBO with free bits (Kingma et al. 2016, eq. 15), per latent dimension.

    .. math::
        \tilde{\mathcal{L}} = \sum_n \mathbb{E}_q[\log p(x_n \mid z)]
            - B \sum_j \max\big(\lambda, \tfrac{1}{B} \sum_n \mathrm{KL}_j(x_n)\big)

    over a batch of ``B`` datapoints, with the analytic KL of each dimension ``j`` of a diagonal
    Normal latent (a one-sample estimate over the whole site otherwise, with threshold
    ``lambda`` times the site's dimension). Dimensions whose batch-averaged KL is below
    ``lambda`` nats get no gradient towards the prior, which prevents them from collapsing. The
    number it returns is an objective, not a bound; evaluate trained pairs with
    :func:`pyro_vae.evaluate_elbo` or :func:`pyro_vae.estimate_log_likelihood`.

    Args:
        free_bits: ``lambda`` in nats per latent dimension (>= 0; 0 gives the mean-field ELBO).
        num_particles: samples averaged per step (drawn one after the other).
    """

    def __init__(self, free_bits: float, num_particles: int = 1, max_plate_nesting: float = float("inf")):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0 nats, got {free_bits}")
        self.free_bits = float(free_bits)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        for _ in range(self.num_particles):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            for name, site in sample_sites(model_trace):
                if site["is_observed"]:
                    loss = loss - (site["scale"] * site["fn"].log_prob(site["value"])).sum()
                    continue
                kl = _kl_terms(guide_trace.nodes[name], site)
                kl = kl.reshape(-1, kl.shape[-1])
                threshold = self.free_bits * (1 if kl.shape[-1] > 1 or site["fn"].event_dim == 0
                                              else site["fn"].event_shape.numel())
                scale = guide_trace.nodes[name]["scale"]
                loss = loss + kl.shape[0] * (scale * kl.mean(0)).clamp(min=threshold).sum()
        return loss / self.num_particles


class JitELBO(_LossFromDifferentiableLoss):
    """Any objective above with its loss compiled by ``torch.jit.trace`` (``pyro.ops.jit.trace``).

    The Python work of a step (Pyro's effect handlers, trace bookkeeping, distribution objects)
    runs once, when the loss is traced; later steps run the recorded graph, which still draws
    fresh noise (the random ops are part of the graph). One graph is recorded per pair and per
    shape, dtype and device of the tensor arguments, so the last, smaller minibatch of an epoch
    gets its own. Pyro's ``JitTrace_ELBO`` does the same for ``Trace_ELBO``; this class also
    covers ``TraceMeanField_ELBO`` (Pyro 1.9's ``JitTraceMeanField_ELBO`` rebuilds its compiled
    closure at every call, so it re-traces every step) and :class:`IWAE_ELBO`.

    Only for pairs with static structure: the same sites, shapes and Python control flow at
    every call, tensors passed as positional arguments, nothing read from global state but the
    param store. Anything else is baked into the graph as a constant (a KL warm-up factor, for
    instance). :meth:`compile` checks the compiled loss against the eager one at the same RNG
    state, so a pair that traces differently is refused rather than trained wrongly.

    Args:
        elbo: the eager objective (from :func:`get_elbo`).
    """

    def __init__(self, elbo: ELBO):
        if isinstance(elbo, pyro.infer.Trace_ELBO) and not isinstance(elbo, Trace_ELBO):
            raise TypeError(  # its loss value goes through .item(), which a trace freezes as a constant
                f"JitELBO needs pyro_vae.objectives.{type(elbo).__name__.replace('Jit', '')} (a loss that stays a "
                f"tensor), not pyro.infer.{type(elbo).__name__}: build it with get_elbo(name, jit=True)")
        super().__init__(num_particles=elbo.num_particles)
        self.elbo = elbo
        self.compiled: dict = {}

    def _compiled(self, model, guide, args):
        key = (model, guide) + tuple(  # bound methods of one object compare (and hash) equal
            (tuple(a.shape), a.dtype, str(a.device)) if isinstance(a, torch.Tensor) else type(a) for a in args)
        if key not in self.compiled:
            loss = functools.partial(self.elbo.differentiable_loss, model, guide)  # tensors only: no value frozen
            self.compiled[key] = pyro.ops.jit.trace(loss, ignore_warnings=True)
        return self.compiled[key]

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The wrapped objective's loss, from the graph recorded for these argument shapes."""
        fn = self._compiled(model, guide, args)
        if fn.compiled:
            return fn(*args, **kwargs)
        with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit.trace deprecated; it still works
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* deprecated", category=FutureWarning)
            return fn(*args, **kwargs)

    def compile(self, model, guide, *args, check: tuple | None = None, rtol: float = 1e-4, **kwargs) -> None:
        """Record the graph for the shapes of ``args`` now, without drawing from the RNGs, then
        check it: the compiled and the eager loss on ``check`` (other arguments of the same
        shapes, e.g. another minibatch; default ``args``), at one RNG state that differs from
        the recording's, must agree to ``rtol``. A value the trace froze (a Python number taken
        from the data or from a random draw) shows up as a difference.

        Raises:
            ValueError: the compiled loss differs from the eager one (the pair's structure or
                constants depend on its input or on global state: train it without jit).
        """
        check = args if check is None else tuple(check)
        devices = [a.device for a in args if isinstance(a, torch.Tensor) and a.device.type == "cuda"][:1]
        with torch.random.fork_rng(devices=devices):
            self.differentiable_loss(model, guide, *args, **kwargs)  # records the graph (with autograd)
            state = torch.random.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
            eager = self.elbo.differentiable_loss(model, guide, *check, **kwargs).detach()
            torch.random.set_rng_state(state[0])
            for d, s in zip(devices, state[1]):
                torch.cuda.set_rng_state(s, d)
            compiled = self.differentiable_loss(model, guide, *check, **kwargs).detach()
        if not torch.allclose(compiled, eager, rtol=rtol, atol=0.0):
            raise ValueError(
                f"the compiled (jit) loss {float(compiled):.6g} differs from the eager loss {float(eager):.6g} at "
                f"the same random state: the pair's structure or constants depend on its input or on global "
                f"state (a Python number taken from a tensor, a branch on the data), which torch.jit.trace "
                f"records once; train it without jit")


def get_elbo(name: str, num_particles: int = 1, free_bits: float = 0.0, max_plate_nesting: int | None = None,
             jit: bool = False) -> ELBO:
    """The objective called ``name`` (see :data:`ELBO_NAMES`) with ``num_particles`` samples.

    ``max_plate_nesting``: the pair's plate depth (see
    :func:`~pyro_vae.importance.guess_max_plate_nesting`); ``None`` lets the objective guess it
    at its first call, which runs model and guide once more and so draws from the RNGs.

    Particles are vectorized. For ``trace`` and ``meanfield`` the ``K`` particles are averaged
    (a lower-variance estimate of the same bound); for ``iwae`` they tighten the bound.
    ``free_bits > 0`` (nats per latent dimension) gives :class:`FreeBitsELBO`, for ``meanfield``
    only (it needs the per-dimension analytic KL). ``jit=True`` wraps the objective in
    :class:`JitELBO` (static pairs only; give ``max_plate_nesting``).
    """
    if jit:
        return JitELBO(get_elbo(name, num_particles, free_bits, max_plate_nesting))
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    nesting = float("inf") if max_plate_nesting is None else max_plate_nesting
    if free_bits:
        if name != "meanfield":
            raise ValueError(f"free bits need the per-dimension analytic KL: use elbo 'meanfield', not {name!r}")
        return FreeBitsELBO(free_bits, num_particles, max_plate_nesting=nesting)
    if name == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting)
    if name == "meanfield":
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting)
    if name == "iwae":
        return IWAE_ELBO(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
    raise unknown_name("ELBO", name, ELBO_NAMES)
