"""The compiled SVI step (train(..., step="compiled"), pyro_vae.training.compiled).

Kept fast: a 20-16-4 VAE on random binary data, 70 points in minibatches of 32 (two recorded
steps and one eager last step per epoch). Inductor compiles only in the module-scoped fixture
(one cold compile; the interrupted and resumed runs recompile the same graph, an inductor cache
hit); every other test uses ``step="compiled:replay"`` (the recorded graph replayed op by op),
which is bitwise equal to the eager step.
"""

import json
import os
import signal
import warnings
from unittest import mock

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

from pyro_vae import VAE, train
from pyro_vae.models import MODELS
from pyro_vae.training.pair_phases import pair_phases
from pyro_vae.objectives import get_elbo
from pyro_vae.optim import make_optimizer
from pyro_vae.training import ELBOLoss, KLSchedule, RunFolder, TrainingInterrupted
from pyro_vae.training.compiled import CHECK_RTOL, CompiledStepWarning, CompiledSVIStep

D, N, B, EPOCHS = 20, 70, 32, 3
SETTINGS = {"batch_size": B, "epochs": EPOCHS, "progress": False, "log_interval": 1}


def data() -> torch.Tensor:
    return (torch.rand(N, D, generator=torch.Generator().manual_seed(3)) < 0.3).float()


def params() -> dict:
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def fresh_vae(cls=VAE) -> VAE:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return cls(D, latent_dim=4, hidden_dim=16)


def counting(limit: int | None = None):
    """A patch counting the compiled steps; SIGTERM to this process at the ``limit``-th."""
    calls, replay = [0], CompiledSVIStep._replay

    def spy(self, *args):
        calls[0] += 1
        if calls[0] == limit:
            os.kill(os.getpid(), signal.SIGTERM)
        return replay(self, *args)

    return mock.patch.object(CompiledSVIStep, "_replay", spy), calls


def run(step: str, out=None, **kwargs):
    vae = fresh_vae()
    patch, calls = counting(kwargs.pop("interrupt_at", None))
    with patch, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback line: the compiled step is used
        result = train(vae.model, vae.guide, data(), step=step, out=out, **{**SETTINGS, **kwargs})
    return result, params(), torch.get_rng_state(), calls[0]


def assert_replay_is_the_eager_run(cls, dataset, **settings):
    """Train a fresh ``cls`` eager and with the recorded step replayed: every full minibatch replays
    (no fallback line), with the same curve and parameters bit for bit."""
    results = []
    for step in ("eager", "compiled:replay"):
        vae = fresh_vae(cls)
        patch, calls = counting()
        with patch, warnings.catch_warnings():
            warnings.simplefilter("error", CompiledStepWarning)
            results.append((train(vae.model, vae.guide, dataset, step=step, **SETTINGS, **settings), params(),
                            calls[0]))
    (eager, eager_params, _), (replayed, replayed_params, replays) = results
    assert replays == 2 * EPOCHS
    assert [c["train_elbo"] for c in replayed.curve] == [c["train_elbo"] for c in eager.curve]
    assert all(torch.equal(eager_params[k], replayed_params[k]) for k in eager_params)


@pytest.fixture(scope="module")
def inductor_runs(tmp_path_factory):
    """An eager run, an uninterrupted compiled run, and a compiled run interrupted mid-epoch 2
    (SIGTERM at its 4th compiled step) and resumed."""
    root = tmp_path_factory.mktemp("compiled")
    eager = run("eager")
    full = run("compiled", out=RunFolder(root / "full"))
    with pytest.raises(TrainingInterrupted):
        run("compiled", out=RunFolder(root / "cut"), interrupt_at=4)
    resumed = run("compiled", out=RunFolder(root / "cut", resume=True))
    return eager, full, resumed, root


def test_compiled_run_matches_the_eager_run_up_to_rounding(inductor_runs):
    (eager, eager_params, eager_rng, _), (full, full_params, full_rng, replays), _, root = inductor_runs
    assert replays == 2 * EPOCHS  # the full minibatches replay the graph; the last (6 points) runs eager
    assert json.loads((root / "full" / "config.json").read_text())["step"] == "compiled"
    # the same noise (the global RNG advances exactly as eager): the losses agree to float rounding
    assert torch.equal(full_rng, eager_rng)
    curve, expected = ([c["train_elbo"] for c in r.curve] for r in (full, eager))
    assert curve == pytest.approx(expected, rel=10 * CHECK_RTOL)
    # Adam amplifies rounding on a weight whose eager gradient is exactly 0 (a move of ~lr instead
    # of 0, see the module docstring of the prototype), so parameters agree within 1e-3 only
    worst = max(float((full_params[k] - eager_params[k]).abs().max()) for k in eager_params)
    assert worst < 1e-3


def test_an_interrupted_and_resumed_compiled_run_is_bitwise_equal(inductor_runs):
    _, (full, full_params, _, _), (resumed, resumed_params, _, replays), _ = inductor_runs
    assert replays == 2  # interrupted after step 5 (epoch 2, minibatch 2); steps 7 and 8 replay, 6 and 9 are eager
    assert all(torch.equal(full_params[k], resumed_params[k]) for k in full_params)
    assert [c["train_elbo"] for c in resumed.curve] == [c["train_elbo"] for c in full.curve]


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_the_replayed_graph_is_bitwise_equal_to_the_eager_step(elbo):
    eager, eager_params, eager_rng, _ = run("eager", elbo=elbo, epochs=2)
    replayed, replayed_params, replayed_rng, replays = run("compiled:replay", elbo=elbo, epochs=2)
    assert replays == 4
    assert [c["train_elbo"] for c in replayed.curve] == [c["train_elbo"] for c in eager.curve]
    assert all(torch.equal(eager_params[k], replayed_params[k]) for k in eager_params)
    assert torch.equal(replayed_rng, eager_rng)


@pytest.mark.parametrize("elbo", ["trace", "meanfield"])
def test_kl_warmup_is_an_input_of_the_recorded_step(elbo):
    # the factor changes at every step (1/5, 2/5, ..., 1): a factor frozen at its recorded value
    # would give other losses from the second step on
    warmup = {"elbo": elbo, "epochs": 2, "schedule": KLSchedule(warmup_steps=5)}
    eager, eager_params, eager_rng, _ = run("eager", **warmup)
    replayed, replayed_params, replayed_rng, replays = run("compiled:replay", **warmup)
    assert replays == 4
    assert [c["train_elbo"] for c in replayed.curve] == [c["train_elbo"] for c in eager.curve]
    assert all(torch.equal(eager_params[k], replayed_params[k]) for k in eager_params)
    assert torch.equal(replayed_rng, eager_rng)


class BranchVAE(VAE):
    """Data-dependent control flow: a branch on a minibatch statistic."""

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            logits = self.decoder(z)
            if x.mean() > 0.3:
                logits = logits - 1.0
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


class CountingVAE(VAE):
    """Python state that is not an input of the step: a temperature that changes at every call."""

    calls = 0

    def model(self, x):
        pyro.module("decoder", self.decoder)
        self.calls += 1
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) / (1 + 0.1 * self.calls)).to_event(1), obs=x)


@pytest.mark.parametrize("cls, why", [(BranchVAE, "RuntimeError: the step reads a tensor.s value in Python at test_compiled_step.py:[0-9]+ .model."),
                                      (CountingVAE, "ValueError: the recorded step's loss on another minibatch")])
def test_a_pair_that_cannot_be_recorded_runs_eager_with_one_line_saying_why(cls, why, tmp_path):
    vae = fresh_vae(cls)
    expected = None
    if cls is BranchVAE:
        train(vae.model, vae.guide, data(), **SETTINGS)
        expected, vae = params(), fresh_vae(cls)
    patch, calls = counting()
    with patch, pytest.warns(CompiledStepWarning) as caught:
        train(vae.model, vae.guide, data(), step="compiled:replay", out=tmp_path, **SETTINGS)
    lines = [str(w.message) for w in caught if "step='compiled'" in str(w.message)]
    config = json.loads((tmp_path / "config.json").read_text())  # the run says what it did, and why
    assert config["step_used"] == "eager" and config["step_reason"] in lines[0]
    assert len(lines) == 1 and "\n" not in lines[0] and "runs eager" in lines[0], lines
    assert __import__("re").search(why, lines[0]), lines[0]
    assert calls[0] == 0
    if expected is not None:  # the fallback is the eager step itself
        assert all(torch.equal(expected[k], v) for k, v in params().items())


def test_a_nonfinite_step_is_not_applied():
    vae = fresh_vae()
    objective = get_elbo("trace", 1, 0.0, 1)  # pyro_vae's: Pyro's own reads the loss on the host
    loss_fn, optim = ELBOLoss(None, objective, vae.model, vae.guide), make_optimizer("adam", 1e-3)
    x = data()
    step = CompiledSVIStep(loss_fn, optim, backend="replay").record((x[:B],), (x[-B:],))
    assert step.reason is None
    loss, applied = step(loss_fn, optim, x[:B])
    assert applied and torch.isfinite(loss)
    weight = step.params[0]
    with torch.no_grad():
        weight[0, 0] = float("nan")
    before = [t.clone() for t in (*step.params, *step.steps, *step.moments[0], *step.moments[1])]
    loss, applied = step(loss_fn, optim, x[:B])
    assert not applied and step.replays == 2
    after = (*step.params, *step.steps, *step.moments[0], *step.moments[1])
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(after, before))
    assert float(step.steps[0]) == 1.0


@pytest.mark.parametrize("settings, what", [
    ({"optimizer": pyro.optim.Adagrad({"lr": 0.1})}, "optimizer PyroOptim\\(Adagrad\\)"),
    ({"optimizer": pyro.optim.Adam({"lr": 1e-3})}, "optimizer PyroOptim\\(Adam\\)"),
    ({"compile": True}, "compile"),
])
def test_unsupported_settings_are_refused_before_any_step(settings, what):
    vae = fresh_vae()
    with mock.patch("pyro_vae.training.trainer.Trainer.fit") as fit, \
            pytest.raises(ValueError, match=f"step='compiled' does not support .*{what}.*it supports the optimizer"):
        train(vae.model, vae.guide, data(), step="compiled", **{**SETTINGS, **settings})
    fit.assert_not_called()
    with pytest.raises(ValueError, match="step must be one of auto, eager, compiled"):
        train(vae.model, vae.guide, data(), step="fast", **SETTINGS)


def assert_replay_is_eager(**settings):
    """The eager run and the compiled:replay run of the same settings: every loss, parameter and
    the final RNG state bitwise equal, with the full minibatches replayed."""
    eager, eager_params, eager_rng, _ = run("eager", epochs=2, **settings)
    replayed, replayed_params, replayed_rng, replays = run("compiled:replay", epochs=2, **settings)
    assert replays == 4
    assert [c["train_elbo"] for c in replayed.curve] == [c["train_elbo"] for c in eager.curve]
    assert all(torch.equal(eager_params[k], replayed_params[k]) for k in eager_params)
    assert torch.equal(replayed_rng, eager_rng)


def test_adagrad_updates_the_recorded_step_as_eager():
    """AEVB's optimizer: the fused Adagrad kernel on the optimizer's own sums, as the eager step."""
    assert_replay_is_eager(optimizer="adagrad", lr=0.05)


def test_free_bits_and_elbo_objects_of_ours_are_recorded():
    assert_replay_is_eager(elbo="meanfield", schedule=KLSchedule(free_bits=0.3))
    from pyro_vae.objectives import IWAE_ELBO
    assert_replay_is_eager(elbo=IWAE_ELBO(num_particles=3, max_plate_nesting=1))


K = 3


class MixturePriorVAE(VAE):
    """A Gaussian-mixture prior with the component enumerated, as Pyro users write it."""

    @pyro.infer.config_enumerate
    def model(self, x):
        pyro.module("decoder", self.decoder)
        means = torch.linspace(-2, 2, K).unsqueeze(-1).expand(K, self.latent_dim)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(K)))
            z = pyro.sample("z", dist.Normal(means[c], 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    @pyro.infer.config_enumerate
    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc, scale = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=loc[..., :K]))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class LabelledVAE(VAE):
    """Conditional decoder inputs passed by keyword (``model(x, y=..., w=...)``); ``w`` is an
    ``(N, D)`` per-pixel offset, ``y`` an ``(N,)`` shift, so that swapping them would fail."""

    def model(self, x, y=None, w=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            logits = self.decoder(z) + y.unsqueeze(-1) + (0.0 if w is None else 0.5 * w)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y=None, w=None):
        super().guide(x)


@pytest.mark.parametrize("names", [("y",), ("w", "y")])  # one name; two, in another order than the signature's
def test_named_arguments_are_inputs_of_the_recorded_step(names):
    from pyro_vae.data import Dataset

    g = torch.Generator().manual_seed(5)
    values = {"y": torch.randn(N, generator=g), "w": torch.randn(N, D, generator=g)}
    labelled = Dataset(name="tensor", train=data(), test=None, image_shape=None, likelihood=None,
                       train_named={name: values[name] for name in names})
    assert_replay_is_the_eager_run(LabelledVAE, labelled)


class OneHotCVAE(VAE):
    """As Pyro's CVAE examples write it: the labels one-hot encoded by ``F.one_hot`` inside model
    and guide, concatenated to the decoder's and encoder's inputs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_net = torch.nn.Linear(3, self.latent_dim)

    def model(self, x, y):
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            shift = self.label_net(torch.nn.functional.one_hot(y, 3).float())
            z = pyro.sample("z", dist.Normal(shift, 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            shift = self.label_net(torch.nn.functional.one_hot(y, 3).float())
            pyro.sample("z", dist.Normal(loc + shift, scale).to_event(1))


def test_a_pair_using_one_hot_labels_is_recorded_and_refuses_a_label_out_of_range():
    from pyro_vae.data import Dataset

    labels = torch.randint(0, 3, (N,), generator=torch.Generator().manual_seed(1))
    labelled = Dataset(name="tensor", train=data(), test=None, image_shape=None, likelihood=None,
                       train_named={"y": labels})
    assert_replay_is_the_eager_run(OneHotCVAE, labelled)

    # a label of 3 in a later minibatch: eager F.one_hot raises; the recorded step must not use a zero row
    vae = fresh_vae(OneHotCVAE)
    loss_fn = ELBOLoss(None, get_elbo("trace", 1, 0.0, 1), vae.model, vae.guide)
    x, optim = data(), make_optimizer("adam", 1e-3)
    step = CompiledSVIStep(loss_fn, optim, backend="replay").record((x[:B], labels[:B]), (x[-B:], labels[-B:]))
    assert step.reason is None
    bad = labels[:B].clone()
    bad[5] = 3
    before = [t.clone() for t in (*step.params, *step.steps)]
    with pytest.raises(ValueError, match=r"F.one_hot .* outside \[0, num_classes\)"):
        step(loss_fn, optim, x[:B], bad)
    assert all(torch.equal(a, b) for a, b in zip((*step.params, *step.steps), before))
    with pytest.raises(RuntimeError, match="Class values must be smaller than num_classes"):
        loss_fn(x[:B], bad)  # the eager step refuses it too


class AlternatingVAE(VAE):
    """Python state that changes the site structure: an auxiliary site on every other call (the
    checker refuses it; here the compiled step meets it directly)."""

    calls = 0

    def model(self, x):
        pyro.module("decoder", self.decoder)
        self.calls += 1
        with pyro.plate("data", x.shape[0]):
            if self.calls % 2:
                pyro.sample("aux", dist.Normal(x.new_zeros(()), 1.0), obs=x.new_zeros(x.shape[0]))
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


def test_a_step_whose_sites_change_between_minibatches_is_not_used():
    vae = fresh_vae(AlternatingVAE)
    loss_fn = ELBOLoss(None, get_elbo("trace", 1, 0.0, 1), vae.model, vae.guide)
    x, optim = data(), make_optimizer("adam", 1e-3)
    with pytest.warns(CompiledStepWarning):
        step = CompiledSVIStep(loss_fn, optim, backend="replay").record((x[:B],), (x[-B:],))
    assert __import__("re").fullmatch("ValueError: the pair's sites differ between two minibatches of the same shape "
                                      r"\(site 'aux' .*\): its structure depends on the data", step.reason), step.reason
    step(loss_fn, optim, x[:B])
    assert step.replays == 0


@pytest.mark.parametrize("cls, elbo, why", [
    # Pyro's Trace_ELBO forms its loss value with .item(): runs eager, naming the place
    (VAE, pyro.infer.Trace_ELBO(), "RuntimeError: the step reads a tensor's value in Python at "
                                   "pyro/infer/util.py:[0-9]+ \\(torch_item\\) from pyro/infer/trace_elbo.py"),
])
def test_a_pair_whose_step_is_not_static_runs_eager_naming_why(cls, elbo, why):
    vae = fresh_vae(cls)
    patch, calls = counting()
    with patch, pytest.warns(CompiledStepWarning) as caught:
        train(vae.model, vae.guide, data(), elbo=elbo, step="compiled:replay", **SETTINGS)
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1 and __import__("re").search(why, lines[0]), lines
    assert calls[0] == 0


def test_an_enumerated_pair_is_recorded_and_replays_the_eager_step():
    """TraceEnum's Dice expectation without a host read (pyro_internals.compute_dice_elbo): a
    mixture prior with its component enumerated in model and guide is recorded, bit for bit."""
    assert_replay_is_the_eager_run(MixturePriorVAE, data(), elbo="enum")


def test_auto_compiles_a_long_run_and_not_a_short_one(tmp_path, monkeypatch):
    from pyro_vae.training import step_mode

    adam = make_optimizer("adam", 1e-3)
    assert step_mode.choose_step("auto", remaining_steps=10**6, optimizer=adam, compile=False)[0] == "compiled"
    assert step_mode.choose_step("auto", remaining_steps=10**6, optimizer=make_optimizer("adagrad", 0.1),
                                 compile=False)[0] == "compiled"
    mode, why = step_mode.choose_step("auto", remaining_steps=10**6, optimizer=pyro.optim.Adagrad({"lr": 0.1}),
                                      compile=False)
    assert mode == "eager" and "optimizer PyroOptim(Adagrad)" in why
    mode, why = step_mode.choose_step("auto", remaining_steps=10**6, optimizer=adam, compile=True)
    assert mode == "eager" and "does not support compile" in why
    mode, why = step_mode.choose_step("auto", remaining_steps=step_mode.AUTO_MIN_STEPS - 1, optimizer=adam,
                                      compile=False)
    assert mode == "eager" and f"{step_mode.AUTO_MIN_STEPS - 1} steps left" in why
    mode, why = step_mode.choose_step("auto", remaining_steps=10**6, optimizer=adam, compile=False,
                                      device_type="cuda")
    assert mode == "eager" and "eager on cuda" in why  # not yet checked on a GPU
    # this run has 3 epochs x 3 steps left: eager by default, compiled with the bar lowered to 9
    # (inductor compiles the graph of the module's fixture again: a cache hit)
    for bar, used in ((10, "eager"), (9, "compiled")):
        monkeypatch.setattr(step_mode, "AUTO_MIN_STEPS", bar)
        vae = fresh_vae()
        patch, calls = counting()
        with patch:
            train(vae.model, vae.guide, data(), out=tmp_path / used, **SETTINGS)
        config = json.loads((tmp_path / used / "config.json").read_text())
        assert (config["step"], config["step_used"], calls[0]) == ("auto", used, 0 if used == "eager" else 2 * EPOCHS)
        assert config["step_reason"].startswith(f"step='auto' {'runs eager' if used == 'eager' else 'compiles'}")


def test_auto_resumes_a_run_in_the_mode_it_used(tmp_path, monkeypatch, capsys):
    from pyro_vae.training import step_mode

    monkeypatch.setattr(step_mode, "AUTO_MIN_STEPS", 1)  # 3 steps left: compiled
    vae = fresh_vae()
    train(vae.model, vae.guide, data(), out=RunFolder(tmp_path), **{**SETTINGS, "epochs": 1})
    assert json.loads((tmp_path / "config.json").read_text())["step_used"] == "compiled"
    monkeypatch.setattr(step_mode, "AUTO_MIN_STEPS", 10**6)  # a fresh run this short would be eager
    vae = fresh_vae()
    patch, calls = counting()
    with patch:
        train(vae.model, vae.guide, data(), out=RunFolder(tmp_path, resume=True), **SETTINGS)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["step_used"], calls[0]) == ("compiled", 2 * (EPOCHS - 1))
    assert "continues the run in the mode it used" in config["step_reason"]
    assert "not bitwise" not in capsys.readouterr().out


def test_a_resume_that_changes_the_step_mode_says_so(tmp_path, capsys):
    vae = fresh_vae()
    train(vae.model, vae.guide, data(), out=RunFolder(tmp_path), step="eager", **{**SETTINGS, "epochs": 1})
    vae = fresh_vae()
    train(vae.model, vae.guide, data(), out=RunFolder(tmp_path, resume=True), step="compiled:replay", **SETTINGS)
    out = capsys.readouterr().out
    assert "resumed with step 'compiled:replay', the run so far used 'eager'" in out
    assert "not bitwise" in out


def test_the_cli_takes_step_and_lets_a_resume_change_it():
    from pyro_vae.cli import build_parser
    from pyro_vae.cli.train import CLI_RESUME_FLAGS

    parser = build_parser()
    assert parser.parse_args(["train", "--step", "compiled"]).step == "compiled"
    assert parser.parse_args(["train"]).step == "auto"
    assert parser.parse_args(["train", "--eager"]).step == "eager"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--step", "fast"])
    assert "step" in CLI_RESUME_FLAGS  # speed only, like --compile


# the shipped pairs under the compiled step: which record, which run eager and the reason they give
_READS = "reads a tensor's value in Python at "
_RANDOM = r"random ops other than parameter-free normal/uniform fills \(aten\.{}\.default\)"
SHIPPED_FALLBACKS = {
    # score function: the bits are drawn by torch.bernoulli from the encoder's probabilities, not a noise fill
    "bernoulli": _RANDOM.format("bernoulli"),
}
VARIANTS = {"bernoulli-enum": ("bernoulli", {"enumerate": True})}  # a shipped family with other options


@pytest.mark.parametrize("name", sorted(MODELS) + sorted(VARIANTS))  # every shipped pair
def test_each_shipped_pair_is_recorded_or_named(name):
    from pyro_vae.data import Dataset
    from pyro_vae.models import build_model, model_options

    g = torch.Generator().manual_seed(0)
    x, labels = (torch.rand(N, 784, generator=g) < 0.3).float(), torch.randint(0, 10, (N,), generator=g)
    family, extra = VARIANTS.get(name, (name, {}))
    options = {"image_shape": (28, 28)} if "image_shape" in model_options(family) else {}
    options.update({k: v for k, v in (("hidden_dim", 16), ("latent_dim", 4), ("groups", 2))
                    if k in model_options(family)})
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = build_model(family, 784, **options, **extra)
    named = {"y": torch.where(torch.arange(N) % 2 == 0, -1, labels)} if family == "m2" else {}
    dataset = Dataset("tensor", x, None, (28, 28), "bernoulli", train_labels=labels, train_named=named)
    elbo, _, phases = pair_phases(vae, vae.default_elbo)
    if phases:  # a discriminator trained as its own phase (vaegan, wae-gan): refused, up front
        with pytest.raises(ValueError, match=r"step='compiled' does not support training phases \(1\)"):
            train(vae.model, vae.guide, dataset, elbo=elbo, batch_size=B, epochs=1, progress=False,
                  step="compiled:replay", phases=phases)
        return
    patch, calls = counting()
    with patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompiledStepWarning)
        train(vae.model, vae.guide, dataset, elbo=vae.default_elbo, labels=vae.needs_labels, batch_size=B, epochs=1,
              progress=False, step="compiled:replay")
    lines = [str(w.message) for w in caught if issubclass(w.category, CompiledStepWarning)]
    if name in SHIPPED_FALLBACKS:
        assert calls[0] == 0 and len(lines) == 1, lines
        assert __import__("re").search(SHIPPED_FALLBACKS[name], lines[0]), lines[0]
    else:
        assert calls[0] == 2 and lines == []  # two full minibatches of 32 replay the graph


def test_m2_refuses_a_label_out_of_range_in_a_replayed_step_as_its_eager_step_does():
    """m2 observes its labels with a Categorical: the observation is clamped, so an out-of-range label
    reaches the one-hot guard (a ValueError, step not applied) instead of an out-of-bounds lookup."""
    from pyro_vae.models import build_model

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = build_model("m2", D, hidden_dim=8, latent_dim=3)
    x = data()
    y = torch.randint(-1, 10, (N,), generator=torch.Generator().manual_seed(4))
    loss_fn = ELBOLoss(None, get_elbo("enum", 1, 0.0, 1), vae.model, vae.guide)
    optim = make_optimizer("adam", 1e-3)
    step = CompiledSVIStep(loss_fn, optim, backend="replay").record((x[:B], y[:B]), (x[-B:], y[-B:]), names=("y",))
    assert step.reason is None
    bad = y[:B].clone()
    bad[3] = 10
    before = [t.clone() for t in step.params]
    with pytest.raises(ValueError, match=r"F.one_hot in this minibatch lies outside \[0, num_classes\)"):
        step(loss_fn, optim, x[:B], y=bad)
    assert all(torch.equal(a, b) for a, b in zip(step.params, before))
    with pytest.raises(ValueError, match=r"classes y must be integers in \[0, 10\)"):
        loss_fn(x[:B], y=bad)
