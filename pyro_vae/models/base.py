"""The base piece of every shipped pair, and the contract any pair (shipped or not) follows.

A *conforming pair* is two Pyro functions ``model(x, *args, **kwargs)`` and
``guide(x, *args, **kwargs)`` called with the same arguments:

* **Call signature.** ``x`` is a ``(batch, D)`` tensor of flattened datapoints. Extra
  arguments (for example class labels ``y`` of shape ``(batch,)`` for a conditional model) come
  after it; a tensor argument whose first dimension is ``batch`` is sliced with ``x`` by the
  trainer and the estimators.
* **The data plate.** Both functions declare ``pyro.plate("data", batch)`` (size = the number of
  rows of ``x``) around every sample site that belongs to a datapoint. The estimators keep this
  dimension to report one number per datapoint.
* **Observed site.** The model has at least one site with ``obs=`` (the pixels); its
  distribution's support must contain the data (0/1 pixels for a Bernoulli likelihood).
* **Latent sites.** Every unobserved sample site of the model has a site of the same name in
  the guide and vice versa, with the same batch and event shapes; the guide's draws must lie in
  the model's support. For ``iwae`` (and for vectorized estimates in general) the guide's
  distributions must be reparameterizable (``has_rsample``).
* **Parameters.** Neural nets are registered with ``pyro.module`` (or are ``PyroModule``\\ s),
  so Pyro's param store, the optimizer and the checkpoints see them.
* **Scales.** ``poutine.scale`` on latent sites (beta-VAE, KL warm-up) goes in both model and
  guide: a latent scaled differently in the two gets the sampled log-ratio instead of the
  analytic KL under ``meanfield``, and is refused under free bits.

The trainer (:func:`pyro_vae.train`) and the estimators (:func:`pyro_vae.estimate_log_likelihood`,
:func:`pyro_vae.evaluate_elbo`) assume nothing else; :func:`pyro_vae.check_model_guide` runs a
pair once on a small batch and names the first violated rule.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ..likelihoods import get_likelihood

__all__ = ["PairModule"]


class PairModule(nn.Module):
    """Base class of the shipped pairs: an ``nn.Module`` holding the nets, with ``model`` and
    ``guide`` methods that follow the contract above.

    Args:
        data_dim: number of values ``D`` of one flattened datapoint.
        latent_dim: dimension of the (top) latent variable.
        likelihood: observation model by name (see :mod:`pyro_vae.likelihoods`).
        beta: weight of the KL term (beta-VAE, Higgins et al. 2017). Applied with
            ``poutine.scale`` to every latent site in both model and guide; 1 is the plain ELBO.

    Class attributes:
        description: one line for ``pyro-vae models``.
        needs_labels: ``True`` when ``model``/``guide`` take class labels ``y`` after ``x``.
        default_elbo: the objective the pair is written for (``"enum"`` for enumerated latents).
        phase_params: names of the nets trained as their own phase (``train`` refuses the pair without).
    """

    description = ""
    needs_labels = False
    default_elbo = "trace"
    phase_params: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        """Make each subclass remember the arguments it was built with (``_build_args``, all
        defaults applied), so that a run folder can record how to rebuild it."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            if type(self) is cls:
                bound = inspect.signature(init).bind(self, *args, **kw)
                bound.apply_defaults()
                self.__dict__["_build_args"] = dict(list(bound.arguments.items())[1:])
            init(self, *args, **kw)

        cls.__init__ = recording_init

    def __init__(self, data_dim: int, latent_dim: int, likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__()
        if data_dim < 1 or latent_dim < 1:
            raise ValueError(f"data_dim and latent_dim must be positive, got {data_dim} and {latent_dim}")
        if not beta > 0:
            raise ValueError(f"beta must be positive (poutine.scale refuses a scale of 0), got {beta}")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.likelihood = get_likelihood(likelihood)
        self.beta = float(beta)

    def check_input(self, x) -> None:
        """Raise ``ValueError`` naming the problem unless ``x`` is a ``(batch, data_dim)``
        floating-point tensor with the dtype and device of the pair's parameters.

        :func:`~pyro_vae.check_model_guide` calls it (once, not at every step) for a pair whose
        ``model`` is a method of an object that has ``check_input``.
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise ValueError(f"x has dtype {x.dtype}; the pair takes floating-point values (pixels in [0, 1]): "
                             "convert with x.float() / 255 for bytes, x.float() for 0/1 integers")
        if x.dim() != 2 or x.shape[1] != self.data_dim:
            hint = (": flatten the images with x.reshape(len(x), -1)" if x.dim() > 2 and x[0].numel() == self.data_dim
                    else f" (this pair was built for data_dim={self.data_dim})")
            raise ValueError(f"x has shape {tuple(x.shape)}; the pair takes (batch, {self.data_dim}) flattened "
                             f"datapoints{hint}")
        param = next(self.parameters(), None)
        if param is not None and x.dtype != param.dtype:
            raise ValueError(f"x has dtype {x.dtype} but the pair's parameters are {param.dtype}: convert "
                             f"with x.to({param.dtype}) (or the pair with .to({x.dtype}))")
        if param is not None and x.device != param.device:
            raise ValueError(f"x is on {x.device} but the pair's parameters are on {param.device}: move one "
                             "of them with .to(device)")

    def latent_scale(self):
        """Context that scales latent sites by ``beta`` (a no-op when ``beta == 1``)."""
        return poutine.scale(scale=self.beta) if self.beta != 1.0 else contextlib.nullcontext()

    @staticmethod
    def standard_normal(like: torch.Tensor, dim: int) -> dist.TorchDistribution:
        """``Normal(0, I)`` over ``dim`` dimensions, on ``like``'s device and dtype."""
        return dist.Normal(like.new_zeros(dim), 1.0).to_event(1)
