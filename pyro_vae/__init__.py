"""pyro-vae: variational autoencoders as Pyro model/guide pairs.

Train any conforming pair with SVI (:func:`train`), estimate per-datapoint log-likelihoods by
importance sampling (:func:`estimate_log_likelihood`). Units are nats per datapoint; an ELBO or
bound is a lower bound on log p(x) (higher is better), a loss is its negative.
"""

from .check import ModelGuideError, check_model_guide
from .data import Dataset, load_dataset
from .evaluation import LogLikelihoodResult, estimate_log_likelihood, evaluate_elbo
from .latent import anomaly_scores, decode, encode, interpolate, latent_manifold, traverse
from .models import MODELS, VAE, build_model
from .objectives import IWAE_ELBO, get_elbo
from .training import NonFiniteLossError, TrainingInterrupted, TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "IWAE_ELBO",
    "MODELS",
    "Dataset",
    "LogLikelihoodResult",
    "ModelGuideError",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "TrainResult",
    "VAE",
    "anomaly_scores",
    "build_model",
    "check_model_guide",
    "decode",
    "encode",
    "interpolate",
    "latent_manifold",
    "traverse",
    "estimate_log_likelihood",
    "evaluate_elbo",
    "get_elbo",
    "load_dataset",
    "train",
]
