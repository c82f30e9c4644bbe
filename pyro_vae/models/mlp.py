"""The Kingma & Welling (2013) MLP VAE as a Pyro model/guide pair."""

from __future__ import annotations

from ..nets import MLPDecoder, MLPEncoder
from .single import SingleLatentVAE

__all__ = ["VAE"]


class VAE(SingleLatentVAE):
    """Auto-Encoding Variational Bayes with one tanh hidden layer in encoder and decoder.

    Generative model (``model``)::

        z_n ~ Normal(0, I)                        latent_dim
        x_n ~ likelihood(decoder(z_n))            data_dim, e.g. Bernoulli for binary pixels

    Inference network (``guide``)::

        z_n ~ Normal(loc(x_n), scale(x_n))        diagonal, from the encoder

    Both take ``x`` of shape ``(batch, data_dim)`` and declare ``pyro.plate("data", batch)``
    over it; the latent site is ``"z"`` and the observed site ``"x"``. The nets are registered
    with ``pyro.module`` under the names ``"decoder"`` (model) and ``"encoder"`` (guide), so any
    Pyro ELBO trains the pair, with or without :func:`pyro_vae.train`.

    The model and guide come from :class:`~pyro_vae.models.SingleLatentVAE`, as do those of
    :class:`~pyro_vae.models.ConvVAE` (other nets) and :class:`~pyro_vae.models.ConditionalVAE`
    (other inputs of the nets); :class:`~pyro_vae.models.FlowVAE` is this pair with a flow guide.

    Args:
        data_dim: number of pixels ``D`` of one flattened datapoint.
        latent_dim: dimension of ``z`` (the paper's ``N_z``).
        hidden_dim: hidden units (500 for MNIST, 200 for Frey Face in the paper).
        likelihood: name of the observation model (see :mod:`pyro_vae.likelihoods`).
        beta: KL weight (beta-VAE), applied to ``z`` in both model and guide.
    """

    description = "Kingma & Welling (2013) MLP: one tanh hidden layer each way, diagonal Normal guide"

    def __init__(self, data_dim: int, latent_dim: int = 20, hidden_dim: int = 500,
                 likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        self.encoder = MLPEncoder(data_dim, hidden_dim, latent_dim)
        self.decoder = MLPDecoder(latent_dim, hidden_dim, data_dim * self.likelihood.params_per_pixel)
