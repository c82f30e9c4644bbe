"""A small NVAE-style deep hierarchy (after Vahdat & Kautz 2020): residual cells, groups of
spatial latents sampled top-down, and the posterior parameterized relative to the prior."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..nets import _check_image_shape
from .base import PairModule

__all__ = ["NVAE", "ResidualCell", "soft_clamp"]


def _on_maps(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``net`` on feature maps ``(..., C, H, W)`` with any leading dims (particles, datapoints)."""
    out = net(h.reshape(-1, *h.shape[-3:]))
    return out.reshape(*h.shape[:-3], *out.shape[-3:])


def soft_clamp(t: torch.Tensor, bound: float = 5.0) -> torch.Tensor:
    """``bound * tanh(t / bound)``: NVAE's soft clamp of means and log-scales into
    ``(-bound, bound)``, the identity near 0, which keeps ``exp`` of a log-scale finite."""
    return bound * torch.tanh(t / bound)


class ResidualCell(nn.Module):
    """``h + conv(swish(conv(swish(h))))``: two 3x3 convolutions of ``channels`` maps, the second
    initialised at zero so that a new cell is the identity (NVAE's cells, without batch norm and
    squeeze-and-excitation). Maps ``(N, C, H, W)`` to the same shape."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h)


class NVAE(PairModule):
    """``G`` groups of latent maps ``z_g`` of ``latent_dim x H/4 x W/4``, generated top-down.

    Generative model: a learned constant ``h_0`` (``hidden_dim`` maps); for ``g = 1 .. G``,
    ``z_g ~ Normal(mu_p(h), sigma_p(h))`` (``z_1 ~ Normal(0, I)``) and
    ``h <- cell(h + conv1x1(z_g))``; then ``x ~ likelihood(decoder(h))`` (a residual cell and two
    4x4 stride-2 transposed convolutions to ``H x W``).

    Guide: a bottom-up tower (a 3x3 stem, two 4x4 stride-2 convolutions with residual cells,
    one more cell per group) gives features ``e_g``; then top-down, with the model's own nets,
    ``q(z_g | x, z_<g) = Normal(mu_p + dmu, sigma_p * dsigma)``: NVAE's residual normal, where
    ``(dmu, log dsigma)`` come from ``h`` and ``e_g`` (for ``z_1``, ``mu_p = 0, sigma_p = 1``). Means
    and log-scales pass through NVAE's soft clamp ``5 tanh(t / 5)`` (:func:`soft_clamp`).
    KL(q || p) per group then depends on ``dmu / sigma_p`` and ``dsigma`` only.

    Sites ``"z1" .. "zG"`` in sampling order (``"z1"`` is the top group), each with event shape
    ``(latent_dim, H/4, W/4)``, and ``"x"``. Nets: ``"encoder"`` (the bottom-up tower and the
    posterior heads, the guide's) and ``"top_down"`` (``h_0``, the priors, the cells, the decoder;
    model and guide). Not built from the paper: batch norm, squeeze-and-excitation, several scales,
    and discretized logistic mixtures. The spectral regularization is an objective:
    :class:`~pyro_vae.objectives.SpectralRegularizedELBO` (an objective, not part of the model).

    Args:
        data_dim: ``H * W``.
        image_shape: ``(H, W)``, both divisible by 4.
        latent_dim: channels of each latent group.
        hidden_dim: channels of the feature maps.
        groups: ``G``, at least 1.
        likelihood, beta: as for :class:`~pyro_vae.models.VAE`.
    """

    description = "NVAE-style (Vahdat & Kautz 2020): residual cells, latent groups top-down, residual normal"

    def __init__(self, data_dim: int, image_shape: tuple[int, int] = (28, 28), latent_dim: int = 4,
                 hidden_dim: int = 32, groups: int = 4, likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        height, width = _check_image_shape(image_shape)
        if height * width != data_dim:
            raise ValueError(f"image_shape {image_shape} does not match data_dim {data_dim}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.image_shape, C, out = (height, width), hidden_dim, self.likelihood.params_per_pixel
        self.latent_shape = (latent_dim, height // 4, width // 4)
        self.sites = [f"z{g + 1}" for g in range(groups)]
        self.encoder = nn.ModuleDict({
            "tower": nn.Sequential(nn.Conv2d(1, C, 3, padding=1), ResidualCell(C),
                                   nn.Conv2d(C, C, 4, stride=2, padding=1), ResidualCell(C),
                                   nn.Conv2d(C, C, 4, stride=2, padding=1), ResidualCell(C)),
            "cells": nn.ModuleList(ResidualCell(C) for _ in range(groups)),
            "posterior": nn.ModuleList(nn.Sequential(nn.ELU(), nn.Conv2d(2 * C if g else C, 2 * latent_dim, 3, padding=1))
                                       for g in range(groups)),
        })
        self.top_down = nn.ModuleDict({
            "h0": nn.ParameterList([nn.Parameter(torch.zeros(C, height // 4, width // 4))]),
            "prior": nn.ModuleList(nn.Sequential(nn.ELU(), nn.Conv2d(C, 2 * latent_dim, 3, padding=1))
                                   for _ in range(groups - 1)),
            "combine": nn.ModuleList(nn.Conv2d(latent_dim, C, 1) for _ in range(groups)),
            "cells": nn.ModuleList(ResidualCell(C) for _ in range(groups)),
            "decoder": nn.Sequential(ResidualCell(C), nn.ELU(), nn.ConvTranspose2d(C, C, 4, stride=2, padding=1),
                                     nn.ELU(), nn.ConvTranspose2d(C, out, 4, stride=2, padding=1)),
        })

    def _prior(self, g: int, h: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of ``p(z_g | z_<g)``, each broadcastable to ``(..., *latent_shape)``."""
        if g == 0:
            zeros = like.new_zeros(self.latent_shape)
            return zeros, zeros + 1.0
        loc, log_scale = _on_maps(self.top_down["prior"][g - 1], h).chunk(2, dim=-3)
        return soft_clamp(loc), soft_clamp(log_scale).exp()

    def _step(self, g: int, h: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """``h`` after group ``g``: ``cell(h + conv1x1(z_g))`` (``h_0`` before the first)."""
        h0 = self.top_down["h0"][0]
        h = _on_maps(self.top_down["combine"][g], z) + (h0 if h is None else h)
        return _on_maps(self.top_down["cells"][g], h)

    def model(self, x: torch.Tensor) -> None:
        """``prod_g p(z_g | z_<g) p(x | z)`` for ``x`` ``(batch, H * W)``."""
        pyro.module("top_down", self.top_down)
        h = None
        with pyro.plate("data", x.shape[0]):
            with self.latent_scale():
                for g, site in enumerate(self.sites):
                    loc, scale = self._prior(g, h, x)
                    z = pyro.sample(site, dist.Normal(loc, scale).to_event(3))
                    h = self._step(g, h, z)
            logits = _on_maps(self.top_down["decoder"], h)
            pyro.sample("x", self.likelihood(logits.reshape(*logits.shape[:-3], -1)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """Bottom-up features, then ``prod_g q(z_g | x, z_<g)`` top-down (residual normal)."""
        pyro.module("encoder", self.encoder)
        pyro.module("top_down", self.top_down)
        e = self.encoder["tower"](x.reshape(-1, 1, *self.image_shape))
        features = []
        for cell in self.encoder["cells"]:  # the top group takes the last cell's output, the lowest the first's
            e = cell(e)
            features.append(e)
        h = None
        with pyro.plate("data", x.shape[0]), self.latent_scale():
            for g, site in enumerate(self.sites):
                loc_p, scale_p = self._prior(g, h, x)
                inputs = features[-1] if g == 0 else torch.cat([h, features[-1 - g].expand_as(h)], dim=-3)
                d_loc, d_log_scale = _on_maps(self.encoder["posterior"][g], inputs).chunk(2, dim=-3)
                d_scale = soft_clamp(d_log_scale).exp()
                z = pyro.sample(site, dist.Normal(loc_p + soft_clamp(d_loc), scale_p * d_scale).to_event(3))
                h = self._step(g, h, z)
