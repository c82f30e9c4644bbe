"""Model/guide pairs shipped with pyro-vae, by name (``--model NAME``).

A *conforming pair* is two Pyro functions ``model(x, *args, **kwargs)`` and
``guide(x, *args, **kwargs)`` such that:

* ``x`` is a ``(batch, ...)`` tensor and both functions declare ``pyro.plate("data", batch)``
  around every sample site that belongs to a datapoint;
* the model has observed site(s) (``obs=x``) and latent sites inside that plate; the guide has
  the same latent sites, with the same shapes, and no others;
* neural nets are registered with ``pyro.module`` (or are ``PyroModule``s), so that the
  trainer, the checkpoint code and the estimators see their parameters in Pyro's param store.

The trainer (:func:`pyro_vae.train`) and the log-likelihood estimator
(:func:`pyro_vae.estimate_log_likelihood`) work on any such pair.
"""

from __future__ import annotations

from .mlp import VAE

__all__ = ["MODELS", "VAE", "build_model"]

MODELS = {"mlp": VAE}
"""Shipped model families by name."""


def build_model(name: str, data_dim: int, **config):
    """Instantiate the shipped model family ``name`` (an ``nn.Module`` with ``model``/``guide``)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return cls(data_dim, **config)
