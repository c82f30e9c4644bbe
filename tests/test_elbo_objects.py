"""ELBO objects accepted wherever an objective is: ``get_elbo(obj)`` returns an objective the
trainer can step with, and ``check_model_guide(..., elbo=obj)`` applies the rules of what the
object computes; what cannot be trained is refused with a ``TypeError`` naming the class."""

import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

sys.path.insert(0, str(Path(__file__).parent))
from linear_gaussian import LinearGaussian

from pyro_vae import ModelGuideError, check_model_guide, train
from pyro_vae.objectives import IWAE_ELBO, get_elbo

LG = LinearGaussian()


class MyELBO(Trace_ELBO):
    """A user's subclass, as Pyro users write them."""


def _exact_guide_with_param(x):
    one = pyro.param("one", torch.ones((), dtype=torch.float64))
    LG.exact_guide(x * one)


OBJECTS = [
    lambda: Trace_ELBO(num_particles=2, vectorize_particles=True),
    lambda: TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),  # no enumerated site here
    lambda: RenyiELBO(alpha=0, num_particles=3),
    lambda: MyELBO(),
]


@pytest.mark.parametrize("make", OBJECTS, ids=["Trace_ELBO(2,vectorized)", "TraceEnum_ELBO", "RenyiELBO(0)", "subclass"])
def test_objects_give_the_exact_elbo_with_the_exact_guide(make):
    x = LG.sample(20)
    objective = get_elbo(make(), max_plate_nesting=1)
    check_model_guide(LG.model, _exact_guide_with_param, x, elbo=make())
    loss = objective.differentiable_loss(LG.model, _exact_guide_with_param, x).detach()
    # exact posterior: log p(x, z) - log q(z | x) = log p(x) at every draw, for every bound
    assert abs(float(loss) + float(LG.exact_log_likelihood(x).sum())) < 1e-6


def test_renyi_alpha_0_is_computed_as_iwae_and_others_are_refused_by_name():
    assert isinstance(get_elbo(RenyiELBO(alpha=0, num_particles=4)), IWAE_ELBO)
    assert get_elbo(RenyiELBO(alpha=0, num_particles=4)).num_particles == 4
    with pytest.raises(TypeError, match=r"RenyiELBO\(alpha=0.5\) has no differentiable_loss"):
        get_elbo(RenyiELBO(alpha=0.5))
    with pytest.raises(TypeError, match=r"TraceGraph_ELBO has no differentiable_loss"):
        get_elbo(TraceGraph_ELBO())
    with pytest.raises(TypeError, match=r"not str|not int"):
        get_elbo(3)


def test_settings_belong_to_the_object():
    with pytest.raises(ValueError, match="carries its own settings"):
        get_elbo(Trace_ELBO(num_particles=2), num_particles=5)


def test_renyi_object_needs_reparameterized_sites_as_iwae_does():
    with pytest.raises(ModelGuideError, match="not reparameterizable"):
        check_model_guide(_discrete_model, _discrete_guide, LG.sample(10), elbo=RenyiELBO(alpha=0))
    check_model_guide(_discrete_model, _discrete_guide, LG.sample(10), elbo=Trace_ELBO())


def _discrete_model(x):
    with pyro.plate("data", x.shape[0]):
        y = pyro.sample("y", dist.Bernoulli(torch.tensor(0.5, dtype=torch.float64)))
        pyro.sample("x", dist.Normal(y.unsqueeze(-1).expand(y.shape + x.shape[-1:]), 1.0).to_event(1), obs=x)


def _discrete_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Bernoulli(torch.sigmoid(x[:, 0])))


def test_pyros_meanfield_gets_its_own_rules():
    x = LG.sample(10)
    check_model_guide(LG.model, LG.poor_guide, x, elbo=TraceMeanField_ELBO())
    # no score-function term in Pyro's class: a discrete latent would get a wrong gradient
    with pytest.raises(ModelGuideError, match="Pyro's TraceMeanField_ELBO has no score-function term"):
        check_model_guide(_discrete_model, _discrete_guide, x, elbo=TraceMeanField_ELBO())
    check_model_guide(_discrete_model, _discrete_guide, x, elbo="meanfield")  # pyro-vae's adds the term


def test_an_object_that_is_no_elbo_is_refused():
    with pytest.raises(TypeError, match="elbo must be a name"):
        check_model_guide(LG.model, LG.exact_guide, LG.sample(10), elbo=object())


def test_enum_name_trains_a_sampled_pair_too():
    """A pair without enumerated sites under "enum" is trained as Trace_ELBO would (Pyro's warning off)."""
    pyro.clear_param_store()

    def guide(x):
        loc = pyro.param("loc", torch.zeros(LG.latent_dim, dtype=torch.float64))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    result = train(LG.model, guide, LG.sample(200), elbo="enum", epochs=2, batch_size=50, lr=0.05, progress=False)
    assert len(result.history) == 2


def test_train_accepts_an_elbo_object_without_a_run_folder():
    """train(elbo=<object>) steps with the object (a run folder needs train() to record a label:
    objectives.elbo_label)."""
    pyro.clear_param_store()

    def guide(x):
        loc = pyro.param("loc", torch.zeros(LG.latent_dim, dtype=torch.float64))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    result = train(LG.model, guide, LG.sample(200), elbo=Trace_ELBO(num_particles=2, vectorize_particles=True),
                   epochs=3, batch_size=50, lr=0.05, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(h["skipped_steps"] == 0 for h in result.history)
    assert float(pyro.param("loc").detach().abs().max()) > 0.05  # 12 Adam steps of lr 0.05 moved it


def test_train_records_an_elbo_object_in_its_run_folder(tmp_path):
    """An ELBO object is written to config.json as its class path and settings, and the run resumes."""
    import json

    from pyro_vae import VAE, RunFolder, train

    x = torch.bernoulli(torch.full((40, 784), 0.3))
    vae = VAE(784, latent_dim=2, hidden_dim=8)
    elbo = pyro.infer.Trace_ELBO(num_particles=2, vectorize_particles=True)
    train(vae.model, vae.guide, x, elbo=elbo, batch_size=20, out=tmp_path, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["elbo"] == "pyro.infer.trace_elbo.Trace_ELBO(num_particles=2, vectorize_particles=True)"
    assert config["num_particles"] == 2
    result = train(vae.model, vae.guide, x, elbo=elbo, batch_size=20, epochs=2,
                   out=RunFolder(tmp_path, resume=True), progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
