"""Recording a function as an aten graph (pyro_vae.recorded) and the fused optimizer kernels the
compiled step updates with (pyro_vae.optim): each against an eager computation."""

import pytest
import torch
import torch.nn.functional as F

from pyro_vae.optim import fused_adam_step
from pyro_vae.recorded import index_guard, make_aten_graph, record


def test_fused_adam_step_is_torch_fused_adam_and_skips_on_found_inf():
    torch.manual_seed(0)
    params = [torch.randn(3, 2, requires_grad=True), torch.randn(4, requires_grad=True)]
    mine = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=0.01, fused=True)
    state = [{"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p), "step": torch.zeros(())}
             for p in mine]
    for k in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        for s in state:
            s["step"] += 1  # Adam counts the step before the kernel
        fused_adam_step(mine, grads, [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state],
                        [s["step"] for s in state], optimizer.param_groups[0], found_inf=torch.zeros(()))
        assert all(torch.equal(p.detach(), q) for p, q in zip(params, mine))
        assert all(torch.equal(optimizer.state[p]["exp_avg"], s["exp_avg"]) for p, s in zip(params, state))
    before = [q.clone() for q in mine]
    fused_adam_step(mine, grads, [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state],
                    [s["step"] for s in state], optimizer.param_groups[0], found_inf=torch.ones(()))
    assert all(torch.equal(p, q) for p, q in zip(before, mine))


def test_make_aten_graph_records_forward_and_backward_and_refuses_value_reads():
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)

    def step(w, x):
        loss = ((w * x).exp()).sum()
        return loss.detach(), torch.autograd.grad(loss, [w])[0]

    x = torch.tensor([1.0, 2.0, 3.0])
    gm = make_aten_graph(step, w, x)
    loss, grad = gm(w.detach(), 2 * x)  # flat positional inputs; new values, not the recorded ones
    torch.testing.assert_close(loss, (w * 2 * x).exp().sum().detach())
    torch.testing.assert_close(grad, (2 * x * (w * 2 * x).exp()).detach())
    with pytest.raises(RuntimeError, match="value out of a tracing tensor"):
        make_aten_graph(lambda w, x: w * float(x.sum()), w, x)


def test_record_cuts_out_the_noise_and_draws_it_as_the_eager_function_does():
    loc = torch.tensor([0.5, -1.0, 2.0])

    def fn(loc):
        eps = torch.empty(4, 3).normal_()
        u = torch.rand(4, 3)
        return loc + eps * 0.1 + u

    recorded = record(fn, loc)
    assert len(recorded.noise) == 2
    torch.manual_seed(7)
    replayed = recorded.graph(loc, *recorded.draw_noise())
    torch.manual_seed(7)
    assert torch.equal(replayed, fn(loc))  # the same draws, in the same order
    with pytest.raises(ValueError, match=r"random ops other than .*bernoulli"):
        record(lambda p: torch.bernoulli(p), torch.full((3,), 0.5))


def test_one_hot_is_recorded_with_its_range_check_as_a_guard():
    w = torch.arange(12.0).reshape(4, 3)
    recorded = record(lambda y, w: (F.one_hot(y, 4).float() @ w, index_guard()), torch.tensor([0, 3]), w)
    codes, bad = recorded.graph(torch.tensor([1, 2]), w)
    assert torch.equal(codes, w[[1, 2]]) and not bool(bad)
    codes, bad = recorded.graph(torch.tensor([1, 4]), w)  # eager F.one_hot raises here
    assert bool(bad)
    _, bad = recorded.graph(torch.tensor([-1, 0]), w)
    assert bool(bad)
    assert not bool(index_guard())  # outside recording: nothing to guard
