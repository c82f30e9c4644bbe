r"""Importance-sampled log-likelihoods of any conforming model/guide pair.

For each datapoint ``x_n`` and ``K`` draws ``z_k ~ q(z | x_n)`` from the guide,

.. math::
    \log \hat p(x_n) = \log \frac{1}{K} \sum_{k=1}^K \frac{p(x_n, z_k)}{q(z_k \mid x_n)}

which is the IWAE bound of Burda et al. (2015) for ``k = K``: a stochastic lower bound that
tightens to ``log p(x_n)`` as ``K`` grows (``K = 5000`` is the literature's standard). From the
same samples, the IWAE bounds for smaller ``k`` are the means over ``K // k`` disjoint groups of
``k`` samples; ``k = 1`` is the ELBO.

Discrete guide sites marked for parallel enumeration (``@config_enumerate``) are summed, not
sampled: each weight is ``sum_y p(x_n, y, z_ky) / q(z_ky | x_n, y)``, so ``q(y | x)`` drops out and
the estimate stays unbiased for ``p(x_n)`` however overconfident the classifier (sampling ``y``
from such a ``q(y | x)`` is biased low in ``log p̂``); the ELBO (:func:`evaluate_elbo`) takes
the exact expectation over ``q(y | x)``, as ``TraceEnum_ELBO`` does.

Particles are drawn in chunks and accumulated with a streaming logsumexp in float64, so memory
stays bounded whatever ``K`` and the data size.

What is estimated is ``log p(x)`` for a pair that observes ``x`` alone; a pair given
per-datapoint inputs it does not observe (labels ``y``) has ``log p(x | y)`` estimated, one that
observes ``y`` too ``log p(x, y)``: each result names its quantity (:func:`estimated_quantity`).

Modules: :mod:`~pyro_vae.evaluation.estimator` (:func:`estimate_log_likelihood`,
:func:`evaluate_elbo`, :func:`estimated_quantity`), :mod:`~pyro_vae.evaluation.result` (:class:`LogLikelihoodResult`),
:mod:`~pyro_vae.evaluation.comparison` (paired differences on the same datapoints, the data
fingerprint), :mod:`~pyro_vae.evaluation.files` (standard-JSON result files),
:mod:`~pyro_vae.evaluation.khat` (how k-hat values read), :mod:`~pyro_vae.evaluation.rng` (seeds
that leave the caller's RNGs alone), :mod:`~pyro_vae.evaluation.minibatches` (minibatches, their
seeds and processes; particle chunks), :mod:`~pyro_vae.evaluation.frechet` (sample quality: a
Fréchet distance in a small self-trained classifier's feature space, not the Inception FID).
"""

from .comparison import PairedComparison, data_fingerprint
from .estimator import DEFAULT_BOUND_KS, estimate_log_likelihood, evaluate_elbo
from .frechet import (
    FeatureNet,
    feature_moments,
    frechet_distance,
    frechet_distance_from_moments,
    sample_frechet_distance,
    train_feature_classifier,
)
from .quantity import estimated_quantity
from .result import LogLikelihoodResult

__all__ = ["DEFAULT_BOUND_KS", "FeatureNet", "LogLikelihoodResult", "PairedComparison", "data_fingerprint",
           "estimate_log_likelihood", "estimated_quantity", "evaluate_elbo", "feature_moments", "frechet_distance",
           "frechet_distance_from_moments", "sample_frechet_distance", "train_feature_classifier"]
