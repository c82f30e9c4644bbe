"""How a run folder says which pair it trained, so that ``pyro-vae evaluate|latent`` and
``--resume`` can rebuild it: a shipped family with its options, or a user's *pair factory*.

A pair factory is a function named ``"package.module:function"`` (``pyro-vae train --pair``)
that returns a conforming pair given the data set's facts: either an ``nn.Module`` with
``model`` and ``guide`` methods, or a tuple ``(model, guide, module)`` whose ``module`` holds
every network. It takes by keyword any of :data:`DATA_FACTS` (and ``latent_dim`` /
``hidden_dim`` when asked for with ``--latent-dim`` / ``--hidden-dim``)::

    def make_pair(data_dim, image_shape=None, likelihood="bernoulli", latent_dim=10):
        return MyVAE(data_dim, latent_dim)

Rebuilding a pair from its record imports the factory's module, so it runs that module's
code: rebuild only run folders you trust, as you would run their scripts.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from torch import nn

from .base import PairModule

__all__ = ["DATA_FACTS", "ExternalPair", "build_from_factory", "data_facts", "import_factory", "shipped_record"]

DATA_FACTS = ("data_dim", "image_shape", "likelihood", "num_classes")
"""What a factory may take about the data set: ``data_dim`` (values per flattened datapoint),
``image_shape`` (``[H, W]`` or ``None``), ``likelihood`` (the data set's observation model by
name) and ``num_classes`` (label values, ``None`` without labels)."""


@dataclass
class ExternalPair:
    """A pair built by a factory: ``model``, ``guide`` and the ``module`` holding the nets.

    Attributes:
        needs_labels: the module's ``needs_labels`` (labels passed after ``x``), else ``False``.

    ``latent_dim`` is the module's ``latent_dim`` when it has one, else ``None``.
    """

    model: object
    guide: object
    module: nn.Module
    needs_labels: bool | None = None

    def __post_init__(self):
        if self.needs_labels is None:
            self.needs_labels = bool(getattr(self.module, "needs_labels", False))

    @property
    def latent_dim(self) -> int | None:
        """The module's ``latent_dim`` attribute, if it has one."""
        return getattr(self.module, "latent_dim", None)

    def to(self, device) -> ExternalPair:
        """Move the nets to ``device`` (in place); returns ``self``."""
        self.module.to(device)
        return self


def data_facts(data) -> dict:
    """The :data:`DATA_FACTS` of a :class:`~pyro_vae.data.Dataset`, JSON-ready."""
    labels = data.train_labels
    return {"data_dim": data.data_dim, "image_shape": None if data.image_shape is None else list(data.image_shape),
            "likelihood": data.likelihood, "num_classes": None if labels is None else int(labels.max()) + 1}


def import_factory(spec: str):
    """The function named ``"package.module:function"`` (importable from ``sys.path``).

    Raises:
        ValueError: a malformed name, a module that cannot be imported or a missing attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--pair takes 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import the pair factory's module {module_name!r} ({e}); is it on PYTHONPATH?") from e
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"module {module_name!r} has no {attr!r} (from --pair {spec})")
    if not callable(factory):
        raise ValueError(f"{spec} is not a function (a pair factory returns the pair)")
    return factory


def build_from_factory(spec: str, facts: dict, options: dict | None = None) -> ExternalPair:
    """Call the factory ``spec`` with the data set's ``facts`` (those it takes) and the user's
    ``options`` (every one must be taken); return the pair as an :class:`ExternalPair`.

    Raises:
        ValueError: an option the factory does not take, or a result that is not a pair.
    """
    factory = import_factory(spec)
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options or {} if k not in params and not takes_all]
    if unknown:
        raise ValueError(f"the pair factory {spec} does not take {', '.join(unknown)}; it takes "
                         f"{', '.join(params) or 'nothing'}")
    kwargs = {k: v for k, v in facts.items() if k in params or takes_all}
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name not in kwargs and name not in (options or {})]
    if missing:
        raise ValueError(f"the pair factory {spec} needs {', '.join(missing)}, which pyro-vae cannot give it: it "
                         f"gives {', '.join(DATA_FACTS)} (those the factory takes) and --latent-dim, --hidden-dim "
                         "when given; give the others defaults")
    made = factory(**kwargs, **(options or {}))
    if isinstance(made, tuple) and len(made) == 3 and isinstance(made[2], nn.Module):
        return ExternalPair(*made)
    if isinstance(made, nn.Module) and callable(getattr(made, "model", None)) and callable(getattr(made, "guide", None)):
        return ExternalPair(made.model, made.guide, made)
    raise ValueError(f"the pair factory {spec} returned {type(made).__name__}; it must return an nn.Module with "
                     "model and guide methods, or a tuple (model, guide, module)")


def shipped_record(module: nn.Module | None, families: dict) -> dict | None:
    """How to rebuild ``module`` when it is a shipped pair built with its class's arguments:
    ``{"model": name, "data_dim": D, "model_config": {...}}``; ``None`` otherwise."""
    if not isinstance(module, PairModule):
        return None
    build = module.__dict__.get("_build_args")
    names = [name for name, cls in families.items() if cls is type(module)]
    if build is None or not names:
        return None
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in build.items() if k != "data_dim"}
    return {"model": names[0], "data_dim": build["data_dim"], "model_config": config}
