"""pyro-vae: variational autoencoders as Pyro model/guide pairs.

Train any conforming pair with SVI (:func:`train`), estimate per-datapoint log-likelihoods by
importance sampling (:func:`estimate_log_likelihood`). Units are nats per datapoint; an ELBO or
bound is a lower bound on log p(x) (higher is better), a loss is its negative.

Every public name is listed in ``__all__``; the modules hold one idea each (see the README's
layout and the API reference under ``docs/``).
"""

from .autoguide import AutoAmortizedNormal
from .check import ModelGuideError, check_model_guide
from .data import DataNotFoundError, Dataset, load_dataset
from .evaluation import LogLikelihoodResult, PairedComparison, estimate_log_likelihood, evaluate_elbo
from .latent import active_units, anomaly_scores, decode, encode, interpolate, latent_manifold, traverse
from .models import (
    MODELS,
    VAE,
    VAEGAN,
    WAE,
    WAEGAN,
    BernoulliVAE,
    ConcreteVAE,
    ConditionalVAE,
    ConvVAE,
    FlowVAE,
    HierarchicalVAE,
    LadderVAE,
    NVAE,
    SemiSupervisedVAE,
    VQVAE,
    build_model,
)
from .objectives import (
    ELBO_NAMES,
    FreeBitsELBO,
    IWAE_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceMeanField_ELBO,
    get_elbo,
    scale_latents,
)
from .optim import FusedOptim
from .training import (
    CheckpointError,
    KLSchedule,
    NonFiniteLossError,
    RunFolder,
    Trainer,
    TrainingInterrupted,
    TrainingPhase,
    TrainResult,
    load_run,
    train,
)

__version__ = "0.1.0"

__all__ = [
    "ELBO_NAMES",
    "IWAE_ELBO",
    "MODELS",
    "VAE",
    "VQVAE",
    "VAEGAN",
    "WAE",
    "WAEGAN",
    "BernoulliVAE",
    "ConcreteVAE",
    "TrainingPhase",
    "AutoAmortizedNormal",
    "CheckpointError",
    "ConditionalVAE",
    "ConvVAE",
    "DataNotFoundError",
    "Dataset",
    "FlowVAE",
    "FreeBitsELBO",
    "FusedOptim",
    "HierarchicalVAE",
    "LadderVAE",
    "NVAE",
    "KLSchedule",
    "LogLikelihoodResult",
    "ModelGuideError",
    "NonFiniteLossError",
    "PairedComparison",
    "RunFolder",
    "SemiSupervisedVAE",
    "TraceEnum_ELBO",
    "TraceMeanField_ELBO",
    "Trace_ELBO",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "active_units",
    "anomaly_scores",
    "build_model",
    "check_model_guide",
    "decode",
    "encode",
    "estimate_log_likelihood",
    "evaluate_elbo",
    "get_elbo",
    "interpolate",
    "latent_manifold",
    "load_dataset",
    "load_run",
    "scale_latents",
    "train",
    "traverse",
]
