"""Relaxed categorical latents (Concrete / Gumbel-softmax, Jang et al. 2017; Maddison et al. 2017):
:class:`ConcreteVAE` and its temperature schedule (see :mod:`pyro_vae.models.discrete` for which
bound each variant trains)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..nets import MLPDecoder
from .base import PairModule
from .discrete import check_states, exact_log_likelihood, layer_widths, mlp_head

__all__ = ["ConcreteVAE", "TemperatureSchedule"]


@dataclass(frozen=True)
class TemperatureSchedule:
    """Jang et al. (2017)'s annealing of the Gumbel-softmax temperature, as a function of the step:
    ``tau(t) = max(minimum, initial * exp(-rate * every * floor(t / every)))``, i.e. updated every
    ``every`` steps (the paper: ``max(0.5, exp(-r t))``, ``r`` of order 1e-5, every 500 steps).

    The pair reads its temperature from a tensor (:meth:`ConcreteVAE.set_temperature`); the caller
    sets it from the schedule between training calls, as for a learning-rate schedule (a
    ``PyroOptim`` keeps its state across ``train(..., clear_params=False, seed=None)`` calls)::

        optim, schedule, steps = pyro_vae.optim.make_optimizer("adam", 1e-3), TemperatureSchedule(), 0
        for epoch in range(epochs):
            vae.set_temperature(schedule(steps))
            pyro_vae.train(vae.model, vae.guide, data, optimizer=optim, clear_params=epoch == 0,
                           seed=0 if epoch == 0 else None)
            steps += math.ceil(len(data.train) / 100)

    Example:
        >>> s = TemperatureSchedule(rate=1e-4, every=1000)
        >>> s(0), s(999), round(s(1000), 6), s(10 ** 6)
        (1.0, 1.0, 0.904837, 0.5)
    """

    initial: float = 1.0
    minimum: float = 0.5
    rate: float = 1e-5
    every: int = 500

    def __post_init__(self):
        if not 0 < self.minimum <= self.initial:
            raise ValueError(f"need 0 < minimum <= initial, got minimum={self.minimum}, initial={self.initial}")
        if self.rate < 0 or self.every < 1:
            raise ValueError(f"need rate >= 0 and every >= 1, got rate={self.rate}, every={self.every}")

    def __call__(self, step: int) -> float:
        """The temperature for training step ``step`` (0-based: the steps taken before it)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return max(self.minimum, self.initial * math.exp(-self.rate * self.every * (step // self.every)))



class ConcreteVAE(PairModule):
    r"""Categorical latents relaxed with the Concrete / Gumbel-softmax distribution.

    Generative model (``model``)::

        s_n ~ RelaxedOneHotCategorical(tau, uniform)    (latent_dim, num_categories), on the simplex
        x_n ~ likelihood(decoder(s_n))                  decoder input: s_n flattened
                                                        (straight-through: one_hot(argmax s_n))

    Inference network (``guide``)::

        s_n ~ RelaxedOneHotCategorical(tau, logits=encoder(x_n))

    Latent site ``"z"`` of event shape ``(latent_dim, num_categories)``. ``tau`` is the buffer
    :attr:`temperature` (a 0-d tensor on the pair's device, read by model and guide at every call,
    no host sync), the same for prior and guide; set it with :meth:`set_temperature` (e.g. from a
    :class:`TemperatureSchedule`). The objective is the relaxed ELBO, a bound on the relaxed
    model's ``log p_tau(x)``. With ``straight_through=True`` the latent site is the same relaxed
    draw ``s`` with the same densities, and only the decoder's input changes: the one-hot of
    ``argmax(s)`` forward (exactly), ``s``'s gradient backward (:meth:`decoder_input`); the ELBO
    is then a bound on the discrete model's ``log p(x)`` (see :mod:`pyro_vae.models.discrete`).
    This is the estimator of Pyro's ``RelaxedOneHotCategoricalStraightThrough``, which is not used
    here: its site value is the one-hot, its density that of a draw kept in a private attribute,
    and it clamps the draw with ``clamp_probs``, which puts rows off the simplex by more than
    torch's tolerance (128 of 200,000 rows at tau = 0.5 and unit logits, 9,540 at logits of scale
    10), so that Pyro's validation, and with it the checker, refuses the pair.

    At low temperatures the relaxed draws reach the corners of the simplex, where float32
    densities are not finite: :func:`~pyro_vae.check_model_guide` refuses that, naming the
    temperature (``tau = 0.1`` with 10 categories); keep ``tau >= 0.5`` as the paper's schedule
    does. A very confident encoder does the same at ``tau = 0.5`` (logits spread over tens of
    nats); the trainer then names the site and the temperature.

    Args:
        data_dim: pixels ``D`` of one flattened image.
        latent_dim: number of categorical variables (Jang et al.: 20).
        num_categories: values of each (Jang et al.: 10).
        hidden_dim: widths of the encoder's tanh hidden layers (the decoder's in reverse);
            Jang et al.'s MLP has 512 and 256 units.
        temperature: the initial ``tau`` (> 0).
        straight_through: feed the decoder one-hot values (straight-through gradient).
        likelihood, beta: as for :class:`~pyro_vae.models.PairModule`.

    Example:
        >>> import pyro_vae, torch
        >>> vae = ConcreteVAE(784, latent_dim=3, num_categories=4, hidden_dim=16, temperature=0.7)
        >>> pyro_vae.check_model_guide(vae.model, vae.guide, torch.bernoulli(torch.rand(8, 784)))
        >>> vae.set_temperature(0.5); float(vae.temperature)
        0.5
    """

    description = "Jang et al. (2017): categorical latents relaxed (Gumbel-softmax/Concrete), temperature an input"
    default_elbo = "trace"

    def __init__(self, data_dim: int, latent_dim: int = 20, num_categories: int = 10,
                 hidden_dim: int | Sequence[int] = (512, 256), temperature: float = 1.0, straight_through: bool = False,
                 likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        if num_categories < 2:
            raise ValueError(f"num_categories must be at least 2, got {num_categories}")
        widths = layer_widths(hidden_dim)
        self.num_categories = num_categories
        self.straight_through = bool(straight_through)
        self.encoder = mlp_head(data_dim, widths, latent_dim * num_categories)
        out_dim = data_dim * self.likelihood.params_per_pixel
        self.decoder = MLPDecoder(latent_dim * num_categories, widths[::-1], out_dim)
        self.register_buffer("temperature", torch.tensor(1.0))
        self.set_temperature(temperature)

    def set_temperature(self, value: float) -> None:
        """Set ``tau`` (> 0) in place: model and guide read it at their next call."""
        if not value > 0:
            raise ValueError(f"the temperature must be positive, got {value}")
        with torch.no_grad():
            self.temperature.fill_(float(value))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's logits, ``(..., latent_dim, num_categories)`` for ``x`` ``(..., D)``."""
        return self.encoder(x).unflatten(-1, (self.latent_dim, self.num_categories))

    def relaxed(self, logits: torch.Tensor) -> dist.TorchDistribution:
        """The relaxed one-hot categorical at the pair's temperature, event shape
        ``(latent_dim, num_categories)``."""
        return dist.RelaxedOneHotCategorical(self.temperature, logits=logits).to_event(1)

    def decoder_input(self, s: torch.Tensor) -> torch.Tensor:
        """What the decoder sees of a draw ``s`` ``(..., latent_dim, num_categories)``, flattened:
        ``s`` itself, or with ``straight_through`` the one-hot of its argmax in the forward pass
        (exactly) and ``s``'s gradient in the backward pass."""
        if self.straight_through:
            hard = torch.zeros_like(s).scatter_(-1, s.argmax(-1, keepdim=True), 1.0)  # F.one_hot reads values: a sync
            s = hard + (s - s.detach())  # forward: hard + 0, exactly; backward: the identity to s
        return s.flatten(-2)

    def model(self, x: torch.Tensor) -> None:
        """p_tau(s) p(x | s) for a batch ``x`` of shape ``(batch, data_dim)``."""
        self._model(x, self.relaxed, self.decoder_input)

    def guide(self, x: torch.Tensor) -> None:
        """q_tau(s | x) for a batch ``x`` of shape ``(batch, data_dim)``."""
        self._guide(x, self.relaxed)

    def discrete_model(self, x: torch.Tensor) -> None:
        """The discrete model the relaxation relaxes, with the same decoder: one-hot ``z`` of the
        uniform categorical prior, ``p(z) p(x | z)``."""
        self._model(x, _one_hot, lambda z: z.flatten(-2))

    def discrete_guide(self, x: torch.Tensor) -> None:
        """The discrete guide of :meth:`discrete_model`: one-hot categorical ``q(z | x)`` with the
        encoder's logits (not reparameterizable: score-function gradients if trained)."""
        self._guide(x, _one_hot)

    def exact_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """The discrete model's ``log p(x)`` per row of ``x`` ``(batch, D)``, summed over all
        ``num_categories ** latent_dim`` states (at most :data:`MAX_ENUMERATED_STATES`); ``(batch,)`` nats."""
        num_states = self.num_categories ** self.latent_dim
        check_states(num_states, f"a {self.latent_dim} x {self.num_categories} categorical latent")
        index = torch.arange(num_states, device=x.device)
        digits = torch.stack([(index // self.num_categories ** i) % self.num_categories
                              for i in range(self.latent_dim)], -1)
        states = nn.functional.one_hot(digits, self.num_categories).to(x.dtype).flatten(-2)
        log_prior = torch.full((num_states,), -self.latent_dim * math.log(self.num_categories), dtype=x.dtype,
                               device=x.device)
        return exact_log_likelihood(self.likelihood, self.decoder, states, log_prior, x)

    def _model(self, x: torch.Tensor, family, decoder_input) -> None:
        pyro.module("concrete_vae", self)
        with pyro.plate("data", x.shape[0]):
            with self.latent_scale():
                z = pyro.sample("z", family(x.new_zeros(self.latent_dim, self.num_categories)))
            pyro.sample("x", self.likelihood(self.decoder(decoder_input(z))), obs=x)

    def _guide(self, x: torch.Tensor, family) -> None:
        pyro.module("concrete_vae", self)
        with pyro.plate("data", x.shape[0]):
            logits = self.logits(x)
            with self.latent_scale():
                pyro.sample("z", family(logits))


def _one_hot(logits: torch.Tensor) -> dist.TorchDistribution:
    return dist.OneHotCategorical(logits=logits).to_event(1)
