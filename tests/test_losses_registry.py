"""Registry-driven loss tests: every registered loss, through its PairLoss module exactly as the trainer calls
it, equals a naive float64 transcription of its formula (value and gradients). The 2-process equivalence runs
the same table (tests/test_losses_distributed.py)."""

from __future__ import annotations

import pytest
import torch
from loss_cases import ALL_CASES, LOSS_CASES, LossCase, build, make_data, run_module

from mmembed.losses import list_losses


def test_every_registered_loss_has_cases() -> None:
    """The reference and distributed tests only cover what loss_cases.py knows: a new loss adds itself there."""
    assert sorted(LOSS_CASES) == list_losses()
    assert all(cases and all(c.reference is not None for c in cases) for cases in LOSS_CASES.values())


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_module_matches_naive_float64_formula(case: LossCase) -> None:
    data = make_data()
    module = build(case)
    leaves = [data["x"].clone(), data["y"].clone(), torch.tensor(7.5, dtype=torch.float64),
              torch.tensor(-2.0, dtype=torch.float64)]
    leaves = [t.requires_grad_() for t in leaves]
    loss = run_module(module, case, data, leaves, slice(None))
    got = torch.autograd.grad(loss, leaves, allow_unused=True)

    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    reference = case.reference(build(case), *ref_leaves, data)
    want = torch.autograd.grad(reference, ref_leaves, allow_unused=True)
    torch.testing.assert_close(loss, reference, rtol=1e-9, atol=1e-12)
    for name, g, w in zip(["x", "y", "logit_scale", "logit_bias"], got, want):
        g = torch.zeros_like(leaves[0] if name in "xy" else leaves[2]) if g is None else g
        w = torch.zeros_like(g) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12, msg=lambda m, n=name: f"{case.id} {n}: {m}")
