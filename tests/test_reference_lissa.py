"""``--compat reference`` (issue 20): rsc's emulation of the reference code's group influence
against an independent re-implementation of the reference's procedure with both defects
(``reference_group_influence.py``: the graph of v kept through autograd's double backward, and
the list-extended chains of which only chain 0 / r is applied). A tiny ReLU MLP in float64 and
one fixed sequence of Hessian samples; the stated tolerance is a relative difference of 1e-8
in the weight update."""
from __future__ import annotations

import pytest
import torch

import rsc_core
from reference_group_influence import reference_new_weights
from rsc_core.errors import DivergenceError
from rsc_core.influence.hessian import LossHessian
from rsc_plugins.removal.reference_lissa import (ReferenceSettings, draw_reference_samples,
                                                 reference_ihvp_sum)

N, DEPTH, REPEATS, FORGET = 16, 40, 3, (2, 5, 11)
DAMP, SCALE = 0.01, 4.0


@pytest.fixture(scope="module")
def setting():
    """A float64 ReLU MLP (rsc's architecture), its data and fixed Hessian samples: chain 0's
    rows (what rsc runs) and other rows for chains 1..r-1 (which the reference discards)."""
    torch.manual_seed(0)
    model = rsc_core.create("architectures", "MLP").build((1, 3, 3), 4).double().eval()
    images = torch.rand(N, 1, 3, 3, dtype=torch.float64)
    labels = torch.randint(0, 4, (N,))
    generator = torch.Generator().manual_seed(7)
    chain0 = draw_reference_samples(N, DEPTH, len(FORGET), generator, torch.device("cpu"))
    others = torch.randint(N, (len(FORGET), REPEATS - 1, DEPTH), generator=generator)
    samples = [[chain0[:, j, 0].tolist()] + others[j].tolist() for j in range(len(FORGET))]
    return model, images, labels, chain0, samples


def rsc_update(model, images, labels, chain0, specialised: bool = True) -> torch.Tensor:
    hessian = LossHessian(model, images, labels, specialised=specialised)
    settings = ReferenceSettings(damp=DAMP, scale=SCALE, depth=DEPTH, repeats=REPEATS)
    estimate, _ = reference_ihvp_sum(hessian, torch.tensor(FORGET), chain0, settings)
    return estimate / ((1 - len(FORGET) / N) * N)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("specialised", [True, False], ids=["mlp-products", "torch.func"])
def test_emulation_equals_the_reference_procedure(setting, specialised):
    model, images, labels, chain0, samples = setting
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    expected = reference_new_weights(model, images, labels, FORGET, samples, DAMP, SCALE,
                                     REPEATS) - theta
    update = rsc_update(model, images, labels, chain0, specialised)
    assert LossHessian(model, images, labels, specialised=specialised).mlp is not None or \
        not specialised
    assert relative(update, expected) < 1e-8


def test_the_kept_graph_and_the_chain_bug_both_change_the_result(setting):
    """The test above would pass for a wrong emulation only if these defects did not matter:
    cutting the graph (the detached procedure) moves the update by far more than 1e-8, and so
    does averaging the r chains instead of applying chain 0 / r."""
    model, images, labels, chain0, samples = setting
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    kept = reference_new_weights(model, images, labels, FORGET, samples, DAMP, SCALE,
                                 REPEATS) - theta
    detached = reference_new_weights(model, images, labels, FORGET, samples, DAMP, SCALE,
                                     REPEATS, detach=True) - theta
    assert relative(detached, kept) > 1e-3
    averaged = sum(reference_new_weights(model, images, labels, FORGET,
                                         [[s[c]] for s in samples], DAMP, SCALE, 1)
                   - theta for c in range(REPEATS)) / REPEATS
    assert relative(averaged, kept) > 1e-2


def test_a_non_finite_iterate_is_one_line_naming_the_fix(setting):
    model, images, labels, chain0, _ = setting
    hessian = LossHessian(model, images, labels)
    settings = ReferenceSettings(damp=DAMP, scale=1e-12, depth=DEPTH, repeats=REPEATS)
    with pytest.raises(DivergenceError) as info:
        reference_ihvp_sum(hessian, torch.tensor(FORGET), chain0, settings)
    message = str(info.value)
    assert "\n" not in message and "non-finite" in message and "--scale" in message


def test_the_per_example_gradients_are_exact(setting):
    """The emulation's v_z and g_i: the hand-written MLP gradients equal torch.func's."""
    model, images, labels, _, _ = setting
    fast = LossHessian(model, images, labels)
    generic = LossHessian(model, images, labels, specialised=False)
    for rows in (torch.tensor([[0], [3], [9]]), torch.tensor([[0, 1], [4, 8], [2, 2]])):
        expected = generic.gradient_rows_batched(rows)
        assert torch.allclose(fast.gradient_rows_batched(rows), expected, atol=1e-13)
        for hessian in (fast, generic):  # written into a reused buffer when given one
            buffer = torch.full_like(expected, float("nan"))
            written = hessian.gradient_rows_batched(rows, out=buffer)
            assert written.data_ptr() == buffer.data_ptr()
            assert torch.allclose(buffer, expected, atol=1e-13)
    assert torch.allclose(fast.gradient_rows_batched(torch.tensor([[0], [3], [7]])).sum(0),
                          fast.gradient_sum(torch.tensor([0, 3, 7])), atol=1e-13)
