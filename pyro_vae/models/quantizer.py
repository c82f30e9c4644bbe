"""The VQ-VAE's quantizer (van den Oord et al. 2017): a codebook with nearest-code assignment,
straight-through lookup, moving-average updates and dead-code restarts (:class:`VectorQuantizer`),
and the posterior it defines, a point mass on the nearest code (:class:`NearestCode`)."""

from __future__ import annotations

import contextlib
import math

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["NearestCode", "VectorQuantizer"]


class VectorQuantizer(nn.Module):
    r"""A codebook of ``num_codes`` vectors of ``embedding_dim``: nearest-code assignment, lookup
    (plain or straight-through), and the optional state updates (EMA, dead-code restarts).

    Args:
        num_codes: ``K``.
        embedding_dim: ``D``.
        ema: update the codebook by exponential moving averages (paper, appendix A.1) rather than
            by the codebook loss's gradient:
            ``N_i <- g N_i + (1 - g) n_i``, ``m_i <- g m_i + (1 - g) sum_{j: k_j = i} z_e,j``,
            ``e_i = m_i / N~_i`` with ``N~_i = (N_i + eps) / (sum N + K eps) * sum N`` (Laplace
            smoothing, as in Sonnet's ``VectorQuantizerEMA``, so that an unused code never divides
            by 0). ``N`` starts at 1 and ``m`` at the initial codebook (as if each code had been
            seen once at its initial value, so ``e`` starts where it was initialised).
        decay: ``g`` (0.99 in the paper).
        epsilon: ``eps`` of the smoothing.
        restart_after: re-initialise a code that no position of the last ``restart_after``
            training minibatches chose, from the encoder output at a uniformly drawn position of the
            current minibatch (torch's global RNG, which checkpoints save); 0: never.

    Attributes (``nn.Parameter`` s, so that checkpoints hold them; only ``codebook`` is trained by
    gradient, and only without ``ema``): ``codebook`` ``(K, D)``; with ``ema``: ``ema_count``
    ``(K,)``, ``ema_sum`` ``(K, D)``; with ``restart_after``: ``unused_steps`` ``(K,)`` (a count,
    stored as float).
    """

    def __init__(self, num_codes: int, embedding_dim: int, ema: bool = False, decay: float = 0.99,
                 epsilon: float = 1e-5, restart_after: int = 0):
        super().__init__()
        if num_codes < 2 or embedding_dim < 1:
            raise ValueError(f"num_codes must be >= 2 and embedding_dim >= 1, got {num_codes} and {embedding_dim}")
        if not 0 < decay < 1:
            raise ValueError(f"the EMA decay must lie in (0, 1), got {decay}")
        if restart_after < 0:
            raise ValueError(f"restart_after must be a number of steps >= 0 (0: no restarts), got {restart_after}")
        self.num_codes, self.embedding_dim = num_codes, embedding_dim
        self.ema, self.decay, self.epsilon = bool(ema), float(decay), float(epsilon)
        self.restart_after = int(restart_after)
        self.codebook = nn.Parameter(torch.empty(num_codes, embedding_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        if self.ema:
            self.ema_count = nn.Parameter(torch.ones(num_codes))
            self.ema_sum = nn.Parameter(self.codebook.detach().clone())
        if self.restart_after:
            self.unused_steps = nn.Parameter(torch.zeros(num_codes))
        self._straight_through_inputs = None

    @property
    def has_state(self) -> bool:
        """Whether the quantizer has state updated outside the gradient (EMA, restarts)."""
        return self.ema or bool(self.restart_after)

    @torch.no_grad()
    def nearest(self, inputs: torch.Tensor) -> torch.Tensor:
        """``argmin_k ||inputs - e_k||^2`` for ``inputs`` ``(..., D)``: ``(...,)`` int64 (no gradient;
        the squared distances expanded as ``|z|^2 - 2 z.e + |e|^2``, lowest index on ties)."""
        codebook = self.codebook
        distances = (inputs.pow(2).sum(-1, keepdim=True) - 2 * inputs @ codebook.T + codebook.pow(2).sum(-1))
        return distances.argmin(-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The code vectors ``e[codes]``: ``(..., D)`` for ``codes`` ``(...,)``. Inside
        :meth:`straight_through` the straight-through value ``sg(e[codes]) + z_e - sg(z_e)``:
        equal to ``e[codes]`` bit for bit, with the gradient of ``z_e`` and none for the codebook."""
        vectors = self.codebook[codes]
        inputs = self._straight_through_inputs
        if inputs is None:
            return vectors
        if inputs.shape != vectors.shape:
            raise ValueError(f"straight-through lookup of codes shaped {tuple(codes.shape)}, but the encoder outputs "
                             f"are {tuple(inputs.shape)}: the model must look up the guide's codes once, as drawn")
        return vectors.detach() + (inputs - inputs.detach())

    @contextlib.contextmanager
    def straight_through(self, inputs: torch.Tensor):
        """Within the block, :meth:`lookup` returns the straight-through value for ``inputs``
        (``z_e``, ``(..., D)``), the encoder outputs whose nearest codes it is given."""
        previous, self._straight_through_inputs = self._straight_through_inputs, inputs
        try:
            yield
        finally:
            self._straight_through_inputs = previous

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, codes: torch.Tensor) -> None:
        """One training step's state update from encoder outputs ``inputs`` ``(..., D)`` and their
        codes ``(...,)``: the EMA codebook (with ``ema``), then dead-code restarts (with
        ``restart_after``). Nothing changes when an input is not finite (the step will be refused).
        No host sync; draws ``K`` positions from torch's RNG per step with restarts (used or not)."""
        flat, codes = inputs.detach().reshape(-1, self.embedding_dim), codes.reshape(-1)
        finite = torch.isfinite(flat).all()
        one_hot = torch.zeros(flat.shape[0], self.num_codes, dtype=flat.dtype, device=flat.device)
        one_hot.scatter_(1, codes.unsqueeze(1), 1.0)
        counts = one_hot.sum(0)  # n_i
        if self.ema:
            g = self.decay
            count = g * self.ema_count + (1 - g) * counts
            sums = g * self.ema_sum + (1 - g) * (one_hot.T @ flat)
            total = count.sum()
            smoothed = (count + self.epsilon) / (total + self.num_codes * self.epsilon) * total
            codebook = sums / smoothed.unsqueeze(1)
            self._assign(finite, ema_count=count, ema_sum=sums, codebook=codebook)
        if self.restart_after:
            unused = torch.where(counts > 0, torch.zeros_like(counts), self.unused_steps + 1)
            dead = unused >= self.restart_after
            fresh = flat[torch.randint(flat.shape[0], (self.num_codes,), device=flat.device)]
            new = {"unused_steps": torch.where(dead, torch.zeros_like(unused), unused),
                   "codebook": torch.where(dead.unsqueeze(1), fresh, self.codebook)}
            if self.ema:  # a restarted code starts afresh: seen once, at its new value
                new["ema_count"] = torch.where(dead, torch.ones_like(unused), self.ema_count)
                new["ema_sum"] = torch.where(dead.unsqueeze(1), fresh, self.ema_sum)
            self._assign(finite, **new)

    def _assign(self, finite: torch.Tensor, **values) -> None:
        for name, value in values.items():
            param = getattr(self, name)
            param.copy_(torch.where(finite, value, param))


def _one_hot_logits(codes: torch.Tensor, num_codes: int, dtype: torch.dtype) -> torch.Tensor:
    """Logits ``(..., K)``: 0 at ``codes``, ``-inf`` elsewhere (no host read, unlike ``F.one_hot``)."""
    hit = codes.unsqueeze(-1) == torch.arange(num_codes, device=codes.device)
    return torch.zeros(hit.shape, dtype=dtype, device=codes.device).masked_fill_(~hit, -math.inf)


class NearestCode(dist.Categorical):
    """``q(k | x)``: probability 1 on the nearest code of each encoder output, a ``Categorical``
    over ``K`` codes with logits 0 there and ``-inf`` elsewhere (``log q = 0`` exactly at its draw,
    which takes no random numbers).

    Args:
        inputs: encoder outputs ``z_e`` ``(*batch, D)``.
        quantizer: the :class:`VectorQuantizer` whose codebook defines "nearest".

    Attributes: ``inputs``, ``quantizer`` and ``codes`` (``(*batch,)``, the nearest codes), read by
    :class:`~pyro_vae.objectives.vq.VQVAELoss`.
    """

    straight_through_only = True
    """Read by the checker: the encoder reaches this site only through the straight-through
    estimator of :class:`~pyro_vae.objectives.vq.VQVAELoss` (``elbo="vq"``); the ELBOs give it none."""

    def __init__(self, inputs: torch.Tensor, quantizer: VectorQuantizer, validate_args=None):
        self.inputs, self.quantizer = inputs, quantizer
        self.codes = quantizer.nearest(inputs)
        super().__init__(logits=_one_hot_logits(self.codes, quantizer.num_codes, inputs.dtype),
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> NearestCode:
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(NearestCode, _instance)
        new.inputs = self.inputs.expand(batch_shape + self.inputs.shape[-1:])
        new.quantizer, new.codes = self.quantizer, self.codes.expand(batch_shape)
        dist.Categorical.__init__(new, logits=self.logits.expand(batch_shape + self.logits.shape[-1:]),
                                  validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """The nearest codes, shaped ``sample_shape + batch_shape`` (a point mass: nothing is drawn)."""
        return self.codes.expand(torch.Size(sample_shape) + self.batch_shape)
