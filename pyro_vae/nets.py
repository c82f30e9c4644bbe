"""Plain PyTorch building blocks for encoders and decoders (no Pyro here)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLPDecoder", "MLPEncoder"]


class MLPEncoder(nn.Module):
    """``x (..., D) -> (loc, scale)`` of a diagonal Normal over ``z``, each ``(..., latent_dim)``.

    One tanh hidden layer, as in Kingma & Welling (2013, appendix C.2): the net outputs the
    mean and ``log sigma^2``; ``scale = exp(log sigma^2 / 2)``.
    """

    def __init__(self, data_dim: int, hidden_dim: int, latent_dim: int):
        super().__init__()
        self.hidden = nn.Linear(data_dim, hidden_dim)
        self.loc = nn.Linear(hidden_dim, latent_dim)
        self.log_var = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.hidden(x))
        return self.loc(h), torch.exp(0.5 * self.log_var(h))


class MLPDecoder(nn.Module):
    """``z (..., latent_dim) -> (..., out_dim)`` raw likelihood parameters; one tanh hidden layer."""

    def __init__(self, latent_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.hidden = nn.Linear(latent_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(z)))
