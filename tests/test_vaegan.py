"""The VAE-GAN and training phases: each loss updates only the parameters its step owns, the
phases run on their schedule, checkpoints carry their optimizers (bitwise resume), bad phases are
refused before the first step, and the VAE-GAN's two objectives are what their docstrings say."""

from __future__ import annotations

import json
import math
import os
import signal

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from pyro_vae import train
from pyro_vae.models.vaegan import VAEGAN, Discriminator
from pyro_vae.objectives import DiscriminatorLoss, Trace_ELBO, VAEGANLoss, vaegan_objectives
from pyro_vae.objectives.vaegan import generated_draws
from pyro_vae.optim import make_optimizer
from pyro_vae.training import CheckpointError, RunFolder, TrainingInterrupted, TrainingPhase, svi_step
from pyro_vae.training.step import ELBOLoss

SETTINGS = {"epochs": 2, "batch_size": 50, "progress": False, "step": "eager"}


def small_vaegan() -> VAEGAN:
    pyro.set_rng_seed(0)
    return VAEGAN(784, latent_dim=4, hidden_dim=32, discriminator_dim=32)


def discriminator_phase(vae, lr=2e-4, **kwargs) -> TrainingPhase:
    return TrainingPhase("discriminator", DiscriminatorLoss(vae.discriminator), make_optimizer("adam", lr),
                         params="discriminator", **kwargs)


def store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


# --- a pair written the way a Pyro user writes one: functions, nets registered with pyro.module ---

encoder = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
decoder = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 784))
critic = Discriminator(784, 32, 16)


def user_model(x):
    pyro.module("decoder", decoder)
    pyro.module("critic", critic)  # registered by the model so that checkpoints hold it
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 4), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)


def user_guide(x):
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        loc, log_scale = encoder(x).chunk(2, -1)
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_svi_step_updates_only_the_parameters_it_is_given_and_drops_the_other_gradients():
    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    x = torch.randn(5, 3)

    def loss_fn(x):
        pyro.module("a", a), pyro.module("b", b)
        return (a(x) * b(x)).pow(2).sum()

    before = {k: v.detach().clone() for k, v in [*a.named_parameters("a"), *b.named_parameters("b")]}
    expected = torch.autograd.grad(loss_fn(x), list(a.parameters()))
    _, applied = svi_step(loss_fn, pyro.optim.SGD({"lr": 0.1}), x, updates=lambda name: name.startswith("a$$$"))
    assert applied
    for (name, p), g in zip(a.named_parameters("a"), expected):
        torch.testing.assert_close(p.detach(), before[name] - 0.1 * g)
    assert all(torch.equal(p, before[name]) for name, p in b.named_parameters("b"))
    assert all(p.grad is None for p in [*a.parameters(), *b.parameters()])


def test_the_pairs_objective_never_moves_a_phases_parameters_and_the_phase_runs_on_its_schedule(mnist):
    data = mnist.subset(num_train=200, num_test=20)
    runs = []

    class Counted(DiscriminatorLoss):
        def differentiable_loss(self, model, guide, x, *args, **kwargs):
            runs.append(torch.is_grad_enabled())
            return super().differentiable_loss(model, guide, x, *args, **kwargs)

    elbo = VAEGANLoss(Trace_ELBO(), critic)  # runs the critic (detached: it never moves it)
    frozen = TrainingPhase("critic", Counted(critic, name="critic"), pyro.optim.SGD({"lr": 0.0}), params="critic",
                           every=3, start=1)
    pyro.set_rng_seed(0)
    start = {k: v.detach().clone() for k, v in critic.named_parameters()}
    train(user_model, user_guide, data, elbo=elbo, phases=[frozen], **SETTINGS)
    # 8 steps: the phase is due at steps 1, 4, 7 (from 0); plus the checker's one run
    assert len(runs) == 1 + 3
    assert all(torch.equal(p, start[k]) for k, p in critic.named_parameters())
    moved = TrainingPhase("critic", DiscriminatorLoss(critic, name="critic"), make_optimizer("adam", 1e-2),
                          params="critic")
    pyro.set_rng_seed(0)
    train(user_model, user_guide, data, elbo=elbo, phases=[moved], **SETTINGS)
    assert not all(torch.equal(p, start[k]) for k, p in critic.named_parameters())


def test_vaegan_loss_has_the_elbos_value_and_the_gradient_of_its_two_terms(mnist):
    vae, x = small_vaegan(), torch.bernoulli(mnist.train[:16])
    params = list(vae.encoder.parameters()) + list(vae.decoder.parameters())
    gamma, alpha = 0.7, 1.3

    def loss_and_grads(objective, seed):
        pyro.set_rng_seed(seed)
        loss = objective.differentiable_loss(vae.model, vae.guide, x)
        return loss, torch.autograd.grad(loss, params, allow_unused=True)

    elbo_loss, elbo_grads = loss_and_grads(Trace_ELBO(), 3)
    loss, grads = loss_and_grads(VAEGANLoss(Trace_ELBO(), vae.discriminator, gamma, alpha), 3)
    assert torch.equal(loss, elbo_loss)  # the value is the ELBO's, draw for draw
    # the two terms by hand, on the same draws (the RNG after the ELBO's draws), Larsen et al.'s section 2
    pyro.set_rng_seed(3)
    Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    draws = generated_draws(vae.model, vae.guide, x)
    logit, features = (lambda v: vae.discriminator(v)[0]), (lambda v: vae.discriminator(v)[1])
    terms = gamma * 0.5 * (features(draws["reconstruction"]) - features(x)).pow(2).sum() + alpha * (
        -F.logsigmoid(logit(draws["fixed_z"])).sum() - F.logsigmoid(logit(draws["prior"])).sum())
    expected = torch.autograd.grad(terms, params, allow_unused=True)
    for got, elbo_grad, term_grad in zip(grads, elbo_grads, expected):
        torch.testing.assert_close(got - elbo_grad, term_grad if term_grad is not None else torch.zeros_like(got),
                                   rtol=1e-4, atol=1e-5)
    assert any(g is not None and g.abs().max() > 1e-3 for g in expected)  # the terms do move encoder and decoder
    pyro.set_rng_seed(3)  # and never the discriminator: it runs detached inside this loss
    loss = VAEGANLoss(Trace_ELBO(), vae.discriminator, gamma, alpha).differentiable_loss(vae.model, vae.guide, x)
    assert all(g is None for g in torch.autograd.grad(loss, list(vae.discriminator.parameters()), allow_unused=True))


def test_discriminator_loss_is_the_logistic_loss_of_data_against_the_models_draws(mnist):
    vae, x = small_vaegan(), torch.bernoulli(mnist.train[:16])
    pyro.set_rng_seed(5)
    got = DiscriminatorLoss(vae.discriminator).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        draws = generated_draws(vae.model, vae.guide, x)
    assert set(torch.unique(draws["reconstruction"]).tolist()) <= {0.0, 1.0}  # draws, like the data
    logit = lambda v: vae.discriminator(v)[0].double()
    expected = (-F.logsigmoid(logit(x)) - F.logsigmoid(-logit(draws["reconstruction"]))
                - F.logsigmoid(-logit(draws["prior"]))).sum()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


class Interrupting(DiscriminatorLoss):
    """A real SIGTERM during the 6th training step (epoch 2 of 4 steps each) when ``kill_at`` is set."""

    kill_at: int | None = None
    calls = 0

    def differentiable_loss(self, model, guide, x, *args, **kwargs):
        if torch.is_grad_enabled() and len(x) == 50:
            type(self).calls += 1
            if type(self).calls == self.kill_at:
                os.kill(os.getpid(), signal.SIGTERM)
        return super().differentiable_loss(model, guide, x, *args, **kwargs)


def test_an_interrupted_and_resumed_vaegan_run_is_bitwise_equal(mnist, tmp_path):
    data = mnist.subset(num_train=200, num_test=20)

    def run(out, kill_at=None):
        vae = small_vaegan()
        elbo, _ = vaegan_objectives(vae.discriminator)
        Interrupting.kill_at, Interrupting.calls = kill_at, 0
        phase = TrainingPhase("discriminator", Interrupting(vae.discriminator), make_optimizer("adam", 1e-3),
                              params="discriminator")
        return train(vae.model, vae.guide, data, elbo=elbo, phases=[phase], out=out, **SETTINGS)

    full = run(RunFolder(tmp_path / "full"))
    expected = store()
    assert any(k.startswith("discriminator$$$") for k in expected)
    with pytest.raises(TrainingInterrupted):
        run(RunFolder(tmp_path / "cut"), kill_at=6)
    torch.manual_seed(1234)
    resumed = run(RunFolder(tmp_path / "cut", resume=True))
    got = store()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert resumed.history[-1]["train_discriminator_loss"] == full.history[-1]["train_discriminator_loss"]
    vae = small_vaegan()
    with pytest.raises(CheckpointError, match=r"other settings \(phases: checkpoint \[\{'name': 'discriminator'"):
        train(vae.model, vae.guide, data, elbo=vaegan_objectives(vae.discriminator)[0], phases=[
              discriminator_phase(vae, lr=1e-3, every=2)], out=RunFolder(tmp_path / "cut", resume=True),
              **{**SETTINGS, "epochs": 3})  # the discriminator's schedule changed: refused


@pytest.mark.parametrize("change, message", [
    ({"params": "decoder"}, "training phase 'critic' would update nothing: its loss has no gradient"),
    ({"every": 0}, "every must be an integer >= 1"),
    ({"name": "two words"}, "distinct identifiers"),
    ({"objective": Trace_ELBO()}, "training phase 'critic' would update nothing"),  # runs the critic? no
])
def test_a_bad_phase_is_refused_before_the_first_step_naming_it(mnist, change, message):
    data = mnist.subset(num_train=100, num_test=10)
    settings = {"name": "critic", "objective": DiscriminatorLoss(critic, name="critic"),
                "optim": make_optimizer("adam", 1e-3), "params": "critic", **change}
    with pytest.raises(ValueError, match=message):
        train(user_model, user_guide, data, phases=[TrainingPhase(**settings)], **SETTINGS)


def test_phases_run_eager_under_auto_and_are_refused_by_the_compiled_step(mnist, tmp_path):
    vae, data = small_vaegan(), mnist.subset(num_train=100, num_test=10)
    elbo, _ = vaegan_objectives(vae.discriminator)
    with pytest.raises(ValueError, match=r"step='compiled' does not support training phases \(1\)"):
        train(vae.model, vae.guide, data, elbo=elbo, phases=[discriminator_phase(vae)], **{**SETTINGS, "step": "compiled"})
    out = RunFolder(tmp_path / "auto")
    train(vae.model, vae.guide, data, elbo=elbo, phases=[discriminator_phase(vae)], out=out,
          **{**SETTINGS, "epochs": 1, "step": "auto"})
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["step_used"] == "eager" and "training phases" in config["step_reason"]
    assert config["phases"][0]["params"] == "discriminator"


def test_a_vaegan_trains_on_mnist_its_discriminator_learns_and_its_bound_improves(mnist):
    data = mnist.subset(num_train=1000, num_test=200)
    vae = small_vaegan()
    elbo, _ = vaegan_objectives(vae.discriminator)
    loss_fn = ELBOLoss(None, Trace_ELBO(), vae.model, vae.guide)
    with torch.no_grad():
        pyro.set_rng_seed(1)
        untrained = -float(loss_fn(data.test)) / len(data.test)
    result = train(vae.model, vae.guide, data, elbo=elbo, phases=[discriminator_phase(vae, lr=1e-3)],
                   **{**SETTINGS, "epochs": 3, "lr": 3e-3})
    last = result.history[-1]
    assert last["test_elbo"] > untrained + 10 * last["test_elbo_se"]
    # the discriminator tells the test images from the model's draws better than chance (3 log 2 nats per image
    # for its three terms), by more than 4 standard errors over 200 images
    with torch.no_grad():
        pyro.set_rng_seed(2)
        draws = generated_draws(vae.model, vae.guide, data.test)
        logit = lambda v: vae.discriminator(v)[0]
        per_image = (F.softplus(-logit(data.test)) + F.softplus(logit(draws["reconstruction"]))
                     + F.softplus(logit(draws["prior"]))).double()
    se = per_image.std() / len(per_image) ** 0.5
    assert per_image.mean() < 3 * math.log(2) - 4 * se, (per_image.mean(), se)


def test_a_gan_pair_without_its_discriminator_phase_is_refused_naming_the_network(mnist):
    vae, data = small_vaegan(), mnist.subset(num_train=100, num_test=10)
    with pytest.raises(ValueError, match="trains its network 'discriminator' as its own training phase"):
        train(vae.model, vae.guide, data, **SETTINGS)  # its default_elbo alone: a plain VAE, not a VAE-GAN
    with pytest.raises(ValueError, match="not an objective's name but a pair's label"):
        train(vae.model, vae.guide, data, elbo="wae-gan", **SETTINGS)


def test_a_tensor_owned_twice_is_refused(mnist):
    vae, data = small_vaegan(), mnist.subset(num_train=100, num_test=10)
    elbo, _ = vaegan_objectives(vae.discriminator)
    twice = [discriminator_phase(vae), TrainingPhase("again", DiscriminatorLoss(vae.discriminator),
                                                      make_optimizer("adam", 1e-3), params="discriminator")]
    with pytest.raises(ValueError, match=r"would be updated by \['again', 'discriminator'\]"):
        train(vae.model, vae.guide, data, elbo=elbo, phases=twice, **SETTINGS)
    renamed = TrainingPhase("judge", DiscriminatorLoss(critic, name="judge"), make_optimizer("adam", 1e-3),
                            params="judge")  # the critic, which the model registers as "critic" too
    with pytest.raises(ValueError, match=r"parameter 'critic\$\$\$.*\['None', 'judge'\].*registered under a "):
        train(user_model, user_guide, data, phases=[renamed], **SETTINGS)


@pytest.mark.parametrize("name, phase", [("vaegan", "discriminator"), ("wae-gan", "latent_discriminator")])
def test_the_gan_pairs_train_and_resume_from_the_cli_with_their_phase(name, phase, data_root, tmp_path):
    """``pyro-vae train --model NAME`` in this process, then ``--resume`` to a second epoch: the run folder
    records the discriminator's phase, its loss is a metric of each epoch, and the resumed run keeps it."""
    from pyro_vae.cli import main

    run = tmp_path / name
    common = ["--no-progress", "--device", "cpu", "--data-dir", str(data_root)]
    assert main(["train", "--model", name, "--num-train", "100", "--num-test", "20", "--epochs", "1",
                 "--latent-dim", "2", "--hidden-dim", "16", "--out", str(run), *common]) == 0
    config = json.loads((run / "config.json").read_text())
    assert [p["params"] for p in config["phases"]] == [phase] and config["step_used"] == "eager"
    assert main(["train", "--resume", str(run), "--epochs", "2", *common]) == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h[f"train_{phase}_loss"]) for h in history)
