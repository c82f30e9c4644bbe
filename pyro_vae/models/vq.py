r"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning",
https://arxiv.org/abs/1711.00937) as a Pyro model/guide pair.

The latent of a datapoint is a grid of **code indices** ``k`` (``H' x W'`` positions, each one
of ``K`` codes). The paper's reading, written as Pyro programs::

    model:  k_n ~ Uniform{0..K-1}^(H' x W')            Categorical, log p(k) = -L log K (L = H'W')
            x_n ~ likelihood(decoder(e[k_n]))          e: the codebook, K x D
    guide:  k_n ~ NearestCode(z_e(x_n))                probability 1 on argmin_k ||z_e - e_k||

The guide is a point mass on the nearest code, written as a :class:`NearestCode` (a ``Categorical``
whose logits are 0 at the nearest code and ``-inf`` elsewhere). Over a *discrete* latent that is a
distribution with a density (with respect to counting measure, as the prior's): ``log q(k | x) = 0``
at its point and ``KL(q || p) = L log K`` exactly, so the ELBO

.. math::
    \mathcal{L}(x) = \log p(x \mid e[k^*(x)]) - L \log K

is a valid lower bound on ``log p(x)`` under the uniform prior (the paper's "KL term is constant").
It is what :func:`pyro_vae.evaluate_elbo` reports for this pair; the checker accepts the pair as it
is (a Categorical over a Categorical). Importance sampling with this guide cannot estimate
``log p(x)`` (it proposes one code map only), so :func:`pyro_vae.estimate_log_likelihood` refuses it.

Training is not by an ELBO: the straight-through gradient, the codebook and commitment losses are
:class:`~pyro_vae.objectives.vq.VQVAELoss` (``default_elbo``). The model turns codes into vectors
only through :meth:`VectorQuantizer.lookup`, which that objective switches to the straight-through
value ``sg(e_k) + z_e - sg(z_e)`` (equal to ``e_k``, with ``z_e``'s gradient).

**Codebook state.** With ``ema=True`` the codebook follows the paper's exponential moving averages
(appendix A.1) instead of the codebook loss; with ``restart_after=N`` a code unused for ``N``
consecutive training steps is re-initialised from a random encoder output of the minibatch. Both
statistics (``ema_count``, ``ema_sum``, ``unused_steps``) are ``nn.Parameter`` s of the quantizer,
so ``pyro.module`` puts them in Pyro's param store, which checkpoints save and load: a resumed run
is bitwise equal to an uninterrupted one. They never get a gradient (optimizers skip them); the
objective updates them in place in the **backward pass** of each training step (see
:class:`~pyro_vae.objectives.vq.VQVAELoss`), so evaluating the loss (the checker, the compiled
step's recorder, ``SVI.evaluate_loss``) changes nothing.
"""

from __future__ import annotations


import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .base import PairModule
from .quantizer import NearestCode, VectorQuantizer

__all__ = ["VQVAE"]


class _Encoder(nn.Module):
    """``x (..., H*W) -> z_e (..., H/4, W/4, D)``: two 4x4 stride-2 convolutions (``hidden//2`` and
    ``hidden`` channels, ReLU) and a 1x1 convolution to ``D`` channels."""

    def __init__(self, image_shape: tuple[int, int], hidden_channels: int, embedding_dim: int):
        super().__init__()
        self.image_shape = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(1, hidden_channels // 2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(hidden_channels // 2, hidden_channels, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(hidden_channels, embedding_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x.reshape(-1, 1, *self.image_shape))
        return h.permute(0, 2, 3, 1).reshape(*x.shape[:-1], *h.shape[2:], h.shape[1])


class _Decoder(nn.Module):
    """``z (..., H/4, W/4, D) -> (..., channels * H * W)``: a 1x1 convolution to ``hidden`` channels
    (ReLU), two 4x4 stride-2 transposed convolutions (``hidden//2`` channels, ReLU, then
    ``channels``); channel ``c`` fills positions ``c*H*W .. (c+1)*H*W`` (the likelihoods' layout)."""

    def __init__(self, embedding_dim: int, hidden_channels: int, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(embedding_dim, hidden_channels, 1), nn.ReLU(),
            nn.ConvTranspose2d(hidden_channels, hidden_channels // 2, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(hidden_channels // 2, channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-3]
        out = self.net(z.reshape(-1, *z.shape[-3:]).permute(0, 3, 1, 2).contiguous())  # NCHW, as the kernels expect
        return out.reshape(*batch, -1)


class VQVAE(PairModule):
    """The VQ-VAE pair (module docstring): a convolutional encoder to a ``H/4 x W/4`` grid of
    ``latent_dim`` vectors, each replaced by its nearest of ``num_codes`` codes, and a
    transposed-convolution decoder.

    Sites: latent ``"codes"`` (``(batch, H/4, W/4)`` integers, uniform prior; the guide a
    :class:`NearestCode`), observed ``"x"``. Nets: ``pyro.module("encoder")`` (guide),
    ``"decoder"`` (model), ``"quantizer"`` (both: the codebook, and the EMA/restart statistics).

    Train it with :class:`~pyro_vae.objectives.vq.VQVAELoss` (``default_elbo``): other objectives
    (``trace``, ...) compute the same ELBO but give the encoder no gradient (the guide's
    probabilities do not depend on its parameters; only the straight-through estimator reaches it).

    Args:
        data_dim: ``H * W``.
        image_shape: ``(H, W)``, both divisible by 4.
        num_codes: ``K`` (64).
        latent_dim: ``D`` (16), the dimension of a code vector (the paper's embedding size).
        hidden_dim: channels of the inner convolutions (64; the outer ones have half).
        likelihood: observation model by name (:mod:`pyro_vae.likelihoods`).
        ema, decay, restart_after: the codebook's state updates (:class:`VectorQuantizer`).

    References:
        van den Oord, Vinyals & Kavukcuoglu (2017), Neural Discrete Representation Learning,
        https://arxiv.org/abs/1711.00937

    Example::

        >>> import pyro_vae
        >>> from pyro_vae.models.vq import VQVAE
        >>> vq = VQVAE(784, num_codes=16, latent_dim=4, hidden_dim=8)
        >>> vq.num_positions, vq.num_codes
        (49, 16)
    """

    description = "VQ-VAE (van den Oord et al. 2017): nearest-code posterior over a 7x7 grid, uniform prior"

    def __init__(self, data_dim: int, image_shape: tuple[int, int] = (28, 28), num_codes: int = 64,
                 latent_dim: int = 16, hidden_dim: int = 64, likelihood: str = "bernoulli",
                 ema: bool = False, decay: float = 0.99, restart_after: int = 0):
        super().__init__(data_dim, latent_dim, likelihood)
        if image_shape is None or image_shape[0] * image_shape[1] != data_dim:
            raise ValueError(f"image_shape {image_shape} does not match data_dim {data_dim}")
        if image_shape[0] % 4 or image_shape[1] % 4:
            raise ValueError(f"image_shape {tuple(image_shape)}: both sides must be divisible by 4")
        if hidden_dim < 2:
            raise ValueError(f"hidden_dim (channels) must be >= 2, got {hidden_dim}")
        self.image_shape = tuple(image_shape)
        self.grid = (image_shape[0] // 4, image_shape[1] // 4)
        self.encoder = _Encoder(self.image_shape, hidden_dim, latent_dim)
        self.quantizer = VectorQuantizer(num_codes, latent_dim, ema=ema, decay=decay, restart_after=restart_after)
        self.decoder = _Decoder(latent_dim, hidden_dim, self.likelihood.params_per_pixel)

    @property
    def num_codes(self) -> int:
        """``K``."""
        return self.quantizer.num_codes

    @property
    def num_positions(self) -> int:
        """``L``: latent positions per datapoint (``H/4 * W/4``)."""
        return self.grid[0] * self.grid[1]

    default_elbo = "vq"  # objectives.vq.VQVAELoss, commitment beta = 0.25 (an object for another beta)

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """``p(k)``: uniform over the ``K`` codes at each of the ``H/4 x W/4`` positions."""
        return dist.Categorical(logits=x.new_zeros(self.num_codes)).expand(self.grid).to_event(2)

    def model(self, x: torch.Tensor) -> None:
        """``p(k) p(x | e[k])`` for a batch ``x`` of shape ``(batch, data_dim)``."""
        pyro.module("quantizer", self.quantizer)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            codes = pyro.sample("codes", self.prior(x))
            pyro.sample("x", self.likelihood(self.decoder(self.quantizer.lookup(codes))), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """``q(k | x)``: the nearest codes of the encoder's outputs (:class:`NearestCode`)."""
        pyro.module("encoder", self.encoder)
        pyro.module("quantizer", self.quantizer)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("codes", NearestCode(self.encoder(x), self.quantizer).to_event(2))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest codes of a batch, ``(batch, H/4, W/4)`` int64."""
        return self.quantizer.nearest(self.encoder(x))
