"""Latent-space tools for any conforming pair: encode, decode, interpolate, traverse, manifold,
anomaly scores; and :func:`latent_pictures`, which writes them as PNG files.

The latent site used is the guide's first latent site unless ``site=`` names another (for
:class:`~pyro_vae.models.HierarchicalVAE`, ``"z1"`` is the layer next to the data). Images are
means of the model's observation distribution (Bernoulli probabilities, Gaussian means).
Extra arguments (labels of a conditional pair) follow ``x`` as everywhere in pyro-vae.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pyro import poutine

from .evaluation import estimate_log_likelihood
from .generate import observed_mean
from .importance import sample_sites
from .plots import save_image_grid

__all__ = ["active_units", "anomaly_scores", "decode", "encode", "interpolate", "latent_manifold", "latent_pictures",
           "traverse"]


def _guide_site(guide, x, args, kwargs, site: str | None):
    with poutine.block():
        trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
    sites = dict(sample_sites(trace))
    if not sites:
        raise ValueError("the guide has no latent sample site")
    name = site or next(iter(sites))
    if name not in sites:
        raise ValueError(f"no latent site {name!r} in the guide; it has {', '.join(sites)}")
    fn = sites[name]["fn"]
    if fn.support.is_discrete or len(fn.shape()) != 2 or fn.shape()[0] != x.shape[0]:
        raise ValueError(f"the latent-space tools take one continuous vector per datapoint, (batch, latent_dim); guide "
                         f"site {name!r} is a {type(fn).__name__} of shape {tuple(fn.shape())}"
                         f"{' (discrete)' if fn.support.is_discrete else ''}: not supported")
    return name, sites[name]


@torch.no_grad()
def encode(guide, x: torch.Tensor, *args, site: str | None = None, **kwargs) -> torch.Tensor:
    """Posterior means ``E_q[z | x]`` at the latent ``site``: ``(batch, latent_dim)``.

    Where the guide's distribution has no closed-form mean (a flow), the mean of 256 draws.
    """
    _, node = _guide_site(guide, x, args, kwargs, site)
    try:
        return node["fn"].mean
    except NotImplementedError:
        return node["fn"].sample((256,)).mean(0)


@torch.no_grad()
def decode(model, z: torch.Tensor, data_dim: int, *args, site: str = "z", **kwargs) -> torch.Tensor:
    """Images ``E[x | z]`` for latent values ``z`` ``(n, latent_dim)`` at ``site``: ``(n, data_dim)``.

    The model runs with ``site`` fixed to ``z`` (latent layers above it, if any, are drawn from
    the prior and do not change the image). Extra arguments have ``n`` rows.
    """
    return _decode(model, z, z.new_zeros(z.shape[0], data_dim), args, kwargs, site)


def _decode(model, z, x_like, args, kwargs, site):
    with poutine.block():
        trace = poutine.trace(poutine.condition(model, data={site: z})).get_trace(x_like, *args, **kwargs)
    return observed_mean(trace, skip=site).reshape(x_like.shape)


def _first_site(guide, x, args, kwargs):
    return _guide_site(guide, x, args, kwargs, None)[0]


def _expand_args(args, kwargs, n):
    """Extra tensor arguments for one datapoint, repeated for ``n`` decoded rows."""
    def rep(a):
        return a[:1].expand(n, *a.shape[1:]) if isinstance(a, torch.Tensor) and a.dim() > 0 else a
    return tuple(rep(a) for a in args), {k: rep(v) for k, v in kwargs.items()}


@torch.no_grad()
def interpolate(model, guide, x_a: torch.Tensor, x_b: torch.Tensor, *args, steps: int = 10,
                site: str | None = None, **kwargs) -> torch.Tensor:
    """Decode ``steps`` points on the line between the posterior means of ``x_a`` and ``x_b``.

    ``x_a``, ``x_b``: ``(D,)`` datapoints. Extra arguments are for ``x_a`` (shape ``(1, ...)``)
    and are used for every decoded row. Returns ``(steps, D)`` images, ``x_a``'s end first.
    """
    x = torch.stack([x_a, x_b])
    pair_args, pair_kwargs = _expand_args(args, kwargs, 2)
    name = site or _first_site(guide, x, pair_args, pair_kwargs)
    z = encode(guide, x, *pair_args, site=name, **pair_kwargs)
    t = torch.linspace(0, 1, steps, device=x.device).unsqueeze(-1)
    path = (1 - t) * z[0] + t * z[1]
    row_args, row_kwargs = _expand_args(args, kwargs, steps)
    return _decode(model, path, x.new_zeros(steps, x.shape[-1]), row_args, row_kwargs, name)


@torch.no_grad()
def traverse(model, guide, x: torch.Tensor, *args, dims=None, values=None, site: str | None = None,
             **kwargs) -> torch.Tensor:
    """Vary one latent dimension at a time around the posterior mean of ``x`` ``(D,)``.

    Args:
        dims: latent dimensions to traverse (default: the first 10).
        values: the values each dimension takes (default: -3 .. 3 in 9 steps, prior units).

    Returns:
        ``(len(dims), len(values), D)`` images; row ``i`` varies dimension ``dims[i]``.
    """
    one_args, one_kwargs = _expand_args(args, kwargs, 1)
    x1 = x.unsqueeze(0)
    name = site or _first_site(guide, x1, one_args, one_kwargs)
    z = encode(guide, x1, *one_args, site=name, **one_kwargs)[0]
    dims = list(range(min(10, z.shape[-1]))) if dims is None else list(dims)
    values = torch.linspace(-3, 3, 9) if values is None else torch.as_tensor(values, dtype=z.dtype)
    values = values.to(z.device)
    grid = z.repeat(len(dims), len(values), 1)
    for i, d in enumerate(dims):
        grid[i, :, d] = values
    flat = grid.reshape(-1, z.shape[-1])
    row_args, row_kwargs = _expand_args(args, kwargs, flat.shape[0])
    images = _decode(model, flat, x.new_zeros(flat.shape[0], x.shape[-1]), row_args, row_kwargs, name)
    return images.reshape(len(dims), len(values), -1)


@torch.no_grad()
def latent_manifold(model, guide, x_like: torch.Tensor, *args, n: int = 20, site: str | None = None,
                    **kwargs) -> torch.Tensor:
    """Images decoded on an ``n x n`` grid of a 2-D latent space (Kingma & Welling, Figure 4).

    The grid points are ``Phi^-1`` of equally spaced quantiles in (0, 1), so that they cover the
    Normal prior evenly. ``x_like`` ``(1, D)`` gives the data dimension and device (its extra
    arguments are used for every row). Returns ``(n * n, D)``, row-major, z_1 along columns.
    """
    one_args, one_kwargs = _expand_args(args, kwargs, 1)
    name = site or _first_site(guide, x_like[:1], one_args, one_kwargs)
    q = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=x_like.device)
    ticks = torch.distributions.Normal(0.0, 1.0).icdf(q)
    zz1, zz2 = torch.meshgrid(ticks, ticks.flip(0), indexing="xy")
    z = torch.stack([zz1.reshape(-1), zz2.reshape(-1)], dim=-1)
    probe = encode(guide, x_like[:1], *one_args, site=name, **one_kwargs)
    if probe.shape[-1] != 2:
        raise ValueError(f"latent_manifold needs a 2-D latent site; {name!r} has {probe.shape[-1]} dimensions")
    row_args, row_kwargs = _expand_args(args, kwargs, n * n)
    return _decode(model, z, x_like.new_zeros(n * n, x_like.shape[-1]), row_args, row_kwargs, name)


@torch.no_grad()
def active_units(guide, data: torch.Tensor, *args, threshold: float = 0.01, batch_size: int = 1000,
                 **kwargs) -> dict[str, int]:
    """Number of active latent units per guide site (Burda et al. 2015, section 5.2).

    Unit ``j`` of a site is active when ``Var_x(E_q[z_j | x]) > threshold`` over the datapoints
    ``data`` (``(N, D)``; 0.01 in the paper). Returns ``{site: count}`` in guide order. For a
    hierarchical guide the mean of an upper site is taken given one draw of the sites below it.
    """
    with poutine.block():
        first = poutine.trace(guide).get_trace(data[:2], *(a[:2] if isinstance(a, torch.Tensor) else a for a in args),
                                               **kwargs)
    names = [name for name, _ in sample_sites(first)]
    means: dict[str, list] = {name: [] for name in names}
    for lo in range(0, data.shape[0], batch_size):
        batch_args = tuple(a[lo:lo + batch_size] if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)
        with poutine.block():
            trace = poutine.trace(guide).get_trace(data[lo:lo + batch_size], *batch_args, **kwargs)
        for name, site in sample_sites(trace):
            try:
                means[name].append(site["fn"].mean)
            except NotImplementedError:
                means[name].append(site["fn"].sample((256,)).mean(0))
    return {name: int((torch.cat(m).var(0) > threshold).sum()) for name, m in means.items()}


def anomaly_scores(model, guide, data: torch.Tensor, *args, method: str = "log_likelihood",
                   num_samples: int = 100, batch_size: int = 100, seed: int | None = 0, **kwargs) -> torch.Tensor:
    """Per-datapoint anomaly scores in nats (higher = more anomalous): ``(N,)``.

    ``method="elbo"``: the negative ELBO, ``-mean_k log w_k`` over ``num_samples`` draws;
    ``method="log_likelihood"``: ``-log p̂(x)``, the importance-sampled estimate with the same draws.
    """
    if method not in ("elbo", "log_likelihood"):
        raise ValueError(f"unknown anomaly score {method!r}; choose 'elbo' or 'log_likelihood'")
    result = estimate_log_likelihood(model, guide, data, num_samples, batch_size, *args,
                                     bound_ks=(1,) if num_samples > 1 else (), diagnostics=False, seed=seed,
                                     **kwargs)
    if method == "log_likelihood":
        return -result.log_likelihood
    return -(result.iwae_bounds[1] if num_samples > 1 else result.log_likelihood)


def latent_pictures(model, guide, data: torch.Tensor, image_shape, out: str | Path, *args, labels=None,
                    num_samples: int = 100, num_anomalies: int = 20, seed: int = 0) -> dict[str, Path]:
    """Write ``interpolation.png``, ``traversal.png`` and ``anomalies.png`` into ``out``.

    ``data``: ``(N, D)`` images (a test set); ``labels``: their labels for a conditional pair.
    Interpolations join the first five pairs of consecutive datapoints; the traversal varies
    the first 10 latent dimensions of the first datapoint; the anomaly picture shows the
    ``num_anomalies`` datapoints with the lowest ``log p̂(x)`` (``num_samples`` draws each).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = (labels,) if labels is not None else ()

    def at(i):
        return tuple(a[i:i + 1] for a in extra)

    rows = [interpolate(model, guide, data[2 * i], data[2 * i + 1], *at(2 * i), steps=10) for i in range(5)]
    paths = {"interpolation": save_image_grid(torch.cat(rows), image_shape, out / "interpolation.png", ncols=10,
                                              title="interpolation between posterior means (rows: 5 pairs)")}
    grid = traverse(model, guide, data[0], *at(0))
    paths["traversal"] = save_image_grid(grid.reshape(-1, grid.shape[-1]), image_shape, out / "traversal.png",
                                         ncols=grid.shape[1],
                                         title="traversal: latent dim i (row) from -3 to 3, others at E_q[z|x]")
    scores = anomaly_scores(model, guide, data, *extra, num_samples=num_samples, seed=seed)
    worst = torch.argsort(scores, descending=True)[:num_anomalies]
    paths["anomalies"] = save_image_grid(
        data[worst.to(data.device)], image_shape, out / "anomalies.png", ncols=10,
        title=f"most anomalous: -log p(x) {float(scores[worst[0]]):.1f} .. {float(scores[worst[-1]]):.1f} nats "
              f"(median {float(scores.median()):.1f})")
    return paths
