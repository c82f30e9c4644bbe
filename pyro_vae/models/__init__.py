"""Model/guide pairs shipped with pyro-vae, by name (``--model NAME``, ``pyro-vae models``).

What a conforming pair is (signature, data plate, observed and latent sites, extra arguments,
scales) is written in :mod:`pyro_vae.models.base`; :func:`pyro_vae.check_model_guide` checks
it. The trainer and the estimators work on any conforming pair, not only these.

============  ===================================================================
name          pair
============  ===================================================================
mlp           :class:`VAE`, Kingma & Welling (2013)
conv          :class:`ConvVAE`, convolutional nets for images
hierarchical  :class:`HierarchicalVAE`, Burda et al. (2015) stochastic layers
ladder        :class:`LadderVAE`, Sønderby et al. (2016), top-down inference
nvae          :class:`NVAE`, NVAE-style (Vahdat & Kautz 2020) latent groups, residual normal
conditional   :class:`ConditionalVAE`, labels as an extra argument
iaf           :class:`FlowVAE`, inverse autoregressive flow guide
m2            :class:`SemiSupervisedVAE`, Kingma et al. (2014), class summed out
vq            :class:`VQVAE`, van den Oord et al. (2017), nearest-code posterior, uniform prior
concrete      :class:`ConcreteVAE`, Jang et al. (2017), Gumbel-softmax relaxed categoricals
bernoulli     :class:`BernoulliVAE`, binary latents, score function with NVIL's baseline
wae           :class:`WAE`, Tolstikhin et al. (2018), deterministic encoder, MMD penalty (WAE-MMD)
wae-gan       :class:`WAEGAN`, the WAE with an adversary on ``z`` trained as its own phase
vaegan        :class:`VAEGAN`, Larsen et al. (2016), the MLP VAE plus a discriminator phase
============  ===================================================================

A pair of your own can be built by a factory (``pyro-vae train --pair package.module:make_pair``),
recorded in the run folder: see :mod:`pyro_vae.models.external`.

Every pair but ``vq``, ``wae`` and ``wae-gan`` (whose objectives have no KL term) takes ``beta``
(beta-VAE: the latent sites scaled in model and guide). Each trains with its ``default_elbo``
unless told otherwise (``m2``: ``"enum"``, ``vq``: ``"vq"``, ``bernoulli``: ``"baseline"``,
``wae``: ``"wae"``, the others ``"trace"``). ``vaegan`` and ``wae-gan`` also train a
discriminator with its own optimizer, as a :class:`~pyro_vae.training.TrainingPhase`
(``pyro-vae train`` adds it: :func:`pyro_vae.training.pair_phases`). The pairs with one diagonal-Normal latent site ``z``
(``mlp``, ``conv``, ``conditional``, ``iaf``) share their model and guide through
:class:`SingleLatentVAE`; each builds its own nets.
"""

from __future__ import annotations

import inspect

from .base import PairModule
from .bernoulli import BernoulliVAE
from .concrete import ConcreteVAE
from .conditional import ConditionalVAE
from .conv import ConvVAE
from .flow import FlowVAE
from .hierarchical import HierarchicalVAE
from .ladder import LadderVAE
from .nvae import NVAE
from .m2 import SemiSupervisedVAE
from .mlp import VAE
from .single import SingleLatentVAE
from .vaegan import VAEGAN
from .wae import WAE, WAEGAN
from .vq import VQVAE
from ..names import unknown_name

__all__ = [
    "MODELS", "NVAE", "VAE", "VQVAE", "BernoulliVAE", "ConcreteVAE", "ConditionalVAE", "ConvVAE", "FlowVAE",
    "HierarchicalVAE", "LadderVAE", "PairModule", "SemiSupervisedVAE", "SingleLatentVAE", "VAEGAN", "WAE", "WAEGAN",
    "build_model",
    "model_options",
]

MODELS: dict[str, type[PairModule]] = {
    "mlp": VAE,
    "conv": ConvVAE,
    "hierarchical": HierarchicalVAE,
    "ladder": LadderVAE,
    "nvae": NVAE,
    "conditional": ConditionalVAE,
    "iaf": FlowVAE,
    "m2": SemiSupervisedVAE,
    "vq": VQVAE,
    "concrete": ConcreteVAE,
    "bernoulli": BernoulliVAE,
    "wae": WAE,
    "wae-gan": WAEGAN,
    "vaegan": VAEGAN,
}
"""Shipped model families by name."""


def _family(name: str) -> type[PairModule]:
    try:
        return MODELS[name]
    except KeyError:
        raise unknown_name("model", name, MODELS) from None


def model_options(name: str) -> dict[str, object]:
    """The keyword arguments family ``name`` takes (besides ``data_dim``), with their defaults."""
    params = list(inspect.signature(_family(name).__init__).parameters.values())[2:]
    return {p.name: p.default for p in params}


def build_model(name: str, data_dim: int, **config) -> PairModule:
    """Instantiate the shipped model family ``name`` (an ``nn.Module`` with ``model``/``guide``).

    Raises:
        ValueError: unknown family (the names are listed) or an option the family does not take
            (its options are listed).
    """
    cls = _family(name)
    unknown = sorted(set(config) - set(model_options(name)))
    if unknown:
        raise ValueError(f"model {name!r} does not take {', '.join(unknown)}; it takes "
                         f"{', '.join(model_options(name))}")
    return cls(data_dim, **config)
